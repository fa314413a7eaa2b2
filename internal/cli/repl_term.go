package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// historyLimit bounds the REPL's history, in memory and in its file.
const historyLimit = 1000

// errLineInterrupted is returned by a line reader when Ctrl-C was pressed at the prompt.
var errLineInterrupted = errors.New("line interrupted")

// historyPath is $XDG_STATE_HOME/airlock/history if XDG_STATE_HOME is set, else ~/.airlock_history;
// empty if neither can be found (history then lives in memory only).
func historyPath() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "airlock", "history")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".airlock_history")
	}
	return ""
}

// fileHistory is term.History kept in a file: each line is appended as it is entered, so history
// survives a crash; the file is compacted to the last historyLimit lines when loaded.
type fileHistory struct {
	path    string
	entries []string // oldest first
}

func loadHistory(path string) *fileHistory {
	h := &fileHistory{path: path}
	if path == "" {
		return h
	}
	f, err := os.Open(path)
	if err != nil {
		return h
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		h.entries = append(h.entries, sc.Text())
		if len(h.entries) > 2*historyLimit {
			h.entries = append([]string(nil), h.entries[len(h.entries)-historyLimit:]...)
		}
	}
	f.Close()
	if len(h.entries) > historyLimit {
		h.entries = h.entries[len(h.entries)-historyLimit:]
	}
	if n > historyLimit {
		// Compact: rewrite through a temporary file so a crash never leaves half a history.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(strings.Join(h.entries, "\n")+"\n"), 0o600); err == nil {
			os.Rename(tmp, path)
		}
	}
	return h
}

func (h *fileHistory) Add(entry string) {
	if strings.TrimSpace(entry) == "" || strings.ContainsAny(entry, "\n\r") {
		return
	}
	if n := len(h.entries); n > 0 && h.entries[n-1] == entry {
		return // like bash's ignoredups: Up recalls distinct lines
	}
	h.entries = append(h.entries, entry)
	if len(h.entries) > historyLimit {
		h.entries = h.entries[1:]
	}
	if h.path == "" {
		return
	}
	os.MkdirAll(filepath.Dir(h.path), 0o700)
	f, err := os.OpenFile(h.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return // history is a comfort: never fail the session for it
	}
	fmt.Fprintln(f, entry)
	f.Close()
}

func (h *fileHistory) Len() int { return len(h.entries) }

func (h *fileHistory) At(i int) string { return h.entries[len(h.entries)-1-i] }

// keyQueue carries the bytes typed at the terminal to term.Terminal. A separate goroutine reads
// the terminal all the time, so that Ctrl-C is seen while a cell runs (the terminal is in raw
// mode, without ISIG) and other keys typed meanwhile wait for the next prompt.
type keyQueue struct {
	mu   sync.Mutex
	cond *sync.Cond
	buf  []byte
	err  error
}

func (q *keyQueue) Read(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.buf) == 0 && q.err == nil {
		q.cond.Wait()
	}
	if len(q.buf) == 0 {
		return 0, q.err
	}
	n := copy(p, q.buf)
	q.buf = q.buf[n:]
	return n, nil
}

func (q *keyQueue) push(b []byte, err error) {
	q.mu.Lock()
	q.buf = append(q.buf, b...)
	if err != nil {
		q.err = err
	}
	q.mu.Unlock()
	q.cond.Broadcast()
}

// termReader reads lines from a terminal with line editing, history and Tab completion.
type termReader struct {
	t           *term.Terminal
	onInterrupt func()

	// What a Ctrl-C means depends on where the keys before it are, so feed and the loop agree
	// on it under mu.
	mu      sync.Mutex
	reading bool // in ReadLine
	running bool // a cell runs: Ctrl-C interrupts it
	enters  int  // Enter keys passed to the Terminal
	lines   int  // lines the Terminal returned (each took one Enter)
	breaks  int  // Ctrl-C at the prompt passed on as an erased Enter, not yet seen by readLine
	pending bool // Ctrl-C after an Enter whose line is not yet a running cell: drop that cell
}

// feed copies the terminal's bytes to q. Ctrl-C typed at the prompt becomes "end of line, erase
// line, Enter" (term.Terminal's own Ctrl-C would end ReadLine like Ctrl-D and keep the text for the
// next prompt) and readLine sees by the count that the empty line it gets is a Ctrl-C. Ctrl-C
// while a cell runs interrupts it; Ctrl-C after Enter but before the cell runs drops the cell.
func (tr *termReader) feed(in io.Reader, q *keyQueue) {
	b := make([]byte, 4096)
	var prev byte
	for {
		n, err := in.Read(b)
		var out []byte
		for _, c := range b[:n] {
			if c != 3 {
				tr.mu.Lock()
				if c == '\r' || c == '\n' && prev != '\r' {
					tr.enters++
				}
				tr.mu.Unlock()
				prev = c
				out = append(out, c)
				continue
			}
			prev = c
			tr.mu.Lock()
			interrupt := tr.running
			switch {
			case tr.running:
			case tr.reading && tr.enters == tr.lines:
				tr.breaks++
				tr.enters++
				out = append(out, 5, 0x15, '\r') // Ctrl-E, Ctrl-U, Enter
			default:
				tr.pending = true
			}
			tr.mu.Unlock()
			if interrupt {
				q.push(out, nil) // keys typed before the Ctrl-C stay before it
				out = nil
				tr.onInterrupt()
			}
		}
		q.push(out, err)
		if err != nil {
			return
		}
	}
}

func (tr *termReader) readLine(prompt string) (string, error) {
	tr.t.SetPrompt(prompt)
	tr.mu.Lock()
	if tr.pending {
		tr.pending = false
		tr.mu.Unlock()
		return "", errLineInterrupted
	}
	tr.reading = true
	tr.mu.Unlock()
	line, err := tr.t.ReadLine()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.reading = false
	if err == nil {
		tr.lines++
	}
	if err == nil && line == "" && tr.breaks > 0 {
		tr.breaks--
		return "", errLineInterrupted
	}
	return line, err
}

// guard marks a cell as running, unless a Ctrl-C came after its Enter.
func (tr *termReader) guard() (stop func(), err error) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.pending {
		tr.pending = false
		return nil, errLineInterrupted
	}
	tr.running = true
	return func() {
		tr.mu.Lock()
		tr.running = false
		tr.mu.Unlock()
	}, nil
}

// rawNoISIG puts the terminal fd in raw mode but keeps output processing (so cell output's "\n"
// still returns the carriage) and returns the function that restores the old mode.
func rawNoISIG(fd int) (restore func(), err error) {
	old, err := term.MakeRaw(fd)
	if err != nil {
		return nil, fmt.Errorf("terminal raw mode: %w", err)
	}
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err == nil {
		t.Oflag |= unix.OPOST | unix.ONLCR
		err = unix.IoctlSetTermios(fd, unix.TCSETS, t)
	}
	if err != nil {
		term.Restore(fd, old)
		return nil, fmt.Errorf("terminal output mode: %w", err)
	}
	return func() { term.Restore(fd, old) }, nil
}

// replTerm is replLoop at a terminal: line editing, persistent history, Tab completion of the
// session's names and Ctrl-C handling. tty is the terminal (stdin); out and errOut write to it.
func replTerm(ctx context.Context, r cellRunner, tty *os.File, out, errOut io.Writer, plotDir string, timeout float64, histPath string) error {
	restore, err := rawNoISIG(int(tty.Fd()))
	if err != nil {
		return err
	}
	defer restore()
	q := &keyQueue{}
	q.cond = sync.NewCond(&q.mu)
	tr := &termReader{}
	tr.onInterrupt = func() { go r.interrupt(context.WithoutCancel(ctx)) }
	tr.t = term.NewTerminal(struct {
		io.Reader
		io.Writer
	}{q, tty}, ">>> ")
	if w, h, err := term.GetSize(int(tty.Fd())); err == nil && w > 0 {
		tr.t.SetSize(w, h) // the Terminal wraps long lines at this width (80 by default)
	}
	tr.t.History = loadHistory(histPath)
	tr.t.AutoCompleteCallback = func(line string, pos int, key rune) (string, int, bool) {
		if key != '\t' {
			return "", 0, false
		}
		return complete(ctx, r, tr.t, line, pos)
	}
	go tr.feed(tty, q)
	hooks := loopHooks{
		readLine: tr.readLine,
		guard:    tr.guard,
	}
	return runLoop(ctx, r, hooks, out, errOut, plotDir, timeout)
}

// completionCode is the cell that lists completions of a prefix: rlcompleter on the session's
// globals, printed as JSON. It binds no name in the session (everything lives in a lambda's
// frame) and prints to the cell's own stdout, which the REPL reads instead of showing.
const completionCode = `(lambda c, t: (c.complete(t, 0), print(__import__("json").dumps(getattr(c, "matches", [])[:500])))[1])(__import__("rlcompleter").Completer(globals()), %s)`

// complete handles Tab: it completes the name before the cursor from the session's names, or
// indents when there is none.
func complete(ctx context.Context, r cellRunner, t *term.Terminal, line string, pos int) (string, int, bool) {
	start := pos
	for start > 0 && isNameByte(line[start-1]) {
		start--
	}
	prefix := line[start:pos]
	if prefix == "" || prefix[0] >= '0' && prefix[0] <= '9' {
		return line[:pos] + "    " + line[pos:], pos + 4, true
	}
	quoted, _ := json.Marshal(prefix) // a JSON string is a valid Python string literal
	res, err := r.run(context.WithoutCancel(ctx), fmt.Sprintf(completionCode, quoted), 10)
	if err != nil || res.Error != nil {
		return "", 0, false
	}
	var matches []string
	if json.Unmarshal([]byte(strings.TrimSpace(res.Stdout)), &matches) != nil || len(matches) == 0 {
		return "", 0, false
	}
	common := matches[0]
	for _, m := range matches[1:] {
		for !strings.HasPrefix(m, common) {
			common = common[:len(common)-1]
		}
	}
	if len(common) > len(prefix) && strings.HasPrefix(common, prefix) {
		return line[:start] + common + line[pos:], start + len(common), true
	}
	if len(matches) > 1 {
		fmt.Fprintln(t, strings.Join(matches, "  "))
	}
	return "", 0, false
}

func isNameByte(c byte) bool {
	return c == '_' || c == '.' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80
}
