package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// handleExecWS runs an interactive exec over a WebSocket (protocol in api/sandbox.go).
func (s *Server) handleExecWS(w http.ResponseWriter, r *http.Request) error {
	sb, done, err := s.use(r)
	if err != nil {
		return err // before the upgrade: a normal JSON error
	}
	defer done()
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return nil // Accept has answered the client
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	// The connection's context is not the request's: when serve ends the request's past the
	// shutdown's grace period, the exec (run on the request's) stops, and the connection still
	// carries the error event that says why.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()

	_, first, err := c.Read(ctx)
	if err != nil {
		return nil
	}
	var req api.ExecRequest
	if err := json.Unmarshal(first, &req); err != nil {
		c.Close(websocket.StatusInvalidFramePayloadData, "first message must be an ExecRequest JSON object")
		return nil
	}
	var writeMu sync.Mutex // websocket writes are not concurrent-safe across goroutines
	pidc := make(chan int, 1)
	ended := make(chan struct{}) // closed when the process has ended
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.wsInput(ctx, c, sb, pidc, ended) })

	x := execSpec(req)
	x.KeepStdin = true // the WebSocket is the stdin stream
	end, err := sb.Exec(r.Context(), x, func(ev engine.Event) {
		writeMu.Lock()
		defer writeMu.Unlock()
		switch {
		case ev.Pid != 0:
			pidc <- ev.Pid
			wsSend(ctx, c, api.ExecEvent{Type: api.EventStart, Pid: ev.Pid})
		case ev.Stdout != nil:
			c.Write(ctx, websocket.MessageBinary, append([]byte{api.WSStdout}, ev.Stdout...))
		case ev.Stderr != nil:
			c.Write(ctx, websocket.MessageBinary, append([]byte{api.WSStderr}, ev.Stderr...))
		}
	})
	close(ended)
	writeMu.Lock()
	if err != nil {
		d := publicDetail(ctx, shutdownCause(r.Context(), err))
		wsSend(ctx, c, api.ExecEvent{Type: api.EventError, Error: &d})
	} else {
		code := end.ExitCode
		wsSend(ctx, c, api.ExecEvent{Type: api.EventExit, ExitCode: &code, TimedOut: end.TimedOut, ExecutionTime: end.Duration.Seconds()})
	}
	writeMu.Unlock()
	c.Close(websocket.StatusNormalClosure, "")
	cancel()
	return nil
}

func wsSend(ctx context.Context, c *websocket.Conn, ev api.ExecEvent) {
	b, _ := json.Marshal(ev)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c.Write(wctx, websocket.MessageText, b)
}

// wsInput forwards client frames: binary frames to stdin, text frames as controls. When the
// WebSocket fails or closes before the process has ended, the client is gone and nobody can
// reach the process any more (there is no detach): it is killed with its process group, so a
// PTY process does not hold its terminal until the sandbox ends.
func (s *Server) wsInput(ctx context.Context, c *websocket.Conn, sb *engine.Sandbox, pidc <-chan int, ended <-chan struct{}) {
	var pid int
	select {
	case pid = <-pidc:
	case <-ctx.Done():
		return
	}
	for {
		typ, data, err := c.Read(ctx)
		if err != nil {
			select {
			case <-ended:
			default:
				kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				err := sb.Signal(kctx, pid, 9)
				if err != nil && !errors.Is(err, api.ErrNotFound) && !errors.Is(err, api.ErrGone) { // not: it ended meanwhile
					s.cfg.Logger.WarnContext(kctx, "kill the process of a closed WebSocket", "sandbox", sb.ID(), "pid", pid, "err", err)
				}
			}
			return
		}
		if typ == websocket.MessageBinary {
			if err := sb.WriteStdin(ctx, pid, bytes.NewReader(data), false); err != nil {
				return
			}
			continue
		}
		var ctl api.WSControl
		if json.Unmarshal(data, &ctl) != nil {
			continue
		}
		switch ctl.Type {
		case "eof":
			sb.WriteStdin(ctx, pid, bytes.NewReader(nil), true)
		case "kill":
			sb.Signal(ctx, pid, 9)
		case "signal":
			sb.Signal(ctx, pid, ctl.Signal)
		case "resize":
			sb.Resize(ctx, pid, ctl.Cols, ctl.Rows)
		}
	}
}
