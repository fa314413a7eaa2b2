package cli

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/server"
)

// cellRunner runs cells of one session, on an embedded engine or a daemon.
type cellRunner interface {
	run(ctx context.Context, code string, timeout float64) (*api.RunResult, error)
	interrupt(ctx context.Context) error
	close(ctx context.Context)
}

func replCmd() *cobra.Command {
	var (
		co      clientOptions
		rc      runtimeConfig
		plotDir string
		timeout float64
	)
	cmd := &cobra.Command{
		Use:   "repl",
		Short: "Interactive Python session in a sandbox (variables survive between inputs)",
		Long: "An interactive Python prompt whose code runs in a sandboxed session. Multi-line input\n" +
			"ends with an empty line (as in python's own REPL). Plots are saved as PNG files and\n" +
			"their names printed. Ctrl-C interrupts a running cell; Ctrl-D ends the session. At a\n" +
			"terminal, lines can be edited, Tab completes the session's names and the last 1000 lines\n" +
			"are kept in $XDG_STATE_HOME/airlock/history (default ~/.airlock_history).",
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var r cellRunner
			var err error
			if co.server != "" {
				r, err = newRemoteRunner(ctx, co.server, co.apiKey)
			} else {
				r, err = newLocalRunner(ctx, rc)
			}
			if err != nil {
				return err
			}
			defer r.close(context.WithoutCancel(ctx))
			in := cmd.InOrStdin()
			if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				return replTerm(ctx, r, f, cmd.OutOrStdout(), cmd.ErrOrStderr(), plotDir, timeout, historyPath())
			}
			return replLoop(ctx, r, in, cmd.OutOrStdout(), cmd.ErrOrStderr(), plotDir, timeout)
		},
	}
	f := cmd.Flags()
	bindClientFlags(f, &co, "use this airlock daemon instead of an embedded engine")
	f.StringVar(&plotDir, "plot-dir", ".", "directory for plot PNG files")
	f.Float64Var(&timeout, "timeout", 300, "seconds a cell may run")
	bindRuntimeFlags(f, &rc, "state directory of the embedded engine (default: a private one under /run/airlock, removed at exit)")
	return cmd
}

// loopHooks are what differs between a terminal and piped input: how lines are read and how
// Ctrl-C reaches a running cell (guard is called before each cell and returns its undo, or
// errLineInterrupted to drop the cell).
type loopHooks struct {
	readLine func(prompt string) (string, error)
	guard    func() (stop func(), err error)
}

// replLoop reads cells from in (not a terminal: no editing) and prints results until EOF.
func replLoop(ctx context.Context, r cellRunner, in io.Reader, out, errOut io.Writer, plotDir string, timeout float64) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	hooks := loopHooks{
		readLine: func(prompt string) (string, error) {
			fmt.Fprint(out, prompt)
			if !sc.Scan() {
				if err := sc.Err(); err != nil {
					return "", err
				}
				return "", io.EOF
			}
			return sc.Text(), nil
		},
		// Ctrl-C during a cell interrupts the cell (the session lives on), not the command.
		guard: func() (func(), error) { return signalInterrupt(ctx, r), nil },
	}
	return runLoop(ctx, r, hooks, out, errOut, plotDir, timeout)
}

// runLoop reads cells through hooks and prints results until EOF.
func runLoop(ctx context.Context, r cellRunner, hooks loopHooks, out, errOut io.Writer, plotDir string, timeout float64) error {
	plots := 0
	for {
		var lines []string
		var err error
		for {
			prompt := ">>> "
			if len(lines) > 0 {
				prompt = "... "
			}
			var line string
			line, err = hooks.readLine(prompt)
			if err != nil {
				break
			}
			lines = append(lines, line)
			// A cell continues while it is an open block or bracket, until an empty line.
			if !continues(lines) {
				break
			}
		}
		if errors.Is(err, errLineInterrupted) {
			fmt.Fprintln(errOut, "KeyboardInterrupt") // as python: the cell being typed is dropped
			continue
		}
		if err != nil {
			fmt.Fprintln(out)
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		code := strings.Join(lines, "\n")
		if strings.TrimSpace(code) == "" {
			continue
		}
		stop, err := hooks.guard()
		if err != nil {
			fmt.Fprintln(errOut, "KeyboardInterrupt") // Ctrl-C right after Enter: the cell is dropped
			continue
		}
		res, err := r.run(context.WithoutCancel(ctx), code, timeout)
		stop()
		if err != nil {
			fmt.Fprintln(errOut, "airlock:", err)
			if errors.Is(err, api.ErrGone) || errors.Is(err, api.ErrNotFound) {
				return err
			}
			continue
		}
		io.WriteString(out, res.Stdout)
		io.WriteString(errOut, res.Stderr)
		if res.Error != nil {
			fmt.Fprintln(errOut, strings.Join(res.Error.Traceback, "\n"))
		}
		if res.Result != nil {
			fmt.Fprintln(out, *res.Result)
		}
		for _, d := range res.Display {
			if d.MIME != "image/png" {
				continue
			}
			b, err := base64.StdEncoding.DecodeString(d.Data)
			if err != nil {
				continue
			}
			plots++
			name := filepath.Join(plotDir, fmt.Sprintf("plot-%d.png", plots))
			if err := os.WriteFile(name, b, 0o644); err != nil {
				fmt.Fprintln(errOut, "airlock: save plot:", err)
				continue
			}
			fmt.Fprintf(out, "[plot saved to %s]\n", name)
		}
		if res.Restarted {
			fmt.Fprintf(errOut, "airlock: the interpreter was restarted (%s); variables are lost\n", res.RestartReason)
		} else if res.Interrupted && res.Error == nil {
			// With an error, its traceback already ends in the one KeyboardInterrupt line.
			fmt.Fprintln(errOut, "KeyboardInterrupt")
		}
	}
}

// continues reports whether the cell so far needs more lines: it opens a block (ends with ':'),
// has unbalanced brackets or an open triple quote; a block ends at an empty line.
func continues(lines []string) bool {
	last := lines[len(lines)-1]
	if len(lines) > 1 && strings.TrimSpace(last) == "" {
		return false
	}
	code := strings.Join(lines, "\n")
	if strings.Count(code, `"""`)%2 == 1 || strings.Count(code, `'''`)%2 == 1 {
		return true
	}
	depth := 0
	for _, c := range code {
		switch c {
		case '(', '[', '{':
			depth++
		case ')', ']', '}':
			depth--
		}
	}
	if depth > 0 || strings.HasSuffix(strings.TrimSpace(last), "\\") {
		return true
	}
	if strings.HasSuffix(strings.TrimSpace(lines[0]), ":") {
		return true // inside a block: until an empty line
	}
	return false
}

// signalInterrupt turns Ctrl-C during a cell into an interrupt of the session.
func signalInterrupt(ctx context.Context, r cellRunner) (stop func()) {
	sig := make(chan os.Signal, 1)
	notifyInterrupt(sig)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-sig:
				r.interrupt(context.WithoutCancel(ctx))
			case <-done:
				return
			}
		}
	}()
	return func() { stopNotify(sig); close(done) }
}

// localRunner runs a session on an embedded engine.
type localRunner struct {
	e      *engine.Engine
	rt     *runtimes
	logger *slog.Logger
	sb     *engine.Sandbox
}

func newLocalRunner(ctx context.Context, rc runtimeConfig) (*localRunner, error) {
	logger := warnLogger()
	rc.Native.Private = rc.Native.StateDir == "" // like airlock run: never a daemon's state directory
	e, rt, err := newEngine(logger, engine.Config{}, rc)
	if err != nil {
		return nil, err
	}
	sb, err := e.CreateSession(ctx, server.SessionSpec(api.CreateSessionRequest{IdleTimeout: 3600}))
	if err != nil {
		closeEngine(ctx, logger, e, rt)
		return nil, err
	}
	return &localRunner{e: e, rt: rt, logger: logger, sb: sb}, nil
}

func (l *localRunner) run(ctx context.Context, code string, timeout float64) (*api.RunResult, error) {
	r, err := l.sb.RunCell(ctx, code, server.Seconds(timeout))
	if err != nil {
		return nil, err
	}
	return server.RunResult(r), nil
}

func (l *localRunner) interrupt(ctx context.Context) error {
	_, _, err := l.sb.Interrupt(ctx)
	return err
}

func (l *localRunner) close(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	closeEngine(ctx, l.logger, l.e, l.rt)
}

// remoteRunner runs a session on a daemon through the HTTP API.
type remoteRunner struct {
	base, key, id string
}

func newRemoteRunner(ctx context.Context, server, key string) (*remoteRunner, error) {
	r := &remoteRunner{base: strings.TrimRight(server, "/"), key: key}
	var info api.SessionInfo
	if err := r.call(ctx, "POST", "/v1/sessions", api.CreateSessionRequest{}, &info); err != nil {
		return nil, err
	}
	r.id = info.ID
	return r, nil
}

func (r *remoteRunner) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, r.base+path, body)
	if err != nil {
		return err
	}
	if r.key != "" {
		req.Header.Set("Authorization", "Bearer "+r.key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		var eb api.ErrorBody
		json.NewDecoder(resp.Body).Decode(&eb)
		return &api.Error{Code: eb.Error.Code, Message: eb.Error.Message}
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

func (r *remoteRunner) run(ctx context.Context, code string, timeout float64) (*api.RunResult, error) {
	var res api.RunResult
	err := r.call(ctx, "POST", "/v1/sessions/"+r.id+"/run", api.RunRequest{Code: code, Timeout: timeout}, &res)
	return &res, err
}

func (r *remoteRunner) interrupt(ctx context.Context) error {
	return r.call(ctx, "POST", "/v1/sessions/"+r.id+"/interrupt", nil, nil)
}

func (r *remoteRunner) close(ctx context.Context) {
	r.call(ctx, "DELETE", "/v1/sessions/"+r.id, nil, nil)
}
