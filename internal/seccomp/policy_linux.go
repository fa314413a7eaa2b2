//go:build linux && (amd64 || arm64)

package seccomp

import (
	"fmt"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// argLow returns the offset in struct seccomp_data of the low 32 bits of
// syscall argument i. Classic BPF loads 32-bit words, and both supported
// architectures are little-endian. Every argument the rules inspect is an int
// or unsigned int in the kernel (or, for clone's flags, truncated to its low
// 32 bits by the kernel), so the low word is exactly the value the kernel
// acts on and the high word is deliberately ignored: checking it would let
// nothing more through, but would wrongly refuse sign-extended ints.
func argLow(i int) uint32 { return offArgs + 8*uint32(i) }

// commonAllow lists the syscalls allowed with any arguments on every
// supported architecture. It is Docker's unconditional allowlist
// (moby/profiles seccomp/default_linux.go) minus:
//
//   - adjtimex, clock_adjtime: can step the host clock given CAP_SYS_TIME,
//     and reading it is not needed;
//   - name_to_handle_at: only useful together with open_by_handle_at, the
//     "shocker" container escape;
//   - epoll_ctl_old, epoll_wait_old: never implemented by the kernel;
//   - io_setup, io_submit, io_getevents, io_pgetevents, io_cancel, io_destroy:
//     answered with ENOSYS by rules in policyFor;
//   - ioctl: allowed through an argument rule instead (see ioctlRule).
//
// clone, clone3, socket and personality also have argument rules. The list is
// sorted; keep it that way so it diffs cleanly against Docker's.
var commonAllow = []uint32{
	unix.SYS_ACCEPT,
	unix.SYS_ACCEPT4,
	unix.SYS_BIND,
	unix.SYS_BRK,
	unix.SYS_CACHESTAT,
	unix.SYS_CAPGET,
	unix.SYS_CAPSET,
	unix.SYS_CHDIR,
	unix.SYS_CLOCK_GETRES,
	unix.SYS_CLOCK_GETTIME,
	unix.SYS_CLOCK_NANOSLEEP,
	unix.SYS_CLOSE,
	unix.SYS_CLOSE_RANGE,
	unix.SYS_CONNECT,
	unix.SYS_COPY_FILE_RANGE,
	unix.SYS_DUP,
	unix.SYS_DUP3,
	unix.SYS_EPOLL_CREATE1,
	unix.SYS_EPOLL_CTL,
	unix.SYS_EPOLL_PWAIT,
	unix.SYS_EPOLL_PWAIT2,
	unix.SYS_EVENTFD2,
	unix.SYS_EXECVE,
	unix.SYS_EXECVEAT,
	unix.SYS_EXIT,
	unix.SYS_EXIT_GROUP,
	unix.SYS_FACCESSAT,
	unix.SYS_FACCESSAT2,
	unix.SYS_FADVISE64,
	unix.SYS_FALLOCATE,
	unix.SYS_FANOTIFY_MARK,
	unix.SYS_FCHDIR,
	unix.SYS_FCHMOD,
	unix.SYS_FCHMODAT,
	unix.SYS_FCHMODAT2,
	unix.SYS_FCHOWN,
	unix.SYS_FCHOWNAT,
	unix.SYS_FCNTL,
	unix.SYS_FDATASYNC,
	unix.SYS_FGETXATTR,
	unix.SYS_FLISTXATTR,
	unix.SYS_FLOCK,
	unix.SYS_FREMOVEXATTR,
	unix.SYS_FSETXATTR,
	unix.SYS_FSTAT,
	unix.SYS_FSTATFS,
	unix.SYS_FSYNC,
	unix.SYS_FTRUNCATE,
	unix.SYS_FUTEX,
	unix.SYS_FUTEX_REQUEUE,
	unix.SYS_FUTEX_WAIT,
	unix.SYS_FUTEX_WAITV,
	unix.SYS_FUTEX_WAKE,
	unix.SYS_GETCPU,
	unix.SYS_GETCWD,
	unix.SYS_GETDENTS64,
	unix.SYS_GETEGID,
	unix.SYS_GETEUID,
	unix.SYS_GETGID,
	unix.SYS_GETGROUPS,
	unix.SYS_GETITIMER,
	unix.SYS_GETPEERNAME,
	unix.SYS_GETPGID,
	unix.SYS_GETPID,
	unix.SYS_GETPPID,
	unix.SYS_GETPRIORITY,
	unix.SYS_GETRANDOM,
	unix.SYS_GETRESGID,
	unix.SYS_GETRESUID,
	unix.SYS_GETRLIMIT,
	unix.SYS_GETRUSAGE,
	unix.SYS_GETSID,
	unix.SYS_GETSOCKNAME,
	unix.SYS_GETSOCKOPT,
	unix.SYS_GETTID,
	unix.SYS_GETTIMEOFDAY,
	unix.SYS_GETUID,
	unix.SYS_GETXATTR,
	unix.SYS_GETXATTRAT,
	unix.SYS_GET_ROBUST_LIST,
	unix.SYS_INOTIFY_ADD_WATCH,
	unix.SYS_INOTIFY_INIT1,
	unix.SYS_INOTIFY_RM_WATCH,
	unix.SYS_IOPRIO_GET,
	unix.SYS_IOPRIO_SET,
	unix.SYS_KILL,
	unix.SYS_LANDLOCK_ADD_RULE,
	unix.SYS_LANDLOCK_CREATE_RULESET,
	unix.SYS_LANDLOCK_RESTRICT_SELF,
	unix.SYS_LGETXATTR,
	unix.SYS_LINKAT,
	unix.SYS_LISTEN,
	unix.SYS_LISTMOUNT,
	unix.SYS_LISTXATTR,
	unix.SYS_LISTXATTRAT,
	unix.SYS_LLISTXATTR,
	unix.SYS_LREMOVEXATTR,
	unix.SYS_LSEEK,
	unix.SYS_LSETXATTR,
	unix.SYS_MADVISE,
	unix.SYS_MAP_SHADOW_STACK,
	unix.SYS_MEMBARRIER,
	unix.SYS_MEMFD_CREATE,
	unix.SYS_MEMFD_SECRET,
	unix.SYS_MINCORE,
	unix.SYS_MKDIRAT,
	unix.SYS_MKNODAT,
	unix.SYS_MLOCK,
	unix.SYS_MLOCK2,
	unix.SYS_MLOCKALL,
	unix.SYS_MMAP,
	unix.SYS_MPROTECT,
	unix.SYS_MQ_GETSETATTR,
	unix.SYS_MQ_NOTIFY,
	unix.SYS_MQ_OPEN,
	unix.SYS_MQ_TIMEDRECEIVE,
	unix.SYS_MQ_TIMEDSEND,
	unix.SYS_MQ_UNLINK,
	unix.SYS_MREMAP,
	unix.SYS_MSEAL,
	unix.SYS_MSGCTL,
	unix.SYS_MSGGET,
	unix.SYS_MSGRCV,
	unix.SYS_MSGSND,
	unix.SYS_MSYNC,
	unix.SYS_MUNLOCK,
	unix.SYS_MUNLOCKALL,
	unix.SYS_MUNMAP,
	unix.SYS_NANOSLEEP,
	unix.SYS_NEWFSTATAT,
	unix.SYS_OPENAT,
	unix.SYS_OPENAT2,
	unix.SYS_PIDFD_OPEN,
	unix.SYS_PIDFD_SEND_SIGNAL,
	unix.SYS_PIPE2,
	unix.SYS_PKEY_ALLOC,
	unix.SYS_PKEY_FREE,
	unix.SYS_PKEY_MPROTECT,
	unix.SYS_PPOLL,
	unix.SYS_PRCTL,
	unix.SYS_PREAD64,
	unix.SYS_PREADV,
	unix.SYS_PREADV2,
	unix.SYS_PRLIMIT64,
	unix.SYS_PROCESS_MRELEASE,
	unix.SYS_PSELECT6,
	unix.SYS_PWRITE64,
	unix.SYS_PWRITEV,
	unix.SYS_PWRITEV2,
	unix.SYS_READ,
	unix.SYS_READAHEAD,
	unix.SYS_READLINKAT,
	unix.SYS_READV,
	unix.SYS_RECVFROM,
	unix.SYS_RECVMMSG,
	unix.SYS_RECVMSG,
	unix.SYS_REMAP_FILE_PAGES,
	unix.SYS_REMOVEXATTR,
	unix.SYS_REMOVEXATTRAT,
	unix.SYS_RENAMEAT,
	unix.SYS_RENAMEAT2,
	unix.SYS_RESTART_SYSCALL,
	unix.SYS_RSEQ,
	unix.SYS_RT_SIGACTION,
	unix.SYS_RT_SIGPENDING,
	unix.SYS_RT_SIGPROCMASK,
	unix.SYS_RT_SIGQUEUEINFO,
	unix.SYS_RT_SIGRETURN,
	unix.SYS_RT_SIGSUSPEND,
	unix.SYS_RT_SIGTIMEDWAIT,
	unix.SYS_RT_TGSIGQUEUEINFO,
	unix.SYS_SCHED_GETAFFINITY,
	unix.SYS_SCHED_GETATTR,
	unix.SYS_SCHED_GETPARAM,
	unix.SYS_SCHED_GETSCHEDULER,
	unix.SYS_SCHED_GET_PRIORITY_MAX,
	unix.SYS_SCHED_GET_PRIORITY_MIN,
	unix.SYS_SCHED_RR_GET_INTERVAL,
	unix.SYS_SCHED_SETAFFINITY,
	unix.SYS_SCHED_SETATTR,
	unix.SYS_SCHED_SETPARAM,
	unix.SYS_SCHED_SETSCHEDULER,
	unix.SYS_SCHED_YIELD,
	unix.SYS_SECCOMP,
	unix.SYS_SEMCTL,
	unix.SYS_SEMGET,
	unix.SYS_SEMOP,
	unix.SYS_SEMTIMEDOP,
	unix.SYS_SENDFILE,
	unix.SYS_SENDMMSG,
	unix.SYS_SENDMSG,
	unix.SYS_SENDTO,
	unix.SYS_SETFSGID,
	unix.SYS_SETFSUID,
	unix.SYS_SETGID,
	unix.SYS_SETGROUPS,
	unix.SYS_SETITIMER,
	unix.SYS_SETPGID,
	unix.SYS_SETPRIORITY,
	unix.SYS_SETREGID,
	unix.SYS_SETRESGID,
	unix.SYS_SETRESUID,
	unix.SYS_SETREUID,
	unix.SYS_SETRLIMIT,
	unix.SYS_SETSID,
	unix.SYS_SETSOCKOPT,
	unix.SYS_SETUID,
	unix.SYS_SETXATTR,
	unix.SYS_SETXATTRAT,
	unix.SYS_SET_ROBUST_LIST,
	unix.SYS_SET_TID_ADDRESS,
	unix.SYS_SHMAT,
	unix.SYS_SHMCTL,
	unix.SYS_SHMDT,
	unix.SYS_SHMGET,
	unix.SYS_SHUTDOWN,
	unix.SYS_SIGALTSTACK,
	unix.SYS_SIGNALFD4,
	unix.SYS_SOCKETPAIR,
	unix.SYS_SPLICE,
	unix.SYS_STATFS,
	unix.SYS_STATMOUNT,
	unix.SYS_STATX,
	unix.SYS_SYMLINKAT,
	unix.SYS_SYNC,
	unix.SYS_SYNCFS,
	unix.SYS_SYNC_FILE_RANGE,
	unix.SYS_SYSINFO,
	unix.SYS_TEE,
	unix.SYS_TGKILL,
	unix.SYS_TIMERFD_CREATE,
	unix.SYS_TIMERFD_GETTIME,
	unix.SYS_TIMERFD_SETTIME,
	unix.SYS_TIMER_CREATE,
	unix.SYS_TIMER_DELETE,
	unix.SYS_TIMER_GETOVERRUN,
	unix.SYS_TIMER_GETTIME,
	unix.SYS_TIMER_SETTIME,
	unix.SYS_TIMES,
	unix.SYS_TKILL,
	unix.SYS_TRUNCATE,
	unix.SYS_UMASK,
	unix.SYS_UNAME,
	unix.SYS_UNLINKAT,
	unix.SYS_UTIMENSAT,
	unix.SYS_VMSPLICE,
	unix.SYS_WAIT4,
	unix.SYS_WAITID,
	unix.SYS_WRITE,
	unix.SYS_WRITEV,
}

// denyTIOC are the ioctl requests refused by ioctlRule: TIOCSTI pushes input
// into a terminal's queue, so a process that shares a terminal with a shell
// outside the sandbox could type commands into it; TIOCLINUX can do the same
// through the console selection.
// TIOCSETD switches a terminal's line discipline, which can autoload rarely used kernel code
// (n_gsm, n_hdlc: a history of CVEs) through the sandbox's own pty.
var denyTIOC = []uint32{unix.TIOCSTI, unix.TIOCLINUX, unix.TIOCSETD}

// nsCloneFlags are the clone flags that create namespaces. CLONE_NEWTIME is
// included for completeness: in clone(2) that bit is part of the exit-signal
// field, which never legitimately has it set (signals go up to 64); a time
// namespace can only be made through clone3 and unshare, which are refused.
const nsCloneFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC |
	unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET |
	unix.CLONE_NEWCGROUP | unix.CLONE_NEWTIME

// personalities are the personality(2) arguments Docker allows: PER_LINUX,
// PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and 0xffffffff, which only
// queries the current persona. Other values can, for example, disable ASLR
// (ADDR_NO_RANDOMIZE) or map page zero (MMAP_PAGE_ZERO).
var personalities = []uint32{0x0, 0x8, 0x20000, 0x20008, 0xffffffff}

// policyFor returns the policy for arch: commonAllow plus archAllow, and the
// argument rules shared by every architecture.
func policyFor(arch, badBits uint32, archAllow []uint32) (policy, error) {
	p := policy{
		arch:    arch,
		badBits: badBits,
		allow:   append(append([]uint32(nil), commonAllow...), archAllow...),
		rules: map[uint32][]bpf.Instruction{
			// Docker refuses clone3 with ENOSYS rather than EPERM: its flags sit
			// in a struct in memory, which seccomp cannot read, and ENOSYS makes
			// glibc (2.34+) and others fall back to clone.
			unix.SYS_CLONE3: {retErrno(unix.ENOSYS)},
			// Native AIO draws on a host-wide pool (fs.aio-max-nr) that one sandbox could
			// exhaust for the whole machine; ENOSYS makes libraries use ordinary I/O.
			unix.SYS_IO_SETUP:      {retErrno(unix.ENOSYS)},
			unix.SYS_IO_SUBMIT:     {retErrno(unix.ENOSYS)},
			unix.SYS_IO_GETEVENTS:  {retErrno(unix.ENOSYS)},
			unix.SYS_IO_PGETEVENTS: {retErrno(unix.ENOSYS)},
			unix.SYS_IO_CANCEL:     {retErrno(unix.ENOSYS)},
			unix.SYS_IO_DESTROY:    {retErrno(unix.ENOSYS)},
		},
	}
	for _, r := range []struct {
		name string
		nr   uint32
		make func() ([]bpf.Instruction, error)
	}{
		{"clone", unix.SYS_CLONE, cloneRule},
		{"socket", unix.SYS_SOCKET, socketRule},
		{"ioctl", unix.SYS_IOCTL, ioctlRule},
		{"personality", unix.SYS_PERSONALITY, personalityRule},
	} {
		code, err := r.make()
		if err != nil {
			return policy{}, fmt.Errorf("%s rule: %w", r.name, err)
		}
		p.rules[r.nr] = code
	}
	return p, nil
}

// cloneRule allows clone(2) unless its flags (argument 0 on amd64 and arm64)
// ask for a new namespace.
func cloneRule() ([]bpf.Instruction, error) {
	var b block
	b.add(bpf.LoadAbsolute{Off: argLow(0), Size: 4})
	b.jumpIf(bpf.JumpBitsSet, nsCloneFlags, "deny", "allow")
	b.label("deny")
	b.add(retEPERM)
	b.label("allow")
	b.add(retAllow)
	return b.assemble()
}

// socketRule allows socket(domain, type, protocol) for:
//
//   - AF_UNIX;
//   - AF_INET and AF_INET6 unless the type, without SOCK_NONBLOCK and
//     SOCK_CLOEXEC, is SOCK_RAW or SOCK_PACKET, which could forge packets;
//   - AF_NETLINK with protocol NETLINK_ROUTE, which glibc's getaddrinfo and
//     iproute2 need (its sockets are SOCK_RAW, so the type is not checked).
//
// Every other domain (AF_PACKET, AF_KEY, AF_ALG, AF_VSOCK, ...) gets EPERM.
func socketRule() ([]bpf.Instruction, error) {
	var b block
	b.add(bpf.LoadAbsolute{Off: argLow(0), Size: 4})
	b.jumpIf(bpf.JumpEqual, unix.AF_UNIX, "allow", "")
	b.jumpIf(bpf.JumpEqual, unix.AF_INET, "inet", "")
	b.jumpIf(bpf.JumpEqual, unix.AF_INET6, "inet", "")
	b.jumpIf(bpf.JumpEqual, unix.AF_NETLINK, "netlink", "deny")

	b.label("inet")
	b.add(
		bpf.LoadAbsolute{Off: argLow(1), Size: 4},
		bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: sockTypeMask},
	)
	b.jumpIf(bpf.JumpEqual, unix.SOCK_RAW, "deny", "")
	b.jumpIf(bpf.JumpEqual, unix.SOCK_PACKET, "deny", "allow")

	b.label("netlink")
	b.add(bpf.LoadAbsolute{Off: argLow(2), Size: 4})
	b.jumpIf(bpf.JumpEqual, unix.NETLINK_ROUTE, "allow", "deny")

	b.label("deny")
	b.add(retEPERM)
	b.label("allow")
	b.add(retAllow)
	return b.assemble()
}

// sockTypeMask is the kernel's SOCK_TYPE_MASK: the socket type without the
// SOCK_NONBLOCK and SOCK_CLOEXEC flags.
const sockTypeMask = 0xf

// ioctlRule allows ioctl(2) unless the request (argument 1) is in denyTIOC.
func ioctlRule() ([]bpf.Instruction, error) {
	var b block
	b.add(bpf.LoadAbsolute{Off: argLow(1), Size: 4})
	for _, req := range denyTIOC {
		b.jumpIf(bpf.JumpEqual, req, "deny", "")
	}
	b.add(retAllow)
	b.label("deny")
	b.add(retEPERM)
	return b.assemble()
}

// personalityRule allows personality(2) only for the values in personalities.
func personalityRule() ([]bpf.Instruction, error) {
	var b block
	b.add(bpf.LoadAbsolute{Off: argLow(0), Size: 4})
	for _, v := range personalities {
		b.jumpIf(bpf.JumpEqual, v, "allow", "")
	}
	b.add(retEPERM)
	b.label("allow")
	b.add(retAllow)
	return b.assemble()
}
