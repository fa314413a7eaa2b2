package native

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// The writable layer of an image sandbox is an ext4 file system of its own, in a sparse file
// <state>/layers/<id>.img of exactly the cap's size, loop-mounted (auto-clearing) at
// <state>/layers/<id>, holding the overlay's upper and work directories. Filling it gives the
// sandbox ENOSPC, its disk is the file's, and removing the file frees it.
//
// Project quotas on one shared ext4 (the first design) cannot work on this kernel: it has
// CONFIG_QUOTA but neither QFMT_V2 (ext4's quota files) nor XFS_QUOTA nor TMPFS_QUOTA, so
// ext4 refuses to mount a file system with the quota feature. The per-sandbox file system costs
// no program run per sandbox: mkfs.ext4 formats a template once per cap size (the one program
// the runtime runs, a few milliseconds), and each sandbox gets a sparse copy of it (its
// metadata: under 1 MiB for 1 GiB).
const (
	layersDir = "layers"
	// templatesDir holds the formatted templates, one per size; apart from layersDir, whose
	// entries are all sandboxes'.
	templatesDir = "layer-templates"
	// minDiskBytes is the smallest writable layer: ext4 needs room for its metadata.
	minDiskBytes = 8 << 20
)

// imageState is the runtime's share of image sandboxes; its zero value is ready (nothing is
// set up until the first image sandbox, so a host-only daemon never formats or mounts).
type imageState struct {
	mu    sync.Mutex
	ready bool // <state>/layers exists and <state>/rootfs is a shared mount
	// templates holds the formatted template of each writable-layer size made so far.
	templates map[int64]string
}

// ensureImages prepares the writable layers' directory and the shared mount that carries
// sandboxes' overlay roots into their inits' namespaces.
func (r *Runtime) ensureImages() error {
	r.images.mu.Lock()
	defer r.images.mu.Unlock()
	if r.images.ready {
		return nil
	}
	// A mount of its own, private: the writable layers mounted below it, and the layers
	// attached while an overlay is made, propagate nowhere (the host's "/" may be shared).
	if err := selfMount(filepath.Join(r.cfg.StateDir, layersDir), 0o700, unix.MS_PRIVATE); err != nil {
		return fmt.Errorf("writable layers: %w", err)
	}
	if err := r.shareRootfs(); err != nil {
		return err
	}
	r.images.ready = true
	return nil
}

// template returns the path of an empty ext4 file system of size bytes, formatting it on first
// use (under a temporary name, so that a crash mid-way never leaves a half-made one behind).
func (r *Runtime) template(size int64) (string, error) {
	r.images.mu.Lock()
	defer r.images.mu.Unlock()
	if p, ok := r.images.templates[size]; ok {
		return p, nil
	}
	// The version in the name changes with the format options below.
	dir := filepath.Join(r.cfg.StateDir, templatesDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("writable layer template: %w", err)
	}
	p := filepath.Join(dir, fmt.Sprintf("v1-%d.img", size))
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		if err := formatExt4(p, size); err != nil {
			return "", err
		}
	} else if err != nil {
		return "", fmt.Errorf("writable layer template: %w", err)
	}
	if r.images.templates == nil {
		r.images.templates = map[int64]string{}
	}
	r.images.templates[size] = p
	return p, nil
}

// formatExt4 makes an ext4 file system of size bytes in the file img: no journal (a sandbox's
// writable layer never outlives a crash of its host), no reserved blocks (the cap is the
// sandbox's to fill), no discard.
func formatExt4(img string, size int64) error {
	tmp := img + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("writable layer template: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writable layer template: %w", err)
	}
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", "-b", "4096",
		"-E", "lazy_itable_init=1,nodiscard,root_owner=0:0", "-L", "airlock-layer", tmp).CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writable layer template: mkfs.ext4: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if err := os.Rename(tmp, img); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writable layer template: %w", err)
	}
	return nil
}

// copySparse copies src to a new file dst, its data ranges only: holes stay holes.
func copySparse(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = func() error {
		for off := int64(0); off < fi.Size(); {
			data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) {
				break // only a hole is left
			} else if err != nil {
				return err
			}
			hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
			if err != nil {
				return err
			}
			for o := data; o < hole; {
				n, err := unix.CopyFileRange(int(in.Fd()), &o, int(out.Fd()), &o, int(hole-o), 0)
				if err != nil {
					return err
				}
				if n == 0 {
					return io.ErrUnexpectedEOF
				}
			}
			off = hole
		}
		return out.Truncate(fi.Size())
	}()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// attachLoop binds img to a free loop device (auto-clearing) and returns the device, open.
func attachLoop(img string) (*os.File, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop control: %w", err)
	}
	defer ctl.Close()
	back, err := os.OpenFile(img, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("writable layers: %w", err)
	}
	defer back.Close()
	// Another process may take the free device between the two calls: try again.
	for range 16 {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("free loop device: %w", err)
		}
		dev, err := os.OpenFile(fmt.Sprintf("/dev/loop%d", n), os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("loop device: %w", err)
		}
		cfg := unix.LoopConfig{Fd: uint32(back.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		copy(cfg.Info.File_name[:], img)
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if err == nil {
			return dev, nil
		}
		dev.Close()
		if !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("configure loop device: %w", err)
		}
	}
	return nil, errors.New("configure loop device: every free device was taken meanwhile")
}

// isMountPoint reports whether dir is the root of a mount (statx's STATX_ATTR_MOUNT_ROOT).
func isMountPoint(dir string) (bool, error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, unix.AT_SYMLINK_NOFOLLOW, 0, &stx); err != nil {
		return false, fmt.Errorf("stat %s: %w", dir, err)
	}
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return false, errors.New("the kernel does not report mount roots (statx, Linux 5.8)")
	}
	return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
}

// writable is one sandbox's writable layer: the file system img mounted at dir, with the
// overlay's upper and work directories in it.
type writable struct {
	img, dir, upper, work string
	lowers                string // where the idmapped layers are attached while the overlay is made
}

func (r *Runtime) writableOf(id string) writable {
	dir := filepath.Join(r.cfg.StateDir, layersDir, id)
	return writable{img: dir + ".img", dir: dir, upper: filepath.Join(dir, "upper"), work: filepath.Join(dir, "work"),
		lowers: dir + ".lower"}
}

// makeWritable creates the writable layer, bytes big, with the upper directory owned by the
// sandbox's root (host uid owner): overlay takes the merged root's owner from it.
func (r *Runtime) makeWritable(w writable, bytes int64, owner int) error {
	// Whatever a crashed create left under this id goes first.
	if err := r.removeWritable(w); err != nil {
		return err
	}
	tmpl, err := r.template(bytes)
	if err != nil {
		return err
	}
	if err := copySparse(tmpl, w.img); err != nil {
		return fmt.Errorf("writable layer: %w", err)
	}
	if err := os.Mkdir(w.dir, 0o700); err != nil {
		return fmt.Errorf("writable layer: %w", err)
	}
	loop, err := attachLoop(w.img)
	if err != nil {
		return err
	}
	// Auto-clearing: the device goes with the mount's last user (this mount, and the overlay in
	// the sandbox's namespace, which holds the file system while the sandbox lives).
	defer loop.Close()
	// noinit_itable: no background zeroing of inode tables, which would fill the sparse file.
	if err := unix.Mount(loop.Name(), w.dir, "ext4", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOATIME,
		"noinit_itable,errors=remount-ro"); err != nil {
		return fmt.Errorf("mount writable layer %s: %w", loop.Name(), err)
	}
	if err := unix.Mount("", w.dir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("writable layer: make private: %w", err)
	}
	for _, d := range []string{w.upper, w.work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("writable layer: %w", err)
		}
	}
	if err := os.Chown(w.upper, owner, owner); err != nil {
		return fmt.Errorf("writable layer: %w", err)
	}
	return nil
}

// removeWritable unmounts and deletes a writable layer (what exists of it, with the layers
// attached while its overlay was made, should a crash have left them).
func (r *Runtime) removeWritable(w writable) error {
	var errs []error
	if ents, err := os.ReadDir(w.lowers); err == nil {
		for _, e := range ents {
			errs = append(errs, detachMount(filepath.Join(w.lowers, e.Name())))
		}
		errs = append(errs, os.Remove(w.lowers))
	}
	if err := unix.Unmount(w.dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, err)
	}
	if err := os.Remove(w.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := os.Remove(w.img); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove writable layer: %w", err)
	}
	return nil
}

// diskUsage is the host disk the writable layer's file takes.
func (w writable) diskUsage() (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(w.img, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}
