package native

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/runtime/native/sandboxinit"
)

// This file lends the native runtime's building blocks to runtimes that build a sandbox's root
// and namespaces another way (the gVisor runtime's OCI bundle), so that both give a sandbox
// the same /etc, the same binds and the same lockdown of the agent, from one implementation.

// Bind is one read-only bind of a host path into a sandbox's root: the init's own
// (sandboxinit.Bind), which the native runtime's binds are.
type Bind = sandboxinit.Bind

// HostImage describes the host image (see hostImage): the read-only binds of the host's /usr
// and friends and of the /etc assembled in etcDir for the sandbox user uid:gid, and the
// [path, target] symlinks of a merged /usr.
func HostImage(etcDir string, uid, gid int) ([]Bind, [][2]string, error) {
	return hostImage(etcDir, uid, gid)
}

// The image roots (an overlay of an image's layers below a capped writable layer) are lent the
// same way: the gvisor runtime mounts the overlay on the host as its bundle's root.

// CheckImage refuses an image root the runtime cannot mount.
func CheckImage(im *ImageRoot) error { return checkImage(im) }

// ImageWorkdir is the directory made writable in a sandbox of image im: workdir if set, else
// the image's when usable, else none (the processes start in /workspace).
func ImageWorkdir(workdir string, im *ImageRoot) string {
	return imageWorkdir(Spec{Workdir: workdir, Image: im})
}

// DiskBytes is the size of the writable layer of a sandbox asking for scratch bytes (0: the
// default).
func DiskBytes(scratch int64) int64 { return diskBytes(Spec{ScratchBytes: scratch}) }

// ContractEtc are the files of the daemon's assembled /etc bound over an image's /etc.
func ContractEtc() []string { return append([]string(nil), contractEtc...) }

// ImageMountPoint makes the mount point of b (its Target) in the image tree at root, refusing
// a symlink on the way: the caller binds host paths there, and an image's symlink must never
// lead it out of the tree.
func ImageMountPoint(root string, b Bind) error {
	return sandboxinit.ImageBindTarget(root, b)
}

// ImageDir makes the directory dir in the image tree at root as ImageMountPoint does, and
// returns its path on the host.
func ImageDir(root, dir string) (string, error) { return sandboxinit.ImageDir(root, dir) }

// Layers are the writable layers of another runtime's image sandboxes, in its own state
// directory: the native runtime's (an ext4 file system of exactly the cap in a sparse file,
// loop-mounted), with the overlay of an image's layers over one mounted where the caller says.
type Layers struct {
	r     *Runtime // only its state directory and its templates are used
	mu    sync.Mutex
	ready bool
}

// NewLayers keeps writable layers in stateDir/layers (and their templates beside it).
func NewLayers(stateDir string) *Layers { return &Layers{r: &Runtime{cfg: Config{StateDir: stateDir}}} }

// Mount makes sandbox id's writable layer of bytes (see DiskBytes), and mounts at target the
// overlay of layers (lowest first, not idmapped: the image's uid N is host uid N) below it,
// owned as the image's root is by host uid 0.
func (l *Layers) Mount(id string, bytes int64, layers []string, target string) error {
	l.mu.Lock()
	if !l.ready {
		// Private: the layers mounted below it propagate nowhere (the host's "/" may be shared).
		if err := selfMount(filepath.Join(l.r.cfg.StateDir, layersDir), 0o700, unix.MS_PRIVATE); err != nil {
			l.mu.Unlock()
			return fmt.Errorf("writable layers: %w", err)
		}
		l.ready = true
	}
	l.mu.Unlock()
	w := l.r.writableOf(id)
	if err := l.r.makeWritable(w, bytes, 0); err != nil {
		return err
	}
	return mountOverlay(layers, w, 0, target)
}

// Remove deletes sandbox id's writable layer (what exists of it); the caller unmounts the
// overlay first.
func (l *Layers) Remove(id string) error { return l.r.removeWritable(l.r.writableOf(id)) }

// IDs lists the sandboxes that have (a part of) a writable layer, for sweeping.
func (l *Layers) IDs() []string {
	ents, _ := os.ReadDir(filepath.Join(l.r.cfg.StateDir, layersDir))
	var ids []string
	for _, e := range ents {
		id := strings.TrimSuffix(strings.TrimSuffix(e.Name(), ".img"), ".lower")
		if idPattern().MatchString(id) && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids
}

// Close unmounts the layers' directory once no layer is left in it.
func (l *Layers) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ready = false
	p := filepath.Join(l.r.cfg.StateDir, layersDir)
	if ok, err := isMountPoint(p); err != nil || !ok {
		return nil
	}
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount %s: %w", p, err)
	}
	return nil
}

// Slots are host-wide sandbox slots for another runtime's sandboxes: the native runtime's uid
// range claims (in HostDir/uids, which every airlock process on the host honours). A slot
// picks a networked sandbox's addresses and host veth (netpolicy.Sandbox.Slot), so no two live
// sandboxes of any runtime or daemon share them. A claim names the runtime's state directory,
// whose sandboxes/<id> keeps it live after its daemon dies (the next one adopts the sandbox).
type Slots struct{ r *Runtime }

// NewSlots opens the claims of cfg.HostDir for the runtime keeping its sandboxes in
// cfg.StateDir/sandboxes; cfg.UIDBase and cfg.UIDSlots as the native runtime's (defaults the same).
func NewSlots(cfg Config) (*Slots, error) {
	cfg.setDefaults()
	start, err := procStartTime(os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("own start time: %w", err)
	}
	r := &Runtime{cfg: cfg, selfStart: start, slots: map[int]string{}}
	if err := r.prepareHostDir(); err != nil {
		return nil, err
	}
	return &Slots{r: r}, nil
}

// Claim claims a free slot for sandbox id.
func (s *Slots) Claim(id string) (int, error) { return s.r.allocSlot(id) }

// Keep holds on to the slot of a sandbox a previous daemon left running.
func (s *Slots) Keep(slot int, id string) { s.r.keepSlot(slot, id) }

// Free releases a slot.
func (s *Slots) Free(slot int) { s.r.freeSlot(slot) }

// Drop removes the claim of a dead sandbox id of the state directory on slot, if the claim
// still names it (a previous daemon's, which Free would not touch).
func (s *Slots) Drop(slot int, id string) { s.r.dropClaim(slot, id) }

// Close releases the claims' lock (the claims of live sandboxes stay).
func (s *Slots) Close() { releaseLock(s.r.uidLock, false) }

// ResolvConf is a networked sandbox's resolv.conf: its forwarder on the gateway.
func ResolvConf(gateway netip.Addr) []byte {
	// ndots:1 and no search domains: a sandbox resolves exactly the names it asks for.
	return fmt.Appendf(nil, "nameserver %s\noptions ndots:1 timeout:2 attempts:2\n", gateway)
}

// CopyInit copies a separate init program (the airlock-sandbox binary the daemon checked) to
// dst in the runtime's state directory and returns dst, as the native runtime does for its
// own sandboxes: replacing the original while the runtime lives (an upgrade) changes no
// sandbox it starts.
func CopyInit(src, dst string) (string, error) { return copyInit(src, dst) }
