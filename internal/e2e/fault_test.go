package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/testutil"
)

// Issue 12's fault tests: an agent killed mid-call, a daemon killed mid-call, a full state
// directory. Each answer is a clear 4xx/503, never a 500, and nothing is lost that outlives
// the fault.

// agentPid is the host pid of sandbox id's PID 1, its agent, from the runtime's state file.
func agentPid(t *testing.T, state, id string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(state, "sandboxes", id, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Pid <= 1 {
		t.Fatalf("state of %s: %q %v", id, b, err)
	}
	return st.Pid
}

// startedFile is a cell or command's mark that it runs, polled through the files API.
const startedFile = "/workspace/started"

func (c tenant) started(id string) bool {
	st, _ := c.raw("GET", "/v1/sandboxes/"+id+"/files/stat?path="+startedFile, "")
	return st == 200
}

// wantGone checks an answer is 410 gone naming the sandbox's death.
func wantGone(t *testing.T, what string, status int, body []byte) {
	t.Helper()
	var eb api.ErrorBody
	json.Unmarshal(body, &eb)
	if status != http.StatusGone || eb.Error.Code != api.CodeGone || !strings.Contains(eb.Error.Message, "died") {
		t.Errorf("%s whose agent was SIGKILLed: %d %s, want 410 gone saying the sandbox died", what, status, body)
	}
}

// TestFaultAgentKilledMidCall: SIGKILL of a sandbox's agent while an exec (plain or streamed)
// or a session cell runs answers 410 "sandbox … ended (died)", never a 500; the daemon serves on.
func TestFaultAgentKilledMidCall(t *testing.T) {
	f := newFleet(t, "fagent")
	state := f.state
	d := f.start(freeAddr(t))
	t.Cleanup(d.stop)
	c := tenant{t: t, url: d.url}
	cases := []struct {
		name   string
		create string // the route that makes its sandbox
		path   string // the call, under /v1/sandboxes/{id} or /v1/sessions/{id}
		body   string
		stream bool
	}{
		{"exec", "/v1/sandboxes", "/v1/sandboxes/%s/exec", `{"cmd":["sh","-c","touch ` + startedFile + `; sleep 600"]}`, false},
		{"streamed exec", "/v1/sandboxes", "/v1/sandboxes/%s/exec", `{"cmd":["sh","-c","touch ` + startedFile + `; sleep 600"]}`, true},
		{"cell", "/v1/sessions", "/v1/sessions/%s/run", `{"code":"open('` + startedFile + `', 'w').close(); import time; time.sleep(600)","timeout":250}`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := tenant{t: t, url: c.url}
			id := c.mustCreate(tc.create, `{"timeout":300}`).ID
			req, _ := http.NewRequest("POST", d.url+strings.Replace(tc.path, "%s", id, 1), strings.NewReader(tc.body))
			if tc.stream {
				req.Header.Set("Accept", "application/x-ndjson")
			}
			type answer struct {
				status int
				body   []byte
				err    error
			}
			answered := make(chan answer, 1)
			go func() {
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					answered <- answer{err: err}
					return
				}
				defer resp.Body.Close()
				var a answer
				a.status = resp.StatusCode
				sc := bufio.NewScanner(resp.Body)
				for sc.Scan() {
					a.body = append([]byte(nil), sc.Bytes()...) // the last line: the whole answer, or the stream's end
				}
				answered <- a
			}()
			waitFor(t, tc.name+" to run", func() bool { return c.started(id) })
			if err := syscall.Kill(agentPid(t, state, id), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			a := <-answered
			if a.err != nil {
				t.Fatalf("%s whose agent was SIGKILLed: %v, want an answer", tc.name, a.err)
			}
			if tc.stream {
				var ev api.ExecEvent
				json.Unmarshal(a.body, &ev)
				if ev.Type != api.EventError || ev.Error == nil || ev.Error.Code != api.CodeGone || !strings.Contains(ev.Error.Message, "died") {
					t.Errorf("streamed exec whose agent was SIGKILLed ended with %s, want an error event: gone, died", a.body)
				}
			} else {
				wantGone(t, tc.name, a.status, a.body)
			}
			// The sandbox is gone for good, and says why.
			st, b := c.raw("POST", strings.Replace(tc.path, "%s", id, 1), tc.body)
			wantGone(t, "the next call in a sandbox", st, b)
		})
	}
	if st, _ := c.raw("GET", "/healthz", ""); st != 200 {
		t.Fatalf("daemon after its sandboxes' agents were killed: /healthz %d", st)
	}
	c.mustCreate("/v1/sandboxes", `{"timeout":60}`)
}

// TestFaultDaemonKilledMidCall: SIGKILL of the daemon while an exec and a cell run, then a
// restart: the sandbox keeps its files, the session and the seed session their variables, and
// both are usable at once (the cut cell was interrupted, not left running).
func TestFaultDaemonKilledMidCall(t *testing.T) {
	f := newFleet(t, "fdaemon")
	addr := freeAddr(t)
	d := f.start(addr)
	c := tenant{t: t, url: d.url}
	sb := c.mustCreate("/v1/sandboxes", `{"timeout":300}`).ID
	c.mustExec(sb, "sh", "-c", "echo kept > /workspace/marker")
	sess := c.mustCreate("/v1/sessions", `{"timeout":300}`).ID
	c.mustCell(sess, "x = 41")
	c.mustSeed("work", "y = 'seeded'")

	// Their answers are cut by the kill; nobody reads them.
	go http.Post(d.url+"/v1/sandboxes/"+sb+"/exec", "application/json", strings.NewReader(`{"cmd":["sh","-c","touch `+startedFile+`; sleep 600"]}`))
	go http.Post(d.url+"/v1/sessions/"+sess+"/run", "application/json", strings.NewReader(`{"code":"open('`+startedFile+`', 'w').close(); import time; time.sleep(600)","timeout":250}`))
	waitFor(t, "the exec and the cell to run", func() bool { return c.started(sb) && c.started(sess) })
	d.kill()

	d = f.start(addr)
	t.Cleanup(d.stop)
	c.url = d.url
	if got := strings.TrimSpace(c.mustExec(sb, "cat", "/workspace/marker")); got != "kept" {
		t.Errorf("file written before the daemon was killed reads %q, want kept", got)
	}
	if got := strings.TrimSpace(c.mustCell(sess, "print(x + 1)")); got != "42" {
		t.Errorf("variable set before the daemon was killed: print(x + 1) = %q, want 42", got)
	}
	if got := strings.TrimSpace(c.mustSeed("work", "print(y)")); got != "seeded" {
		t.Errorf("seed session after the daemon was killed: print(y) = %q, want seeded", got)
	}
}

// TestFaultStateDirFull: with the state directory's file system full, creating a sandbox, a
// session, a seed session or a one-shot run answers 503 naming the cause (it was a 500); the
// daemon serves on, and once space returns the same requests succeed.
func TestFaultStateDirFull(t *testing.T) {
	testutil.MustHaveRoot(t)
	f := newFleet(t, "ffull")
	state := f.state
	if err := unix.Mount("tmpfs", state, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=16m,mode=0755"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(state, unix.MNT_DETACH) })
	d := f.start(freeAddr(t))
	t.Cleanup(d.stop)
	c := tenant{t: t, url: d.url}
	kept := c.mustCreate("/v1/sandboxes", `{"timeout":300}`).ID

	fill := filepath.Join(state, "fill")
	fw, err := os.Create(fill)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for {
		if _, err = fw.Write(chunk); err != nil {
			break
		}
	}
	fw.Close()
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the state directory: %v, want ENOSPC", err)
	}
	for i := 0; i < 64; i++ { // the last pages and inodes
		if os.WriteFile(filepath.Join(state, "fill-"+string(rune('a'+i%26))+string(rune('a'+i/26))), chunk[:4096], 0o600) != nil {
			break
		}
	}

	calls := []struct{ name, path, body string }{
		{"sandbox", "/v1/sandboxes", `{"timeout":60}`},
		{"session", "/v1/sessions", `{"timeout":60}`},
		{"seed session", "/repl/execute", `{"session_id":"full","code":"print(1)"}`},
		{"one-shot run", "/v1/execute", `{"code":"print(1)"}`},
	}
	for _, cl := range calls {
		st, b := c.raw("POST", cl.path, cl.body)
		var eb api.ErrorBody
		json.Unmarshal(b, &eb)
		if st != http.StatusServiceUnavailable || eb.Error.Code != api.CodeUnavailable || !strings.Contains(eb.Error.Message, "no space left on the daemon's state directory") {
			t.Errorf("%s with the state directory full: %d %s, want 503 naming the full state directory", cl.name, st, b)
		}
	}
	// What lives on keeps working meanwhile.
	if got := strings.TrimSpace(c.mustExec(kept, "echo", "alive")); got != "alive" {
		t.Errorf("exec in a sandbox made before the disk filled: %q", got)
	}

	matches, _ := filepath.Glob(filepath.Join(state, "fill*"))
	for _, m := range matches {
		os.Remove(m)
	}
	for _, cl := range calls {
		if st, b := c.raw("POST", cl.path, cl.body); st != 200 && st != 201 {
			t.Errorf("%s once space returned: %d %s, want success", cl.name, st, b)
		}
	}
}
