//go:build linux

package seccomp

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Install sets PR_SET_NO_NEW_PRIVS and installs the filter returned by
// Program with SECCOMP_FILTER_FLAG_TSYNC, so that every thread of the
// (multi-threaded Go) process gets it; children inherit it across fork and
// exec. Neither can be undone. It needs no privilege. The error names the
// step that failed. Calling Install again stacks a second, identical filter.
func Install(o Options) error {
	prog, err := compiled()
	if o.AllowClone3 {
		prog, err = compiledClone3()
	}
	if err != nil {
		return fmt.Errorf("build filter: %w", err)
	}

	// no_new_privs is per thread. TSYNC copies it to the other threads, but
	// only from the thread that calls seccomp, and without it seccomp needs
	// CAP_SYS_ADMIN; so both calls must happen on the same thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	tid, _, errno := unix.Syscall(unix.SYS_SECCOMP,
		unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC,
		uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(prog)
	if errno != 0 {
		return fmt.Errorf("install seccomp filter: %w", errno)
	}
	if tid != 0 {
		// With TSYNC a positive return is the ID of a thread whose filters
		// are not an ancestor of the caller's, and nothing was installed.
		return fmt.Errorf("install seccomp filter: thread %d cannot be synchronized", tid)
	}
	return nil
}
