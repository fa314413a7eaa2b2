package repl

import (
	"bytes"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/airlockhq/airlock/api"
)

// Driver is the Python program that drives the interpreter (see doc.go for its protocol). It is
// exported so that callers can also install it as a file, e.g. for debugging inside a sandbox.
//
//go:embed driver.py
var Driver []byte

const (
	defaultPython         = "/usr/bin/python3"
	defaultOutputLimit    = 1 << 20
	defaultDisplayLimit   = DefaultDisplayLimit
	defaultInterruptGrace = 2 * time.Second

	startTimeout = 30 * time.Second       // Python start-up plus the ping round trip
	markerWait   = 2 * time.Second        // after a reply, for a stream's marker (it is already in the pipe)
	unmarkedWait = 50 * time.Millisecond  // after a reply, for a stream whose marker could not be written
	drainWait    = 500 * time.Millisecond // after a death, for the pipes to reach EOF
	replyWait    = time.Second            // after the reply pipe ends, for the process to exit
)

// DefaultDisplayLimit is the default cap on a cell's rich-output bytes, and MaxDisplayItems the cap
// on their number. The daemon checks an agent's answer against the same bounds.
const (
	DefaultDisplayLimit = 16 << 20
	MaxDisplayItems     = 256
)

// maxDisplayItems is MaxDisplayItems for this package's own code.
const maxDisplayItems = MaxDisplayItems

// ErrClosed is returned by an Interp after Close.
var ErrClosed = fmt.Errorf("interpreter closed: %w", api.ErrGone)

// Config configures an Interp. Zero values mean defaults. To add a field: document its zero
// value here, apply the default in withDefaults, check it in Validate, and bind it in the caller
// (internal/agent).
type Config struct {
	// Python is the interpreter to run; empty means /usr/bin/python3 (any Python ≥ 3.8).
	Python string
	// Env is the interpreter's full environment; nil means LANG=C.UTF-8 and a standard PATH.
	// MPLBACKEND is always set to Agg by the driver.
	Env []string
	// Dir is the working directory; empty means the caller's.
	Dir string
	// SysProcAttr is merged into the interpreter's attributes (credentials, namespaces, …). The
	// interpreter gets its own process group (Setpgid) unless SysProcAttr sets Setsid or
	// Setpgid itself; kills reach the whole group only if the interpreter leads it.
	SysProcAttr *syscall.SysProcAttr
	// Spawn, if set, starts cmd in place of cmd.Start and returns a function that waits for the
	// process (called once). A PID 1 that reaps every child, like the agent, uses it to register
	// the interpreter with its reaper so that the exit status is not lost to a wait4(-1).
	Spawn func(cmd *exec.Cmd) (wait func() (syscall.WaitStatus, error), err error)
	// OutputLimit caps stdout and stderr per stream per cell, in bytes; the rest is read and
	// discarded and the Result says Truncated. Zero means 1 MiB. It also caps Result.Result.
	OutputLimit int64
	// DisplayLimit caps the rich outputs of a cell, in bytes; zero means 16 MiB. Outputs that do
	// not fit are dropped with a note on stderr.
	DisplayLimit int64
	// InterruptGrace is how long a cell may take to stop after an interrupt before the
	// interpreter is killed and restarted; zero means 2s.
	InterruptGrace time.Duration
	// Logger receives restarts and deaths; nil discards them.
	Logger *slog.Logger
}

// Validate reports whether c is usable.
func (c Config) Validate() error {
	switch {
	case c.OutputLimit < 0:
		return fmt.Errorf("output limit %d: %w", c.OutputLimit, api.ErrInvalidArgument)
	case c.DisplayLimit < 0:
		return fmt.Errorf("display limit %d: %w", c.DisplayLimit, api.ErrInvalidArgument)
	case c.InterruptGrace < 0:
		return fmt.Errorf("interrupt grace %v: %w", c.InterruptGrace, api.ErrInvalidArgument)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Python == "" {
		c.Python = defaultPython
	}
	if c.Env == nil {
		c.Env = []string{"LANG=C.UTF-8", "PATH=/usr/local/bin:/usr/bin:/bin"}
	}
	if c.OutputLimit == 0 {
		c.OutputLimit = defaultOutputLimit
	}
	if c.DisplayLimit == 0 {
		c.DisplayLimit = defaultDisplayLimit
	}
	if c.InterruptGrace == 0 {
		c.InterruptGrace = defaultInterruptGrace
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Display is one rich output, e.g. "image/png" with the PNG bytes or "text/html" with UTF-8 markup.
type Display struct {
	MIME string
	Data []byte
}

// Error is an exception raised by a cell, or InterpreterDied / InterpreterKilled when the
// interpreter itself was lost.
type Error struct {
	Name      string   `json:"name"`
	Value     string   `json:"value"`
	Traceback []string `json:"traceback"` // formatted lines, starting at the user's cell
}

// Result is the outcome of one cell.
type Result struct {
	Stdout, Stderr                   []byte
	StdoutTruncated, StderrTruncated bool
	// Result is the repr of the cell's trailing expression, if HasResult (None gives none).
	Result    string
	HasResult bool
	Display   []Display
	// DisplayDropped counts rich outputs left out: over MaxDisplayItems or DisplayLimit, or not
	// following the rules of their MIME type (see IsText). A note on Stderr says why.
	DisplayDropped int
	Error          *Error
	// ExecutionTime is measured by the driver around the cell, or by Go if the interpreter died.
	ExecutionTime time.Duration
	// Interrupted: the cell was stopped by Interrupt or its timeout and the state was kept.
	Interrupted bool
	// TimedOut: the cell hit its timeout (it was then interrupted, or killed if Restarted).
	TimedOut bool
	// Restarted: the interpreter died (os._exit, a segfault), did not stop after an interrupt, or
	// had died before the cell, and was restarted; every variable is lost.
	Restarted     bool
	RestartReason string
}

// Interp is a running interpreter. Run calls are serialized; Interrupt, Pid and Close may be
// called concurrently with them.
type Interp struct {
	cfg Config

	mu   sync.Mutex // held by Run for a whole cell and by Close's teardown
	lost string     // why there is no live interpreter (set when a restart was skipped)
	// prevNonce is the nonce of the last cell of the current interpreter, guarded by mu. Its real
	// "done" frame can still arrive during the next cell if the cell forged one of its own.
	prevNonce string

	stateMu sync.Mutex // guards the fields below; never held while blocking
	cur     *proc      // the interpreter; replaced only with mu held
	cell    *cell      // the cell in progress, for Interrupt
	closed  bool
}

// cell is a Run in progress, as seen by Interrupt.
type cell struct {
	interrupt chan struct{} // capacity 1: a request to stop the cell
	done      chan struct{} // closed when Run is over; the fields below are then final
	stopped   bool          // the cell was interrupted and the state kept
	restarted bool          // the interpreter was lost during the cell
}

// Start starts an interpreter and waits until the driver answers a ping.
func Start(ctx context.Context, cfg Config) (*Interp, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("repl config: %w", err)
	}
	p := &Interp{cfg: cfg.withDefaults()}
	pr, err := p.spawn(ctx)
	if err != nil {
		return nil, err
	}
	p.cur = pr
	return p, nil
}

// Pid returns the interpreter's pid, or 0 if it is not running.
func (p *Interp) Pid() int {
	p.stateMu.Lock()
	defer p.stateMu.Unlock()
	if p.cur == nil || p.cur.dead() {
		return 0
	}
	return p.cur.pid
}

// Close kills the interpreter and its process group, ends a cell in progress, and waits for every
// goroutine of the Interp. It is idempotent.
func (p *Interp) Close() error {
	p.stateMu.Lock()
	if p.closed {
		p.stateMu.Unlock()
		return nil
	}
	p.closed = true
	pr := p.cur
	p.stateMu.Unlock()
	if pr != nil {
		pr.kill() // a Run in progress sees the death and returns ErrClosed
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stateMu.Lock()
	pr, p.cur = p.cur, nil
	p.stateMu.Unlock()
	if pr != nil {
		pr.shutdown()
	}
	return nil
}

// Interrupt stops the running cell: SIGINT, then, if the cell has not finished within
// InterruptGrace, a restart. It waits until the cell is over and reports whether it was
// interrupted with its state kept, or the interpreter was restarted. With no cell running it
// returns false, false, nil.
func (p *Interp) Interrupt() (interrupted, restarted bool, err error) {
	p.stateMu.Lock()
	c, closed := p.cell, p.closed
	p.stateMu.Unlock()
	if closed {
		return false, false, ErrClosed
	}
	if c == nil {
		return false, false, nil
	}
	select {
	case c.interrupt <- struct{}{}:
	default:
	}
	<-c.done
	return c.stopped, c.restarted, nil
}

// Run executes code as one cell and returns its outcome. A timeout > 0 interrupts the cell when
// it expires, as does cancelling ctx, in which case Run returns ctx's cause instead of a Result.
// If the interpreter is lost during the cell, Run restarts it and reports Restarted; if that
// restart fails, Run returns the Result together with the error, and the next Run retries.
func (p *Interp) Run(ctx context.Context, code string, timeout time.Duration) (*Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stateMu.Lock()
	pr, closed := p.cur, p.closed
	p.stateMu.Unlock()
	if closed {
		return nil, ErrClosed
	}

	if err := context.Cause(ctx); err != nil {
		return nil, fmt.Errorf("run cell: %w", err)
	}

	var restartReason string
	if pr == nil || pr.dead() {
		switch {
		case p.lost != "":
			restartReason = p.lost
		case pr != nil:
			restartReason = fmt.Sprintf("the interpreter exited between cells (%s); it was restarted, all variables are lost", pr.statusText())
		default:
			restartReason = "the interpreter was not running; it was started, all variables are lost"
		}
		var err error
		if pr, err = p.replace(ctx, pr, restartReason); err != nil {
			return nil, err
		}
	}

	c := &cell{interrupt: make(chan struct{}, 1), done: make(chan struct{})}
	p.stateMu.Lock()
	p.cell = c
	p.stateMu.Unlock()
	defer func() {
		p.stateMu.Lock()
		p.cell = nil
		p.stateMu.Unlock()
		close(c.done)
	}()

	res, err := p.runCell(ctx, pr, c, code, timeout)
	if res != nil && restartReason != "" && !res.Restarted {
		res.Restarted, res.RestartReason = true, restartReason
	}
	return res, err
}

// runCell sends one cell to pr and waits for its end, stopping it on timeout, Interrupt or ctx.
func (p *Interp) runCell(ctx context.Context, pr *proc, c *cell, code string, timeout time.Duration) (*Result, error) {
	// A fresh nonce per cell, echoed by the driver in "started" and "done": a frame with another
	// nonce (forged by cell code, or the late reply of a cell whose own forgery was taken) is
	// never taken as this cell's, so a desync cannot outlive the cell that caused it.
	nonce := newNonce()
	defer func() { p.prevNonce = nonce }()
	cmd, err := json.Marshal(runCommand{
		Op: "run", Code: code, Limit: p.cfg.OutputLimit, DisplayLimit: p.cfg.DisplayLimit,
		DisplayItems: maxDisplayItems, Nonce: nonce,
	})
	if err != nil {
		return nil, fmt.Errorf("encode cell: %w", err)
	}
	start := time.Now()
	var deadline time.Time
	if timeout > 0 {
		deadline = start.Add(timeout + p.cfg.InterruptGrace)
	}
	if n, err := pr.send(ctx, cmd, deadline); err != nil {
		if cause := context.Cause(ctx); n == 0 && cause != nil && !pr.dead() {
			return nil, fmt.Errorf("run cell: %w", cause) // nothing sent: the interpreter is intact
		}
		if errors.Is(err, syscall.EPIPE) {
			pr.kill() // the driver is gone: report its own exit status below
		} else {
			// It did not read the cell in time, or got part of a frame.
			pr.killFor(fmt.Sprintf("interpreter did not accept the cell: %v", err))
		}
	}

	var timeoutC, graceC, replyC <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		timeoutC = t.C
	}
	var grace, replyTimer *time.Timer
	defer func() {
		if grace != nil {
			grace.Stop()
		}
		if replyTimer != nil {
			replyTimer.Stop()
		}
	}()
	started, pending, signalled, timedOut := false, false, false, false
	done := ctx.Done()
	stop := func() {
		if grace != nil {
			return // already stopping
		}
		grace = time.NewTimer(p.cfg.InterruptGrace)
		graceC = grace.C
		if started {
			signalled = true
			pr.interrupt()
		} else {
			pending = true // SIGINT once the driver says the user phase began
		}
	}

	frames := pr.frames
	for {
		select {
		case f, ok := <-frames:
			if !ok {
				// The reply pipe ended: the driver is exiting (or broke the protocol).
				frames = nil
				replyTimer = time.NewTimer(replyWait)
				replyC = replyTimer.C
				continue
			}
			if f.Nonce != nonce {
				p.skipStale(pr, f)
				continue
			}
			switch f.Op {
			case "started":
				started = true
				if pending {
					pending, signalled = false, true
					pr.interrupt()
				}
			case "done":
				res := p.finishCell(pr, f)
				// A KeyboardInterrupt the cell raised itself is an ordinary error.
				res.Interrupted = res.Interrupted && signalled
				res.TimedOut = timedOut && res.Interrupted
				if why := pr.killReason(); why != "" {
					// The cell ended just as the grace period ran out: the kill stands.
					<-pr.exited
					res.Interrupted = false
					res.RestartReason = why + "; the interpreter was killed and restarted, all variables are lost"
					return p.restart(ctx, pr, c, res)
				}
				c.stopped = res.Interrupted
				if err := context.Cause(ctx); err != nil && done == nil {
					return nil, fmt.Errorf("run cell: %w", err)
				}
				return res, nil
			}
		case <-pr.exited:
			return p.lose(ctx, pr, c, start, timedOut)
		case <-timeoutC:
			timedOut = true
			stop()
		case <-c.interrupt:
			stop()
		case <-done:
			done = nil
			stop()
		case <-graceC:
			graceC = nil
			pr.killFor(fmt.Sprintf("cell did not stop within %v of SIGINT", p.cfg.InterruptGrace))
		case <-replyC:
			replyC = nil
			pr.killFor("driver closed its reply pipe")
		}
	}
}

// skipStale handles a frame that is not the current cell's. The first "done" carrying the previous
// cell's nonce is that cell's real reply, late because cell code forged one that was taken: its
// output, up to its markers, belongs to no cell and is dropped, so the current cell's output starts
// where it should. Every other stale frame is ignored.
func (p *Interp) skipStale(pr *proc, f *frame) {
	if f.Op != "done" || p.prevNonce == "" || f.Nonce != p.prevNonce {
		return
	}
	p.prevNonce = ""
	tok, dl := markerOf(f, 0)
	pr.out.collect(tok, dl)
	tok, dl = markerOf(f, 1)
	pr.errs.collect(tok, dl)
}

// markerOf returns the token to cut stream i at for the reply f, and how long to wait for it.
func markerOf(f *frame, i int) (string, time.Time) {
	if f.Marked[i] && len(f.Token) == tokenLen {
		return f.Token, time.Now().Add(markerWait)
	}
	return "", time.Now().Add(unmarkedWait)
}

// newNonce returns 32 random hex digits.
func newNonce() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// finishCell turns the driver's reply into a Result, cutting both streams at the reply's token.
func (p *Interp) finishCell(pr *proc, f *frame) *Result {
	res := &Result{
		HasResult:     f.Result != nil,
		Error:         capError(f.Error),
		Interrupted:   f.Interrupted,
		ExecutionTime: time.Duration(f.ExecutionTime * float64(time.Second)),
	}
	if f.Result != nil {
		res.Result = clip(*f.Result, int(p.cfg.OutputLimit))
	}
	// The driver bounds the outputs, but it shares its process with user code, which can write
	// frames of its own: every field is bounded again here.
	display, dropped, notes := checkDisplays(f.Display.items, f.Display.dropped, p.cfg.DisplayLimit)
	// The driver counts, and notes on stderr, what it dropped itself.
	res.Display, res.DisplayDropped = display, dropped+min(max(f.DisplayDropped, 0), 1<<30)
	tok, dl := markerOf(f, 0)
	res.Stdout, res.StdoutTruncated = pr.out.collect(tok, dl)
	tok, dl = markerOf(f, 1)
	res.Stderr, res.StderrTruncated = pr.errs.collect(tok, dl)
	if dropped > 0 {
		note := fmt.Sprintf("airlock: %d display outputs dropped (%s)\n", dropped, strings.Join(notes, "; "))
		res.Stderr = append(res.Stderr, note...)
	}
	return res
}

// IsText reports whether rich outputs of type mime are text: text/* and JSON types. Their data
// must be UTF-8 without control characters (tab, newline and carriage return aside), so that it
// is carried as a JSON string at most twice its size; every other type is binary and carried as
// base64. The API's Display says the same.
func IsText(mime string) bool {
	return strings.HasPrefix(mime, "text/") || strings.HasSuffix(mime, "json")
}

// ValidText reports whether s is acceptable data for a text type (see IsText).
func ValidText(s []byte) bool {
	for _, c := range s {
		if c < 0x20 && c != '\t' && c != '\n' && c != '\r' || c == 0x7f {
			return false
		}
	}
	return utf8.Valid(s)
}

// checkDisplays applies the display rules to a reply's items: at most MaxDisplayItems and limit
// bytes, base64 only for binary types, text types valid text. dropped counts items already left
// out; the result counts every item left out, and notes says why.
func checkDisplays(items []wireDisplay, dropped int, limit int64) (out []Display, ndropped int, notes []string) {
	why := map[string]bool{}
	drop := func(reason string) {
		dropped++
		if !why[reason] {
			why[reason] = true
			notes = append(notes, reason)
		}
	}
	if dropped > 0 { // left out while decoding the frame
		notes = append(notes, fmt.Sprintf("over the per-cell limit of %d outputs, or malformed", maxDisplayItems))
	}
	var total int64
	for _, d := range items {
		var data []byte
		switch {
		case d.MIME == "" || len(d.MIME) > 255:
			drop("no valid MIME type")
			continue
		case IsText(d.MIME) && d.B64:
			drop("base64 data for a text type")
			continue
		case IsText(d.MIME):
			data = []byte(d.Data)
			if !ValidText(data) {
				drop("control characters in text")
				continue
			}
		case d.B64:
			b, err := base64.StdEncoding.DecodeString(d.Data)
			if err != nil {
				drop("invalid base64")
				continue
			}
			data = b
		default:
			data = []byte(d.Data)
		}
		if len(out) >= maxDisplayItems {
			drop(fmt.Sprintf("over the per-cell limit of %d outputs", maxDisplayItems))
			continue
		}
		if total+int64(len(data)) > limit {
			drop(fmt.Sprintf("over the per-cell display limit of %d bytes", limit))
			continue
		}
		total += int64(len(data))
		out = append(out, Display{MIME: d.MIME, Data: data})
	}
	return out, dropped, notes
}

// lose reports a cell whose interpreter died or was killed, and restarts the interpreter.
func (p *Interp) lose(ctx context.Context, pr *proc, c *cell, start time.Time, timedOut bool) (*Result, error) {
	pr.kill() // the rest of the process group
	dl := time.Now().Add(drainWait)
	res := &Result{ExecutionTime: time.Since(start), TimedOut: timedOut}
	res.Stdout, res.StdoutTruncated = pr.out.collect("", dl)
	res.Stderr, res.StderrTruncated = pr.errs.collect("", dl)
	// With no reply naming a token, output is taken whole: drop end markers the driver may
	// have written before it died, so none reaches the caller.
	res.Stdout, res.Stderr = stripMarkers(res.Stdout), stripMarkers(res.Stderr)
	status := pr.statusText()
	if why := pr.killReason(); why != "" {
		res.Error = &Error{Name: "InterpreterKilled", Value: why}
		res.RestartReason = why + "; the interpreter was killed and restarted, all variables are lost"
	} else {
		res.Error = &Error{Name: "InterpreterDied", Value: status}
		res.RestartReason = "the interpreter died (" + status + "); it was restarted, all variables are lost"
	}
	return p.restart(ctx, pr, c, res)
}

// restart replaces the dead interpreter pr after the cell c, whose result is res.
func (p *Interp) restart(ctx context.Context, pr *proc, c *cell, res *Result) (*Result, error) {
	c.restarted = true
	p.stateMu.Lock()
	closed := p.closed
	p.stateMu.Unlock()
	if closed {
		pr.shutdown()
		return nil, ErrClosed
	}
	if err := context.Cause(ctx); err != nil {
		// Leave the restart to the next Run rather than start a process for a caller that left.
		pr.shutdown()
		p.lost = res.RestartReason
		return nil, fmt.Errorf("run cell: %w", err)
	}
	if _, err := p.replace(ctx, pr, res.RestartReason); err != nil {
		return res, err
	}
	res.Restarted = true
	return res, nil
}

// replace shuts old down (if any) and installs a freshly started interpreter.
func (p *Interp) replace(ctx context.Context, old *proc, reason string) (*proc, error) {
	if old != nil {
		old.shutdown()
		p.cfg.Logger.WarnContext(ctx, "python interpreter lost", "pid", old.pid, "reason", reason)
	}
	p.stateMu.Lock()
	if p.cur == old {
		p.cur = nil
	}
	p.stateMu.Unlock()
	p.prevNonce = "" // a new interpreter has no late replies
	pr, err := p.spawn(ctx)
	if err != nil {
		p.lost = reason
		return nil, fmt.Errorf("restart interpreter: %w", err)
	}
	p.stateMu.Lock()
	if p.closed {
		p.stateMu.Unlock()
		pr.shutdown()
		return nil, ErrClosed
	}
	p.cur = pr
	p.stateMu.Unlock()
	p.lost = ""
	return pr, nil
}

// spawn starts an interpreter and waits for its pong.
func (p *Interp) spawn(ctx context.Context) (*proc, error) {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	pr, err := startProc(p.cfg)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", p.cfg.Python, err)
	}
	ping, _ := json.Marshal(runCommand{Op: "ping"})
	var why error
	if _, err := pr.send(ctx, ping, time.Time{}); err != nil {
		why = err
	} else {
		select {
		case f, ok := <-pr.frames:
			if ok && f.Op == "pong" {
				return pr, nil
			}
			why = errors.New("driver did not answer the ping")
		case <-pr.exited:
			why = errors.New("interpreter exited")
		case <-ctx.Done():
			why = context.Cause(ctx)
		}
	}
	pr.kill()
	<-pr.exited
	stderr, _ := pr.errs.collect("", time.Now().Add(drainWait))
	pr.shutdown()
	if len(stderr) > 2048 {
		stderr = stderr[len(stderr)-2048:]
	}
	return nil, fmt.Errorf("start %s (%s, stderr %q): %w: %w", p.cfg.Python, pr.statusText(), stderr, why, api.ErrUnavailable)
}

// runCommand is a Go → driver frame.
type runCommand struct {
	Op           string `json:"op"`
	Code         string `json:"code,omitempty"`
	Limit        int64  `json:"limit,omitempty"`
	DisplayLimit int64  `json:"display_limit,omitempty"`
	DisplayItems int    `json:"display_items,omitempty"`
	Nonce        string `json:"nonce,omitempty"`
}

// frame is a driver → Go frame.
type frame struct {
	Op      string      `json:"op"`
	Nonce   string      `json:"nonce"`
	Token   string      `json:"token"`
	Marked  [2]bool     `json:"marked"`
	Result  *string     `json:"result"`
	Display displayList `json:"display"`
	// DisplayDropped counts the outputs the driver left out.
	DisplayDropped int     `json:"display_dropped"`
	Error          *Error  `json:"error"`
	Interrupted    bool    `json:"interrupted"`
	ExecutionTime  float64 `json:"execution_time"`
	Pid            int     `json:"pid"`
	Version        string  `json:"version"`
}

// displayList is a frame's display array, decoded up to MaxDisplayItems items: the rest are
// counted and skipped, so that millions of tiny items cost the agent nothing per item.
type displayList struct {
	items   []wireDisplay
	dropped int
}

func (l *displayList) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil { // '['
		return err
	}
	for dec.More() {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		var d wireDisplay
		if len(l.items) >= maxDisplayItems || json.Unmarshal(raw, &d) != nil {
			l.dropped++
			continue
		}
		l.items = append(l.items, d)
	}
	_, err := dec.Token() // ']'
	return err
}

type wireDisplay struct {
	MIME string `json:"mime"`
	Data string `json:"data"`
	B64  bool   `json:"b64"`
}

// errorCap bounds an error's value and its traceback, in bytes.
const errorCap = 64 << 10

// capError bounds an Error reported by the driver.
func capError(e *Error) *Error {
	if e == nil {
		return nil
	}
	out := &Error{Name: clip(e.Name, 256), Value: clip(e.Value, errorCap)}
	size := 0
	for _, l := range e.Traceback {
		l = clip(l, 4096)
		if size += len(l); size > errorCap || len(out.Traceback) >= 200 {
			out.Traceback = append(out.Traceback, "... (traceback truncated)")
			break
		}
		out.Traceback = append(out.Traceback, l)
	}
	return out
}

// clip cuts s to at most n bytes, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "... (truncated)"
}

// stripMarkers removes every end-of-cell marker from b.
func stripMarkers(b []byte) []byte {
	out := b[:0:0]
	for {
		i := bytes.Index(b, []byte(markerPrefix))
		if i < 0 {
			return append(out, b...)
		}
		end := i + markerLen
		if end > len(b) || !isMarker(b[i:end]) {
			out = append(out, b[:i+1]...)
			b = b[i+1:]
			continue
		}
		out = append(out, b[:i]...)
		b = b[end:]
	}
}

// isMarker reports whether m (markerLen bytes) is a well-formed end marker.
func isMarker(m []byte) bool {
	tok := m[len(markerPrefix) : len(markerPrefix)+tokenLen]
	for _, c := range tok {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return string(m[len(markerPrefix)+tokenLen:]) == markerSuffix
}
