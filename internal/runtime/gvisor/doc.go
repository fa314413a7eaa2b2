// Package gvisor is the gvisor runtime: the same sandbox as the native runtime's — the host
// image's read-only binds and /etc, capped writable layers, limits in a cgroup of its own, no
// network, uid 1000 — behind gVisor's user-space kernel (runsc), for a second wall between
// untrusted code and the host kernel.
//
// Each sandbox is an OCI bundle built from the engine's spec (bundle.go) and run by runsc with
// its state under the daemon's state directory. PID 1 inside is the daemon's own binary,
// bound read-only, entering as the agent (Init); the agent listens on a unix socket in a
// directory bound from the sandbox's host directory, which runsc's --host-uds=create turns into
// a host socket the daemon dials, so the daemon speaks the same protocol to it as to a native
// sandbox's agent. The agent is locked down with the native runtime's own steps
// (sandboxinit.GuestLockdown): the spawner thread with an empty bounding set, the agent's
// capabilities, the seccomp filter and the resource limits.
package gvisor
