package sandboxinit

import (
	"github.com/landlock-lsm/go-landlock/landlock"
)

// restrictFS adds Landlock on top of the mount tree, where the kernel has it: everything may be
// read and executed, but only the writable areas, a few devices and /proc may be written,
// whatever a mount, a permission bit or a later bug says. It applies to the agent and every
// process it starts (Landlock domains are inherited and cannot be left).
func restrictFS(cfg *Config) error {
	rw := []string{"/workspace", "/tmp", "/dev/shm"}
	if cfg.Workdir != "" {
		rw = append(rw, cfg.Workdir)
	}
	if cfg.WritableRoot {
		rw = []string{"/"} // a build sandbox: its steps write /usr, /etc and /var
	}
	err := landlock.V5.BestEffort().RestrictPaths(
		landlock.RODirs("/"),
		// Refer: renames and links between directories of the writable areas (mv a/x b/).
		landlock.RWDirs(rw...).WithRefer(),
		landlock.RWDirs("/proc"),
		// Terminals need their ioctls (termios, window size, unlocking a new pty).
		landlock.RWDirs("/dev/pts").WithIoctlDev(),
		landlock.RWFiles("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty").WithIoctlDev().IgnoreIfMissing(),
	)
	return step("landlock", err)
}
