package seccomp

import "golang.org/x/sys/unix"

// nativePolicy returns the arm64 policy. arm64 uses the generic syscall table,
// so every allowed syscall is already in commonAllow. Like Docker, the filter
// does not accept AUDIT_ARCH_ARM: 32-bit binaries are killed.
func nativePolicy() (policy, error) {
	return policyFor(unix.AUDIT_ARCH_AARCH64, 0, nil)
}
