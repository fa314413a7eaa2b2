// Package testutil holds test helpers: privilege gates that cannot hide failures in strict mode,
// and leak checks for processes left on the host.
package testutil

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Strict reports whether skips are failures (AIRLOCK_TEST_STRICT=1, set in CI).
func Strict() bool { return os.Getenv("AIRLOCK_TEST_STRICT") == "1" }

// skip skips t with reason, or fails it in strict mode.
func skip(t testing.TB, reason string) {
	t.Helper()
	if Strict() {
		t.Fatalf("AIRLOCK_TEST_STRICT=1 and %s", reason)
	}
	t.Skip(reason)
}

// MustHaveRoot skips (or fails, in strict mode) unless the test runs as root.
func MustHaveRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skip(t, "test needs root (namespaces, cgroups, mounts)")
	}
}

// MustHaveFile skips (or fails, in strict mode) unless path exists; pkg is the Debian package
// that provides it (scripts/test installs it).
func MustHaveFile(t testing.TB, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		skip(t, fmt.Sprintf("needs %s (Debian package %s)", path, pkg))
	}
}

// MustHaveTool returns the path of the program tool (a name looked up on PATH, or a path), or
// skips (fails, in strict mode) without it; pkg is the Debian package that provides it.
func MustHaveTool(t testing.TB, tool, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		skip(t, fmt.Sprintf("needs %s (Debian package %s)", tool, pkg))
	}
	return path
}

// MustHaveCgroupV2 skips (or fails, in strict mode) unless /sys/fs/cgroup is a cgroup2 mount.
// On a cgroup v1 or hybrid host it skips even in strict mode, with the reason, since the host
// cannot provide it.
func MustHaveCgroupV2(t testing.TB) {
	t.Helper()
	if !cgroup2Mounted() {
		t.Skip("host runs cgroup v1 (or hybrid): /sys/fs/cgroup is not a cgroup2 mount")
	}
}

// HostPids returns the pids of /proc for which keep, given the pid's /proc directory, says yes.
func HostPids(keep func(dir string) bool) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err == nil && keep(filepath.Join("/proc", e.Name())) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ProcsInCgroup returns host pids that sit in a cgroup below root (a top-level cgroup name such
// as a runtime's CgroupRoot), on cgroup v1 or v2.
func ProcsInCgroup(root string) []int {
	return HostPids(func(dir string) bool {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup"))
		return err == nil && strings.Contains(string(b), "/"+root+"/")
	})
}

// MountsUnder returns host mount points under dir (from /proc/self/mountinfo).
func MountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

// HeapInUse returns the Go heap in use after a garbage collection.
func HeapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// ServeTCP serves handle for each connection to a loopback port of its own, which it returns;
// the listener closes, and every handler is waited for, when the test ends. handle's
// connection is closed after it returns.
func ServeTCP(t testing.TB, handle func(net.Conn)) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); handle(c) })
		}
	})
	return ln.Addr().(*net.TCPAddr)
}
