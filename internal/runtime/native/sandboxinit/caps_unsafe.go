//go:build linux

package sandboxinit

import (
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// agentCaps are all the agent keeps, inside its own user namespace only: enough to start
// processes as the sandbox user, signal them, and manage files on the API's behalf. Every
// process the agent starts switches to the sandbox uid, which clears them.
var agentCaps = []uintptr{
	unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_FOWNER, unix.CAP_KILL,
	unix.CAP_SETGID, unix.CAP_SETUID,
}

// dropCapabilities clears the ambient set and reduces the effective and permitted sets to
// agentCaps, on every thread of the process (a Go program is multi-threaded and capabilities are
// per thread; each AllThreadsSyscall stops the world once).
func dropCapabilities() error {
	if _, _, e := syscall.AllThreadsSyscall(syscall.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0); e != 0 {
		switch {
		case e == syscall.ENOTSUP:
			return &SetupError{Step: "drop capabilities", Msg: "binary built with cgo; build with CGO_ENABLED=0"}
		case e == syscall.EINVAL && noAmbientSet():
			// A kernel without ambient capabilities (gVisor's) has none to clear.
		default:
			return step("clear ambient capabilities", e)
		}
	}
	var data [2]unix.CapUserData
	for _, c := range agentCaps {
		data[c/32].Effective |= 1 << (c % 32)
		data[c/32].Permitted |= 1 << (c % 32)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	if _, _, e := syscall.AllThreadsSyscall(syscall.SYS_CAPSET,
		uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return step("capset", e)
	}
	return nil
}

// noAmbientSet reports whether the kernel lacks ambient capabilities: PR_CAP_AMBIENT_IS_SET
// is refused too.
func noAmbientSet() bool {
	_, err := unix.PrctlRetInt(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_IS_SET, 0, 0, 0)
	return err == unix.EINVAL
}

func lastCap() (uintptr, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if errors.Is(err, os.ErrNotExist) {
		// gVisor's /proc has no cap_last_cap (the gvisor runtime's agent locks itself down
		// with these steps): the last capability is the last one PR_CAPBSET_READ knows.
		c := uintptr(0)
		for ; c < 63; c++ {
			if _, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, c+1, 0, 0, 0); err != nil {
				break
			}
		}
		return c, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 63 {
		return 0, errors.New("bad cap_last_cap")
	}
	return uintptr(n), nil
}

// startSpawner starts the one thread from which the agent forks every user process, and empties
// that thread's capability bounding set, so each process it starts has an empty bounding set and
// can never regain a capability. Emptying the set on this thread alone (the set is per thread
// and inherited by fork) costs ~41 prctl calls instead of that many stop-the-world rounds over
// every thread. It must run while the process still has CAP_SETPCAP, before dropCapabilities.
//
// On cgroup v1, tasks are the user cgroup's "tasks" files: the thread moves itself (alone) into
// the user group, so every process it forks is born there and never runs in the agent's group;
// the files are closed.
//
// With offMain the thread is never the process's main thread: on v1 a process's memory is
// charged to the memory cgroup of its main thread (the mm's owner), so a spawner there would put
// every page of the agent's under the user's limit. A goroutine that locks its thread may be
// given the main one; it then holds it while the spawner starts on another, and lets it go. The
// native init asks for it. gVisor's guest does not: the host charges a gVisor sandbox's memory
// as a whole, and with it its fork-bomb test lost the agent under load (not yet understood).
func startSpawner(tasks []*os.File, offMain bool) (spawn func(func()), err error) {
	last, err := lastCap()
	if err != nil {
		return nil, step("read cap_last_cap", err)
	}
	work := make(chan func())
	ready := make(chan error, 1)
	serve := func() {
		for c := uintptr(0); c <= last; c++ {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil {
				ready <- step("drop bounding capability "+strconv.Itoa(int(c)), err)
				return
			}
		}
		for _, f := range tasks {
			_, err := f.Write([]byte("0")) // 0: the writing thread
			f.Close()
			if err != nil {
				ready <- step("join user cgroup", err)
				return
			}
		}
		ready <- nil
		for fn := range work {
			fn()
		}
	}
	go func() {
		runtime.LockOSThread() // never unlocked on the spawner: the thread's state is its reason to exist
		if !offMain || unix.Gettid() != unix.Getpid() {
			serve()
			return
		}
		moved := make(chan struct{})
		go func() {
			runtime.LockOSThread() // not the main thread: this goroutine's caller holds it
			close(moved)
			serve()
		}()
		<-moved
		runtime.UnlockOSThread()
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return func(fn func()) {
		done := make(chan struct{})
		work <- func() { fn(); close(done) }
		<-done
	}, nil
}
