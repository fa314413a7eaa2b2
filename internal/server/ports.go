package server

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// proxyMethods are the methods the port proxy forwards (GET covers HEAD).
var proxyMethods = []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions}

// portRoutes registers the routes that reach ports of a sandbox: the HTTP (and WebSocket)
// reverse proxy and the raw tunnel. They authenticate themselves (portAccess): an API key, a
// port's token, or nothing for an unauthenticated port.
func (s *Server) portRoutes() {
	s.portTransport = &http.Transport{
		// The "address" is the sandbox's id and the port (see handlePort); the owner rides in
		// the dial's context, which keeps the request's values.
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			id, p, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			port, _ := strconv.Atoi(p)
			return s.cfg.Engine.DialPort(ctx, id, port)
		},
		DisableCompression:  true, // pass the program's encoding through untouched
		MaxIdleConnsPerHost: 8,
		// An idle pooled tunnel keeps its sandbox active (engine.DialPort): let it go soon.
		IdleConnTimeout: 10 * time.Second,
		// Per sandbox and port, below the agent's own tunnel bound; more requests wait.
		MaxConnsPerHost:       64,
		ResponseHeaderTimeout: 0, // a program may take its time; the client's deadline is its own
	}
	for _, m := range proxyMethods {
		s.handle(m+" /v1/sandboxes/{id}/ports/{port}/{rest...}", false, s.handlePort)
	}
	s.handle("GET /v1/sandboxes/{id}/ports/{port}", false, s.handlePortRoot)
	s.handle("GET /v1/sandboxes/{id}/tunnels/{port}", false, s.handleTunnel)
}

// portOf parses the route's port.
func portOf(r *http.Request) (int, error) {
	p, err := strconv.Atoi(r.PathValue("port"))
	if err != nil || p < 1 || p > 65535 {
		return 0, api.Errorf(api.ErrInvalidArgument, "port %q must be 1…65535", r.PathValue("port"))
	}
	return p, nil
}

// portAccess authorizes a request to port of sandbox id and returns its context carrying the
// sandbox's owner, and a release to call when the request ends. A port's token (header, or
// query for browsers) decides alone when present; else an API key (401 if wrong; another key's
// sandbox is 404, as everywhere); else the port must be unauthenticated. A request with a key
// counts in that key's in-flight bound, as every request with a key does.
func (s *Server) portAccess(r *http.Request, id string, port int) (context.Context, func(), error) {
	token := r.Header.Get(api.PortTokenHeader)
	if token == "" {
		token = r.URL.Query().Get(api.PortTokenQuery)
	}
	if token != "" {
		owner, err := s.cfg.Engine.PortAccess(id, port, token)
		if err != nil {
			return nil, nil, err
		}
		return engine.WithOwner(r.Context(), owner), func() {}, nil
	}
	if r.Header.Get("Authorization") != "" || len(s.keys) == 0 {
		owner, ok := s.authorize(r)
		if !ok {
			return nil, nil, api.ErrUnauthenticated
		}
		release := func() {}
		if len(s.keys) > 0 {
			if !s.enter(owner) {
				return nil, nil, errTooManyRequests
			}
			release = func() { s.leave(owner) }
		}
		ctx := engine.WithOwner(r.Context(), owner)
		if _, err := s.cfg.Engine.GetSandbox(ctx, id); err != nil {
			release()
			return nil, nil, err
		}
		return ctx, release, nil
	}
	owner, err := s.cfg.Engine.PortAccess(id, port, "")
	if err != nil {
		return nil, nil, err
	}
	return engine.WithOwner(r.Context(), owner), func() {}, nil
}

// portPrefix is the path the proxy strips: what the program in the sandbox sees starts after it.
func portPrefix(id string, port int) string {
	return "/v1/sandboxes/" + id + "/ports/" + strconv.Itoa(port)
}

// handlePortRoot sends /…/ports/{port} to /…/ports/{port}/, where relative links work.
func (s *Server) handlePortRoot(w http.ResponseWriter, r *http.Request) error {
	u := *r.URL
	u.Path, u.RawPath = r.URL.Path+"/", ""
	http.Redirect(w, r, u.RequestURI(), http.StatusMovedPermanently)
	return nil
}

// handlePort forwards a request to a port of a sandbox, WebSocket upgrades included.
func (s *Server) handlePort(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	port, err := portOf(r)
	if err != nil {
		return err
	}
	ctx, release, err := s.portAccess(r, id, port)
	if err != nil {
		return err
	}
	defer release()
	// The path after the prefix, as the client escaped it: the segments before it are the
	// route's (id, port) whatever their escaping, so count them rather than trim a string.
	segs := strings.SplitN(r.URL.EscapedPath(), "/", 7) // "", v1, sandboxes, id, ports, port, rest
	rawRest := "/"
	if len(segs) == 7 {
		rawRest += segs[6]
	}
	rest, err := url.PathUnescape(rawRest)
	if err != nil {
		return api.Errorf(api.ErrInvalidArgument, "path is not validly escaped")
	}
	query := r.URL.Query()
	query.Del(api.PortTokenQuery)
	rawQuery := r.URL.RawQuery
	if _, had := r.URL.Query()[api.PortTokenQuery]; had {
		rawQuery = query.Encode()
	}
	var proxyErr error
	rp := &httputil.ReverseProxy{
		Transport:     s.portTransport,
		FlushInterval: -1, // as the program writes: server-sent events, long polls
		Rewrite: func(pr *httputil.ProxyRequest) {
			out := pr.Out
			out.URL.Scheme, out.URL.Host = "http", id+":"+strconv.Itoa(port)
			out.URL.Path, out.URL.RawPath, out.URL.RawQuery = rest, rawRest, rawQuery
			// The program sees itself addressed as it would be from inside (dev servers check
			// Host against localhost); where the client really went is in X-Forwarded-*.
			out.Host = "localhost:" + strconv.Itoa(port)
			pr.SetXForwarded()
			out.Header.Set("X-Forwarded-Prefix", portPrefix(id, port))
			stripCredentials(out.Header)
		},
		ModifyResponse: func(resp *http.Response) error {
			// A program may not plant airlock_* cookies in the browsers of the daemon's users.
			keep := resp.Header.Values("Set-Cookie")[:0:0]
			for _, c := range resp.Header.Values("Set-Cookie") {
				if !strings.HasPrefix(strings.TrimSpace(c), "airlock_") {
					keep = append(keep, c)
				}
			}
			resp.Header.Del("Set-Cookie")
			for _, c := range keep {
				resp.Header.Add("Set-Cookie", c)
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) { proxyErr = err },
		ErrorLog:     slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
	}
	rp.ServeHTTP(w, r.WithContext(ctx))
	if proxyErr == nil {
		return nil
	}
	var ae *api.Error
	if errors.As(proxyErr, &ae) || errors.Is(proxyErr, context.Canceled) {
		return proxyErr
	}
	return api.Errorf(api.ErrUnavailable, "port %d of sandbox %s did not answer: %s", port, id, proxyErrText(proxyErr))
}

// proxyErrText says what went wrong between the proxy and the program, without host detail.
func proxyErrText(err error) string {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "the connection closed before an answer"
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	}
	return "the answer was not valid HTTP"
}

// stripCredentials removes from h what must never reach a program in a sandbox: the API key,
// a port token, and any airlock_* cookie.
func stripCredentials(h http.Header) {
	h.Del("Authorization")
	h.Del(api.PortTokenHeader)
	var keep []string
	for _, line := range h.Values("Cookie") {
		for _, c := range strings.Split(line, ";") {
			if c = strings.TrimSpace(c); c != "" && !strings.HasPrefix(c, "airlock_") {
				keep = append(keep, c)
			}
		}
	}
	h.Del("Cookie")
	if len(keep) > 0 {
		h.Set("Cookie", strings.Join(keep, "; "))
	}
}

// handleTunnel carries a TCP connection to a port of a sandbox: raw after an HTTP/1.1 upgrade
// to api.TunnelProtocol, or as WebSocket binary messages.
func (s *Server) handleTunnel(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	port, err := portOf(r)
	if err != nil {
		return err
	}
	proto := strings.ToLower(r.Header.Get("Upgrade"))
	if proto != api.TunnelProtocol && proto != "websocket" {
		return api.Errorf(api.ErrInvalidArgument, "a tunnel needs Connection: Upgrade with Upgrade: %s or websocket", api.TunnelProtocol)
	}
	ctx, release, err := s.portAccess(r, id, port)
	if err != nil {
		return err
	}
	defer release()
	// Dialled before the upgrade, so that a refusal is a normal JSON error.
	conn, err := s.cfg.Engine.DialPort(ctx, id, port)
	if err != nil {
		return err
	}
	defer conn.Close()
	if proto == "websocket" {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			return nil // Accept has answered the client
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
		splice(nc, conn)
		c.Close(websocket.StatusNormalClosure, "")
		return nil
	}
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return api.Errorf(api.ErrInvalidArgument, "a raw tunnel needs HTTP/1.1 (use Upgrade: websocket over HTTP/2)")
	}
	defer client.Close()
	client.SetDeadline(time.Time{}) // the tunnel lives as long as both ends want
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + api.TunnelProtocol + "\r\n\r\n")
	if brw.Flush() != nil {
		return nil
	}
	splice(&bufferedConn{Conn: client, r: brw.Reader}, conn)
	return nil
}

// bufferedConn reads first what the server had buffered from the client.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func (c *bufferedConn) CloseWrite() error { return closeWrite(c.Conn) }

// splice copies both ways between the client and the sandbox's port until the port's side
// ends (the agent's tunnel then ends as a whole: see the agent's tunnel protocol), passing on a
// client's half-close. Both are closed when it returns.
func splice(client, sandbox net.Conn) {
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := io.Copy(sandbox, client); err == nil {
			closeWrite(sandbox)
		} else {
			sandbox.Close()
		}
	})
	io.Copy(client, sandbox)
	client.Close()
	sandbox.Close()
	wg.Wait()
}

// closeWrite half-closes c if it can, else closes it.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// exposedPorts converts a create request's ports.
func exposedPorts(tokened, public []int) []engine.Port {
	var out []engine.Port
	for _, p := range tokened {
		out = append(out, engine.Port{Port: p})
	}
	for _, p := range public {
		out = append(out, engine.Port{Port: p, Public: true})
	}
	return out
}

// portInfos shows a sandbox's exposed ports with their tokens.
func portInfos(id string, ports []engine.Port) []api.PortInfo {
	var out []api.PortInfo
	for _, p := range ports {
		out = append(out, api.PortInfo{Port: p.Port, Token: p.Token, Unauthenticated: p.Public, Path: portPrefix(id, p.Port) + "/"})
	}
	return out
}
