package native

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Host-wide ownership (review finding M1). Several daemons and `airlock run`'s embedded engines
// share one host: its cgroup hierarchy and its uid space. Each runtime therefore
//
//   - locks its state directory (flock on <state-dir>/lock, held for its life): one runtime per
//     state directory;
//   - claims its cgroup root (flock on <HostDir>/cgroup-<root>.lock, held for its life; the file
//     keeps naming the state directory after the runtime exits, so a later runtime knows whose
//     sandboxes the root may still hold);
//   - claims each sandbox's uid range in <HostDir>/uids, one file per range, so no two live
//     sandboxes of any runtimes share host uids.
//
// HostDir is on tmpfs (/run): it starts empty at boot, like the cgroups and processes it guards.

// ErrInUse is returned by New when another airlock process holds the state directory or the
// cgroup root.
var ErrInUse = errors.New("in use by another airlock process")

// owner is the content of a lock or claim file: who holds it.
type owner struct {
	Pid      int    `json:"pid"`
	Start    uint64 `json:"start"` // the process's start time, against pid reuse
	StateDir string `json:"state_dir"`
	Sandbox  string `json:"sandbox,omitempty"`   // uid claims: the sandbox using the range
	FirstUID int    `json:"first_uid,omitempty"` // uid claims: the range's first host uid
}

func (r *Runtime) self(sandbox string, firstUID int) owner {
	return owner{Pid: os.Getpid(), Start: r.selfStart, StateDir: r.cfg.StateDir, Sandbox: sandbox, FirstUID: firstUID}
}

func (o owner) String() string {
	return fmt.Sprintf("airlock pid %d (state directory %s)", o.Pid, o.StateDir)
}

// alive reports whether the owning process still runs.
func (o owner) alive() bool {
	start, err := procStartTime(o.Pid)
	return err == nil && start == o.Start
}

func readOwner(b []byte) (owner, bool) {
	var o owner
	err := json.Unmarshal(b, &o)
	return o, err == nil && o.Pid > 0
}

// lockFile takes an exclusive flock on path (created 0600) without waiting and returns the file
// and what it held before. If another process holds the lock, the error wraps ErrInUse and names
// the holder.
func lockFile(path string) (*os.File, []byte, error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			b, _ := io.ReadAll(io.LimitReader(f, 4096))
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				holder := "another process"
				if o, ok := readOwner(b); ok {
					holder = o.String()
				}
				return nil, nil, fmt.Errorf("%s is held by %s: %w", path, holder, ErrInUse)
			}
			return nil, nil, fmt.Errorf("lock %s: %w", path, err)
		}
		// A holder releasing the lock unlinks the file first (releaseLock): if that happened
		// after our open, we locked an orphan and must retry on the file now at path.
		var held, now unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(path, &now) == nil && held.Ino == now.Ino && held.Dev == now.Dev {
			b, err := io.ReadAll(io.LimitReader(f, 4096))
			if err != nil {
				f.Close()
				return nil, nil, fmt.Errorf("read %s: %w", path, err)
			}
			return f, b, nil
		}
		f.Close()
	}
}

// writeOwner replaces the content of a held lock file.
func writeOwner(f *os.File, o owner) error {
	b, _ := json.Marshal(o)
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	if _, err := f.WriteAt(append(b, '\n'), 0); err != nil {
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	return nil
}

// releaseLock drops a lock taken by lockFile; with unlink, the file goes first, so that nothing
// is left behind (lockFile's inode check keeps that race-free).
func releaseLock(f *os.File, unlink bool) {
	if f == nil {
		return
	}
	if unlink {
		os.Remove(f.Name())
	}
	f.Close()
}

// defaultStateDir is the state directory of a daemon started without --state-dir.
const defaultStateDir = "/var/lib/airlock"

// DefaultCgroupRoot names the cgroup root of a runtime whose Config leaves it empty (stateDir
// absolute and clean): "airlock" for the default state directory (as before), else one derived
// from the state directory's path, so that daemons with different state directories never share
// a root by default.
func DefaultCgroupRoot(stateDir string) string {
	if stateDir == defaultStateDir {
		return "airlock"
	}
	sum := sha256.Sum256([]byte(stateDir))
	return "airlock-" + hex.EncodeToString(sum[:6])
}

// lockStateDir makes this runtime the only one using its state directory.
func (r *Runtime) lockStateDir() error {
	f, _, err := lockFile(filepath.Join(r.cfg.StateDir, "lock"))
	if err != nil {
		return fmt.Errorf("state directory %s: %w", r.cfg.StateDir, err)
	}
	if err := writeOwner(f, r.self("", 0)); err != nil {
		f.Close()
		return err
	}
	r.stateLock = f
	return nil
}

// claimCgroupRoot makes this runtime's state directory the owner of its cgroup root. It refuses
// a root held by a live runtime, and a root last owned by another state directory that still
// exists while sandboxes are left in the root (they are that state directory's to recover). The
// root is exclusively this state directory's when it owned it last, too: only then may Recover
// remove groups it has no state for.
func (r *Runtime) claimCgroupRoot() error {
	path := filepath.Join(r.cfg.HostDir, "cgroup-"+r.cfg.CgroupRoot+".lock")
	f, prev, err := lockFile(path)
	if err != nil {
		return fmt.Errorf("cgroup root %s: %w", r.cfg.CgroupRoot, err)
	}
	last, known := readOwner(prev)
	if known && last.StateDir != r.cfg.StateDir {
		groups, _ := r.cg.List()
		if _, err := os.Stat(last.StateDir); err == nil && len(groups) > 0 {
			f.Close()
			return fmt.Errorf("cgroup root %s holds %d sandboxes of state directory %s, whose daemon (pid %d) is not running: "+
				"start it to recover them, or choose another cgroup root: %w", r.cfg.CgroupRoot, len(groups), last.StateDir, last.Pid, ErrInUse)
		}
	}
	if err := writeOwner(f, r.self("", 0)); err != nil {
		f.Close()
		return err
	}
	r.rootClaim, r.exclusiveRoot = f, known && last.StateDir == r.cfg.StateDir
	return nil
}

// uidClaimPath is the claim file of the uid range starting at host uid first. Claims are keyed by
// the 65536-block the range starts in: ranges that do not overlap start at least 65536 apart, so
// each block holds at most one start, and an overlapping range can only start in the same block
// or a neighbouring one (runtimes with different, unaligned uid bases included).
func (r *Runtime) uidClaimPath(first int) string {
	return filepath.Join(r.cfg.HostDir, "uids", strconv.Itoa(first>>16))
}

// uidClaimFree reports whether the range starting at first overlaps no live claim, removing stale
// claims on the way. The caller holds the host-wide uid lock.
func (r *Runtime) uidClaimFree(first int) (bool, error) {
	for _, block := range []int{first>>16 - 1, first >> 16, first>>16 + 1} {
		path := filepath.Join(r.cfg.HostDir, "uids", strconv.Itoa(block))
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("read uid claim: %w", err)
		}
		o, ok := readOwner(b)
		if ok && (o.FirstUID+65536 <= first || first+65536 <= o.FirstUID) {
			continue // a neighbour that does not overlap
		}
		if ok && r.claimLive(o) {
			return false, nil
		}
		// Stale: claims are written whole under the lock, so an unreadable one is from a
		// process that died before starting anything on the range; a readable one's owner is
		// gone and so is the sandbox it named.
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("remove stale uid claim: %w", err)
		}
	}
	return true, nil
}

// claimLive reports whether a uid claim may still be in use: its owner runs, or the sandbox it
// names still has its directory (a sandbox outlives its daemon, and the next daemon on that
// state directory adopts it with its claim).
func (r *Runtime) claimLive(o owner) bool {
	if o.alive() {
		return true
	}
	_, err := os.Stat(filepath.Join(o.StateDir, "sandboxes", o.Sandbox))
	return o.Sandbox == "" || err == nil
}

// writeUIDClaim records that sandbox id of this runtime uses the range of slot. The caller holds
// the host-wide uid lock.
func (r *Runtime) writeUIDClaim(slot int, id string) error {
	first := r.cfg.hostUID(slot, 0)
	b, _ := json.Marshal(r.self(id, first))
	f, err := os.OpenFile(r.uidClaimPath(first), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("claim uid range: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("claim uid range: %w", err)
	}
	return nil
}

// lockUIDs takes the host-wide uid lock, held only while a range is chosen.
func (r *Runtime) lockUIDs() (unlock func(), err error) {
	if err := unix.Flock(int(r.uidLock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock uid claims: %w", err)
	}
	return func() { unix.Flock(int(r.uidLock.Fd()), unix.LOCK_UN) }, nil
}

// prepareHostDir makes HostDir (0711: a private state directory of `airlock run` lives in it and
// must be traversable for sandbox inits) and its uid claim directory (0700), and opens the uid lock.
func (r *Runtime) prepareHostDir() error {
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{r.cfg.HostDir, 0o711}, {filepath.Join(r.cfg.HostDir, "uids"), 0o700}} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			return fmt.Errorf("host claims directory: %w", err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return fmt.Errorf("host claims directory: %w", err)
		}
	}
	f, err := os.OpenFile(filepath.Join(r.cfg.HostDir, "uids", "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("uid lock: %w", err)
	}
	r.uidLock = f
	return nil
}

// releaseHost drops every host-wide lock of the runtime. The cgroup root's claim file is removed
// only with the root itself: while groups are left, it keeps naming their state directory.
func (r *Runtime) releaseHost(rootGone bool) {
	releaseLock(r.rootClaim, rootGone)
	releaseLock(r.stateLock, false)
	releaseLock(r.uidLock, false)
	r.rootClaim, r.stateLock, r.uidLock = nil, nil, nil
}
