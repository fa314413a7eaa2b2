package seccomp

// Options adjust the policy for one sandbox.
type Options struct {
	// AllowClone3 allows clone3, which is otherwise refused with ENOSYS because its flags sit in
	// memory where the filter cannot check them for namespace flags. Set it only where namespaces
	// cannot be made through it anyway: the caller has set user.max_user_namespaces to 0 in the
	// sandbox's user namespace and the sandbox's processes hold no CAP_SYS_ADMIN there. The
	// native runtime needs it on cgroup v2, to start user processes in their own cgroup with
	// CLONE_INTO_CGROUP.
	AllowClone3 bool
}
