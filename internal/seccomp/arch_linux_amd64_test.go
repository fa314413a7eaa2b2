package seccomp

import "golang.org/x/sys/unix"

// foreignArch is an architecture whose syscalls the native filter kills:
// int 0x80 from a 64-bit process.
const foreignArch = unix.AUDIT_ARCH_I386

var archDenied = []namedSyscall{
	{"create_module", unix.SYS_CREATE_MODULE},
	{"get_kernel_syms", unix.SYS_GET_KERNEL_SYMS},
	{"ioperm", unix.SYS_IOPERM},
	{"iopl", unix.SYS_IOPL},
	{"modify_ldt", unix.SYS_MODIFY_LDT},
	{"_sysctl", unix.SYS__SYSCTL},
	{"sysfs", unix.SYS_SYSFS},
	{"uselib", unix.SYS_USELIB},
	{"ustat", unix.SYS_USTAT},
}

var archVerdicts = []verdictCase{
	{name: "x32 getpid", nr: x32Bit | unix.SYS_GETPID, want: eperm},
	{name: "x32 read", nr: x32Bit | unix.SYS_READ, want: eperm},
	{name: "arch_prctl", nr: unix.SYS_ARCH_PRCTL, want: allow},
	{name: "open", nr: unix.SYS_OPEN, want: allow},
	{name: "fork", nr: unix.SYS_FORK, want: allow},
}

// archChildCases are amd64-only cases for TestFilter.
var archChildCases = []childCase{
	{name: "x32-getpid", run: func() error { return rawSyscall(x32Bit | unix.SYS_GETPID) }, want: unix.EPERM, control: true},
	{name: "iopl", run: func() error { return rawSyscall(unix.SYS_IOPL, 0) }, want: unix.EPERM, control: true},
	{name: "ioperm", run: func() error { return rawSyscall(unix.SYS_IOPERM, 0, 0, 0) }, want: unix.EPERM, control: true},
	{name: "modify_ldt", run: func() error { return rawSyscall(unix.SYS_MODIFY_LDT, 0, 0, 0) }, want: unix.EPERM, control: true},
	{name: "uselib", run: func() error { return rawSyscall(unix.SYS_USELIB, 0) }, want: unix.EPERM, control: true},
}
