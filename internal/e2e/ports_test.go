package e2e

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

const portsKey = "e2e-ports-key-0123456789"

// wsEchoServer is a WebSocket echo server in the Python standard library only (the handshake
// with hashlib and base64), as a program in a sandbox might run.
const wsEchoServer = `
import socket, hashlib, base64, struct, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8081))
s.listen(8)
def handle(c):
    data = b""
    while b"\r\n\r\n" not in data:
        data += c.recv(4096)
    head = data.split(b"\r\n\r\n")[0].decode()
    key = [l.split(":", 1)[1].strip() for l in head.split("\r\n") if l.lower().startswith("sec-websocket-key")][0]
    acc = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % acc).encode())
    f = c.makefile("rb")
    while True:
        h = f.read(2)
        if len(h) < 2:
            return
        op, n = h[0] & 15, h[1] & 127
        if n == 126:
            n = struct.unpack(">H", f.read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", f.read(8))[0]
        mask = f.read(4) if h[1] & 128 else b"\0\0\0\0"
        p = bytes(b ^ mask[i % 4] for i, b in enumerate(f.read(n)))
        if op == 8:
            c.sendall(b"\x88\x02" + p[:2] if len(p) >= 2 else b"\x88\x00")
            return
        if op in (1, 2):
            hdr = bytes([0x80 | op])
            if len(p) < 126:
                hdr += bytes([len(p)])
            elif len(p) < 65536:
                hdr += bytes([126]) + struct.pack(">H", len(p))
            else:
                hdr += bytes([127]) + struct.pack(">Q", len(p))
            c.sendall(hdr + p)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
`

// headersServer answers every GET with the request's headers and path, as it received them.
const headersServer = `
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        b = (str(self.headers) + "PATH " + self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", 8082), H).serve_forever()
`

// get does a GET with the header pairs and returns the status and body.
func get(t *testing.T, u string, header ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestPortsThroughTheDaemon: in a sandbox whose network is blocked, servers a program starts
// are reached through the daemon: HTTP with the key or the port's token (and refused without),
// a WebSocket echo, and a port-forward; the program never sees the key or the token; and open
// tunnels end with the sandbox.
func TestPortsThroughTheDaemon(t *testing.T) {
	base := newAPIServer(t, engine.Config{ScratchBytes: 64 << 20}, portsKey).url
	ctx := t.Context()
	c := airlock.New(base, portsKey)
	sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{Ports: []int{8080, 8082}, Timeout: 120})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Terminate(context.WithoutCancel(ctx))
	info, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !info.BlockNetwork || len(info.Ports) != 2 || info.Ports[0].Token == "" || info.Ports[1].Port != 8082 {
		t.Fatalf("got %+v; want a network-blocked sandbox with tokens for ports 8080 and 8082", info)
	}
	token, token8082 := info.Ports[0].Token, info.Ports[1].Token
	if err := sb.WriteFile(ctx, "/workspace/hello.txt", strings.NewReader("hi")); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{
		{"python3", "-m", "http.server", "8080", "--directory", "/workspace"},
		{"python3", "-c", wsEchoServer},
		{"python3", "-c", headersServer},
	} {
		p, err := sb.Exec(ctx, cmd...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Kill(); p.Wait() })
	}
	url := sb.PortURL(8080)
	waitFor(t, "python3 -m http.server to answer through the daemon", func() bool {
		code, _ := get(t, url, "Authorization", "Bearer "+portsKey)
		return code == 200
	})

	t.Run("http", func(t *testing.T) {
		if code, body := get(t, url, "Authorization", "Bearer "+portsKey); code != 200 || !strings.Contains(body, "hello.txt") {
			t.Errorf("with the key: got %d %q, want 200 and the listing", code, body)
		}
		if code, body := get(t, url); code != 401 {
			t.Errorf("without a key or token: got %d %q, want 401", code, body)
		}
		if code, _ := get(t, url, api.PortTokenHeader, token[:40]+"AAA"); code != 401 {
			t.Errorf("with a wrong token: got %d, want 401", code)
		}
		if code, body := get(t, url, api.PortTokenHeader, token); code != 200 || !strings.Contains(body, "hello.txt") {
			t.Errorf("with the port's token: got %d %q, want 200 and the listing", code, body)
		}
		if code, body := get(t, url+"hello.txt?"+api.PortTokenQuery+"="+token); code != 200 || body != "hi" {
			t.Errorf("with the token in the query: got %d %q, want 200 hi", code, body)
		}
		if code, _ := get(t, sb.PortURL(8083), "Authorization", "Bearer "+portsKey); code != 503 {
			t.Errorf("a port nothing listens on: got %d, want 503", code)
		}
	})

	t.Run("no credential reaches the program", func(t *testing.T) {
		purl := sb.PortURL(8082)
		var code int
		var body string
		waitFor(t, "the headers server", func() bool {
			code, body = get(t, purl+"p?q=1&"+api.PortTokenQuery+"="+token8082, "Authorization", "Bearer "+portsKey,
				"Cookie", "airlock_session="+portsKey+"; mine=1")
			return code == 200
		})
		if strings.Contains(body, portsKey) || strings.Contains(body, token8082) || strings.Contains(strings.ToLower(body), "authorization") ||
			strings.Contains(body, "airlock_") || !strings.Contains(body, "mine=1") || !strings.Contains(body, "PATH /p?q=1") {
			t.Errorf("the program received:\n%s\nwant no key, no Authorization, no airlock_* cookie or token; its own cookie and /p?q=1", body)
		}
		code, body = get(t, purl, api.PortTokenHeader, token) // 8080's token opens 8080 only
		if code != 401 {
			t.Errorf("port 8080's token on port 8082: got %d %q, want 401", code, body)
		}
	})

	t.Run("websocket through the proxy", func(t *testing.T) {
		u := strings.Replace(sb.PortURL(8081), "http", "ws", 1)
		var ws *websocket.Conn
		waitFor(t, "the WebSocket echo server", func() bool {
			var err error
			ws, _, err = websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + portsKey}}})
			return err == nil
		})
		defer ws.CloseNow()
		ws.SetReadLimit(1 << 20)
		for _, msg := range []string{"hello", strings.Repeat("z", 70000)} {
			if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			_, got, err := ws.Read(ctx)
			if err != nil || string(got) != msg {
				t.Fatalf("echo of %d bytes: got %d, %v", len(msg), len(got), err)
			}
		}
		ws.Close(websocket.StatusNormalClosure, "")
	})

	t.Run("port-forward", func(t *testing.T) {
		local := freeAddr(t)
		_, lport, _ := net.SplitHostPort(local)
		exe, _ := os.Executable()
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), "AIRLOCK_E2E_DAEMON=sandbox port-forward --server "+base+" --api-key "+portsKey+" "+sb.ID()+" 8080:"+lport)
		out, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill()
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || !strings.Contains(line, local) {
			t.Fatalf("port-forward printed %q, %v; want the local address %s", line, err, local)
		}
		for range 2 { // one tunnel per connection
			conn, err := net.Dial("tcp", local)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(conn, "GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
			resp, err := io.ReadAll(conn)
			conn.Close()
			if err != nil || !strings.HasPrefix(string(resp), "HTTP/1.0 200") || !strings.HasSuffix(string(resp), "\r\n\r\nhi") {
				t.Fatalf("through port-forward: got %q, %v", resp, err)
			}
		}
		cmd.Process.Signal(syscall.SIGINT) // Ctrl-C
		if err := cmd.Wait(); err != nil {
			t.Errorf("port-forward after Ctrl-C: %v, want a clean exit", err)
		}
		ln, err := net.Listen("tcp", local) // nothing left listening
		if err != nil {
			t.Fatalf("the local port is still taken after port-forward ended: %v", err)
		}
		ln.Close()
	})

	t.Run("an open tunnel ends with the sandbox", func(t *testing.T) {
		conn, err := sb.DialPort(ctx, 8080)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := sb.Terminate(ctx); err != nil {
			t.Fatal(err)
		}
		readDone := make(chan error, 1)
		go func() { _, err := io.ReadAll(conn); readDone <- err }()
		waitFor(t, "the tunnel to end with its sandbox", func() bool {
			select {
			case <-readDone:
				return true
			default:
				return false
			}
		})
		if _, err := sb.DialPort(ctx, 8080); !errors.Is(err, api.ErrGone) {
			t.Errorf("a tunnel to an ended sandbox: got %v, want gone", err)
		}
	})
}

// BenchmarkPortProxy measures a GET of a small file from python3 -m http.server: direct on
// the host (the baseline, in the same run) and in a network-blocked sandbox through the daemon's
// proxy and the agent's tunnel. python's server closes each connection, so both pay a new TCP
// connection (and the proxy a new tunnel) per request; the client keeps its connection to the
// daemon.
func BenchmarkPortProxy(b *testing.B) {
	dir := b.TempDir()
	os.WriteFile(dir+"/f.txt", []byte("hello"), 0o644)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	host := exec.Command("python3", "-m", "http.server", port, "--bind", "127.0.0.1", "--directory", dir)
	if err := host.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { host.Process.Kill(); host.Wait() })

	a := newAPIServer(b, engine.Config{ScratchBytes: 64 << 20}, portsKey)
	ctx := b.Context()
	sb, err := airlock.New(a.url, portsKey).CreateSandbox(ctx, api.CreateSandboxRequest{Timeout: 600})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sb.Terminate(context.Background()) })
	if err := sb.WriteFile(ctx, "/workspace/f.txt", strings.NewReader("hello")); err != nil {
		b.Fatal(err)
	}
	p, err := sb.Exec(ctx, "python3", "-m", "http.server", "8080", "--directory", "/workspace")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Kill(); p.Wait() })
	fetch := func(u string) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		req.Header.Set("Authorization", "Bearer "+portsKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != "hello" {
			return errors.New(resp.Status + " " + string(body))
		}
		return nil
	}
	for _, bc := range []struct{ name, url string }{
		{"direct", "http://" + addr + "/f.txt"},
		{"proxy", sb.PortURL(8080) + "f.txt"},
	} {
		deadline := time.Now().Add(15 * time.Second)
		for fetch(bc.url) != nil {
			if time.Now().After(deadline) {
				b.Fatalf("%s: %v", bc.name, fetch(bc.url))
			}
			time.Sleep(20 * time.Millisecond)
		}
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if err := fetch(bc.url); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
