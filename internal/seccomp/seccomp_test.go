//go:build linux && (amd64 || arm64)

package seccomp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/testutil"
)

// The tests below install the real filter, which cannot be removed, so they
// run each case in a re-executed copy of the test binary. TestMain sees
// childEnv and runs that case instead of the tests.
const (
	childEnv  = "AIRLOCK_SECCOMP_CHILD"  // name of the case to run in this process
	filterEnv = "AIRLOCK_SECCOMP_FILTER" // "0" runs the case without the filter
	benchNEnv = "AIRLOCK_SECCOMP_BENCH_N"
)

// Child exit codes other than 0 (the case ran and its outcome is on stdout).
const (
	exitUnknownCase = 2
	exitInstall     = 3
)

// childTimeout bounds one child; the slowest case starts Python.
const childTimeout = 30 * time.Second

func init() {
	if _, ok := os.LookupEnv(childEnv); ok {
		// Keep the child's main goroutine, which runs the case, on the main
		// thread. Should the filter wrongly let PTRACE_TRACEME through, the
		// traced thread is then the thread-group leader, which the parent's
		// wait reaps; a traced non-leader thread would stay a zombie that only
		// a wait for that thread ID releases, and the parent would hang.
		runtime.LockOSThread()
	}
}

func TestMain(m *testing.M) {
	if name, ok := os.LookupEnv(childEnv); ok {
		os.Exit(runChild(name, os.Getenv(filterEnv) != "0"))
	}
	os.Exit(m.Run())
}

// childCase is one syscall-level check, run in a child process.
type childCase struct {
	name string
	run  func() error
	// want is the errno run must return under the filter; 0 means success.
	want unix.Errno
	// control marks a case that is harmless without the filter.
	// TestCasesNeedFilter runs those unfiltered and checks they do not get
	// want, so that a case cannot pass without the filter doing the work.
	control bool
	// root marks a case that needs root for reasons unrelated to the filter.
	root bool
}

// Arguments chosen so that, should the filter let the call through, the
// kernel fails it harmlessly with an error other than EPERM.
const (
	noSuchPath       = "/nonexistent/airlock-seccomp-test"
	noSuchPID        = 1<<31 - 1 // above any pid_max
	badFD            = ^uintptr(0)
	kcmpVM           = 1  // KCMP_VM
	kexecMaxSegments = 16 // KEXEC_SEGMENT_MAX
	syslogSizeBuffer = 10 // SYSLOG_ACTION_SIZE_BUFFER
)

// cloneMustFail are flags the kernel rejects with EINVAL before looking at
// anything else (shared signal handlers without a shared VM), so a clone the
// filter wrongly let through still cannot create a process.
const cloneMustFail = unix.CLONE_SIGHAND

func childCases() []childCase {
	cases := []childCase{
		// Positive cases: the workloads a sandbox runs must work.
		{name: "getpid", run: func() error { return rawSyscall(unix.SYS_GETPID) }},
		{name: "exec-true", run: func() error { return command("/bin/true").Run() }},
		{name: "exec-bash", run: func() error {
			return commandOutput(func(out string) error {
				if n, err := strconv.Atoi(out); err != nil || n < 1 {
					return fmt.Errorf("got output %q, want a positive count", out)
				}
				return nil
			}, "/bin/bash", "-c", "ls / | wc -l")
		}},
		{name: "exec-python", run: func() error {
			return commandOutput(func(out string) error {
				if out != "1" {
					return fmt.Errorf("got output %q, want 1", out)
				}
				return nil
			}, "/usr/bin/python3", "-c", pythonProbe)
		}},
		{name: "exec-as-uid-1000", root: true, run: func() error {
			cmd := command("/usr/bin/id", "-u")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000, Groups: []uint32{}}}
			return checkOutput(cmd, func(out string) error {
				if out != "1000" {
					return fmt.Errorf("got uid %q, want 1000", out)
				}
				return nil
			})
		}},
		{name: "tcp-loopback", run: tcpLoopback},
		{name: "modern-syscalls", run: modernSyscalls},
		{name: "all-threads", run: checkAllThreads},
		{name: "socket-inet-stream", run: func() error { return socket(unix.AF_INET, unix.SOCK_STREAM, 0) }},
		{name: "socket-inet6-dgram", run: func() error { return socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0) }},
		{name: "socket-unix", run: func() error { return socket(unix.AF_UNIX, unix.SOCK_STREAM, 0) }},
		{name: "socket-netlink-route", run: func() error {
			return socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		}},
		{name: "personality-query", run: func() error { return rawSyscall(unix.SYS_PERSONALITY, 0xffffffff) }},
		// These reach the kernel, which rejects the arguments.
		{name: "ioctl-tcgets", run: func() error { return ioctlDevNull(unix.TCGETS) }, want: unix.ENOTTY},
		{name: "clone-plain", run: func() error { return rawSyscall(unix.SYS_CLONE, cloneMustFail) }, want: unix.EINVAL},

		// Refused by the filter.
		{name: "unshare-newuser", run: func() error { return unix.Unshare(unix.CLONE_NEWUSER) }, want: unix.EPERM, control: true},
		{name: "unshare-newns", run: func() error { return unix.Unshare(unix.CLONE_NEWNS) }, want: unix.EPERM, control: true},
		{name: "setns", run: func() error { return unix.Setns(-1, 0) }, want: unix.EPERM, control: true},
		{name: "clone3", run: func() error { return rawSyscall(unix.SYS_CLONE3, 0, 0) }, want: unix.ENOSYS, control: true},
		// A NULL context pointer: EFAULT without the filter.
		{name: "io_setup", run: func() error { return rawSyscall(unix.SYS_IO_SETUP, 1, 0) }, want: unix.ENOSYS, control: true},
		{name: "mount", run: func() error { return unix.Mount("none", noSuchPath, "tmpfs", 0, "") }, want: unix.EPERM, control: true},
		{name: "umount2", run: func() error { return unix.Unmount(noSuchPath, 0) }, want: unix.EPERM, control: true},
		{name: "pivot_root", run: func() error { return unix.PivotRoot(noSuchPath, noSuchPath) }, want: unix.EPERM, control: true},
		{name: "chroot", run: func() error { return unix.Chroot(noSuchPath) }, want: unix.EPERM, control: true},
		{name: "mount_setattr", run: func() error { return rawSyscall(unix.SYS_MOUNT_SETATTR, badFD, 0, 0, 0, 0) }, want: unix.EPERM, control: true},
		{name: "move_mount", run: func() error { return rawSyscall(unix.SYS_MOVE_MOUNT, badFD, 0, badFD, 0, 0) }, want: unix.EPERM, control: true},
		{name: "open_tree", run: func() error { return rawSyscall(unix.SYS_OPEN_TREE, badFD, 0, 0) }, want: unix.EPERM, control: true},
		{name: "fsopen", run: func() error { return rawSyscall(unix.SYS_FSOPEN, 0, 0) }, want: unix.EPERM, control: true},
		{name: "fsconfig", run: func() error { return rawSyscall(unix.SYS_FSCONFIG, badFD, 0, 0, 0, 0) }, want: unix.EPERM, control: true},
		{name: "fsmount", run: func() error { return rawSyscall(unix.SYS_FSMOUNT, badFD, 0, 0) }, want: unix.EPERM, control: true},
		{name: "fspick", run: func() error { return rawSyscall(unix.SYS_FSPICK, badFD, 0, 0) }, want: unix.EPERM, control: true},
		// Without the filter PTRACE_TRACEME succeeds and the child becomes a
		// tracee of the test runner, so it has no control run.
		{name: "ptrace-traceme", run: func() error { return rawSyscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME) }, want: unix.EPERM},
		{name: "ptrace-peek", run: func() error { return rawSyscall(unix.SYS_PTRACE, unix.PTRACE_PEEKDATA, noSuchPID, 0, 0) }, want: unix.EPERM, control: true},
		{name: "process_vm_readv", run: func() error { return rawSyscall(unix.SYS_PROCESS_VM_READV, uintptr(os.Getpid()), 0, 0, 0, 0, 0) }, want: unix.EPERM, control: true},
		{name: "process_vm_writev", run: func() error { return rawSyscall(unix.SYS_PROCESS_VM_WRITEV, uintptr(os.Getpid()), 0, 0, 0, 0, 0) }, want: unix.EPERM, control: true},
		{name: "kcmp", run: func() error { return rawSyscall(unix.SYS_KCMP, uintptr(os.Getpid()), uintptr(os.Getpid()), kcmpVM) }, want: unix.EPERM, control: true},
		{name: "pidfd_getfd", run: func() error { return rawSyscall(unix.SYS_PIDFD_GETFD, badFD, 0, 0) }, want: unix.EPERM, control: true},
		{name: "keyctl", run: keyctl, want: unix.EPERM, control: true},
		{name: "add_key", run: func() error { return rawSyscall(unix.SYS_ADD_KEY, 0, 0, 0, 0, 0) }, want: unix.EPERM, control: true},
		{name: "request_key", run: func() error { return rawSyscall(unix.SYS_REQUEST_KEY, 0, 0, 0, 0) }, want: unix.EPERM, control: true},
		{name: "bpf", run: func() error { return rawSyscall(unix.SYS_BPF, 0xffff, 0, 0) }, want: unix.EPERM, control: true},
		{name: "perf_event_open", run: func() error { return rawSyscall(unix.SYS_PERF_EVENT_OPEN, 0, badFD, badFD, badFD, 0) }, want: unix.EPERM, control: true},
		{name: "userfaultfd", run: func() error { return rawSyscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC) }, want: unix.EPERM, control: true},
		{name: "io_uring_setup", run: func() error { return rawSyscall(unix.SYS_IO_URING_SETUP, 1, 0) }, want: unix.EPERM, control: true},
		{name: "io_uring_enter", run: func() error { return rawSyscall(unix.SYS_IO_URING_ENTER, badFD, 0, 0, 0, 0, 0) }, want: unix.EPERM, control: true},
		{name: "io_uring_register", run: func() error { return rawSyscall(unix.SYS_IO_URING_REGISTER, badFD, 0, 0, 0) }, want: unix.EPERM, control: true},
		{name: "fanotify_init", run: func() error { return rawSyscall(unix.SYS_FANOTIFY_INIT, 0xffffffff, 0) }, want: unix.EPERM, control: true},
		{name: "init_module", run: func() error { return rawSyscall(unix.SYS_INIT_MODULE, 0, 0, 0) }, want: unix.EPERM, control: true},
		{name: "finit_module", run: func() error { return rawSyscall(unix.SYS_FINIT_MODULE, badFD, 0, 0) }, want: unix.EPERM, control: true},
		{name: "delete_module", run: func() error { return rawSyscall(unix.SYS_DELETE_MODULE, 0, 0) }, want: unix.EPERM, control: true},
		{name: "kexec_load", run: func() error { return rawSyscall(unix.SYS_KEXEC_LOAD, 0, kexecMaxSegments+1, 0, 0) }, want: unix.EPERM, control: true},
		{name: "kexec_file_load", run: func() error { return rawSyscall(unix.SYS_KEXEC_FILE_LOAD, badFD, badFD, 0, 0, 0xffff0000) }, want: unix.EPERM, control: true},
		// A wrong magic number makes reboot fail with EINVAL right after the
		// capability check.
		{name: "reboot", run: func() error { return rawSyscall(unix.SYS_REBOOT, 0, 0, 0, 0) }, want: unix.EPERM, control: true},
		{name: "swapon", run: func() error { return rawSyscall(unix.SYS_SWAPON, 0, 0) }, want: unix.EPERM, control: true},
		{name: "swapoff", run: func() error { return rawSyscall(unix.SYS_SWAPOFF, 0) }, want: unix.EPERM, control: true},
		{name: "acct", run: func() error { return unix.Acct(noSuchPath) }, want: unix.EPERM, control: true},
		{name: "quotactl", run: func() error { return rawSyscall(unix.SYS_QUOTACTL, 0, 0, 0, 0) }, want: unix.EPERM, control: true},
		// Both pointers NULL: a no-op without the filter.
		{name: "settimeofday", run: func() error { return rawSyscall(unix.SYS_SETTIMEOFDAY, 0, 0) }, want: unix.EPERM, control: true},
		{name: "clock_settime", run: func() error { return rawSyscall(unix.SYS_CLOCK_SETTIME, unix.CLOCK_MONOTONIC, 0) }, want: unix.EPERM, control: true},
		{name: "clock_adjtime", run: func() error { return rawSyscall(unix.SYS_CLOCK_ADJTIME, unix.CLOCK_REALTIME, 0) }, want: unix.EPERM, control: true},
		{name: "adjtimex", run: func() error { return rawSyscall(unix.SYS_ADJTIMEX, 0) }, want: unix.EPERM, control: true},
		// A length over __NEW_UTS_LEN fails before anything is copied.
		{name: "sethostname", run: func() error { return rawSyscall(unix.SYS_SETHOSTNAME, 0, 1000) }, want: unix.EPERM, control: true},
		{name: "setdomainname", run: func() error { return rawSyscall(unix.SYS_SETDOMAINNAME, 0, 1000) }, want: unix.EPERM, control: true},
		{name: "open_by_handle_at", run: func() error { return rawSyscall(unix.SYS_OPEN_BY_HANDLE_AT, badFD, 0, 0) }, want: unix.EPERM, control: true},
		{name: "name_to_handle_at", run: func() error { return rawSyscall(unix.SYS_NAME_TO_HANDLE_AT, badFD, 0, 0, 0, 0) }, want: unix.EPERM, control: true},
		{name: "lookup_dcookie", run: func() error { return rawSyscall(unix.SYS_LOOKUP_DCOOKIE, 0, 0, 0) }, want: unix.EPERM, control: true},
		{name: "syslog", run: func() error { return rawSyscall(unix.SYS_SYSLOG, syslogSizeBuffer, 0, 0) }, want: unix.EPERM, control: true},
		// The child runs in its own session without a controlling terminal,
		// so vhangup has nothing to hang up.
		{name: "vhangup", run: func() error { return rawSyscall(unix.SYS_VHANGUP) }, want: unix.EPERM, control: true},
		{name: "personality-addr-no-randomize", run: func() error { return rawSyscall(unix.SYS_PERSONALITY, 0x0040000) }, want: unix.EPERM, control: true},
		{name: "ioctl-tiocsti", run: func() error { return ioctlDevNull(unix.TIOCSTI) }, want: unix.EPERM, control: true},
		{name: "ioctl-tioclinux", run: func() error { return ioctlDevNull(unix.TIOCLINUX) }, want: unix.EPERM, control: true},
		{name: "socket-packet", run: func() error { return socket(unix.AF_PACKET, unix.SOCK_RAW, 0) }, want: unix.EPERM, control: true},
		{name: "socket-inet-raw", run: func() error { return socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP) }, want: unix.EPERM, control: true},
		{name: "socket-inet6-raw-cloexec", run: func() error {
			return socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_ICMPV6)
		}, want: unix.EPERM, control: true},
		// The kernel turns AF_INET/SOCK_PACKET into an AF_PACKET socket.
		{name: "socket-inet-packet", run: func() error { return socket(unix.AF_INET, unix.SOCK_PACKET, 0) }, want: unix.EPERM, control: true},
		{name: "socket-netlink-uevent", run: func() error {
			return socket(unix.AF_NETLINK, unix.SOCK_DGRAM, unix.NETLINK_KOBJECT_UEVENT)
		}, want: unix.EPERM, control: true},
		{name: "socket-alg", run: func() error { return socket(unix.AF_ALG, unix.SOCK_SEQPACKET, 0) }, want: unix.EPERM, control: true},
		{name: "socket-vsock", run: func() error { return socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0) }, want: unix.EPERM, control: true},
	}
	for _, ns := range []struct {
		name string
		flag uintptr
	}{
		{"newns", unix.CLONE_NEWNS},
		{"newuts", unix.CLONE_NEWUTS},
		{"newipc", unix.CLONE_NEWIPC},
		{"newuser", unix.CLONE_NEWUSER},
		{"newpid", unix.CLONE_NEWPID},
		{"newnet", unix.CLONE_NEWNET},
		{"newcgroup", unix.CLONE_NEWCGROUP},
	} {
		cases = append(cases, childCase{
			name:    "clone-" + ns.name,
			run:     func() error { return rawSyscall(unix.SYS_CLONE, ns.flag|cloneMustFail) },
			want:    unix.EPERM,
			control: true,
		})
	}
	return append(cases, archChildCases...)
}

// pythonProbe exercises what the brief's one-liner imports: a thread, a
// subprocess, a socket and name resolution.
const pythonProbe = `import json, socket, subprocess, threading
t = threading.Thread(target=lambda: None); t.start(); t.join()
subprocess.run(["/bin/true"], check=True)
socket.socket().close()
socket.getaddrinfo("localhost", 80)
print(json.dumps(1))`

// witnesses are goroutines locked to their own OS threads, started before
// Install, so that all-threads can check that TSYNC reached threads that
// already existed. Each receives a reply channel and answers with the result
// of a syscall the filter refuses.
var witnesses []chan chan error

func startWitnesses(n int) {
	for range n {
		req := make(chan chan error)
		started := make(chan struct{})
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the process
			close(started)
			for reply := range req {
				reply <- keyctl()
			}
		}()
		<-started
		witnesses = append(witnesses, req)
	}
}

// runChild runs one case (or benchmark helper) in this process and reports
// its outcome on stdout. It returns the exit code.
func runChild(name string, filtered bool) int {
	if f, ok := benchChildren[name]; ok {
		out, err := f()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return exitInstall
		}
		fmt.Println(out)
		return 0
	}
	i := slices.IndexFunc(childCases(), func(c childCase) bool { return c.name == name })
	if i < 0 {
		fmt.Fprintf(os.Stderr, "unknown case %q\n", name)
		return exitUnknownCase
	}
	startWitnesses(4)
	if filtered {
		if err := Install(Options{}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return exitInstall
		}
	}
	fmt.Println(outcome(childCases()[i].run()))
	return 0
}

// outcome renders a case's result: "ok", an errno name such as "EPERM", or
// "error: ..." for anything else.
func outcome(err error) string {
	var errno unix.Errno
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &errno) && errno != 0:
		return unix.ErrnoName(errno)
	}
	return "error: " + err.Error()
}

func wantOutcome(e unix.Errno) string {
	if e == 0 {
		return "ok"
	}
	return unix.ErrnoName(e)
}

// runChildProcess re-executes the test binary to run case name and returns
// its trimmed stdout. The child gets its own session, so it has no
// controlling terminal.
func runChildProcess(tb testing.TB, name string, filtered bool, env ...string) string {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatalf("find test binary: %v", err)
	}
	// A broken filter can make the Go runtime in the child spin (a refused
	// futex or sched_yield, say), so the child gets a deadline and dies with
	// the test process.
	ctx, cancel := context.WithTimeout(tb.Context(), childTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), childEnv+"="+name, filterEnv+"="+map[bool]string{true: "1", false: "0"}[filtered])
	// Under -race a process sleeps a second at exit by default.
	cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE"))
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (killed after %v)", err, childTimeout)
		}
		tb.Fatalf("child %s: %v\nstdout:\n%s\nstderr:\n%s", name, err, stdout.Bytes(), stderr.Bytes())
	}
	return strings.TrimSpace(stdout.String())
}

func TestFilter(t *testing.T) {
	t.Parallel()
	for _, c := range childCases() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if c.root {
				testutil.MustHaveRoot(t)
			}
			if got, want := runChildProcess(t, c.name, true), wantOutcome(c.want); got != want {
				t.Errorf("under the filter: got %s, want %s", got, want)
			}
		})
	}
}

// TestCasesNeedFilter runs the refused cases without the filter and checks
// they do not already fail the way the filter makes them fail, so TestFilter
// cannot pass by accident.
func TestCasesNeedFilter(t *testing.T) {
	t.Parallel()
	testutil.MustHaveRoot(t) // unprivileged, many of these get EPERM from the kernel
	if mode := procStatus(t, "/proc/self/status", "Seccomp"); mode != "0" {
		t.Skipf("the test runner is already under seccomp (mode %s), so unfiltered results are not the kernel's", mode)
	}
	for _, c := range childCases() {
		if !c.control {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if got, filtered := runChildProcess(t, c.name, false), wantOutcome(c.want); got == filtered {
				t.Errorf("without the filter: got %s, the same as with it; the case does not test the filter", got)
			}
		})
	}
}

func TestChildUnknownCase(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("find test binary: %v", err)
	}
	cmd := exec.CommandContext(t.Context(), exe)
	cmd.Env = append(os.Environ(), childEnv+"=no-such-case")
	var exitErr *exec.ExitError
	if err := cmd.Run(); !errors.As(err, &exitErr) || exitErr.ExitCode() != exitUnknownCase {
		t.Errorf("child with an unknown case: got %v, want exit status %d", err, exitUnknownCase)
	}
}

func rawSyscall(nr uintptr, args ...uintptr) error {
	var a [6]uintptr
	copy(a[:], args)
	if _, _, errno := unix.Syscall6(nr, a[0], a[1], a[2], a[3], a[4], a[5]); errno != 0 {
		return errno
	}
	return nil
}

func socket(domain, typ, proto int) error {
	fd, err := unix.Socket(domain, typ, proto)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

func ioctlDevNull(req uint) error {
	f, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer f.Close()
	return rawSyscall(unix.SYS_IOCTL, f.Fd(), uintptr(req), 0)
}

func keyctl() error {
	_, err := unix.KeyctlInt(unix.KEYCTL_GET_KEYRING_ID, unix.KEY_SPEC_THREAD_KEYRING, 0, 0, 0)
	return err
}

func command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	return cmd
}

func commandOutput(check func(string) error, name string, args ...string) error {
	return checkOutput(command(name, args...), check)
}

func checkOutput(cmd *exec.Cmd, check func(string) error) error {
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%s: %w", cmd.Path, err)
	}
	return check(strings.TrimSpace(string(out)))
}

// tcpLoopback accepts a connection on 127.0.0.1 and echoes a message over it,
// exercising socket, bind, listen, accept4, connect and epoll.
func tcpLoopback() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- err
			return
		}
		defer c.Close()
		_, err = io.Copy(c, io.LimitReader(c, 5))
		accepted <- err
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "hello" {
		return fmt.Errorf("echo: got %q, want %q", buf, "hello")
	}
	return <-accepted
}

// modernSyscalls calls allowed syscalls that are newer than most allowlists.
func modernSyscalls() error {
	if _, err := unix.Getrandom(make([]byte, 16), 0); err != nil {
		return fmt.Errorf("getrandom: %w", err)
	}
	fd, err := unix.MemfdCreate("airlock", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("memfd_create: %w", err)
	}
	unix.Close(fd)
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, "/", 0, unix.STATX_BASIC_STATS, &stx); err != nil {
		return fmt.Errorf("statx: %w", err)
	}
	if err := unix.Faccessat2(unix.AT_FDCWD, "/", unix.R_OK, 0); err != nil {
		return fmt.Errorf("faccessat2: %w", err)
	}
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return fmt.Errorf("pidfd_open: %w", err)
	}
	unix.Close(pidfd)
	if err := unix.Prctl(unix.PR_SET_NAME, 0, 0, 0, 0); err != nil && !errors.Is(err, unix.EFAULT) {
		return fmt.Errorf("prctl: %w", err)
	}
	return nil
}

// checkAllThreads checks that the filter and no_new_privs reached every
// thread, including the witnesses that existed before Install.
func checkAllThreads() error {
	for i, w := range witnesses {
		reply := make(chan error)
		w <- reply
		if err := <-reply; !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("keyctl on pre-existing thread %d: got %v, want EPERM", i, err)
		}
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	if len(tasks) <= len(witnesses) {
		return fmt.Errorf("got %d threads, want more than the %d witnesses", len(tasks), len(witnesses))
	}
	for _, task := range tasks {
		status, err := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "status"))
		if err != nil {
			return err
		}
		for _, want := range []string{"\nSeccomp:\t2\n", "\nNoNewPrivs:\t1\n"} {
			if !bytes.Contains(status, []byte(want)) {
				return fmt.Errorf("thread %s: status lacks %q", task.Name(), strings.TrimSpace(want))
			}
		}
	}
	return nil
}

// procStatus returns the value of one field of a /proc status file.
func procStatus(t *testing.T, path, field string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("%s has no %s field", path, field)
	return ""
}

// benchChildren are child-process helpers for the benchmarks. They install
// the filter themselves and print their measurements.
var benchChildren = map[string]func() (string, error){
	"bench-install": func() (string, error) {
		start := time.Now()
		if err := Install(Options{}); err != nil {
			return "", err
		}
		return strconv.FormatInt(time.Since(start).Nanoseconds(), 10), nil
	},
	"bench-getpid": func() (string, error) {
		n, err := strconv.Atoi(os.Getenv(benchNEnv))
		if err != nil {
			return "", fmt.Errorf("%s: %w", benchNEnv, err)
		}
		loop := func() int64 {
			start := time.Now()
			for range n {
				unix.Syscall(unix.SYS_GETPID, 0, 0, 0)
			}
			return time.Since(start).Nanoseconds()
		}
		before := loop()
		if err := Install(Options{}); err != nil {
			return "", err
		}
		return fmt.Sprintf("%d %d", before, loop()), nil
	},
}

// BenchmarkInstall measures Install in fresh processes: install-ns/op is the
// time Install itself takes, while ns/op also counts starting the child.
func BenchmarkInstall(b *testing.B) {
	var total int64
	var n int
	for b.Loop() {
		ns, err := strconv.ParseInt(runChildProcess(b, "bench-install", false), 10, 64)
		if err != nil {
			b.Fatalf("parse child output: %v", err)
		}
		total += ns
		n++
	}
	b.ReportMetric(float64(total)/float64(n), "install-ns/op")
}

// BenchmarkSyscallOverhead measures what the filter adds to every syscall:
// getpid in one child, before and after Install, reported as ns per syscall
// and as a ratio to the unfiltered baseline.
func BenchmarkSyscallOverhead(b *testing.B) {
	out := runChildProcess(b, "bench-getpid", false, benchNEnv+"="+strconv.Itoa(b.N))
	var before, after int64
	if _, err := fmt.Sscanf(out, "%d %d", &before, &after); err != nil {
		b.Fatalf("parse child output %q: %v", out, err)
	}
	b.ReportMetric(float64(before)/float64(b.N), "unfiltered-ns/syscall")
	b.ReportMetric(float64(after)/float64(b.N), "filtered-ns/syscall")
	b.ReportMetric(float64(after)/float64(before), "ratio")
}
