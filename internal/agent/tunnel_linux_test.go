package agent

import (
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/agentclient"
	"github.com/airlockhq/airlock/internal/testutil"
)

// serveTunnels serves only the agent's tunnel route, as Serve does (HTTP/2 cleartext on a unix
// socket), with at most slots tunnels, and returns the daemon's client of it. Closing the
// returned func ends the server and waits for the tunnels, as Serve's shutdown does.
func serveTunnels(t *testing.T, slots int) (*agentclient.Client, func()) {
	t.Helper()
	a := &Agent{tunnelSlots: make(chan struct{}, slots)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+agentpb.TunnelPath+"{port}", a.handleTunnel)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &p}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ln) })
	var once sync.Once
	stop := func() {
		once.Do(func() {
			srv.Close()
			wg.Wait()
			a.closeTunnels()
		})
	}
	t.Cleanup(stop)
	c := agentclient.Dial(sock)
	t.Cleanup(c.CloseIdleConnections)
	return c, stop
}

// listenTCP serves handle for each connection to a loopback port of its own.
func listenTCP(t *testing.T, handle func(net.Conn)) int {
	return testutil.ServeTCP(t, handle).Port
}

// TestTunnel: bytes go both ways as they are sent, a half-close reaches the program, the
// program's close ends the caller's reads, a refused port and the bound are clear errors, and
// shutting the agent down ends open tunnels instead of waiting for them.
func TestTunnel(t *testing.T) {
	t.Parallel()
	c, stop := serveTunnels(t, 2)
	ctx := t.Context()
	// Echoes each line at once; at EOF says how many bytes it read, then closes.
	port := listenTCP(t, func(conn net.Conn) {
		n, _ := io.Copy(conn, conn)
		io.WriteString(conn, "read "+strconv.Itoa(int(n)))
	})

	t.Run("full duplex and half-close", func(t *testing.T) {
		conn, err := c.DialPort(ctx, port)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		total := 0
		for _, msg := range []string{"a", strings.Repeat("b", 1<<20)} {
			if _, err := conn.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg)) // read before writing more: the echo is not buffered up
			if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
				t.Fatalf("echo of %d bytes: %v", len(msg), err)
			}
			total += len(msg)
		}
		if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		rest, err := io.ReadAll(conn) // ends: the program closed after its answer
		if want := "read " + strconv.Itoa(total); err != nil || string(rest) != want {
			t.Fatalf("after half-close: got %q, %v; want %q", rest, err, want)
		}
	})

	t.Run("nothing listens", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		free := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		_, err := c.DialPort(ctx, free)
		if !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "nothing listens on port "+strconv.Itoa(free)) {
			t.Fatalf("got %v, want unavailable: nothing listens on port %d", err, free)
		}
		if _, err := c.DialPort(ctx, 70000); !errors.Is(err, api.ErrInvalidArgument) {
			t.Fatalf("port 70000: got %v, want invalid argument", err)
		}
	})

	t.Run("bound and shutdown", func(t *testing.T) {
		var open []net.Conn
		for range 2 {
			conn, err := c.DialPort(ctx, port)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			open = append(open, conn)
		}
		if _, err := c.DialPort(ctx, port); !errors.Is(err, api.ErrResourceExhausted) {
			t.Fatalf("a third tunnel of two: got %v, want resource exhausted", err)
		}
		stop() // returns only once the open tunnels' handlers and uploads have ended
		for _, conn := range open {
			io.ReadAll(conn) // ends (with EOF or an error): the agent has let the tunnel go
		}
	})
}
