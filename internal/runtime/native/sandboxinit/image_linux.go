package sandboxinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/layout"
)

// buildImageRoot assembles an image sandbox's root inside the init: the overlay (propagated to
// cfg.Root) bound at the staging directory — a mount of the init's own namespace, which
// pivot_root accepts, where the propagated one is locked — the contract's mount points made in
// the writable layer, and the root left read-only but for /workspace, /tmp, /dev/shm and the
// workdir.
//
// Paths in the image are the image's: a /workspace or /etc/passwd that is a symlink would lead
// the init's mkdir, chown or bind out of the sandbox's tree (before pivot_root the host's tree
// is still there), so every component is checked with Lstat and a symlink refused. Nothing else
// runs in the sandbox yet and the layers are read-only, so nothing changes them meanwhile.
func buildImageRoot(cfg *Config) error {
	root := cfg.Staging
	if err := step("bind image root", unix.Mount(cfg.Root, root, "", unix.MS_BIND, "")); err != nil {
		return err
	}
	dirs := []struct {
		path  string
		mode  uint32
		owned bool
	}{
		{"/proc", 0o555, false}, {"/dev", 0o755, false}, {"/etc", 0o755, false},
		{layout.Tmp, 0o777 | unix.S_ISVTX, false}, {layout.Workspace, 0o755, true},
	}
	if cfg.Workdir != "" {
		dirs = append(dirs, struct {
			path  string
			mode  uint32
			owned bool
		}{cfg.Workdir, 0o755, true})
	}
	for _, d := range dirs {
		p, err := ImageDir(root, d.path)
		if err != nil {
			return err
		}
		if d.path == "/proc" || d.path == "/dev" || d.path == "/etc" {
			continue // mounted over, or the image's own
		}
		// Chmod, not Mkdir's mode: the umask must not apply and Mkdir drops the sticky bit.
		if err := step("chmod "+d.path, unix.Chmod(p, d.mode)); err != nil {
			return err
		}
		if d.owned {
			if err := step("chown "+d.path, os.Chown(p, cfg.UID, cfg.GID)); err != nil {
				return err
			}
		}
	}
	for _, b := range cfg.Binds {
		if err := ImageBindTarget(root, b); err != nil {
			return err
		}
		if err := bindReadOnly(b.Source, filepath.Join(root, b.Target), b.File); err != nil {
			return err
		}
	}
	if err := mountDev(root); err != nil {
		return err
	}
	shm := filepath.Join(root, layout.DevShm)
	if err := step("mount /dev/shm", unix.Mount("airlock-shm", shm, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV,
		fmt.Sprintf("mode=01777,size=%d,nr_inodes=%d", max(cfg.ShmSize, 1<<20), max(cfg.ShmSize/4096, 1024)))); err != nil {
		return err
	}
	// The writable directories are binds of themselves: mounts of their own that stay
	// writable when the root is made read-only (writes go to the writable layer either way).
	writable := []string{layout.Tmp, layout.Workspace}
	if cfg.Workdir != "" {
		writable = append(writable, cfg.Workdir)
	}
	for _, w := range writable {
		p := filepath.Join(root, w)
		if err := step("bind "+w, unix.Mount(p, p, "", unix.MS_BIND, "")); err != nil {
			return err
		}
	}
	if err := mountProc(root); err != nil {
		return err
	}
	if cfg.WritableRoot {
		return pivotWritable(root)
	}
	return pivot(root)
}

// ImageDir makes dir (absolute, clean) in the image tree at root, refusing symlinks on the way,
// and returns its path from here.
func ImageDir(root, dir string) (string, error) {
	p := root
	for _, c := range strings.Split(strings.TrimPrefix(dir, "/"), "/") {
		p = filepath.Join(p, c)
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := os.Mkdir(p, 0o755); err != nil {
				return "", step("mkdir "+dir, err)
			}
		case err != nil:
			return "", step("stat "+dir, err)
		case !fi.IsDir():
			return "", &SetupError{Step: "image " + dir, Msg: "not a directory in the image (a symlink?)"}
		}
	}
	return p, nil
}

// ImageBindTarget makes the mount point of b in the image tree at root: its directories
// (ImageDir), and for a file an empty file if the image has none; a symlink is refused.
func ImageBindTarget(root string, b Bind) error {
	if !b.File {
		_, err := ImageDir(root, b.Target)
		return err
	}
	if _, err := ImageDir(root, filepath.Dir(b.Target)); err != nil {
		return err
	}
	p := filepath.Join(root, b.Target)
	fi, err := os.Lstat(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDONLY|unix.O_NOFOLLOW, 0o644)
		if err != nil {
			return step("create "+b.Target, err)
		}
		return f.Close()
	case err != nil:
		return step("stat "+b.Target, err)
	case !fi.Mode().IsRegular():
		return &SetupError{Step: "image " + b.Target, Msg: "not a regular file in the image (a symlink?)"}
	}
	return nil
}
