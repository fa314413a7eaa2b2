package airlock_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
)

const testKey = "test-key-0123456789abcdef"

// TestMain fails the run if a Process left a goroutine behind (its event reader or stdin
// request) after every test has waited for its processes.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := sdkGoroutines(); leaked != "" {
			fmt.Fprintf(os.Stderr, "leaked SDK goroutines:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

func sdkGoroutines() string {
	var leaked []string
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		leaked = leaked[:0]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "airlockhq/airlock.(*Process).read") || strings.Contains(g, "airlockhq/airlock.(*stdinWriter)") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
	}
}

func setup(t *testing.T) (*daemon, *airlock.Client) {
	t.Helper()
	d, err := newDaemon(testKey)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d, airlock.New(d.URL+"/", testKey)
}

func create(t *testing.T, c *airlock.Client) *airlock.Sandbox {
	t.Helper()
	sb, err := c.CreateSandbox(t.Context(), api.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

func TestCreateSandbox(t *testing.T) {
	t.Parallel()
	f, c := setup(t)
	block := true
	sb, err := c.CreateSandbox(t.Context(), api.CreateSandboxRequest{Image: "host", Timeout: 60,
		IdleTimeout: 10, CPU: 1, MemoryMB: 512, Workdir: "/workspace/app", BlockNetwork: &block,
		Env: map[string]string{"A": "1"}, Tags: map[string]string{"team": "x"}})
	if err != nil {
		t.Fatal(err)
	}
	reqs := f.requests("POST", "/v1/sandboxes")
	if len(reqs) != 1 {
		t.Fatalf("got %d create requests, want 1", len(reqs))
	}
	r := reqs[0]
	if got := r.Header.Get("Authorization"); got != "Bearer "+testKey {
		t.Errorf("Authorization = %q", got)
	}
	if got := r.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type = %q", got)
	}
	var body map[string]any
	if err := json.Unmarshal([]byte(r.Body), &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"image": "host", "timeout": 60.0, "idle_timeout": 10.0, "cpu": 1.0,
		"memory_mb": 512.0, "workdir": "/workspace/app", "block_network": true,
		"env": map[string]any{"A": "1"}, "tags": map[string]any{"team": "x"}}
	if !reflect.DeepEqual(body, want) {
		t.Errorf("create body = %v, want %v", body, want)
	}

	info, err := sb.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.ID == "" || info.ID != sb.ID() || info.Status != api.StatusRunning || info.Workdir != "/workspace/app" || info.MemoryMB != 512 {
		t.Errorf("Info() = %+v", info)
	}
}

func TestSandboxLifecycle(t *testing.T) {
	t.Parallel()
	_, c := setup(t)
	sb := create(t, c)
	got, err := c.Sandbox(t.Context(), sb.ID())
	if err != nil || got.ID() != sb.ID() {
		t.Fatalf("Sandbox(%s) = %v, %v", sb.ID(), got, err)
	}
	if err := sb.Terminate(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Sandbox(t.Context(), sb.ID()); !airlock.IsGone(err) {
		t.Errorf("Sandbox(terminated) error = %v, want gone", err)
	}
	if err := sb.Terminate(t.Context()); !airlock.IsGone(err) {
		t.Errorf("second Terminate error = %v, want gone", err)
	}
	if _, err := c.Sandbox(t.Context(), "sb-nope"); !airlock.IsNotFound(err) {
		t.Errorf("Sandbox(unknown) error = %v, want not found", err)
	}
	if _, err := sb.Run(t.Context(), api.ExecRequest{Cmd: []string{"echo"}}); !airlock.IsGone(err) {
		t.Errorf("Run on ended sandbox error = %v, want gone", err)
	}
}

func TestListSandboxes(t *testing.T) {
	t.Parallel()
	f, c := setup(t)
	var id []string
	for _, tags := range []map[string]string{{"env": "prod", "team": "a"}, {"env": "prod"}, nil} {
		sb, err := c.CreateSandbox(t.Context(), api.CreateSandboxRequest{Tags: tags})
		if err != nil {
			t.Fatal(err)
		}
		id = append(id, sb.ID())
	}
	tests := []struct {
		name string
		tags map[string]string
		want []string
		q    []string
	}{
		{"all", nil, id, nil},
		{"one tag", map[string]string{"env": "prod"}, id[:2], []string{"env:prod"}},
		{"two tags sorted", map[string]string{"team": "a", "env": "prod"}, id[:1], []string{"env:prod", "team:a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			list, err := c.ListSandboxes(t.Context(), tt.tags)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, s := range list {
				ids = append(ids, s.ID)
			}
			if !reflect.DeepEqual(ids, tt.want) {
				t.Errorf("ids = %v, want %v", ids, tt.want)
			}
			reqs := f.requests("GET", "/v1/sandboxes")
			if got := reqs[len(reqs)-1].Query["tag"]; !reflect.DeepEqual(got, tt.q) {
				t.Errorf("tag query = %q, want %q", got, tt.q)
			}
		})
	}
}

// failCmd prints "boom" to stderr and exits 3.
var failCmd = []string{"sh", "-c", "echo boom >&2; exit 3"}

func TestRun(t *testing.T) {
	t.Parallel()
	f, c := setup(t)
	sb := create(t, c)
	res, err := sb.Run(t.Context(), api.ExecRequest{Cmd: failCmd, Timeout: 5, StdinOpen: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 3 || res.Stderr != "boom\n" || res.Pid == 0 {
		t.Errorf("Run = %+v, want exit 3 and stderr boom", res)
	}
	r := f.requests("POST", "/exec")[0]
	if got := r.Header.Get("Accept"); got != "application/json" {
		t.Errorf("Accept = %q, want application/json", got)
	}
	var body map[string]any
	json.Unmarshal([]byte(r.Body), &body)
	if want := map[string]any{"cmd": []any{"sh", "-c", failCmd[2]}, "timeout": 5.0}; !reflect.DeepEqual(body, want) {
		t.Errorf("exec body = %v, want %v (no stdin_open for a collected run)", body, want)
	}
}

func TestExecStreams(t *testing.T) {
	t.Parallel()
	f, c := setup(t)
	sb := create(t, c)
	tests := []struct {
		name           string
		cmd            []string
		stdout, stderr string
		code           int
	}{
		{"echo", []string{"echo", "hello", "world"}, "hello world\n", "", 0},
		{"stderr and exit code", failCmd, "", "boom\n", 3},
		{"not found by the shell", []string{"sh", "-c", "nope"}, "", "sh: nope: not found\n", 127},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := sb.Exec(t.Context(), tt.cmd...)
			if err != nil {
				t.Fatal(err)
			}
			if p.Pid() == 0 {
				t.Error("Pid() = 0 after Exec returned")
			}
			stdout, stderr := readBoth(t, p)
			res, err := p.Wait()
			if err != nil {
				t.Fatal(err)
			}
			if stdout != tt.stdout || stderr != tt.stderr || res.ExitCode != tt.code || res.Pid != p.Pid() {
				t.Errorf("got stdout %q stderr %q result %+v, want %q %q exit %d", stdout, stderr, res, tt.stdout, tt.stderr, tt.code)
			}
			if code, done := p.Poll(); !done || code != tt.code {
				t.Errorf("Poll() = %d, %v after Wait", code, done)
			}
		})
	}
	// A command the agent cannot find never starts: Exec fails with the daemon's 400.
	if p, err := sb.Exec(t.Context(), "nope"); p != nil || !errors.Is(err, api.ErrInvalidArgument) {
		t.Errorf("Exec(nope) = %v, %v; want invalid_argument", p, err)
	}
	for _, r := range f.requests("POST", "/exec") {
		if got := r.Header.Get("Accept"); got != "application/x-ndjson" {
			t.Errorf("Accept = %q, want application/x-ndjson", got)
		}
		if !strings.Contains(r.Body, `"stdin_open":true`) {
			t.Errorf("exec body %s lacks stdin_open", r.Body)
		}
	}
}

// readBoth reads Stdout and Stderr concurrently to their ends.
func readBoth(t *testing.T, p *airlock.Process) (stdout, stderr string) {
	t.Helper()
	errc := make(chan string, 1)
	go func() {
		b, err := io.ReadAll(p.Stderr)
		if err != nil {
			t.Errorf("read stderr: %v", err)
		}
		errc <- string(b)
	}()
	b, err := io.ReadAll(p.Stdout)
	if err != nil {
		t.Errorf("read stdout: %v", err)
	}
	return string(b), <-errc
}

// The Modal idiom: wait first, then read. Output must be buffered, not block the stream.
func TestExecWaitBeforeRead(t *testing.T) {
	t.Parallel()
	_, c := setup(t)
	sb := create(t, c)
	const n = 450000 // seq prints 3 038 895 bytes
	p, err := sb.Exec(t.Context(), "seq", strconv.Itoa(n))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if res, err := p.Wait(); err != nil || res.ExitCode != 0 || res.Truncated {
			t.Errorf("Wait = %+v, %v", res, err)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait blocked while nobody read stdout")
	}
	b, err := io.ReadAll(p.Stdout)
	if want := seqOutput(n); err != nil || string(b) != want {
		t.Errorf("read %d bytes, %v; want %d bytes of seq", len(b), err, len(want))
	}
}

// seqOutput is what seq n prints.
func seqOutput(n int) string {
	var b []byte
	for i := 1; i <= n; i++ {
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, '\n')
	}
	return string(b)
}

func TestExecOutputOverflow(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("streams 68 MiB")
	}
	_, c := setup(t)
	sb := create(t, c)
	p, err := sb.Exec(t.Context(), "seq", "9000000") // 70 888 897 bytes, more than 64 MiB
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Wait()
	if err != nil || !res.Truncated {
		t.Fatalf("Wait = %+v, %v; want Truncated", res, err)
	}
	n, err := io.Copy(io.Discard, p.Stdout)
	if !errors.Is(err, airlock.ErrOutputOverflow) || n > airlock.MaxBufferedOutput || n == 0 {
		t.Errorf("read %d bytes, %v; want ≤ MaxBufferedOutput then ErrOutputOverflow", n, err)
	}
}

// Stdin bytes must reach the program while stdin stays open, over one streamed request.
func TestExecStdinStreaming(t *testing.T) {
	t.Parallel()
	f, c := setup(t)
	sb := create(t, c)
	p, err := sb.ExecWith(t.Context(), api.ExecRequest{Cmd: []string{"cat"}, Stdin: "first\n", StdinOpen: true})
	if err != nil {
		t.Fatal(err)
	}
	out := bufio.NewReader(p.Stdout)
	for _, line := range []string{"second\n", "third\n"} {
		if _, err := io.WriteString(p.Stdin, line); err != nil {
			t.Fatal(err)
		}
	}
	var got string
	for range 3 {
		l, err := out.ReadString('\n')
		if err != nil {
			t.Fatalf("read echoed line: %v (so far %q)", err, got)
		}
		got += l
	}
	if want := "first\nsecond\nthird\n"; got != want {
		t.Errorf("echoed %q before Close, want %q", got, want)
	}
	if _, done := p.Poll(); done {
		t.Error("cat finished before stdin was closed")
	}
	if err := p.Stdin.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Stdin.Write([]byte("x")); err == nil {
		t.Error("Write after Close succeeded")
	}
	rest, _ := io.ReadAll(out)
	res, err := p.Wait()
	if err != nil || res.ExitCode != 0 || len(rest) != 0 {
		t.Errorf("Wait = %+v, %v; rest %q", res, err, rest)
	}
	reqs := f.requests("POST", "/stdin")
	if len(reqs) != 1 {
		t.Fatalf("got %d stdin requests, want 1 streamed request", len(reqs))
	}
	r := reqs[0]
	if want := "/v1/sandboxes/" + sb.ID() + "/processes/" + itoa(p.Pid()) + "/stdin"; r.Path != want {
		t.Errorf("stdin path = %s, want %s", r.Path, want)
	}
	if r.Query["eof"][0] != "true" || r.Length != -1 || r.Header.Get("Authorization") == "" {
		t.Errorf("stdin request eof=%v length=%d auth=%q; want eof=true, chunked, key", r.Query["eof"], r.Length, r.Header.Get("Authorization"))
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func TestExecStdinClose(t *testing.T) {
	t.Parallel()
	t.Run("without writing", func(t *testing.T) {
		f, c := setup(t)
		sb := create(t, c)
		p, err := sb.ExecWith(t.Context(), api.ExecRequest{Cmd: []string{"cat"}, Stdin: "only\n", StdinOpen: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Stdin.Close(); err != nil {
			t.Fatal(err)
		}
		if err := p.Stdin.Close(); err != nil {
			t.Errorf("second Close = %v", err)
		}
		b, _ := io.ReadAll(p.Stdout)
		if res, err := p.Wait(); err != nil || res.ExitCode != 0 || string(b) != "only\n" {
			t.Errorf("Wait = %+v, %v, stdout %q", res, err, b)
		}
		reqs := f.requests("POST", "/stdin")
		if len(reqs) != 1 || reqs[0].Query["eof"][0] != "true" || reqs[0].Length != 0 {
			t.Errorf("stdin requests = %+v, want one empty eof=true", reqs)
		}
	})
	t.Run("not open", func(t *testing.T) {
		f, c := setup(t)
		sb := create(t, c)
		p, err := sb.ExecWith(t.Context(), api.ExecRequest{Cmd: []string{"cat"}, Stdin: "in\n"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Stdin.Write([]byte("x")); err == nil {
			t.Error("Write to a process without StdinOpen succeeded")
		}
		if err := p.Stdin.Close(); err != nil {
			t.Errorf("Close = %v", err)
		}
		b, _ := io.ReadAll(p.Stdout)
		if res, err := p.Wait(); err != nil || res.ExitCode != 0 || string(b) != "in\n" {
			t.Errorf("Wait = %+v, %v, stdout %q", res, err, b)
		}
		if n := len(f.requests("POST", "/stdin")); n != 0 {
			t.Errorf("%d stdin requests, want 0", n)
		}
	})
	t.Run("after exit", func(t *testing.T) {
		_, c := setup(t)
		sb := create(t, c)
		p, err := sb.Exec(t.Context(), "echo", "hi")
		if err != nil {
			t.Fatal(err)
		}
		p.Wait()
		if err := p.Stdin.Close(); err != nil {
			t.Errorf("Close after exit = %v", err)
		}
	})
}

func TestExecSignal(t *testing.T) {
	t.Parallel()
	f, c := setup(t)
	sb := create(t, c)
	p, err := sb.Exec(t.Context(), "sleep", "3600")
	if err != nil {
		t.Fatal(err)
	}
	if _, done := p.Poll(); done {
		t.Error("Poll says done while sleeping")
	}
	if err := p.Signal(15); err != nil {
		t.Fatal(err)
	}
	res, err := p.Wait()
	if err != nil || res.ExitCode != 143 {
		t.Errorf("Wait = %+v, %v; want exit 143", res, err)
	}
	if err := p.Kill(); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("Kill after exit = %v, want os.ErrProcessDone", err)
	}
	r := f.requests("POST", "/signal")[0]
	if want := "/v1/sandboxes/" + sb.ID() + "/processes/" + itoa(p.Pid()) + "/signal"; r.Path != want || strings.TrimSpace(r.Body) != `{"signal":15}` {
		t.Errorf("signal request %s %s, want %s {\"signal\":15}", r.Path, r.Body, want)
	}

	p, err = sb.Exec(t.Context(), "sleep", "3600")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if res, err := p.Wait(); err != nil || res.ExitCode != 137 {
		t.Errorf("Wait after Kill = %+v, %v; want 137", res, err)
	}
}

// A sandbox ending under a streamed exec is an "error" event: Wait fails with IsGone.
func TestExecSandboxGone(t *testing.T) {
	t.Parallel()
	_, c := setup(t)
	sb := create(t, c)
	p, err := sb.Exec(t.Context(), "sleep", "3600")
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.Terminate(t.Context()); err != nil {
		t.Fatal(err)
	}
	res, err := p.Wait()
	if !airlock.IsGone(err) || res != nil {
		t.Errorf("Wait = %+v, %v; want gone", res, err)
	}
	var ae *api.Error
	if !errors.As(err, &ae) || !strings.Contains(ae.Message, "terminated") {
		t.Errorf("error = %#v, want *api.Error with the event's message", err)
	}
	if _, err := io.ReadAll(p.Stdout); !airlock.IsGone(err) {
		t.Errorf("Stdout read error = %v, want gone", err)
	}
	if code, done := p.Poll(); !done || code != -1 {
		t.Errorf("Poll = %d, %v; want -1, true", code, done)
	}
	if _, err := sb.Exec(t.Context(), "echo"); !airlock.IsGone(err) {
		t.Errorf("Exec on ended sandbox = %v, want gone", err)
	}
}

// Canceling the exec's ctx kills the process, like exec.CommandContext.
func TestExecCancel(t *testing.T) {
	t.Parallel()
	f, c := setup(t)
	sb := create(t, c)
	ctx, cancel := context.WithCancel(t.Context())
	p, err := sb.Exec(ctx, "sleep", "3600")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := p.Wait(); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait = %v, want context.Canceled", err)
	}
	sigs := f.requests("POST", "/signal")
	if len(sigs) != 1 || strings.TrimSpace(sigs[0].Body) != `{"signal":9}` {
		t.Errorf("signal requests after cancel = %+v, want one SIGKILL", sigs)
	}
}

// A daemon that ignores Accept and answers an ExecResult still gives a working Process.
func TestExecJSONFallback(t *testing.T) {
	t.Parallel()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"stdout":"out","stderr":"err","exit_code":4,"pid":7,"execution_time":0.5}`)
	}))
	defer ts.Close()
	sb := &airlockSandbox{c: airlock.New(ts.URL, "")}
	p, err := sb.exec(t)
	if err != nil {
		t.Fatal(err)
	}
	stdout, stderr := readBoth(t, p)
	res, err := p.Wait()
	if err != nil || res.ExitCode != 4 || p.Pid() != 7 || stdout != "out" || stderr != "err" {
		t.Errorf("got %+v %v pid %d %q %q", res, err, p.Pid(), stdout, stderr)
	}
}

// airlockSandbox gets a *Sandbox from a server that answers everything the same way.
type airlockSandbox struct{ c *airlock.Client }

func (a *airlockSandbox) exec(t *testing.T) (*airlock.Process, error) {
	sb, err := a.c.CreateSandbox(t.Context(), api.CreateSandboxRequest{})
	if err != nil {
		return nil, err
	}
	return sb.Exec(t.Context(), "x")
}

func TestExecErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		body   string
		check  func(error) bool
	}{
		{"error event before start", 200, `{"type":"error","error":{"code":"resource_exhausted","message":"too many processes"}}` + "\n", airlock.IsQuota},
		{"stream cut before start", 200, "", func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
		{"error status", 400, `{"error":{"code":"invalid_argument","message":"cmd is required"}}`, func(err error) bool { return errors.Is(err, api.ErrInvalidArgument) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == "POST" && r.URL.Path == "/v1/sandboxes" {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusCreated)
					io.WriteString(w, `{"id":"sb-1"}`)
					return
				}
				w.Header().Set("Content-Type", "application/x-ndjson")
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer ts.Close()
			p, err := (&airlockSandbox{c: airlock.New(ts.URL, "")}).exec(t)
			if p != nil || !tt.check(err) {
				t.Errorf("Exec = %v, %v", p, err)
			}
		})
	}
}

func TestFiles(t *testing.T) {
	t.Parallel()
	f, c := setup(t)
	sb := create(t, c)
	ctx := t.Context()
	if err := sb.WriteFile(ctx, "/workspace/app/data.json", strings.NewReader(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := sb.WriteFile(ctx, "rel.txt", bytes.NewBufferString("relative")); err != nil {
		t.Fatal(err)
	}
	fi, err := sb.WriteFileMode(ctx, "/workspace/app/run.sh", io.MultiReader(strings.NewReader("#!/bin/sh\n")), 0o755)
	if err != nil || fi.Mode != 0o755 || fi.Size != 10 {
		t.Fatalf("WriteFileMode = %+v, %v", fi, err)
	}
	b, err := sb.ReadFile(ctx, "/workspace/app/data.json")
	if err != nil || string(b) != `{"a":1}` {
		t.Errorf("ReadFile = %q, %v", b, err)
	}
	rc, err := sb.OpenFile(ctx, "/workspace/rel.txt")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(rc)
	rc.Close()
	if string(b) != "relative" {
		t.Errorf("OpenFile read %q", b)
	}
	if err := sb.Mkdir(ctx, "/workspace/app/sub/deep"); err != nil {
		t.Fatal(err)
	}
	list, err := sb.List(ctx, "/workspace/app")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range list {
		names = append(names, e.Name+":"+e.Type)
	}
	if want := []string{"data.json:file", "run.sh:file", "sub:dir"}; !reflect.DeepEqual(names, want) {
		t.Errorf("List = %v, want %v", names, want)
	}
	st, err := sb.Stat(ctx, "/workspace/app/data.json")
	if err != nil || st.Size != 7 || st.Type != "file" {
		t.Errorf("Stat = %+v, %v", st, err)
	}
	if err := sb.Remove(ctx, "/workspace/app", false); err == nil {
		t.Error("non-recursive Remove of a full directory succeeded")
	}
	if err := sb.Remove(ctx, "/workspace/app", true); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.ReadFile(ctx, "/workspace/app/data.json"); !airlock.IsNotFound(err) {
		t.Errorf("ReadFile after Remove = %v, want not found", err)
	}
	if _, err := sb.Stat(ctx, "/nope"); !airlock.IsNotFound(err) {
		t.Errorf("Stat(/nope) = %v, want not found", err)
	}

	// Request shapes.
	shape := func(method, suffix string) rec {
		t.Helper()
		rs := f.requests(method, suffix)
		if len(rs) == 0 {
			t.Fatalf("no %s …%s request", method, suffix)
		}
		return rs[0]
	}
	put := shape("PUT", "/files")
	if put.Query["path"][0] != "/workspace/app/data.json" || put.Header.Get("Content-Type") != "application/octet-stream" || put.Length != 7 {
		t.Errorf("PUT = %+v", put)
	}
	if m := f.requests("PUT", "/files")[2].Query["mode"]; len(m) != 1 || m[0] != "0755" {
		t.Errorf("mode query = %v, want 0755", m)
	}
	if r := shape("DELETE", "/files"); r.Query["path"][0] != "/workspace/app" || r.Query["recursive"] != nil {
		t.Errorf("first DELETE query = %v", r.Query)
	}
	if r := f.requests("DELETE", "/files")[1]; r.Query["recursive"][0] != "true" {
		t.Errorf("recursive DELETE query = %v", r.Query)
	}
	if r := shape("POST", "/files/mkdir"); r.Query["path"][0] != "/workspace/app/sub/deep" {
		t.Errorf("mkdir query = %v", r.Query)
	}
	if r := shape("GET", "/files/list"); r.Query["path"][0] != "/workspace/app" {
		t.Errorf("list query = %v", r.Query)
	}
}

// zeros is a 200 MiB reader that makes no garbage; at 1 MiB it waits until the sandbox has
// received bytes, which proves the body is streamed rather than gathered first.
type zeros struct {
	left, sent int64
	received   func() int64
	stalled    bool
}

func (z *zeros) Read(p []byte) (int, error) {
	if z.left == 0 {
		return 0, io.EOF
	}
	if z.sent >= 1<<20 && !z.stalled {
		z.stalled = true
		for deadline := time.Now().Add(10 * time.Second); z.received() == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				return 0, errors.New("the sandbox got nothing after 1 MiB was read: the body is not streamed")
			}
		}
	}
	n := int(min(int64(len(p)), z.left))
	clear(p[:n])
	z.left -= int64(n)
	z.sent += int64(n)
	return n, nil
}

// Not parallel: it measures allocations of the whole process.
func TestWriteFileLarge(t *testing.T) {
	f, c := setup(t)
	sb := create(t, c)
	const size = 200 << 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	agent := f.agent(sb.ID())
	err := sb.WriteFile(t.Context(), "/dev/null", &zeros{left: size, received: agent.NullBytes})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if got := agent.NullBytes(); got != size {
		t.Errorf("the sandbox received %d bytes, want %d", got, size)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 32<<20 {
		t.Errorf("client, server and engine allocated %d MiB for a %d MiB upload; want it streamed", alloc>>20, size>>20)
	}
	if r := f.requests("PUT", "/files")[0]; r.Length != -1 {
		t.Errorf("Content-Length %d, want chunked (-1)", r.Length)
	}
}

// Error statuses map to the helpers, with or without the API's error body.
func TestErrorMapping(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		body   string
		is     func(error) bool
		code   string
	}{
		{"404", 404, `{"error":{"code":"not_found","message":"no sandbox sb-x"}}`, airlock.IsNotFound, api.CodeNotFound},
		{"410", 410, `{"error":{"code":"gone","message":"sandbox sb-x has ended (expired)"}}`, airlock.IsGone, api.CodeGone},
		{"429", 429, `{"error":{"code":"resource_exhausted","message":"over capacity"}}`, airlock.IsQuota, api.CodeResourceExhausted},
		{"413", 413, `{"error":{"code":"payload_too_large","message":"too big"}}`, airlock.IsQuota, api.CodeTooLarge},
		{"401", 401, `{"error":{"code":"unauthenticated","message":"missing or invalid API key"}}`, airlock.IsAuth, api.CodeUnauthenticated},
		{"504", 504, `{"error":{"code":"timeout","message":"timed out"}}`, airlock.IsTimeout, api.CodeTimeout},
		{"404 from a proxy", 404, "<html>not here</html>", airlock.IsNotFound, api.CodeNotFound},
		{"429 without body", 429, "", airlock.IsQuota, api.CodeResourceExhausted},
		{"502 from a proxy", 502, "bad gateway", func(err error) bool { return errors.Is(err, api.ErrUnavailable) }, api.CodeUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer ts.Close()
			sb := &airlockSandbox{c: airlock.New(ts.URL, "")}
			_, err := sb.c.Sandbox(t.Context(), "sb-x")
			if !tt.is(err) || api.CodeOf(err) != tt.code {
				t.Errorf("error = %v (code %s), want code %s", err, api.CodeOf(err), tt.code)
			}
			for name, is := range map[string]func(error) bool{"IsNotFound": airlock.IsNotFound, "IsGone": airlock.IsGone,
				"IsQuota": airlock.IsQuota, "IsAuth": airlock.IsAuth, "IsTimeout": airlock.IsTimeout} {
				if reflect.ValueOf(is).Pointer() != reflect.ValueOf(tt.is).Pointer() && is(err) {
					t.Errorf("%s(%v) = true", name, err)
				}
			}
		})
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	d, err := newDaemon(testKey)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, key := range []string{"", "wrong-key-0123456789"} {
		_, err := airlock.New(d.URL, key).ListSandboxes(t.Context(), nil)
		if !airlock.IsAuth(err) {
			t.Errorf("key %q: error = %v, want IsAuth", key, err)
		}
	}
	if _, err := airlock.New(d.URL, testKey).ListSandboxes(t.Context(), nil); err != nil {
		t.Errorf("right key: %v", err)
	}
}
