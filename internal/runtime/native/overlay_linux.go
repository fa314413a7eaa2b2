package native

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/layout"
)

// ImageRoot is the root file system of a sandbox built from image layers (Spec.Image).
type ImageRoot struct {
	// Layers are host directories, lowest first, each one unpacked layer in overlayfs format
	// (whiteout: a 0:0 character device; opaque directory: xattr trusted.overlay.opaque="y"),
	// owned by the image's uids (0 is the image's root). They are only ever mounted read-only.
	Layers []string
	// Env is the image's environment (KEY=value); its PATH is the sandbox's. The contract's
	// own variables (HOME, LANG) win over the image's.
	Env []string
	// Workdir is the image's working directory, made (writable, owned by the sandbox user) when
	// Spec.Workdir is empty. It is ignored when it lies in a system directory or is not a clean
	// absolute path; the engine decides the processes' working directory.
	Workdir string
}

// maxLayers stays below overlayfs's own limit of lower layers (500).
const maxLayers = 128

// defaultDiskBytes is an image sandbox's writable layer when Spec.ScratchBytes is 0.
const defaultDiskBytes = 1 << 30

// rootfsDir (<state>/rootfs) is a shared mount: an overlay the daemon mounts at rootfs/<id>
// propagates into the mount namespace of sandbox <id>'s init, which was copied from the daemon's
// (as a slave, being in a less privileged user namespace) when the init was cloned. This is how
// a root made of idmapped layers — which only the daemon can make, and only once the init's user
// namespace exists — reaches the init with no descriptor passing. The init makes its mounts
// private first thing (after which the daemon's copy is detached).
const rootfsDir = "rootfs"

func checkImage(im *ImageRoot) error {
	if len(im.Layers) == 0 || len(im.Layers) > maxLayers {
		return fmt.Errorf("image: %d layers, want 1…%d", len(im.Layers), maxLayers)
	}
	for _, l := range im.Layers {
		if !filepath.IsAbs(l) || filepath.Clean(l) != l || strings.ContainsAny(l, ",:\x00") {
			return fmt.Errorf("image layer %q: want a clean absolute path", l)
		}
		if fi, err := os.Stat(l); err != nil || !fi.IsDir() {
			return fmt.Errorf("image layer %s: not a directory", l)
		}
	}
	for _, e := range im.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" || strings.ContainsRune(e, 0) {
			return fmt.Errorf("image env %q: want KEY=value", e)
		}
	}
	return nil
}

// imageWorkdir is the directory the runtime makes writable for spec: Spec.Workdir, else the
// image's when usable.
func imageWorkdir(spec Spec) string {
	if spec.Workdir != "" || spec.Image == nil {
		return spec.Workdir
	}
	if w := spec.Image.Workdir; checkWorkdir(w) == nil {
		return w
	}
	return "" // in a writable area already, or unusable: /workspace
}

// shareRootfs makes <state>/rootfs a mount of its own in a peer group of its own, shared.
func (r *Runtime) shareRootfs() error {
	// 0711: an init reaches its own rootfs/<id> without listing the others. Private first: a
	// fresh peer group, not the one of the host's "/" (nothing of ours propagates to the
	// host's other namespaces).
	if err := selfMount(filepath.Join(r.cfg.StateDir, rootfsDir), 0o711, unix.MS_PRIVATE, unix.MS_SHARED); err != nil {
		return fmt.Errorf("rootfs directory: %w", err)
	}
	return nil
}

// selfMount makes dir (mode perm) a bind mount of itself, unless it is a mount point already,
// and applies the propagation changes in order.
func selfMount(dir string, perm os.FileMode, propagation ...uintptr) error {
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	if err := os.Chmod(dir, perm); err != nil {
		return err
	}
	if ok, err := isMountPoint(dir); err != nil {
		return err
	} else if !ok {
		if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind: %w", err)
		}
	}
	for _, f := range propagation {
		if err := unix.Mount("", dir, "", f, ""); err != nil {
			return fmt.Errorf("propagation: %w", err)
		}
	}
	return nil
}

// imageCreation is what the image steps of one Create acquired.
type imageCreation struct {
	w     writable
	mount string // <state>/rootfs/<id> while the daemon's copy of the overlay is mounted
}

// writableLayer (a Create step, before the init) makes the sandbox's capped writable layer.
func (c *creation) writableLayer(context.Context) error {
	if c.spec.Image == nil {
		return nil
	}
	if err := c.r.ensureImages(); err != nil {
		return err
	}
	w := c.r.writableOf(c.spec.ID)
	c.undo.add(func() {
		if err := c.r.removeWritable(w); err != nil {
			c.r.cfg.Logger.Warn("undo writable layer", "sandbox", c.spec.ID, "err", err)
		}
	})
	if err := c.r.makeWritable(w, diskBytes(c.spec), c.owner); err != nil {
		return err
	}
	c.image.w = w
	return nil
}

// diskBytes is the size of spec's writable layer: whole MiB, at least minDiskBytes.
func diskBytes(spec Spec) int64 {
	b := int64(defaultDiskBytes)
	if spec.ScratchBytes > 0 {
		b = spec.ScratchBytes
	}
	return max(b&^(1<<20-1), minDiskBytes)
}

// imageRoot (a Create step, once the init exists and before it is configured) mounts the
// overlay of idmapped layers at <state>/rootfs/<id>, from where it propagates into the init's
// mount namespace.
func (c *creation) imageRoot(context.Context) error {
	if c.spec.Image == nil {
		return nil
	}
	target := filepath.Join(c.r.cfg.StateDir, rootfsDir, c.spec.ID)
	if err := os.Mkdir(target, 0o755); err != nil {
		return fmt.Errorf("root mount point: %w", err)
	}
	c.image.mount = target
	c.undo.add(c.detachHostRoot)
	return mountOverlay(c.spec.Image.Layers, c.image.w, c.sb.pid, target)
}

// releaseHostRoot (a Create step, once the init has built its root) detaches the daemon's
// copy of the overlay: the init's own copy is the sandbox's root from here on, and goes with
// its mount namespace.
func (c *creation) releaseHostRoot(context.Context) error {
	if c.spec.Image == nil {
		return nil
	}
	c.detachHostRoot()
	c.sb.image = &sandboxImage{r: c.r, w: c.image.w, owner: c.owner}
	return nil
}

func (c *creation) detachHostRoot() {
	if c.image.mount == "" {
		return
	}
	if err := detachMount(c.image.mount); err != nil {
		c.r.cfg.Logger.Warn("detach the daemon's copy of a sandbox root", "sandbox", c.spec.ID, "err", err)
	}
	c.image.mount = ""
}

// detachMount lazily unmounts whatever is mounted at dir and removes dir.
func detachMount(dir string) error {
	err := unix.Unmount(dir, unix.MNT_DETACH)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		err = nil // not mounted (any more)
	}
	if rerr := os.Remove(dir); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}

// mountOverlay mounts at target an overlay of layers (lowest first), each an idmapped
// read-only clone mapped through the user namespace of process pid — so that the image's uid
// N is uid N inside the sandbox, with no copy or chown of the layers — below w's upper layer.
// With pid 0 the clones are not idmapped: the image's uid N stays host uid N (the gvisor
// runtime's sandboxes, whose file ownership is the host's as its gofer sees it).
func mountOverlay(layers []string, w writable, pid int, target string) error {
	userns := -1
	if pid > 0 {
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("sandbox user namespace: %w", err)
		}
		defer unix.Close(fd)
		userns = fd
	}
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("overlay: fsopen: %w", err)
	}
	defer unix.Close(fsfd)
	// This kernel's overlayfs takes only layers attached to the mount tree (it fails to clone a
	// detached one), so each idmapped clone is attached below w.lowers — inside the private
	// <state>/layers — for as long as the overlay takes to take its own private clones.
	if err := os.Mkdir(w.lowers, 0o700); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	var attached []string
	defer func() {
		for _, p := range attached {
			detachMount(p)
		}
		os.Remove(w.lowers)
	}()
	// lowerdir+ appends below the layers given so far: top first.
	for i := len(layers) - 1; i >= 0; i-- {
		p := filepath.Join(w.lowers, strconv.Itoa(i))
		if err := os.Mkdir(p, 0o700); err != nil {
			return fmt.Errorf("overlay: %w", err)
		}
		attached = append(attached, p)
		if err := idmappedLayer(layers[i], userns, p); err != nil {
			return fmt.Errorf("overlay: layer %s: %w", layers[i], err)
		}
		if err := fsError(fsfd, unix.FsconfigSetString(fsfd, "lowerdir+", p)); err != nil {
			return fmt.Errorf("overlay: layer %s: %w", layers[i], err)
		}
	}
	// redirect_dir and metacopy off: the upper layer must be a plain OCI-expressible diff
	// (a renamed lower directory is copied, not redirected), for snapshots.
	for _, kv := range [][2]string{{"upperdir", w.upper}, {"workdir", w.work},
		{"redirect_dir", "off"}, {"metacopy", "off"}, {"index", "off"}} {
		if err := fsError(fsfd, unix.FsconfigSetString(fsfd, kv[0], kv[1])); err != nil {
			return fmt.Errorf("overlay: %s: %w", kv[0], err)
		}
	}
	if err := fsError(fsfd, unix.FsconfigCreate(fsfd)); err != nil {
		return fmt.Errorf("overlay: create: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return fmt.Errorf("overlay: fsmount: %w", fsError(fsfd, err))
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("overlay: attach at %s: %w", target, err)
	}
	return nil
}

// idmappedLayer attaches at target a read-only clone of layer mapped through userns (-1: not
// idmapped).
func idmappedLayer(layer string, userns int, target string) error {
	fd, err := unix.OpenTree(unix.AT_FDCWD, layer, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("clone: %w", err)
	}
	defer unix.Close(fd)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if userns >= 0 {
		attr.Attr_set |= unix.MOUNT_ATTR_IDMAP
		attr.Userns_fd = uint64(userns)
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		if errors.Is(err, unix.EINVAL) {
			// The usual cause: the state directory's file system cannot be idmapped (9p, NFS,
			// or tmpfs before Linux 6.3); the operator must move it, not retry.
			return fmt.Errorf("idmap (the state directory's file system must support idmapped mounts: ext4, xfs, btrfs, or tmpfs on Linux 6.3+): %w", err)
		}
		return fmt.Errorf("idmap: %w", err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	return nil
}

// fsError adds the file system's own messages (read from its fs context) to err.
func fsError(fsfd int, err error) error {
	if err == nil {
		return nil
	}
	var msgs []string
	buf := make([]byte, 1024)
	for range 8 {
		n, rerr := unix.Read(fsfd, buf)
		if rerr != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(string(buf[:n])))
	}
	if len(msgs) == 0 {
		return err
	}
	return fmt.Errorf("%w (%s)", err, strings.Join(msgs, "; "))
}

// imageBinds are the read-only binds of an image sandbox: the contract's own files over the
// image's /etc (the sandbox user must be named, hosts and resolver are Airlock's), and the
// operator's wheels. The image's /usr and the rest of its /etc stay the image's.
func (r *Runtime) imageBinds() []bindSpec {
	etc := filepath.Join(r.cfg.StateDir, "etc")
	var binds []bindSpec
	for _, f := range contractEtc {
		binds = append(binds, bindSpec{Source: filepath.Join(etc, f), Target: "/etc/" + f, File: true})
	}
	if r.cfg.WheelDir != "" {
		for _, b := range r.binds {
			if b.Target == layout.WheelDir {
				binds = append(binds, b)
			}
		}
	}
	return binds
}

// contractEtc are the files of the daemon's assembled /etc bound over an image's.
var contractEtc = []string{"passwd", "group", "hosts", "hostname", "resolv.conf", "nsswitch.conf"}

// configureImage fills in the init's config of an image sandbox.
func (c *creation) configureImage(icfg *initConfig) {
	if c.spec.Image == nil {
		return
	}
	icfg.Root = filepath.Join(c.r.cfg.StateDir, rootfsDir, c.spec.ID)
	icfg.Binds, icfg.Symlinks = c.r.imageBinds(), nil
	icfg.Env = c.spec.Image.Env
	icfg.Workdir = imageWorkdir(c.spec)
	icfg.ShmSize = c.scratch
	icfg.ScratchSize = diskBytes(c.spec)
	if c.spec.Build {
		icfg.UID, icfg.GID, icfg.WritableRoot = 0, 0, true
	}
}

// sandboxImage is what an image sandbox keeps of its root beyond its mount namespace: the
// writable layer on the daemon's side (for snapshots, usage, and removal on destroy).
type sandboxImage struct {
	r     *Runtime
	w     writable
	owner int // host uid of the sandbox's root: upper-layer uid owner+N is the image's uid N
}

// remove deletes the writable layer; nil (a host-image sandbox) has nothing to remove.
func (si *sandboxImage) remove() error {
	if si == nil {
		return nil
	}
	return si.r.removeWritable(si.w)
}

// recoverImage finds the writable layer of a live sandbox left by a previous daemon, if any.
func (r *Runtime) recoverImage(id string, slot int) *sandboxImage {
	if slot < 0 {
		return nil
	}
	if _, err := os.Stat(filepath.Join(r.cfg.StateDir, layersDir, id+".img")); err != nil {
		return nil
	}
	if err := r.ensureImages(); err != nil {
		r.cfg.Logger.Warn("recovered sandbox: writable layers", "sandbox", id, "err", err)
		return nil
	}
	w := r.writableOf(id)
	if _, err := os.Lstat(w.upper); err != nil {
		return nil
	}
	return &sandboxImage{r: r, w: w, owner: r.cfg.hostUID(slot, 0)}
}

// removeImageRemains removes what an image sandbox that is gone may have left: the daemon's
// copy of its root and its writable layer.
func (r *Runtime) removeImageRemains(id string) error {
	return errors.Join(detachMount(filepath.Join(r.cfg.StateDir, rootfsDir, id)), r.removeWritable(r.writableOf(id)))
}

// sweepImages removes the roots and writable layers of sandboxes the state directory has no
// record of (a crash between making a layer and removing it, say).
func (r *Runtime) sweepImages(known map[string]bool) error {
	var errs []error
	for _, d := range []string{rootfsDir, layersDir} {
		ents, _ := os.ReadDir(filepath.Join(r.cfg.StateDir, d))
		for _, e := range ents {
			id := strings.TrimSuffix(strings.TrimSuffix(e.Name(), ".img"), ".lower")
			if idPattern().MatchString(id) && !known[id] {
				errs = append(errs, r.removeImageRemains(id))
			}
		}
	}
	return errors.Join(errs...)
}

// closeImages unmounts the rootfs and layers mounts, once no sandbox of this runtime is left.
func (r *Runtime) closeImages() error {
	r.images.mu.Lock()
	defer r.images.mu.Unlock()
	r.images.ready = false
	var errs []error
	for _, d := range []string{rootfsDir, layersDir} {
		p := filepath.Join(r.cfg.StateDir, d)
		if ok, err := isMountPoint(p); err != nil || !ok {
			continue
		}
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}
