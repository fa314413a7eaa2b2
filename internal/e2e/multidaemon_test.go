package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/testutil"
)

// Review finding M1: daemons (and `airlock run`) on one host must never destroy each other's
// sandboxes nor share host uids.

const hostDir = "/run/airlock" // native.Config.HostDir's default: the claims every process honours

// rootClaim is the host-wide claim file of a cgroup root.
func rootClaim(root string) string { return filepath.Join(hostDir, "cgroup-"+root+".lock") }

// cleanupRoot removes a test's cgroup root and, should a daemon have died holding it, its claim.
func cleanupRoot(t *testing.T, root string) {
	t.Cleanup(func() {
		removeCgroupRoot(root)
		os.Remove(rootClaim(root))
	})
}

// daemonRefuses starts a daemon that is expected to refuse to start, and returns what it printed.
// If it serves instead, the test fails and the daemon is stopped.
func daemonRefuses(t *testing.T, state, cgroupRoot string) string {
	t.Helper()
	exe, _ := os.Executable()
	addr := freeAddr(t)
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "AIRLOCK_E2E_DAEMON=serve --addr "+addr+" --state-dir "+state, "AIRLOCK_CGROUP_ROOT="+cgroupRoot)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	for {
		select {
		case <-exited:
			if cmd.ProcessState.Success() {
				t.Errorf("second daemon exited with status 0, want a refusal:\n%s", out.String())
			}
			return out.String()
		case <-time.After(20 * time.Millisecond):
		}
		if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
			resp.Body.Close()
			t.Errorf("a second daemon (state %s, cgroup root %s) started and serves, want it to refuse", state, cgroupRoot)
			cmd.Process.Signal(os.Interrupt)
			<-exited
			return out.String()
		}
	}
}

func mustExecEcho(t *testing.T, a *apiServer, id, what string) {
	t.Helper()
	var res api.ExecResult
	b := fmt.Sprintf(`{"cmd":["echo",%q]}`, what)
	if st := a.call("POST", "/v1/sandboxes/"+id+"/exec", strings.NewReader(b), &res); st != 200 || strings.TrimSpace(res.Stdout) != what {
		t.Fatalf("exec in daemon A's sandbox: status %d %+v, want %q", st, res, what)
	}
}

func TestSecondDaemonNeverKillsFirstsSandboxes(t *testing.T) {
	testutil.MustHaveRoot(t)
	root := fmt.Sprintf("airlock-md-%d", os.Getpid())
	cleanupRoot(t, root)
	stA, stB, stC := mkdirTraversable(t, "airlock-mdA-"), mkdirTraversable(t, "airlock-mdB-"), mkdirTraversable(t, "airlock-mdC-")
	dA := startDaemon(t, stA, root, freeAddr(t))
	t.Cleanup(dA.stop)
	a := &apiServer{t: t, url: dA.url}
	sb := a.create(`{"timeout":300}`)
	mustExecEcho(t, a, sb, "A alive")

	// The review's reproduction: daemon B, another state directory, the same cgroup root.
	out := daemonRefuses(t, stB, root)
	t.Logf("daemon B: %s", out)
	if want := "pid " + strconv.Itoa(dA.cmd.Process.Pid); !strings.Contains(out, want) {
		t.Errorf("second daemon on cgroup root %s said %q, want the holder named (%s)", root, out, want)
	}
	mustExecEcho(t, a, sb, "A alive")

	// Daemon C, another state directory and no cgroup root given: a root of its own.
	cRoot := native.DefaultCgroupRoot(stC)
	cleanupRoot(t, cRoot)
	dC := startDaemon(t, stC, "", freeAddr(t))
	c := &apiServer{t: t, url: dC.url}
	c.create(`{"timeout":300}`)
	if len(testutil.ProcsInCgroup(cRoot)) == 0 {
		t.Errorf("daemon C's sandbox is not under its derived cgroup root %s", cRoot)
	}
	mustExecEcho(t, a, sb, "A alive")
	dC.stop()

	// A graceful stop releases the claim (and the root) for the next owner.
	dA.stop()
	if _, err := os.Stat(rootClaim(root)); err == nil {
		t.Errorf("claim %s left after daemon A stopped", rootClaim(root))
	}
	if _, err := os.Stat(rootClaim(cRoot)); err == nil {
		t.Errorf("claim %s left after daemon C stopped", rootClaim(cRoot))
	}
}

func TestSecondDaemonOnSameStateDirRefused(t *testing.T) {
	testutil.MustHaveRoot(t)
	state := mkdirTraversable(t, "airlock-mdS-")
	rootA, rootB := fmt.Sprintf("airlock-mdsA-%d", os.Getpid()), fmt.Sprintf("airlock-mdsB-%d", os.Getpid())
	cleanupRoot(t, rootA)
	cleanupRoot(t, rootB)
	dA := startDaemon(t, state, rootA, freeAddr(t))
	t.Cleanup(dA.stop)
	out := daemonRefuses(t, state, rootB)
	t.Logf("second daemon: %s", out)
	if want := "pid " + strconv.Itoa(dA.cmd.Process.Pid); !strings.Contains(out, want) || !strings.Contains(out, state) {
		t.Errorf("second daemon on state directory %s said %q, want it to name the holder (%s)", state, out, want)
	}
}

// uidMap is a sandbox's /proc/self/uid_map: inside uid 0 → host uid first, count uids.
type uidMap struct{ first, count int }

func readUIDMap(t *testing.T, a *apiServer, id string) uidMap {
	t.Helper()
	res := a.exec(id, "cat", "/proc/self/uid_map")
	var in, m uidMap
	if _, err := fmt.Sscan(res.Stdout, &in.first, &m.first, &m.count); err != nil || in.first != 0 {
		t.Fatalf("uid_map %q: %v", res.Stdout, err)
	}
	return m
}

func (m uidMap) overlaps(o uidMap) bool {
	return m.first < o.first+o.count && o.first < m.first+m.count
}

func TestUIDRangesNeverOverlapAcrossRuntimes(t *testing.T) {
	mustEngine(t)
	// Two runtimes (as two daemons would be) with the same uid base and two ranges only: runtime
	// A takes both, so B has none until A frees one.
	const base, slots = 700000000, 2
	newRT := func(name string) *apiServer {
		root := fmt.Sprintf("airlock-uid%s-%d", name, os.Getpid())
		cleanupRoot(t, root)
		r, err := native.New(native.Config{StateDir: mkdirTraversable(t, "airlock-uid"+name+"-"), CgroupRoot: root,
			UIDBase: base, UIDSlots: slots})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return newAPIServer(t, engine.Config{Runtime: native.EngineRuntime(r)})
	}
	a, b := newRT("a"), newRT("b")
	a1, a2 := a.create(`{}`), a.create(`{}`)
	mA1, mA2 := readUIDMap(t, a, a1), readUIDMap(t, a, a2)
	if mA1.overlaps(mA2) {
		t.Fatalf("two sandboxes of one runtime share host uids: %+v %+v", mA1, mA2)
	}

	var eb api.ErrorBody
	st := b.call("POST", "/v1/sandboxes", strings.NewReader(`{}`), &eb)
	switch st {
	case 201:
		// Old behaviour: say which of A's ranges it shares.
		var list api.SandboxList
		b.call("GET", "/v1/sandboxes", nil, &list)
		for _, s := range list.Sandboxes {
			if m := readUIDMap(t, b, s.ID); m.overlaps(mA1) || m.overlaps(mA2) {
				t.Fatalf("runtime B's sandbox got host uids %+v, overlapping runtime A's %+v and %+v", m, mA1, mA2)
			}
		}
		t.Fatalf("runtime B got a uid range while A holds all %d", slots)
	case 429:
	default:
		t.Fatalf("create with every uid range claimed: %d %+v, want 429 resource_exhausted", st, eb)
	}

	// A frees one range; B gets exactly that one, and A's other sandbox keeps its own.
	if st := a.call("DELETE", "/v1/sandboxes/"+a1, nil, nil); st != 200 {
		t.Fatalf("delete: %d", st)
	}
	b1 := b.create(`{}`)
	if mB := readUIDMap(t, b, b1); mB.overlaps(mA2) || mB != mA1 {
		t.Fatalf("runtime B's sandbox got host uids %+v; A's live sandbox has %+v, the freed range was %+v", mB, mA2, mA1)
	}
}
