package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/coder/websocket"
	"golang.org/x/term"

	"github.com/airlockhq/airlock/api"
)

// defaultPTY is the terminal size when stdin is not a terminal.
var defaultPTY = api.PTY{Cols: 80, Rows: 24}

// execTTY runs req on a terminal in sandbox id through the exec WebSocket: stdin is forwarded
// raw (the local terminal, if stdin is one, in raw mode so that keys like ^C reach the remote
// side), the window size follows the local one, and the output goes to stdout. It returns the
// command's exit status.
func execTTY(ctx context.Context, o *clientOptions, id string, req api.ExecRequest, stdin io.Reader, stdout io.Writer) (int, error) {
	size := defaultPTY
	var fd = -1
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fd = int(f.Fd())
		if w, h, err := term.GetSize(fd); err == nil && w > 0 && h > 0 {
			size = api.PTY{Cols: uint16(min(w, 4096)), Rows: uint16(min(h, 4096))}
		}
	}
	req.PTY = &size
	u := strings.TrimRight(o.server, "/") + "/v1/sandboxes/" + url.PathEscape(id) + "/exec/ws"
	u = "ws" + strings.TrimPrefix(u, "http") // http → ws, https → wss
	h := http.Header{}
	if o.apiKey != "" {
		h.Set("Authorization", "Bearer "+o.apiKey)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		return 0, wsDialError(resp, err)
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	first, err := json.Marshal(req)
	if err != nil {
		return 0, fmt.Errorf("encode exec request: %w", err)
	}
	if err := c.Write(ctx, websocket.MessageText, first); err != nil {
		return 0, fmt.Errorf("start exec: %w", err)
	}
	if fd >= 0 {
		old, err := term.MakeRaw(fd)
		if err != nil {
			return 0, fmt.Errorf("raw terminal: %w", err)
		}
		defer term.Restore(fd, old)
		go followSize(ctx, c, fd)
	}
	// Not waited for: a terminal's stdin may never reach EOF, and the exit ends this.
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := stdin.Read(buf)
			if n > 0 && c.Write(ctx, websocket.MessageBinary, buf[:n]) != nil {
				return
			}
			if err != nil {
				c.Write(ctx, websocket.MessageText, []byte(`{"type":"eof"}`))
				return
			}
		}
	}()
	for {
		typ, data, err := c.Read(ctx)
		if err != nil {
			return 0, fmt.Errorf("exec: connection lost: %w", err)
		}
		if typ == websocket.MessageBinary {
			if len(data) > 0 {
				stdout.Write(data[1:]) // a terminal's output is all on stdout
			}
			continue
		}
		var ev api.ExecEvent
		if err := json.Unmarshal(data, &ev); err != nil {
			return 0, fmt.Errorf("exec: bad event from the server: %w", err)
		}
		switch ev.Type {
		case api.EventExit:
			c.Close(websocket.StatusNormalClosure, "")
			if ev.ExitCode == nil {
				return 0, errors.New("exec: exit without a status")
			}
			return *ev.ExitCode, nil
		case api.EventError:
			if ev.Error != nil {
				return 0, fmt.Errorf("exec: %s", ev.Error.Message)
			}
			return 0, errors.New("exec: failed")
		}
	}
}

// followSize sends the local terminal's size on every SIGWINCH until ctx ends.
func followSize(ctx context.Context, c *websocket.Conn, fd int) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGWINCH)
	defer signal.Stop(ch)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
		w, h, err := term.GetSize(fd)
		if err != nil || w <= 0 || h <= 0 {
			continue
		}
		b, _ := json.Marshal(api.WSControl{Type: "resize", Cols: uint16(min(w, 4096)), Rows: uint16(min(h, 4096))})
		if c.Write(ctx, websocket.MessageText, b) != nil {
			return
		}
	}
}

// wsDialError turns a refused upgrade's JSON error body into the API error it carries.
func wsDialError(resp *http.Response, err error) error {
	if resp == nil || resp.Body == nil {
		return fmt.Errorf("exec: %w", err)
	}
	var body api.ErrorBody
	if json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body) == nil && body.Error.Message != "" {
		return errors.New(body.Error.Message)
	}
	return fmt.Errorf("exec: %s", resp.Status)
}
