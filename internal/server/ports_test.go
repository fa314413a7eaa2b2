package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/testutil"
)

// portsRuntime makes sandboxes whose fake agent has listen's ports "listening" (see
// fakeagent.Listen): port → address of one of the test's own listeners.
type portsRuntime struct{ listen map[int]string }

func (r portsRuntime) Create(ctx context.Context, s engine.Spec) (engine.Instance, error) {
	i := &agentInstance{done: make(chan struct{})}
	for p, addr := range r.listen {
		i.agent.Listen(p, addr)
	}
	return i, nil
}

// echoRequest is what the program "in the sandbox" saw of a request.
type echoRequest struct {
	Method, Path, RawQuery, Host string
	Header                       http.Header
}

// portBackends serves, as a program in a sandbox would: HTTP that echoes the request it got
// (and a WebSocket echo at /ws), and a raw TCP echo.
func portBackends(t *testing.T) (httpAddr, tcpAddr string) {
	t.Helper()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			for {
				typ, b, err := c.Read(r.Context())
				if err != nil {
					return
				}
				c.Write(r.Context(), typ, b)
			}
		}
		http.SetCookie(w, &http.Cookie{Name: "airlock_token", Value: "planted", Path: "/"})
		http.SetCookie(w, &http.Cookie{Name: "app", Value: "1"})
		json.NewEncoder(w).Encode(echoRequest{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Host: r.Host, Header: r.Header})
	}))
	t.Cleanup(hs.Close)
	echo := testutil.ServeTCP(t, func(c net.Conn) { io.Copy(c, c) })
	return hs.Listener.Addr().String(), echo.String()
}

const portKeyA, portKeyB = "port-key-a-0123456789", "port-key-b-0123456789"

// newPortsServer serves the handler with keys A and B over an engine whose sandboxes listen on
// 8080 (HTTP) and 7000 (TCP echo), and 9090 (HTTP) for the unauthenticated port.
func newPortsServer(t *testing.T, public bool) *httptest.Server {
	t.Helper()
	httpAddr, tcpAddr := portBackends(t)
	e, err := engine.New(engine.Config{Runtime: portsRuntime{listen: map[int]string{8080: httpAddr, 8081: httpAddr, 9090: httpAddr, 7000: tcpAddr}}, PublicPorts: public})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Engine: e, APIKeys: []string{portKeyA, portKeyB}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		ts.Close()
		e.Close(context.Background())
	})
	return ts
}

// tokenOf is the token of port in info.
func tokenOf(t *testing.T, info *api.SandboxInfo, port int) string {
	t.Helper()
	for _, p := range info.Ports {
		if p.Port == port {
			return p.Token
		}
	}
	t.Fatalf("sandbox %s has no port %d: %+v", info.ID, port, info.Ports)
	return ""
}

// TestPortAccess: who reaches a port through the proxy, and what the program there learns of
// the request. The API key of the owner, the port's own token (header or query) and nothing for
// an unauthenticated port open it; a wrong token, another port's or another sandbox's token,
// another key and no credential do not; and neither the key, the token nor airlock_* cookies
// reach the program.
func TestPortAccess(t *testing.T) {
	t.Parallel()
	ts := newPortsServer(t, true)
	ctx := t.Context()
	a := airlock.New(ts.URL, portKeyA)
	sb, err := a.CreateSandbox(ctx, api.CreateSandboxRequest{Ports: []int{8080, 8081}, UnauthenticatedPorts: []int{9090}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := sb.Info(ctx) // the get answer carries the tokens too
	if err != nil {
		t.Fatal(err)
	}
	other, err := a.CreateSandbox(ctx, api.CreateSandboxRequest{Ports: []int{8080}})
	if err != nil {
		t.Fatal(err)
	}
	otherInfo, err := other.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tok, tok8081, otherTok := tokenOf(t, info, 8080), tokenOf(t, info, 8081), tokenOf(t, otherInfo, 8080)
	if len(tok) != 43 || tok == tok8081 || tok == otherTok {
		t.Fatalf("tokens %q, %q, %q: want three different 32-byte base64url tokens", tok, tok8081, otherTok)
	}
	if p := info.Ports[2]; p.Port != 9090 || !p.Unauthenticated || p.Token != "" || p.Path != "/v1/sandboxes/"+sb.ID()+"/ports/9090/" {
		t.Fatalf("unauthenticated port: got %+v", p)
	}

	base := "/v1/sandboxes/" + sb.ID() + "/ports/"
	for _, tt := range []struct {
		name    string
		path    string
		header  map[string]string
		want    int
		wantErr string // the error code of a refusal
	}{
		{name: "owner's key", path: "8080/x", header: map[string]string{"Authorization": "Bearer " + portKeyA}, want: 200},
		{name: "the port's token", path: "8080/x", header: map[string]string{api.PortTokenHeader: tok}, want: 200},
		{name: "the port's token in the query", path: "8080/x?airlock_token=" + tok, want: 200},
		{name: "no credentials", path: "8080/x", want: 401, wantErr: api.CodeUnauthenticated},
		{name: "wrong key", path: "8080/x", header: map[string]string{"Authorization": "Bearer not-a-key-0123456789"}, want: 401, wantErr: api.CodeUnauthenticated},
		{name: "another key's sandbox", path: "8080/x", header: map[string]string{"Authorization": "Bearer " + portKeyB}, want: 404, wantErr: api.CodeNotFound},
		{name: "wrong token", path: "8080/x", header: map[string]string{api.PortTokenHeader: strings.Repeat("A", 43)}, want: 401, wantErr: api.CodeUnauthenticated},
		{name: "another port's token", path: "8080/x", header: map[string]string{api.PortTokenHeader: tok8081}, want: 401, wantErr: api.CodeUnauthenticated},
		{name: "another sandbox's token", path: "8080/x", header: map[string]string{api.PortTokenHeader: otherTok}, want: 401, wantErr: api.CodeUnauthenticated},
		{name: "a wrong token beats the key", path: "8080/x", header: map[string]string{"Authorization": "Bearer " + portKeyA, api.PortTokenHeader: "x"}, want: 401, wantErr: api.CodeUnauthenticated},
		{name: "unauthenticated port", path: "9090/x", want: 200},
		{name: "a port not exposed needs the key", path: "8081/x", want: 401, wantErr: api.CodeUnauthenticated},
		{name: "nothing listens", path: "8082/x", header: map[string]string{"Authorization": "Bearer " + portKeyA}, want: 503, wantErr: api.CodeUnavailable},
		{name: "bad port", path: "0/x", header: map[string]string{"Authorization": "Bearer " + portKeyA}, want: 400, wantErr: api.CodeInvalidArgument},
		{name: "not a port", path: "http/x", header: map[string]string{"Authorization": "Bearer " + portKeyA}, want: 400, wantErr: api.CodeInvalidArgument},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+base+tt.path, nil)
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			resp, err := ts.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.want {
				t.Fatalf("got HTTP %d %s, want %d", resp.StatusCode, body, tt.want)
			}
			if tt.wantErr != "" {
				var eb api.ErrorBody
				if json.Unmarshal(body, &eb) != nil || eb.Error.Code != tt.wantErr {
					t.Fatalf("got %s, want error code %s", body, tt.wantErr)
				}
				return
			}
			var got echoRequest
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatalf("got %s: %v", body, err)
			}
			if got.Path != "/x" || got.RawQuery != "" {
				t.Errorf("the program got path %q query %q, want /x and no query (the prefix and the token stripped)", got.Path, got.RawQuery)
			}
		})
	}

	t.Run("headers not forwarded", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+base+"8080/a%2Fb/c?k=v&airlock_token="+tok, strings.NewReader("body"))
		req.Header.Set("Authorization", "Bearer "+portKeyA)
		req.Header.Set(api.PortTokenHeader, tok)
		req.Header.Set("Cookie", "airlock_token="+tok+"; app=1; airlock_session=s")
		req.Header.Set("X-Forwarded-For", "6.6.6.6") // a client's claim is not passed on as the truth
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got echoRequest
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 {
			t.Fatalf("got HTTP %d, %v", resp.StatusCode, err)
		}
		for _, h := range []string{"Authorization", api.PortTokenHeader} {
			if v := got.Header.Get(h); v != "" {
				t.Errorf("the program got %s: %q, want none", h, v)
			}
		}
		if c := got.Header.Get("Cookie"); c != "app=1" {
			t.Errorf("the program got Cookie %q, want app=1 only", c)
		}
		if strings.Contains(got.RawQuery, tok) || got.RawQuery != "k=v" || got.Path != "/a/b/c" || got.Method != "POST" {
			t.Errorf("the program got %s %q ? %q, want POST /a/b/c ? k=v", got.Method, got.Path, got.RawQuery)
		}
		if got.Host != "localhost:8080" || got.Header.Get("X-Forwarded-Prefix") != base+"8080" ||
			got.Header.Get("X-Forwarded-Host") == "" || strings.Contains(got.Header.Get("X-Forwarded-For"), "6.6.6.6") {
			t.Errorf("the program got Host %q and X-Forwarded %v", got.Host, got.Header)
		}
		for _, c := range resp.Cookies() {
			if strings.HasPrefix(c.Name, "airlock_") {
				t.Errorf("the program set cookie %s through the proxy", c.Name)
			}
		}
		if len(resp.Cookies()) != 1 {
			t.Errorf("got cookies %v, want the program's own app=1", resp.Cookies())
		}
	})

	t.Run("websocket through the proxy", func(t *testing.T) {
		u := strings.Replace(ts.URL, "http", "ws", 1) + base + "8080/ws"
		c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{api.PortTokenHeader: {tok}}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		for i := range 3 {
			msg := "hello " + strconv.Itoa(i)
			if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			_, got, err := c.Read(ctx)
			if err != nil || string(got) != msg {
				t.Fatalf("got %q, %v; want %q", got, err, msg)
			}
		}
		c.Close(websocket.StatusNormalClosure, "")
	})

	t.Run("raw tunnel through the SDK", func(t *testing.T) {
		conn, err := sb.DialPort(ctx, 7000)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		echo(t, conn)
		if _, err := sb.DialPort(ctx, 7001); !errors.Is(err, api.ErrUnavailable) {
			t.Errorf("a port nothing listens on: got %v, want unavailable", err)
		}
	})

	t.Run("websocket tunnel with a token", func(t *testing.T) {
		otherTunnel := "/v1/sandboxes/" + sb.ID() + "/tunnels/7000"
		if _, resp, err := websocket.Dial(ctx, strings.Replace(ts.URL, "http", "ws", 1)+otherTunnel, &websocket.DialOptions{HTTPHeader: http.Header{api.PortTokenHeader: {tok}}}); err == nil || resp == nil || resp.StatusCode != 401 {
			t.Fatalf("port 8080's token on port 7000: got %v, want 401", err)
		}
		c, _, err := websocket.Dial(ctx, strings.Replace(ts.URL, "http", "ws", 1)+otherTunnel, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + portKeyA}}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		echo(t, websocket.NetConn(ctx, c, websocket.MessageBinary))
	})
}

// echo checks that conn echoes what it is sent.
func echo(t *testing.T, conn net.Conn) {
	t.Helper()
	for _, msg := range []string{"ping", strings.Repeat("x", 100<<10)} {
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
			t.Fatalf("echo of %d bytes: got %d bytes, %v", len(msg), len(got), err)
		}
	}
}

// TestPublicPortsOff: without the operator's consent, an unauthenticated port is refused.
func TestPublicPortsOff(t *testing.T) {
	t.Parallel()
	ts := newPortsServer(t, false)
	_, err := airlock.New(ts.URL, portKeyA).CreateSandbox(t.Context(), api.CreateSandboxRequest{UnauthenticatedPorts: []int{9090}})
	if !errors.Is(err, api.ErrInvalidArgument) || !strings.Contains(err.Error(), "--public-ports") {
		t.Fatalf("got %v, want invalid_argument naming --public-ports", err)
	}
	for _, req := range []api.CreateSandboxRequest{{Ports: []int{0}}, {Ports: []int{8080, 8080}}, {Ports: make([]int, 33)}} {
		if _, err := airlock.New(ts.URL, portKeyA).CreateSandbox(t.Context(), req); !errors.Is(err, api.ErrInvalidArgument) {
			t.Errorf("ports %v: got %v, want invalid_argument", req.Ports, err)
		}
	}
}
