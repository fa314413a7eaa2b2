package seccomp

import "golang.org/x/sys/unix"

// x32Bit marks a syscall made through the x32 ABI, which reaches the kernel
// with AUDIT_ARCH_X86_64 and its own syscall table; the filter refuses it.
const x32Bit = 0x40000000

// amd64Allow lists the syscalls allowed with any arguments that exist only on
// amd64 among the supported architectures: the legacy path-based calls that
// arm64 replaced with *at variants, plus the x86 TLS and uretprobe calls.
// Docker also allows modify_ldt here; no Go, Python or coreutils program
// needs it, and it has a history of kernel bugs, so it is refused.
var amd64Allow = []uint32{
	unix.SYS_ACCESS,
	unix.SYS_ALARM,
	unix.SYS_ARCH_PRCTL,
	unix.SYS_CHMOD,
	unix.SYS_CHOWN,
	unix.SYS_CREAT,
	unix.SYS_DUP2,
	unix.SYS_EPOLL_CREATE,
	unix.SYS_EPOLL_WAIT,
	unix.SYS_EVENTFD,
	unix.SYS_FORK,
	unix.SYS_FUTIMESAT,
	unix.SYS_GETDENTS,
	unix.SYS_GETPGRP,
	unix.SYS_GET_THREAD_AREA,
	unix.SYS_INOTIFY_INIT,
	unix.SYS_LCHOWN,
	unix.SYS_LINK,
	unix.SYS_LSTAT,
	unix.SYS_MKDIR,
	unix.SYS_MKNOD,
	unix.SYS_OPEN,
	unix.SYS_PAUSE,
	unix.SYS_PIPE,
	unix.SYS_POLL,
	unix.SYS_READLINK,
	unix.SYS_RENAME,
	unix.SYS_RMDIR,
	unix.SYS_SELECT,
	unix.SYS_SET_THREAD_AREA,
	unix.SYS_SIGNALFD,
	unix.SYS_STAT,
	unix.SYS_SYMLINK,
	unix.SYS_TIME,
	unix.SYS_UNLINK,
	unix.SYS_URETPROBE,
	unix.SYS_UTIME,
	unix.SYS_UTIMES,
	unix.SYS_VFORK,
}

func nativePolicy() (policy, error) {
	return policyFor(unix.AUDIT_ARCH_X86_64, x32Bit, amd64Allow)
}
