package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/airlockhq/airlock/api"
)

// lock takes the store's exclusive lock, shared by every process using the directory: every
// change of records, names, layers and blobs happens under it.
func (s *Store) lock() (unlock func(), err error) {
	return flock(filepath.Join(s.dir, "lock"), true)
}

// Lease keeps img, its layers and blobs from being collected until release is called (or the
// process dies: the lease is an flock, which the kernel drops with the process). Live
// sandboxes hold one on their image.
func (s *Store) Lease(img *Image) (release func()) {
	unlock, err := flock(filepath.Join(s.dir, "lock"), false) // a prune is not half way
	if err != nil {
		s.cfg.Logger.Warn("image lease: store lock", "image", img.ID, "err", err)
		return func() {}
	}
	defer unlock()
	h, _ := parseDigest(img.ID)
	rel, err := flock(filepath.Join(s.dir, "leases", h+"."+randomHex()), false)
	if err != nil {
		s.cfg.Logger.Warn("image lease", "image", img.ID, "err", err)
		return func() {}
	}
	return rel
}

// leased returns the ids of the images with a live lease, removing the lease files their dead
// holders left; the caller holds the exclusive lock.
func (s *Store) leased() (map[string]bool, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "leases"))
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	out := map[string]bool{}
	for _, e := range ents {
		h, _, _ := strings.Cut(e.Name(), ".")
		p := filepath.Join(s.dir, "leases", e.Name())
		if held, err := lockHeld(p); err != nil || held {
			out["sha256:"+h] = true // when in doubt, leased
			continue
		}
		os.Remove(p)
	}
	return out, nil
}

// PruneResult says what Prune removed.
type PruneResult struct {
	Images []string `json:"images"` // ids of the images removed
	Layers int      `json:"layers"` // unpacked layers removed
	Blobs  int      `json:"blobs"`  // blobs removed
	Bytes  int64    `json:"bytes"`  // disk freed, about
}

// Prune removes the images without a name and without a lease, then every layer and blob no
// remaining image uses, and work a crashed process left in tmp/.
func (s *Store) Prune(ctx context.Context) (PruneResult, error) {
	unlock, err := s.lock()
	if err != nil {
		return PruneResult{}, err
	}
	defer unlock()
	return s.prune(ctx)
}

// prune is Prune under the lock.
func (s *Store) prune(ctx context.Context) (PruneResult, error) {
	leased, err := s.leased()
	if err != nil {
		return PruneResult{}, err
	}
	names, err := s.readNames()
	if err != nil {
		return PruneResult{}, err
	}
	named := map[string]bool{}
	for _, id := range names {
		named[id] = true
	}
	ids, err := s.imageIDs()
	if err != nil {
		return PruneResult{}, err
	}
	var res PruneResult
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if named[id] || leased[id] {
			continue
		}
		if err := os.Remove(s.imagePath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return res, fmt.Errorf("remove image %s: %w", id, err)
		}
		res.Images = append(res.Images, id)
	}
	c, err := s.collect(leased)
	c.Images = res.Images
	return c, err
}

// collect removes the layers and blobs no image record uses and that no leased image needs
// (a leased image's record may be gone), and abandoned temporary work; the caller holds the
// exclusive lock.
func (s *Store) collect(leased map[string]bool) (PruneResult, error) {
	keepLayers, keepBlobs := map[string]bool{}, map[string]bool{}
	ids, err := s.imageIDs()
	if err != nil {
		return PruneResult{}, err
	}
	for _, id := range ids {
		img, err := s.readImage(id, nil)
		if err != nil {
			return PruneResult{}, fmt.Errorf("collect: %w", err) // never collect on a record we cannot read
		}
		keepBlobs[img.ID] = true
		for _, l := range img.Layers {
			keepLayers[l.DiffID], keepBlobs[l.Digest] = true, true
		}
	}
	var res PruneResult
	if len(leased) > 0 {
		// A leased image without a record (removed while a sandbox ran on it, which Remove
		// refuses, or a record lost) keeps nothing alive here: its layers are only known from
		// its record. Be safe: collect nothing while such leases live.
		for id := range leased {
			if !keepBlobs[id] {
				s.cfg.Logger.Warn("image prune: a leased image has no record; layers kept", "image", id)
				return res, nil
			}
		}
	}
	for _, kind := range []string{"layers", "blobs"} {
		keep := keepLayers
		if kind == "blobs" {
			keep = keepBlobs
		}
		dir := filepath.Join(s.dir, kind, "sha256")
		ents, err := os.ReadDir(dir)
		if err != nil {
			return res, fmt.Errorf("collect: %w", err)
		}
		for _, e := range ents {
			if keep["sha256:"+e.Name()] {
				continue
			}
			p := filepath.Join(dir, e.Name())
			n := diskUsage(p)
			if err := os.RemoveAll(p); err != nil {
				return res, fmt.Errorf("collect %s: %w", p, err)
			}
			res.Bytes += n
			if kind == "layers" {
				res.Layers++
			} else {
				res.Blobs++
			}
		}
	}
	res.Bytes += s.cleanTmp()
	return res, nil
}

// cleanTmp removes the temporary work whose owner is gone: each work directory tmp/<x>.d has
// its lock tmp/<x>.lock, flocked while it is used. Loose files are atomic writes in progress
// only while the store lock is held, which the caller holds.
func (s *Store) cleanTmp() int64 {
	dir := filepath.Join(s.dir, "tmp")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var freed int64
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		base, isWork := strings.CutSuffix(e.Name(), ".d")
		if !isWork {
			if strings.HasSuffix(e.Name(), ".lock") {
				continue // removed with its directory
			}
			freed += diskUsage(p)
			os.Remove(p)
			continue
		}
		if held, err := lockHeld(filepath.Join(dir, base+".lock")); err != nil || held {
			continue
		}
		freed += diskUsage(p)
		os.RemoveAll(p)
		os.Remove(filepath.Join(dir, base+".lock"))
	}
	return freed
}

// diskUsage is the size of the files under p, about.
func diskUsage(p string) int64 {
	var n int64
	filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err == nil {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// layerMeta is layers/sha256/<hex>/meta.json.
type layerMeta struct {
	Bytes int64 `json:"bytes"` // unpacked file bytes, about
	Files int   `json:"files"`
}

// Usage is the disk the store's blobs and unpacked layers take, about.
func (s *Store) Usage() (int64, error) {
	var n int64
	ents, err := os.ReadDir(filepath.Join(s.dir, "blobs", "sha256"))
	if err != nil {
		return 0, fmt.Errorf("usage: %w", err)
	}
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	ents, err = os.ReadDir(filepath.Join(s.dir, "layers", "sha256"))
	if err != nil {
		return 0, fmt.Errorf("usage: %w", err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(s.dir, "layers", "sha256", e.Name(), "meta.json"))
		if err != nil {
			continue
		}
		var m layerMeta
		if json.Unmarshal(b, &m) == nil {
			n += m.Bytes
		}
	}
	return n, nil
}

// ErrBudget is the cause of a pull, import or commit that the disk budget refuses.
var ErrBudget = api.Errorf(api.ErrTooLarge, "image store budget exceeded")

// budget is the room one pull, import or commit has in the disk budget. The first time it
// runs short it prunes the store and looks again; short still, it fails with ErrBudget.
type budget struct {
	s      *Store
	ctx    context.Context
	left   int64 // -1: no budget
	taken  int64 // by this operation so far, not yet in the store (not in Usage)
	pruned bool
}

func (s *Store) newBudget(ctx context.Context) (*budget, error) {
	b := &budget{s: s, ctx: ctx, left: -1}
	if s.cfg.MaxBytes == 0 {
		return b, nil
	}
	used, err := s.Usage()
	if err != nil {
		return nil, err
	}
	b.left = max(s.cfg.MaxBytes-used, 0)
	return b, nil
}

// fits reports whether n more bytes fit, pruning once if they do not; an error wrapping
// ErrBudget if they do not even then.
func (b *budget) fits(n int64) error {
	if b.left < 0 || n <= b.left {
		return nil
	}
	if !b.pruned {
		b.pruned = true
		if _, err := b.s.Prune(b.ctx); err != nil {
			return err
		}
		used, err := b.s.Usage()
		if err != nil {
			return err
		}
		b.left = max(b.s.cfg.MaxBytes-used-b.taken, 0)
		if n <= b.left {
			return nil
		}
	}
	used, _ := b.s.Usage()
	return fmt.Errorf("%w: %d MiB used, %d MiB more needed, budget %d MiB: remove images (airlock image rm) or raise the budget",
		ErrBudget, used>>20, (b.taken+n)>>20, b.s.cfg.MaxBytes>>20)
}

// take counts n more bytes against the budget.
func (b *budget) take(n int64) error {
	if err := b.fits(n); err != nil {
		return err
	}
	b.taken += n
	if b.left >= 0 {
		b.left -= n
	}
	return nil
}
