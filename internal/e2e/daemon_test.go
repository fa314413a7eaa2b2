package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/testutil"
)

// daemon is this test binary running `airlock serve` in a child process.
type daemon struct {
	t    *testing.T
	cmd  *exec.Cmd
	url  string
	addr string
	log  string // the file its stdout and stderr go to
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startDaemon starts the daemon and waits until it serves; opts adjust the command first (extra
// inherited files, environment). It drains on stop (--drain-on-stop), so that a test's stop
// leaves nothing behind; restart_test.go's keepOnStop undoes that.
func startDaemon(t *testing.T, state, cgroupRoot, addr string, opts ...func(*exec.Cmd)) *daemon {
	t.Helper()
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "AIRLOCK_E2E_DAEMON=serve --drain-on-stop --addr "+addr+" --state-dir "+state,
		"AIRLOCK_CGROUP_ROOT="+cgroupRoot)
	for _, o := range opts {
		o(cmd)
	}
	logf, _ := os.Create(filepath.Join(t.TempDir(), "daemon.log"))
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("daemon log:\n%s", b)
		}
	})
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, cmd: cmd, url: "http://" + addr, addr: addr, log: logf.Name()}
	// A test that fails before it stops its daemon must not leave it running (with its
	// sandboxes and zygotes): stopped as stop would, killed if it does not go.
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			d.exited(d.terminate())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(d.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			return d
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("daemon did not come up: %v\n%s", err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *daemon) kill() {
	d.cmd.Process.Signal(syscall.SIGKILL)
	d.cmd.Wait()
}

func (d *daemon) stop() {
	if !d.exited(d.terminate()) {
		d.t.Fatal("daemon did not stop on SIGTERM")
	}
}

// exited waits up to 30 s for a terminated daemon (done, from terminate) to exit, then kills it;
// it says whether it exited on its own.
func (d *daemon) exited(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-done
		return false
	}
}

func postJSON(t *testing.T, url, body string, out any) int {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		decodeJSON(t, resp, out)
	}
	return resp.StatusCode
}

func TestDaemonCrashLeavesNothingBehind(t *testing.T) {
	testutil.MustHaveRoot(t)
	state, err := os.MkdirTemp("", "airlock-crash-") // t.TempDir's parent is 0700: not traversable
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	cg := fmt.Sprintf("airlock-crash-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	addr := freeAddr(t)
	// No warm pool: the test counts the sandboxes in the state directory (TestPoolDaemonRestart
	// is the crash with pooled sandboxes).
	d := startDaemon(t, state, cg, addr, noPool, zygoteOff)

	var sb api.SandboxInfo
	if code := postJSON(t, d.url+"/v1/sandboxes", `{"timeout":120}`, &sb); code != 201 {
		t.Fatalf("create: %d", code)
	}
	postJSON(t, d.url+"/v1/sandboxes/"+sb.ID+"/exec", `{"cmd":["sh","-c","echo kept > /workspace/marker"]}`, nil)
	// A streamed exec is running when the daemon is killed.
	req, _ := http.NewRequest("POST", d.url+"/v1/sandboxes/"+sb.ID+"/exec",
		strings.NewReader(`{"cmd":["sh","-c","echo started; sleep 600"]}`))
	req.Header.Set("Accept", "application/x-ndjson")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() && !strings.Contains(sc.Text(), "started") {
	}
	// And a one-shot run, whose sandbox a restarted daemon must destroy.
	go http.Post(d.url+"/v1/execute", "application/json", strings.NewReader(`{"code":"import time; time.sleep(600)","timeout":300}`))
	waitFor(t, "one-shot sandbox to start", func() bool {
		ents, _ := os.ReadDir(filepath.Join(state, "sandboxes"))
		return len(ents) == 2
	})
	d.kill()
	resp.Body.Close()
	if len(testutil.ProcsInCgroup(cg)) == 0 {
		t.Fatal("sandboxes should outlive a daemon crash (the restarted daemon adopts them)")
	}

	d = startDaemon(t, state, cg, addr, noPool, zygoteOff)
	var info api.SandboxInfo
	r2, err := http.Get(d.url + "/v1/sandboxes/" + sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	decodeJSON(t, r2, &info)
	if info.Status != api.StatusRunning {
		t.Fatalf("after restart the sandbox is %q, want running", info.Status)
	}
	var res api.ExecResult
	postJSON(t, d.url+"/v1/sandboxes/"+sb.ID+"/exec", `{"cmd":["cat","/workspace/marker"]}`, &res)
	if strings.TrimSpace(res.Stdout) != "kept" {
		t.Fatalf("adopted sandbox lost its state: %+v", res)
	}
	ents, _ := os.ReadDir(filepath.Join(state, "sandboxes"))
	if len(ents) != 1 {
		t.Fatalf("the one-shot sandbox of the crashed daemon was not cleaned up: %d sandboxes in state", len(ents))
	}

	// Terminating a sandbox during an exec ends the stream with a clear status.
	req, _ = http.NewRequest("POST", d.url+"/v1/sandboxes/"+sb.ID+"/exec", strings.NewReader(`{"cmd":["sh","-c","echo started; sleep 600"]}`))
	req.Header.Set("Accept", "application/x-ndjson")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sc = bufio.NewScanner(resp.Body)
	for sc.Scan() && !strings.Contains(sc.Text(), "started") {
	}
	delReq, _ := http.NewRequest("DELETE", d.url+"/v1/sandboxes/"+sb.ID, nil)
	if r, err := http.DefaultClient.Do(delReq); err != nil || r.StatusCode != 200 {
		t.Fatalf("delete: %v %v", r, err)
	}
	var last string
	for sc.Scan() {
		last = sc.Text()
	}
	resp.Body.Close()
	if !strings.Contains(last, `"type":"error"`) || !strings.Contains(last, `"gone"`) {
		t.Fatalf("exec stream of a terminated sandbox ended with %q, want an error event with code gone", last)
	}

	d.stop()
	waitNoProcsIn(t, cg)
	if m := testutil.MountsUnder(state); len(m) != 0 {
		t.Fatalf("mounts left: %v", m)
	}
	for _, ctl := range []string{"memory", "pids", "cpu"} {
		ents, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", ctl, cg))
		for _, e := range ents {
			if e.IsDir() {
				t.Fatalf("cgroup left: %s/%s/%s", ctl, cg, e.Name())
			}
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(state, "sandboxes")); len(ents) != 0 {
		t.Fatalf("state left: %v", ents)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var _ = context.Background

// removeCgroupRoot removes a (by then empty) top-level cgroup a test's daemon used, in every
// hierarchy.
func removeCgroupRoot(name string) {
	if !strings.HasSuffix(name, "-gvisor") {
		defer removeCgroupRoot(name + "-gvisor") // the daemon's gvisor runtime's, beside it
	}
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", name))
	if d := filepath.Join("/sys/fs/cgroup", name); dirExists(d) {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		os.Remove(d)
	}
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
