package native

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func testRuntime(t *testing.T) *Runtime {
	t.Helper()
	start, err := procStartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	r := &Runtime{cfg: Config{HostDir: t.TempDir(), StateDir: t.TempDir(), UIDBase: 2000000, UIDSlots: 4096},
		selfStart: start, slots: map[int]string{}}
	if err := r.prepareHostDir(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.releaseHost(false) })
	return r
}

func TestUIDClaimFree(t *testing.T) {
	t.Parallel()
	const first = 2000000
	alive := func(r *Runtime) owner { return r.self("sb-other", 0) }
	dead := func(r *Runtime) owner { o := r.self("sb-gone", 0); o.Start++; return o }
	tests := []struct {
		name     string
		claimAt  int                  // first uid of an existing claim
		owner    func(*Runtime) owner // nil: garbage content
		sbExists bool                 // the claim's sandbox directory exists
		want     bool
	}{
		{name: "live owner, same range", claimAt: first, owner: alive, want: false},
		{name: "live owner, unaligned overlap above", claimAt: first + 30000, owner: alive, want: false},
		{name: "live owner, unaligned overlap below", claimAt: first - 65535, owner: alive, want: false},
		{name: "live owner, adjacent range", claimAt: first + 65536, owner: alive, want: true},
		{name: "dead owner, sandbox gone: stale", claimAt: first, owner: dead, want: true},
		{name: "dead owner, sandbox still there", claimAt: first, owner: dead, sbExists: true, want: false},
		{name: "unreadable claim: stale", claimAt: first, want: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := testRuntime(t)
			var b []byte = []byte("{garbage")
			if tc.owner != nil {
				o := tc.owner(r)
				o.FirstUID = tc.claimAt
				b, _ = json.Marshal(o)
				if tc.sbExists {
					os.MkdirAll(filepath.Join(o.StateDir, "sandboxes", o.Sandbox), 0o700)
				}
			}
			path := r.uidClaimPath(tc.claimAt)
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := r.uidClaimFree(first)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("free = %v, want %v", got, tc.want)
			}
			_, statErr := os.Stat(path)
			if stale := tc.want && tc.claimAt == first; stale != errors.Is(statErr, os.ErrNotExist) {
				t.Fatalf("stale claim removed = %v, want %v", errors.Is(statErr, os.ErrNotExist), stale)
			}
		})
	}
}

func TestLockFileNamesHolderAndReleases(t *testing.T) {
	t.Parallel()
	r := testRuntime(t)
	path := filepath.Join(r.cfg.HostDir, "x.lock")
	f, _, err := lockFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeOwner(f, r.self("", 0)); err != nil {
		t.Fatal(err)
	}
	_, _, err = lockFile(path)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second lock: %v, want ErrInUse naming pid %d", err, os.Getpid())
	}
	releaseLock(f, true)
	f2, prev, err := lockFile(path)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	defer releaseLock(f2, true)
	if len(prev) != 0 {
		t.Fatalf("a released and removed lock file kept content %q", prev)
	}
}
