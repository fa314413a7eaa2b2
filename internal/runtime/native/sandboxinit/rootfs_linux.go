package sandboxinit

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Paths under /proc that leak host information or offer kernel knobs; masked like Docker does.
var (
	maskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
		"/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
		"/proc/timer_stats", "/proc/sysrq-trigger", "/proc/kallsyms", "/proc/kmsg",
		"/proc/vmallocinfo", "/proc/pagetypeinfo", "/proc/buddyinfo", "/proc/slabinfo",
		"/proc/modules", "/proc/mtrr", "/proc/iomem", "/proc/ioports", "/proc/cgroups",
		"/proc/cmdline", "/proc/config.gz",
	}
	readOnlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/driver"}
	devices       = []string{"null", "zero", "full", "random", "urandom", "tty"}
)

// PTYsPerSandbox caps each sandbox's private devpts instance. All instances but the host's share
// one kernel pool (kernel.pty.max − kernel.pty.reserve), so the cap keeps one sandbox from
// starving the others; see CheckPTYPool.
const PTYsPerSandbox = 8

// buildRoot assembles the sandbox's root on a tmpfs at cfg.Staging and pivots into it.
func buildRoot(cfg *Config) error {
	root := cfg.Staging
	if err := step("make mounts private", unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "")); err != nil {
		return err
	}
	if cfg.Root != "" {
		return buildImageRoot(cfg)
	}
	if err := step("mount root tmpfs", unix.Mount("airlock", root, "tmpfs",
		unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=8m,nr_inodes=4096")); err != nil {
		return err
	}
	for _, d := range []string{"proc", "dev", "tmp", "workspace", "etc", ".scratch"} {
		if err := step("mkdir "+d, os.Mkdir(filepath.Join(root, d), 0o755)); err != nil {
			return err
		}
	}
	for _, b := range cfg.Binds {
		if err := bindReadOnly(b.Source, filepath.Join(root, b.Target), b.File); err != nil {
			return err
		}
	}
	for _, l := range cfg.Symlinks {
		if err := step("symlink "+l[0], os.Symlink(l[1], filepath.Join(root, l[0]))); err != nil {
			return err
		}
	}
	// The host's /usr/local holds what its administrator installed by hand (other services'
	// binaries and their configuration), not the image: an empty read-only directory instead.
	if fi, err := os.Stat(filepath.Join(root, "usr/local")); err == nil && fi.IsDir() {
		if err := hide(root, "/usr/local"); err != nil {
			return err
		}
	}
	if err := mountDev(root); err != nil {
		return err
	}
	if err := mountScratch(root, cfg); err != nil {
		return err
	}
	if err := mountProc(root); err != nil {
		return err
	}
	return pivot(root)
}

// bindReadOnly bind-mounts src at dst and remounts it read-only, nosuid, nodev. Inside a user
// namespace a remount must keep the flags the host mount has locked (noexec, atime), so they
// are read back with statfs and carried over.
func bindReadOnly(src, dst string, file bool) error {
	if file {
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return step("mkdir "+dst, err)
		}
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_RDONLY, 0o644)
		if err != nil {
			return step("create "+dst, err)
		}
		f.Close()
	} else if err := os.MkdirAll(dst, 0o755); err != nil {
		return step("mkdir "+dst, err)
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return step("bind "+src, err)
	}
	return remountReadOnly(dst, unix.MS_NOSUID|unix.MS_NODEV)
}

func remountReadOnly(path string, extra uintptr) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return step("statfs "+path, err)
	}
	locked := uintptr(st.Flags) & (unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC |
		unix.MS_NOATIME | unix.MS_NODIRATIME | unix.MS_RELATIME)
	flags := unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | extra | locked
	return step("remount read-only "+path, unix.Mount("", path, "", flags, ""))
}

// mountDev builds a minimal /dev: a few host device nodes bound in (a user namespace cannot mknod),
// a private devpts instance for PTYs, and the usual symlinks.
func mountDev(root string) error {
	dev := filepath.Join(root, "dev")
	if err := step("mount /dev", unix.Mount("airlock-dev", dev, "tmpfs",
		unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64")); err != nil {
		return err
	}
	for _, d := range devices {
		dst := filepath.Join(dev, d)
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_RDONLY, 0o666)
		if err != nil {
			return step("create /dev/"+d, err)
		}
		f.Close()
		if err := step("bind /dev/"+d, unix.Mount("/dev/"+d, dst, "", unix.MS_BIND, "")); err != nil {
			return err
		}
	}
	for _, d := range []string{"pts", "shm"} {
		if err := step("mkdir /dev/"+d, os.Mkdir(filepath.Join(dev, d), 0o755)); err != nil {
			return err
		}
	}
	if err := step("mount devpts", unix.Mount("devpts", filepath.Join(dev, "pts"), "devpts",
		unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,max="+strconv.Itoa(PTYsPerSandbox))); err != nil {
		return err
	}
	links := [][2]string{{"fd", "/proc/self/fd"}, {"stdin", "/proc/self/fd/0"},
		{"stdout", "/proc/self/fd/1"}, {"stderr", "/proc/self/fd/2"}, {"ptmx", "pts/ptmx"}}
	for _, l := range links {
		if err := step("symlink /dev/"+l[0], os.Symlink(l[1], filepath.Join(dev, l[0]))); err != nil {
			return err
		}
	}
	return nil
}

// mountScratch mounts one size-capped tmpfs and binds its subdirectories to /workspace, /tmp and
// /dev/shm, so the cap covers the writable layers together.
func mountScratch(root string, cfg *Config) error {
	s := filepath.Join(root, ".scratch")
	inodes := max(cfg.ScratchSize/4096, 1024)
	opts := fmt.Sprintf("mode=0755,size=%d,nr_inodes=%d", cfg.ScratchSize, inodes)
	if err := step("mount scratch tmpfs", unix.Mount("airlock-scratch", s, "tmpfs",
		unix.MS_NOSUID|unix.MS_NODEV, opts)); err != nil {
		return err
	}
	dirs := []struct {
		name, target string
		mode         uint32
		owned        bool
	}{
		{"workspace", "workspace", 0o755, true},
		{"tmp", "tmp", 0o777 | unix.S_ISVTX, false},
		{"shm", "dev/shm", 0o777 | unix.S_ISVTX, false},
	}
	for _, d := range dirs {
		p := filepath.Join(s, d.name)
		if err := os.Mkdir(p, 0); err != nil {
			return step("mkdir scratch "+d.name, err)
		}
		// Chmod, not Mkdir's mode: the umask must not apply and Mkdir drops the sticky bit.
		if err := step("chmod scratch "+d.name, unix.Chmod(p, d.mode)); err != nil {
			return err
		}
		if d.owned {
			if err := step("chown /workspace", os.Chown(p, cfg.UID, cfg.GID)); err != nil {
				return err
			}
		}
		if err := step("bind "+d.target, unix.Mount(p, filepath.Join(root, d.target), "",
			unix.MS_BIND, "")); err != nil {
			return err
		}
	}
	if w := cfg.Workdir; w != "" {
		// A workdir outside the writable areas (Modal's "/app"): a scratch directory bound
		// there, so it shares the writable layers' cap.
		p := filepath.Join(s, "workdir")
		if err := os.Mkdir(p, 0o755); err != nil {
			return step("mkdir workdir", err)
		}
		if err := step("chown workdir", os.Chown(p, cfg.UID, cfg.GID)); err != nil {
			return err
		}
		if err := step("mkdir "+w, os.MkdirAll(filepath.Join(root, w), 0o755)); err != nil {
			return err
		}
		if err := step("bind "+w, unix.Mount(p, filepath.Join(root, w), "", unix.MS_BIND, "")); err != nil {
			return err
		}
	}
	if err := step("detach scratch", unix.Unmount(s, unix.MNT_DETACH)); err != nil {
		return err
	}
	return step("rmdir scratch", os.Remove(s))
}

// hide covers the directory dir of the sandbox's tree at root with the state directory's empty
// directory (EmptyDir), read-only. A bind rather than an empty tmpfs of its own: every
// superblock is a memory-cgroup-aware shrinker, and each memory cgroup on the host keeps a map
// sized by the highest shrinker id ever used (≈ 1 KiB per 64), so each tmpfs a sandbox mounts
// costs every sandbox made after it memory (BENCHMARKS.md, "Idle footprint").
func hide(root, dir string) error {
	dst := filepath.Join(root, dir)
	if err := step("hide "+dir, unix.Mount(EmptyDir(root), dst, "", unix.MS_BIND, "")); err != nil {
		return err
	}
	return remountReadOnly(dst, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC)
}

// mountProc mounts the sandbox PID namespace's own /proc and masks what leaks host information.
func mountProc(root string) error {
	proc := filepath.Join(root, "proc")
	if err := step("mount /proc", unix.Mount("proc", proc, "proc",
		unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")); err != nil {
		return err
	}
	for _, p := range maskedPaths {
		dst := filepath.Join(root, p)
		fi, err := os.Lstat(dst)
		if err != nil {
			continue // not on this kernel
		}
		if fi.IsDir() {
			if err := hide(root, p); err != nil {
				return err
			}
		} else if err := unix.Mount(filepath.Join(root, "dev/null"), dst, "", unix.MS_BIND, ""); err != nil {
			return step("mask "+p, err)
		}
	}
	// No user namespace may be made inside the sandbox (this namespace's own per-user limit, which
	// its root may set): user namespaces are the usual way from an unprivileged process to kernel
	// attack surface, and on cgroup v2 clone3 is allowed, whose flags seccomp cannot check.
	if err := os.WriteFile(filepath.Join(proc, "sys/user/max_user_namespaces"), []byte("0"), 0); err != nil {
		return step("limit user namespaces", err)
	}
	for _, p := range readOnlyPaths {
		dst := filepath.Join(root, p)
		if _, err := os.Lstat(dst); err != nil {
			continue
		}
		if err := unix.Mount(dst, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return step("bind "+p, err)
		}
		if err := remountReadOnly(dst, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC); err != nil {
			return err
		}
	}
	return nil
}

// pivot makes root the new "/" and detaches the host's tree entirely (runc's pivot_root(".", ".")
// trick, which needs no directory for the old root), then makes the new root itself read-only.
func pivot(root string) error {
	if err := pivotWritable(root); err != nil {
		return err
	}
	return remountReadOnly("/", unix.MS_NOSUID|unix.MS_NODEV)
}

// pivotWritable is pivot leaving the new root as writable as it was (a build sandbox's overlay).
func pivotWritable(root string) error {
	oldroot, err := unix.Open("/", unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return step("open old root", err)
	}
	defer unix.Close(oldroot)
	if err := step("chdir new root", unix.Chdir(root)); err != nil {
		return err
	}
	if err := step("pivot_root", unix.PivotRoot(".", ".")); err != nil {
		return err
	}
	if err := step("fchdir old root", unix.Fchdir(oldroot)); err != nil {
		return err
	}
	if err := step("make old root slave", unix.Mount("", ".", "", unix.MS_SLAVE|unix.MS_REC, "")); err != nil {
		return err
	}
	if err := step("detach old root", unix.Unmount(".", unix.MNT_DETACH)); err != nil {
		return err
	}
	return step("chdir /", unix.Chdir("/"))
}

// EmptyDir is the state directory's empty directory, beside the staging directory: the
// sandbox's init binds it read-only over what it hides (hide).
func EmptyDir(staging string) string { return filepath.Join(filepath.Dir(staging), "empty") }
