// Package native is Airlock's own isolation runtime: Linux namespaces, cgroups, seccomp and a
// purpose-built mount tree, with the airlock binary itself as PID 1 of every sandbox.
//
// # Start-up sequence
//
//	daemon (Runtime.Create)                     child (package sandboxinit, then the agent)
//	───────────────────────                     ───────────────────────────────────────
//	create cgroup with limits
//	listen on <state>/sb/<id>.sock
//	clone(NEWUSER|NEWNS|NEWPID|NEWNET|NEWIPC|
//	      NEWUTS[|NEWCGROUP on v2, born in cgroup])
//	  with fds 3=config pipe, 4=status pipe,
//	  5=listening socket; uid/gid maps written ─► blocks reading fd 3
//	v1: move pid into the cgroup
//	write config JSON, close fd 3 ─────────────► make mounts private, build the root on a tmpfs:
//	                                               read-only binds of the image and of the /etc
//	                                               the daemon assembled once (safe host entries
//	                                               copied, passwd/hosts/… synthesized),
//	                                               one size-capped scratch tmpfs for /workspace,
//	                                               /tmp and /dev/shm, minimal /dev, fresh /proc
//	                                               with sensitive paths masked; pivot_root
//	                                             hostname, loopback up, rlimits
//	                                             Landlock: read-only but for the writable areas
//	                                             drop capabilities to the agent's few, bounding
//	                                               set cleared, not dumpable, no_new_privs, seccomp
//	read fd 4: "ok" or a SetupError ◄─────────── write status, close fd 4
//	                                             serve the agent protocol on fd 5 (HTTP/2 cleartext)
//	dial the socket path for every agent call
//
// The sandbox runs until Destroy: SIGKILL to PID 1 ends the whole PID namespace, the cgroup is
// killed as a backstop (nothing forked concurrently survives), then the cgroup, the socket and the
// state directory are removed. The daemon never becomes the child's parent of record for longer
// than it lives: sandboxes outlive a daemon crash and are found again through their state files.
package native
