// Package sandboxinit is the inside of a native sandbox: what its init (PID 1, the sandbox
// binary re-executed by native.Runtime.Create) runs before it becomes the agent or the Python
// zygote — the root built on a tmpfs from read-only binds, the scratch layer, /dev and /proc,
// pivot_root, resource limits, Landlock, the capability cut, the spawner thread and seccomp —
// and the gVisor guest's lockdown, which shares those steps.
//
// It is apart from package native, the daemon's side, so that a sandbox's binary links none of
// the daemon's code: no engine, no nftables, netlink or DNS code runs as any sandbox's PID 1.
// The two sides share the init's config (Config) and what it reports (SetupError); package
// native's start-up sequence (its package comment) shows who does what.
package sandboxinit
