package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/api"
)

// fakeDaemon speaks the sandbox routes of api/sandbox.go, just enough for the CLI: its
// programs are "echo ARGS", "exit N" (after writing "out" and "err"), and "cat" (stdin to
// stdout until EOF).
type fakeDaemon struct {
	mu      sync.Mutex
	n       int
	sbs     map[string]api.SandboxInfo
	created []api.CreateSandboxRequest
	execs   []api.ExecRequest
	files   map[string][]byte // "id:path"
	procs   map[int]*io.PipeWriter
}

func newFakeDaemon(t *testing.T) (*fakeDaemon, string) {
	t.Helper()
	f := &fakeDaemon{sbs: map[string]api.SandboxInfo{}, files: map[string][]byte{}, procs: map[int]*io.PipeWriter{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sandboxes", f.create)
	mux.HandleFunc("GET /v1/sandboxes", f.list)
	mux.HandleFunc("GET /v1/sandboxes/{id}", f.get)
	mux.HandleFunc("DELETE /v1/sandboxes/{id}", f.remove)
	mux.HandleFunc("POST /v1/sandboxes/{id}/exec", f.exec)
	mux.HandleFunc("POST /v1/sandboxes/{id}/processes/{pid}/stdin", f.stdin)
	mux.HandleFunc("GET /v1/sandboxes/{id}/files", f.readFile)
	mux.HandleFunc("PUT /v1/sandboxes/{id}/files", f.writeFile)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer k" {
			fail(w, 401, api.CodeUnauthenticated, "bad key")
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	return f, ts.URL
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, code, msg string) {
	reply(w, status, api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: msg}})
}

func (f *fakeDaemon) create(w http.ResponseWriter, r *http.Request) {
	var req api.CreateSandboxRequest
	json.NewDecoder(r.Body).Decode(&req)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	now := time.Now()
	info := api.SandboxInfo{ID: fmt.Sprintf("sb-%d", f.n), Status: api.StatusRunning, Image: req.Image,
		CreatedAt: now, ExpiresAt: now.Add(5 * time.Minute), MemoryMB: req.MemoryMB, CPU: req.CPU, Tags: req.Tags}
	f.sbs[info.ID] = info
	f.created = append(f.created, req)
	reply(w, 201, info)
}

func (f *fakeDaemon) list(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.SandboxInfo
	for _, info := range f.sbs {
		ok := true
		for _, t := range r.URL.Query()["tag"] {
			k, v, _ := strings.Cut(t, ":")
			ok = ok && info.Tags[k] == v
		}
		if ok {
			out = append(out, info)
		}
	}
	slices.SortFunc(out, func(a, b api.SandboxInfo) int { return strings.Compare(a.ID, b.ID) })
	reply(w, 200, api.SandboxList{Sandboxes: out})
}

func (f *fakeDaemon) get(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	info, ok := f.sbs[r.PathValue("id")]
	f.mu.Unlock()
	if !ok {
		fail(w, 404, api.CodeNotFound, "no sandbox "+r.PathValue("id"))
		return
	}
	reply(w, 200, info)
}

func (f *fakeDaemon) remove(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	info, ok := f.sbs[r.PathValue("id")]
	delete(f.sbs, info.ID)
	f.mu.Unlock()
	if !ok {
		fail(w, 404, api.CodeNotFound, "no sandbox")
		return
	}
	info.Status = api.StatusTerminated
	reply(w, 200, info)
}

func (f *fakeDaemon) exec(w http.ResponseWriter, r *http.Request) {
	var req api.ExecRequest
	json.NewDecoder(r.Body).Decode(&req)
	f.mu.Lock()
	f.execs = append(f.execs, req)
	f.n++
	pid := f.n
	var stdin io.Reader = strings.NewReader(req.Stdin)
	if req.StdinOpen {
		pr, pw := io.Pipe()
		defer pr.Close()
		f.procs[pid] = pw
		stdin = io.MultiReader(stdin, pr)
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	send := func(ev api.ExecEvent) {
		enc.Encode(ev)
		w.(http.Flusher).Flush()
	}
	send(api.ExecEvent{Type: api.EventStart, Pid: pid})
	code := 0
	switch req.Cmd[0] {
	case "echo":
		send(api.ExecEvent{Type: api.EventStdout, Data: strings.Join(req.Cmd[1:], " ") + "\n"})
	case "exit":
		send(api.ExecEvent{Type: api.EventStdout, Data: "out\n"})
		send(api.ExecEvent{Type: api.EventStderr, Data: "err\n"})
		code, _ = strconv.Atoi(req.Cmd[1])
	case "cat":
		b := make([]byte, 1024)
		for {
			n, err := stdin.Read(b)
			if n > 0 {
				send(api.ExecEvent{Type: api.EventStdout, Data: string(b[:n])})
			}
			if err != nil {
				break
			}
		}
	}
	send(api.ExecEvent{Type: api.EventExit, ExitCode: &code})
}

func (f *fakeDaemon) stdin(w http.ResponseWriter, r *http.Request) {
	pid, _ := strconv.Atoi(r.PathValue("pid"))
	f.mu.Lock()
	pw := f.procs[pid]
	f.mu.Unlock()
	if pw == nil {
		fail(w, 404, api.CodeNotFound, "no process")
		return
	}
	if _, err := io.Copy(pw, r.Body); err != nil {
		fail(w, 404, api.CodeNotFound, "process exited")
		return
	}
	if r.URL.Query().Get("eof") == "true" {
		pw.Close()
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeDaemon) readFile(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	b, ok := f.files[r.PathValue("id")+":"+r.URL.Query().Get("path")]
	f.mu.Unlock()
	if !ok {
		fail(w, 404, api.CodeNotFound, "no file")
		return
	}
	w.Write(b)
}

func (f *fakeDaemon) writeFile(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	p := r.URL.Query().Get("path")
	f.mu.Lock()
	f.files[r.PathValue("id")+":"+p] = b
	f.mu.Unlock()
	reply(w, 200, api.FileInfo{Name: filepath.Base(p), Path: p, Type: "file", Size: int64(len(b))})
}

// runSandbox runs `airlock sandbox ARGS…` against url and returns what it wrote and its exit
// status (as Main would compute it).
func runSandbox(t *testing.T, url, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	root := &cobra.Command{Use: "airlock", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(sandboxCmd())
	var out, errb bytes.Buffer
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(append([]string{"sandbox", "--server", url, "--api-key", "k"}, args...))
	err := root.ExecuteContext(t.Context())
	var ee *exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.code
	default:
		fmt.Fprintln(&errb, "airlock:", err)
		code = 1
	}
	return out.String(), errb.String(), code
}

func TestSandboxCreate(t *testing.T) {
	t.Parallel()
	f, url := newFakeDaemon(t)
	out, errOut, code := runSandbox(t, url, "", "create", "--image", "python:3.12", "--timeout", "60",
		"--idle-timeout", "5", "--cpu", "1.5", "--memory-mb", "256", "--workdir", "/app",
		"--env", "A=1", "--env", "B=x=y", "--tag", "team=ml")
	if code != 0 || out != "sb-1\n" {
		t.Fatalf("create: out %q, stderr %q, code %d; want sb-1", out, errOut, code)
	}
	got := f.created[0]
	if got.Image != "python:3.12" || got.Timeout != 60 || got.IdleTimeout != 5 || got.CPU != 1.5 ||
		got.MemoryMB != 256 || got.Workdir != "/app" || got.Env["B"] != "x=y" || got.Tags["team"] != "ml" ||
		got.BlockNetwork != nil {
		t.Errorf("create request = %+v", got)
	}

	out, _, code = runSandbox(t, url, "", "create", "--json", "--allow-network")
	var info api.SandboxInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil || code != 0 || info.ID != "sb-2" {
		t.Errorf("create --json: %q, code %d, %v", out, code, err)
	}
	if bn := f.created[1].BlockNetwork; bn == nil || *bn {
		t.Errorf("--allow-network sent block_network %v, want false", bn)
	}

	if _, errOut, code := runSandbox(t, url, "", "create", "--env", "novalue"); code != 1 || !strings.Contains(errOut, "want K=V") {
		t.Errorf("bad --env: stderr %q, code %d", errOut, code)
	}
}

func TestSandboxList(t *testing.T) {
	t.Parallel()
	_, url := newFakeDaemon(t)
	runSandbox(t, url, "", "create", "--tag", "team=ml", "--tag", "env=prod")
	runSandbox(t, url, "", "create", "--tag", "team=web")
	out, _, code := runSandbox(t, url, "", "ls")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") ||
		!strings.HasPrefix(lines[1], "sb-1 ") || !strings.Contains(lines[1], "env=prod,team=ml") {
		t.Fatalf("ls: code %d\n%s", code, out)
	}
	out, _, _ = runSandbox(t, url, "", "ls", "--tag", "team=web")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[1], "sb-2 ") {
		t.Errorf("ls --tag team=web:\n%s", out)
	}
	out, _, _ = runSandbox(t, url, "", "ls", "--json", "--tag", "team=ml")
	var list []api.SandboxInfo
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || list[0].ID != "sb-1" {
		t.Errorf("ls --json: %q %v", out, err)
	}
}

func TestSandboxExec(t *testing.T) {
	t.Parallel()
	f, url := newFakeDaemon(t)
	runSandbox(t, url, "", "create")
	tests := []struct {
		name           string
		stdin          string
		args           []string
		stdout, stderr string
		code           int
	}{
		{"echo", "", []string{"sb-1", "--", "echo", "-n", "hi"}, "-n hi\n", "", 0},
		{"exit code", "", []string{"sb-1", "--", "exit", "3"}, "out\n", "err\n", 3},
		{"command flags without --", "", []string{"sb-1", "echo", "-n", "--timeout", "hi"}, "-n --timeout hi\n", "", 0},
		{"flags after the ID", "", []string{"sb-1", "--timeout", "7", "--", "echo", "-n"}, "-n\n", "", 0},
		{"exit code past 255", "", []string{"sb-1", "exit", "257"}, "out\n", "err\n", 1},
		{"interactive stdin", "line 1\nline 2\n", []string{"-i", "sb-1", "--", "cat"}, "line 1\nline 2\n", "", 0},
		{"stdin closed without -i", "ignored", []string{"sb-1", "--", "cat"}, "", "", 0},
		{"unknown sandbox", "", []string{"sb-9", "--", "echo"}, "", "airlock: no sandbox sb-9\n", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runSandbox(t, url, tt.stdin, append([]string{"exec"}, tt.args...)...)
			if out != tt.stdout || errOut != tt.stderr || code != tt.code {
				t.Errorf("got stdout %q stderr %q code %d, want %q %q %d", out, errOut, code, tt.stdout, tt.stderr, tt.code)
			}
		})
	}
	runSandbox(t, url, "", "exec", "--timeout", "7", "--workdir", "/tmp", "--env", "K=V", "sb-1", "--", "echo")
	f.mu.Lock()
	last := f.execs[len(f.execs)-1]
	f.mu.Unlock()
	if last.Timeout != 7 || last.Workdir != "/tmp" || last.Env["K"] != "V" || last.StdinOpen {
		t.Errorf("exec request = %+v", last)
	}
}

func TestSandboxCp(t *testing.T) {
	t.Parallel()
	_, url := newFakeDaemon(t)
	runSandbox(t, url, "", "create")
	runSandbox(t, url, "", "create")
	dir := t.TempDir()
	src := filepath.Join(dir, "in.bin")
	content := bytes.Repeat([]byte("airlock\x00\xff"), 100000)
	if err := os.WriteFile(src, content, 0o644); err != nil {
		t.Fatal(err)
	}
	steps := [][]string{
		{"cp", src, "sb-1:/data/"},                // upload into a directory: keeps the name
		{"cp", "sb-1:/data/in.bin", "sb-2:/copy"}, // sandbox to sandbox
		{"cp", "sb-2:/copy", dir + "/out.bin"},    // download
		{"cp", "sb-2:/copy", dir},                 // download into a directory
		{"cp", "-", "sb-1:/stdin.txt"},            // from stdin
		{"cp", "sb-1:/stdin.txt", "-"},            // to stdout
		{"cp", "sb-1:/missing", dir + "/missing"}, // fails, leaves nothing
		{"cp", src, dir + "/local"},               // no sandbox side
	}
	wantCodes := []int{0, 0, 0, 0, 0, 0, 1, 1}
	for i, args := range steps {
		stdin := ""
		if args[1] == "-" {
			stdin = "from stdin\n"
		}
		out, errOut, code := runSandbox(t, url, stdin, args...)
		if code != wantCodes[i] {
			t.Errorf("%v: code %d (stderr %q), want %d", args, code, errOut, wantCodes[i])
		}
		if i == 5 && out != "from stdin\n" {
			t.Errorf("cp to stdout wrote %q", out)
		}
	}
	for _, name := range []string{"out.bin", "copy"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, content) {
			t.Errorf("%s: %d bytes, %v; want the %d uploaded", name, len(got), err, len(content))
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "missing")); !os.IsNotExist(err) {
		t.Errorf("failed download left a file: %v", err)
	}
}

func TestSandboxRmInfo(t *testing.T) {
	t.Parallel()
	_, url := newFakeDaemon(t)
	runSandbox(t, url, "", "create", "--tag", "a=b")
	out, _, code := runSandbox(t, url, "", "info", "sb-1")
	var info api.SandboxInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil || code != 0 || info.Tags["a"] != "b" {
		t.Errorf("info: %q, %d, %v", out, code, err)
	}
	runSandbox(t, url, "", "create")
	out, errOut, code := runSandbox(t, url, "", "rm", "sb-1", "sb-7", "sb-2")
	if out != "sb-1\nsb-2\n" || code != 1 || !strings.Contains(errOut, "sb-7: no sandbox sb-7") {
		t.Errorf("rm: out %q, stderr %q, code %d", out, errOut, code)
	}
	if out, _, _ := runSandbox(t, url, "", "ls"); strings.Count(out, "\n") != 1 {
		t.Errorf("ls after rm:\n%s", out)
	}
	if _, errOut, code := runSandbox(t, url, "", "--api-key", "wrong", "ls"); code != 1 || !strings.Contains(errOut, "bad key") {
		t.Errorf("wrong key: stderr %q code %d", errOut, code)
	}
}

func TestParseLocation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want location
	}{
		{"sb-1:/tmp/x", location{"sb-1", "/tmp/x"}},
		{"sb-1:rel", location{"sb-1", "rel"}},
		{"./a:b", location{"", "./a:b"}},
		{"/abs/a:b", location{"", "/abs/a:b"}},
		{"-", location{"", "-"}},
		{":x", location{"", ":x"}},
	}
	for _, tt := range tests {
		if got := parseLocation(tt.in); got != tt.want {
			t.Errorf("parseLocation(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}
