package agent

import (
	"errors"
	"fmt"
	"os"
	"path"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// asUser runs fn on a fresh OS thread whose filesystem uid and gid are the sandbox user's.
// Changing the fsuid from 0 clears the thread's file capabilities (DAC_OVERRIDE, FOWNER, …), so
// fn can open exactly what code in the sandbox could open — no more — and what it creates is
// owned by the sandbox user. The thread is never unlocked, so the Go runtime discards it when
// fn returns instead of reusing its credentials elsewhere.
func (a *Agent) asUser(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		unix.Setfsgid(a.cfg.GID)
		unix.Setfsuid(a.cfg.UID)
		if uid, _ := unix.SetfsuidRetUid(-1); uid != a.cfg.UID {
			errc <- errors.New("could not switch to the sandbox user")
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// sandboxPath resolves p (absolute, or relative to /workspace) to a clean absolute path and
// refuses NUL bytes and the kernel's pseudo file systems.
func sandboxPath(p string) (string, error) {
	if p == "" {
		return "", errors.New("path is empty")
	}
	if strings.ContainsRune(p, 0) {
		return "", errors.New("path contains a NUL byte")
	}
	if !path.IsAbs(p) {
		p = path.Join("/workspace", p)
	}
	p = path.Clean(p)
	if p == "/dev/shm" || strings.HasPrefix(p, "/dev/shm/") {
		return p, nil // a writable area, like /tmp
	}
	for _, deny := range []string{"/proc", "/dev", "/sys"} {
		if p == deny || strings.HasPrefix(p, deny+"/") {
			return "", fmt.Errorf("%s: not accessible through the file API", p)
		}
	}
	return p, nil
}

// openFile opens p as the sandbox user. Symlinks are followed (they are the user's own), but
// never through /proc "magic" links, and the result must be on an ordinary file system.
func (a *Agent) openFile(p string, flags int, mode uint32, parents bool) (*os.File, error) {
	p, err := sandboxPath(p)
	if err != nil {
		return nil, err
	}
	var f *os.File
	err = a.asUser(func() error {
		if parents {
			if err := os.MkdirAll(path.Dir(p), 0o755); err != nil {
				return err
			}
		}
		// O_NONBLOCK until the type is checked: opening a FIFO planted in the sandbox would
		// otherwise block this thread forever (and a write-open with no reader fails at once).
		fd, err := unix.Openat2(unix.AT_FDCWD, p, &unix.OpenHow{
			Flags:   uint64(flags | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY),
			Mode:    uint64(mode),
			Resolve: unix.RESOLVE_NO_MAGICLINKS,
		})
		if err != nil {
			return &os.PathError{Op: "open", Path: p, Err: err}
		}
		if err := checkOrdinary(fd); err != nil {
			unix.Close(fd)
			return &os.PathError{Op: "open", Path: p, Err: err}
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags&unix.O_APPEND); err != nil {
			unix.Close(fd)
			return &os.PathError{Op: "open", Path: p, Err: err}
		}
		f = os.NewFile(uintptr(fd), p)
		return nil
	})
	return f, err
}

var errPseudoFS = errors.New("not an ordinary file (pseudo file system, device or FIFO)")

// checkOrdinaryPath applies checkOrdinary to the directory or file p resolves to.
func checkOrdinaryPath(p string) error {
	fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return err
	}
	return pseudoFS(fs.Type)
}

// pseudoFS refuses the kernel's pseudo file systems.
func pseudoFS(t int64) error {
	switch t {
	case unix.PROC_SUPER_MAGIC, unix.SYSFS_MAGIC, unix.DEVPTS_SUPER_MAGIC, unix.CGROUP_SUPER_MAGIC,
		unix.CGROUP2_SUPER_MAGIC, unix.SECURITYFS_MAGIC, unix.DEBUGFS_MAGIC, unix.BPF_FS_MAGIC:
		return errPseudoFS
	}
	return nil
}

// checkOrdinary refuses descriptors on procfs, sysfs and friends, and device nodes, which a
// symlink planted in the sandbox could otherwise point the file API at.
func checkOrdinary(fd int) error {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return err
	}
	if err := pseudoFS(fs.Type); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFDIR:
		return nil
	}
	return errPseudoFS
}
