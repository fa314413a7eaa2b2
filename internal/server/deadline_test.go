package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/engine"
)

// cancelRuntime is blockingRuntime, except that a cancelled request is told apart: its Create
// returns the context's error, which the server answers with nothing (the client is gone).
type cancelRuntime struct{ blockingRuntime }

func (c *cancelRuntime) Create(ctx context.Context, s engine.Spec) (engine.Instance, error) {
	c.entered <- struct{}{}
	select {
	case <-c.release:
		return nil, errors.New("fake runtime creates nothing")
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

func newDeadlineServer(t *testing.T, read, write time.Duration) (*httptest.Server, *cancelRuntime) {
	t.Helper()
	rt := &cancelRuntime{blockingRuntime{release: make(chan struct{}), entered: make(chan struct{}, 1)}}
	e, err := engine.New(engine.Config{Runtime: rt, MaxConcurrent: 1, MaxQueue: 1})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Engine: e, ReadTimeout: read, WriteTimeout: write})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		select {
		case <-rt.release:
		default:
			close(rt.release)
		}
		ts.Close()
	})
	return ts, rt
}

// TestSlowBodyIsCut: a client that sends headers and then trickles (here: withholds) its body
// gets a 400 and loses the connection after the read timeout, instead of holding it forever.
func TestSlowBodyIsCut(t *testing.T) {
	t.Parallel()
	ts, _ := newDeadlineServer(t, 200*time.Millisecond, time.Minute)
	c, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second)) // a hang guard
	fmt.Fprintf(c, "POST /v1/execute HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"code\":")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to a withheld body: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 400 || !strings.Contains(string(b), "read timeout") {
		t.Fatalf("got %d %s, want 400 naming the read timeout", resp.StatusCode, b)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the cut body: got %v, want EOF", err)
	}
}

// TestLongHandlerOutlivesTimeouts: the read and write timeouts bound the body's arrival and the
// answer's writing, not the handler: a one-shot waiting past both still answers normally (a
// write deadline started with the request, as http.Server.WriteTimeout does, would lose it).
func TestLongHandlerOutlivesTimeouts(t *testing.T) {
	t.Parallel()
	const timeout = 100 * time.Millisecond
	ts, rt := newDeadlineServer(t, timeout, timeout)
	type answer struct {
		status int
		body   string
		err    error
	}
	done := make(chan answer, 1)
	go func() {
		resp, err := ts.Client().Post(ts.URL+"/v1/execute", "application/json", strings.NewReader(`{"code":"1"}`))
		if err != nil {
			done <- answer{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- answer{status: resp.StatusCode, body: string(b)}
	}()
	<-rt.entered
	// The property under test is time passing: the request outlives both deadlines.
	time.Sleep(3 * timeout)
	close(rt.release)
	a := <-done
	if a.err != nil || a.status != 500 || !strings.Contains(a.body, "internal error") {
		t.Fatalf("got %d %q %v, want the fake runtime's 500 answer (not a request cancelled by a deadline)", a.status, a.body, a.err)
	}
}
