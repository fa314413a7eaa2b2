package seccomp

import "golang.org/x/sys/unix"

// foreignArch is an architecture whose syscalls the native filter kills:
// a 32-bit ARM binary.
const foreignArch = unix.AUDIT_ARCH_ARM

var archDenied []namedSyscall

var archVerdicts []verdictCase

var archChildCases []childCase
