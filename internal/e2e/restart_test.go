package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/testutil"
)

// Issue 12, restarts that lose nothing: SIGTERM leaves long-lived sandboxes and sessions (seed
// names included) for the next daemon, lets calls in flight finish within a grace period, and
// ends the rest with a clear answer; --drain-on-stop destroys them instead.

// keepOnStop is a startDaemon option: the daemon keeps its sandboxes on SIGTERM, the default
// of `airlock serve` (startDaemon passes --drain-on-stop otherwise).
func keepOnStop(cmd *exec.Cmd) {
	daemonArgs(cmd, func(a string) string { return strings.Replace(a, " --drain-on-stop", "", 1) })
}

// withArgs is a startDaemon option adding serve flags.
func withArgs(extra string) func(*exec.Cmd) {
	return func(cmd *exec.Cmd) { daemonArgs(cmd, func(a string) string { return a + " " + extra }) }
}

// withKeys is a startDaemon option: the daemon requires one of keys.
func withKeys(keys ...string) func(*exec.Cmd) {
	return func(cmd *exec.Cmd) { cmd.Env = append(cmd.Env, "AIRLOCK_API_KEYS="+strings.Join(keys, ",")) }
}

// daemonArgs rewrites the serve command line startDaemon put in cmd's environment.
func daemonArgs(cmd *exec.Cmd, f func(string) string) {
	for i, kv := range cmd.Env {
		if a, ok := strings.CutPrefix(kv, "AIRLOCK_E2E_DAEMON="); ok {
			cmd.Env[i] = "AIRLOCK_E2E_DAEMON=" + f(a)
		}
	}
}

// terminate sends SIGTERM once (a second one would kill the daemon outright: serve stops
// listening for signals after the first) and returns a channel closed when it has exited.
func (d *daemon) terminate() <-chan struct{} {
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	return done
}

// waitExit waits for a terminated daemon to exit, and fails unless it exits 0.
func (d *daemon) waitExit(done <-chan struct{}) {
	d.t.Helper()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		d.cmd.Process.Kill()
		<-done
		d.t.Fatal("daemon did not exit after SIGTERM")
	}
	if !d.cmd.ProcessState.Success() {
		d.t.Errorf("daemon exited with %v after SIGTERM, want status 0", d.cmd.ProcessState)
	}
}

// tenant calls a daemon with one API key.
type tenant struct {
	t   *testing.T
	url string
	key string
}

// call does one request and decodes the JSON answer into out (when non-nil); it returns the
// status. A body that does not decode fails the test.
func (c tenant) call(method, path, body string, out any) int {
	c.t.Helper()
	st, b := c.raw(method, path, body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %d %q: %v", method, path, st, b, err)
		}
	}
	return st
}

// raw does one request and returns its status and body.
func (c tenant) raw(method, path, body string) (int, []byte) {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.url+path, strings.NewReader(body))
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (c tenant) mustCreate(path, body string) api.SandboxInfo {
	c.t.Helper()
	var info api.SandboxInfo
	if st := c.call("POST", path, body, &info); st != 201 {
		c.t.Fatalf("POST %s: %d %+v", path, st, info)
	}
	return info
}

func (c tenant) info(id string) api.SandboxInfo {
	c.t.Helper()
	var info api.SandboxInfo
	if st := c.call("GET", "/v1/sandboxes/"+id, "", &info); st != 200 {
		c.t.Fatalf("GET sandbox %s: %d %+v", id, st, info)
	}
	return info
}

// mustCell runs code in session id and returns its stdout.
func (c tenant) mustCell(id, code string) string {
	c.t.Helper()
	b, _ := json.Marshal(api.RunRequest{Code: code, Timeout: 60})
	var res api.RunResult
	if st := c.call("POST", "/v1/sessions/"+id+"/run", string(b), &res); st != 200 || res.Error != nil {
		c.t.Fatalf("cell %q in %s: %d %+v", code, id, st, res)
	}
	return res.Stdout
}

// mustSeed runs code in the seed route's session name and returns its stdout.
func (c tenant) mustSeed(name, code string) string {
	c.t.Helper()
	b, _ := json.Marshal(api.SeedREPLRequest{SessionID: name, Code: code})
	var res api.RunResult
	if st := c.call("POST", "/repl/execute", string(b), &res); st != 200 || res.Error != nil {
		c.t.Fatalf("seed cell %q in %q: %d %+v", code, name, st, res)
	}
	return res.Stdout
}

// mustExec runs cmd in sandbox id and returns its stdout.
func (c tenant) mustExec(id string, cmd ...string) string {
	c.t.Helper()
	b, _ := json.Marshal(api.ExecRequest{Cmd: cmd})
	var res api.ExecResult
	if st := c.call("POST", "/v1/sandboxes/"+id+"/exec", string(b), &res); st != 200 || res.ExitCode != 0 {
		c.t.Fatalf("exec %v in %s: %d %+v", cmd, id, st, res)
	}
	return res.Stdout
}

// sandboxDirs counts the sandboxes the runtime keeps in state.
func sandboxDirs(state string) int {
	ents, _ := os.ReadDir(filepath.Join(state, "sandboxes"))
	return len(ents)
}

// fleet is the daemons of one test on one state directory and cgroup root, which are removed
// at the end.
type fleet struct {
	t         *testing.T
	state, cg string
	ds        []*daemon
}

// newFleet makes a fleet's state directory and names its cgroup root.
func newFleet(t *testing.T, name string) *fleet {
	t.Helper()
	testutil.MustHaveRoot(t)
	f := &fleet{t: t, state: mkdirTraversable(t, "airlock-"+name+"-"), cg: fmt.Sprintf("airlock-%s-%d", name, os.Getpid())}
	cleanupRoot(t, f.cg)
	return f
}

// start starts a daemon of the fleet (startDaemon). The first start registers the cleanup
// that leaves nothing behind whatever failed: it kills any daemon still running (one that keeps
// its sandboxes on stop, say), then lets a draining daemon adopt and destroy what they left.
func (f *fleet) start(addr string, opts ...func(*exec.Cmd)) *daemon {
	f.t.Helper()
	if f.ds == nil {
		f.t.Cleanup(f.leaveNothing)
	}
	// No warm pool and no zygote: these tests count the sandboxes in the state directory, and
	// the pool's and the zygote's own restarts have tests of their own (TestPoolDaemonRestart,
	// TestZygoteDaemonCrash).
	d := startDaemon(f.t, f.state, f.cg, addr, append([]func(*exec.Cmd){noPool, zygoteOff}, opts...)...)
	f.ds = append(f.ds, d)
	return d
}

func (f *fleet) leaveNothing() {
	for _, d := range f.ds {
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Kill() // through its pidfd: never another process that took its pid
		}
	}
	for _, d := range f.ds {
		waitFor(f.t, "a test daemon to die", func() bool { return exited(d.cmd.Process.Pid) || d.cmd.ProcessState != nil })
	}
	if len(testutil.ProcsInCgroup(f.cg)) == 0 {
		return
	}
	f.t.Logf("sandboxes left in %s: a draining daemon destroys them", f.cg)
	startDaemon(f.t, f.state, f.cg, freeAddr(f.t)).stop()
	waitNoProcsIn(f.t, f.cg)
}

// exited reports whether pid has exited (gone, or a zombie nobody has waited for).
func exited(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z")
}

// TestRestartKeepsSandboxesAndSessions: a SIGTERM'd daemon used to destroy every sandbox and
// session (seed-route names included); now the next daemon adopts them, with their files,
// variables, seed names per key, expiry and idle clock, while a one-shot run in flight at the
// signal still gets its real answer. --drain-on-stop then destroys what was adopted.
func TestRestartKeepsSandboxesAndSessions(t *testing.T) {
	f := newFleet(t, "rst")
	state, cg := f.state, f.cg
	keyA, keyB := "restart-key-a-0123456789", "restart-key-b-0123456789"
	addr := freeAddr(t)
	d := f.start(addr, keepOnStop, withKeys(keyA, keyB))
	a, b := tenant{t, d.url, keyA}, tenant{t, d.url, keyB}

	sb := a.mustCreate("/v1/sandboxes", `{"timeout":600}`).ID
	a.mustExec(sb, "sh", "-c", "echo kept > /workspace/marker")
	sess := a.mustCreate("/v1/sessions", `{"timeout":600,"idle_timeout":300}`).ID
	a.mustCell(sess, "x = 41")
	a.mustSeed("default", "y = 'tenant A'")
	b.mustSeed("default", "y = 'tenant B'")
	before := a.info(sess)

	// A one-shot run in flight when the signal comes finishes with its real output.
	type answer struct {
		status int
		res    api.ExecuteResponse
	}
	ran := make(chan answer, 1)
	go func() {
		var r answer
		r.status = a.call("POST", "/v1/execute", `{"code":"import time; time.sleep(2); print('finished')","timeout":60}`, &r.res)
		ran <- r
	}()
	// And a WebSocket exec, which outlasts the run: http.Server.Shutdown does not wait for its
	// hijacked connection, serve does.
	wsOut := make(chan string, 1)
	go func() {
		wsOut <- wsExec(t.Context(), d.url, keyA, sb, `{"cmd":["sh","-c","sleep 3; echo ws-finished"]}`)
	}()
	waitFor(t, "the one-shot run's sandbox and the WebSocket exec", func() bool {
		var ps api.ProcessList
		a.call("GET", "/v1/sandboxes/"+sb+"/processes", "", &ps)
		return sandboxDirs(state) == 5 && len(ps.Processes) == 1
	})
	exited := d.terminate()
	r := <-ran
	if r.status != 200 || r.res.Stdout != "finished\n" || !r.res.Success {
		t.Errorf("one-shot run in flight at SIGTERM: %d %+v, want 200 with stdout \"finished\\n\"", r.status, r.res)
	}
	if got := <-wsOut; got != "ws-finished\n exit 0" {
		t.Errorf("WebSocket exec in flight at SIGTERM: %q, want its output and exit 0", got)
	}
	d.waitExit(exited)
	if n := len(testutil.ProcsInCgroup(cg)); n == 0 {
		t.Fatal("SIGTERM destroyed the sandboxes and sessions; want them left running for the next daemon")
	}
	if n := sandboxDirs(state); n != 4 {
		t.Errorf("after SIGTERM the state holds %d sandboxes, want the 4 long-lived ones (the one-shot's destroyed)", n)
	}

	// The next daemon, draining on its own stop.
	d = f.start(addr, withKeys(keyA, keyB))
	a.url, b.url = d.url, d.url
	// Before any call touches the session: its expiry and idle clock are those of before.
	after := a.info(sess)
	if !after.ExpiresAt.Equal(before.ExpiresAt) {
		t.Errorf("session expires at %v after the restart, want %v as before", after.ExpiresAt, before.ExpiresAt)
	}
	if !after.LastActiveAt.Equal(before.LastActiveAt) {
		t.Errorf("session last active at %v after the restart, want its last call before it, at %v (the idle clock carries over)",
			after.LastActiveAt, before.LastActiveAt)
	}
	if got := strings.TrimSpace(a.mustExec(sb, "cat", "/workspace/marker")); got != "kept" {
		t.Errorf("file written before the restart reads %q, want kept", got)
	}
	if got := strings.TrimSpace(a.mustCell(sess, "print(x + 1)")); got != "42" {
		t.Errorf("variable set before the restart: print(x + 1) = %q, want 42", got)
	}
	for _, c := range []struct {
		tenant tenant
		want   string
	}{{a, "tenant A"}, {b, "tenant B"}} {
		if got := strings.TrimSpace(c.tenant.mustSeed("default", "print(y)")); got != c.want {
			t.Errorf("seed session \"default\" of %s after the restart: print(y) = %q, want %q", c.want, got, c.want)
		}
	}
	var list api.SandboxList
	a.call("GET", "/v1/sandboxes", "", &list)
	if len(list.Sandboxes) != 3 {
		t.Errorf("tenant A lists %d sandboxes after the restart, want 3 (sandbox, session, seed session)", len(list.Sandboxes))
	}
	// --drain-on-stop: this stop destroys everything it adopted.
	d.waitExit(d.terminate())
	waitNoProcsIn(t, cg)
	if n := sandboxDirs(state); n != 0 {
		t.Errorf("--drain-on-stop left %d sandboxes in state", n)
	}
}

// TestShutdownGraceEndsCallsClearly: calls still running when the grace period ends get a 503
// naming it — a one-shot run, an exec (plain, streamed and WebSocket) and a session cell —
// instead of a cut connection or a 410 from the sandbox's teardown, and the daemon exits soon
// after.
func TestShutdownGraceEndsCallsClearly(t *testing.T) {
	f := newFleet(t, "grace")
	state, cg := f.state, f.cg
	d := f.start(freeAddr(t), withArgs("--shutdown-grace 1s"))
	c := tenant{t: t, url: d.url}
	sb := c.mustCreate("/v1/sandboxes", `{"timeout":300}`).ID
	sess := c.mustCreate("/v1/sessions", `{"timeout":300}`).ID
	c.mustCell(sess, "x = 1")

	calls := []struct{ name, path, body string }{
		{"one-shot", "/v1/execute", `{"code":"import time; time.sleep(120)","timeout":200}`},
		{"exec", "/v1/sandboxes/" + sb + "/exec", `{"cmd":["sleep","120"]}`},
		{"cell", "/v1/sessions/" + sess + "/run", `{"code":"open('/workspace/started', 'w').close(); import time; time.sleep(120)","timeout":200}`},
	}
	type answer struct {
		name   string
		status int
		body   []byte
	}
	answers := make(chan answer, len(calls)+1)
	for _, cl := range calls {
		go func() {
			st, b := c.raw("POST", cl.path, cl.body)
			answers <- answer{cl.name, st, b}
		}()
	}
	// And a streamed exec, whose answer has begun: its end is an error event.
	req, _ := http.NewRequest("POST", d.url+"/v1/sandboxes/"+sb+"/exec", strings.NewReader(`{"cmd":["sh","-c","echo started; sleep 120"]}`))
	req.Header.Set("Accept", "application/x-ndjson")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() && !strings.Contains(sc.Text(), "started") {
	}
	// And a WebSocket exec: its end is an error event too.
	wsOut := make(chan string, 1)
	go func() { wsOut <- wsExec(t.Context(), d.url, "", sb, `{"cmd":["sleep","121"]}`) }()
	waitFor(t, "the calls to be running", func() bool {
		var ps api.ProcessList
		c.call("GET", "/v1/sandboxes/"+sb+"/processes", "", &ps)
		st, _ := c.raw("GET", "/v1/sandboxes/"+sess+"/files/stat?path=/workspace/started", "")
		return sandboxDirs(state) == 3 && len(ps.Processes) == 3 && st == 200
	})
	start := time.Now()
	exited := d.terminate()
	for range calls {
		a := <-answers
		var eb api.ErrorBody
		json.Unmarshal(a.body, &eb)
		if a.status != 503 || eb.Error.Code != api.CodeUnavailable || !strings.Contains(eb.Error.Message, "grace period") {
			t.Errorf("%s running past the grace period: %d %s, want 503 unavailable naming the grace period", a.name, a.status, a.body)
		}
	}
	var last string
	for sc.Scan() {
		last = sc.Text()
	}
	if !strings.Contains(last, `"type":"error"`) || !strings.Contains(last, "grace period") {
		t.Errorf("streamed exec running past the grace period ended with %q, want an error event naming the grace period", last)
	}
	if got := <-wsOut; !strings.HasPrefix(got, " error unavailable: ") || !strings.Contains(got, "grace period") {
		t.Errorf("WebSocket exec running past the grace period ended with %q, want an error event naming the grace period", got)
	}
	d.waitExit(exited)
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("daemon took %v to exit with a 1 s grace period", took)
	}
	waitNoProcsIn(t, cg) // --drain-on-stop (startDaemon's default)
}

// wsExec runs one exec over the WebSocket route and returns its stdout, a space, and how it
// ended ("exit N", "error CODE: MESSAGE" of an error event, or the read error).
func wsExec(ctx context.Context, base, key, id, req string) string {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	c, _, err := websocket.Dial(ctx, strings.Replace(base, "http", "ws", 1)+"/v1/sandboxes/"+id+"/exec/ws",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key}}})
	if err != nil {
		return "dial: " + err.Error()
	}
	defer c.CloseNow()
	c.Write(ctx, websocket.MessageText, []byte(req))
	var out strings.Builder
	for {
		typ, data, err := c.Read(ctx)
		if err != nil {
			return out.String() + " read: " + err.Error()
		}
		if typ == websocket.MessageBinary && len(data) > 0 && data[0] == api.WSStdout {
			out.Write(data[1:])
			continue
		}
		var ev api.ExecEvent
		json.Unmarshal(data, &ev)
		switch {
		case ev.Type == api.EventExit && ev.ExitCode != nil:
			return fmt.Sprintf("%s exit %d", out.String(), *ev.ExitCode)
		case ev.Type == api.EventError && ev.Error != nil:
			return out.String() + " error " + ev.Error.Code + ": " + ev.Error.Message
		}
	}
}
