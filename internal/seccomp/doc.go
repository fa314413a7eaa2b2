// Package seccomp builds and installs the syscall allowlist applied to every sandbox.
//
// The filter is a classic-BPF program assembled in pure Go (no libseccomp, so
// the binary stays static). It is at least as strict as Docker's default
// profile for an unprivileged container:
//
//   - A syscall made with a foreign audit architecture (for example int 0x80
//     from a 64-bit process) kills the process. On amd64 the x32 ABI is
//     refused with EPERM.
//   - Every syscall that is not on the allowlist fails with EPERM, so mount,
//     unshare, setns, ptrace, bpf, keyctl, io_uring, perf_event_open, module
//     loading, clock setting and the new mount API are all refused.
//   - clone is allowed only without namespace flags; clone3 fails with ENOSYS
//     so that libc falls back to clone, whose flags the filter can inspect.
//   - Native AIO (io_setup and friends) fails with ENOSYS: its contexts come
//     from a host-wide pool (fs.aio-max-nr), and ENOSYS makes libraries fall
//     back to ordinary I/O.
//   - socket is allowed for AF_UNIX, AF_INET and AF_INET6 (but not SOCK_RAW
//     or SOCK_PACKET) and for AF_NETLINK with NETLINK_ROUTE only.
//   - ioctl is allowed except TIOCSTI and TIOCLINUX; personality is allowed
//     only for the values Docker allows.
//
// Install applies the filter to every thread of the calling process with
// SECCOMP_FILTER_FLAG_TSYNC, and children inherit it across fork and exec.
// The filter cannot be removed, so Install belongs on the sandbox start path
// after the last privileged setup step.
package seccomp
