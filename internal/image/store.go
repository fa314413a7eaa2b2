// Package image is Airlock's image store: OCI images pulled from registries or imported from
// docker-save tarballs and OCI layouts, their compressed blobs kept by digest, their layers
// unpacked (safely, see unpack_linux.go) into directories in overlayfs format, image records,
// names and tags, leases, a disk budget and garbage collection.
//
// Layout under Config.Dir:
//
//	lock                      flock: held exclusively by every change of what is visible
//	blobs/sha256/<hex>        layer blobs as pulled (and image configs), for export and checks
//	layers/sha256/<hex>/      one unpacked layer by diff id: root/ (overlayfs format), meta.json
//	images/sha256/<hex>.json  image records by image id (the config's digest)
//	names.json                name:tag → image id
//	leases/<hex>.<n>          one per lease, flocked shared by its holder while it lives
//	tmp/                      work in progress; renamed into place whole, so a crash half way
//	                          leaves nothing half written visible
//
// Every file is written to tmp/ and renamed into place. Readers take no lock: they only ever
// see whole files.
package image

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/airlockhq/airlock/api"
)

// Defaults of Config's limits.
const (
	DefaultMaxLayerBytes = 16 << 30
	DefaultMaxLayerFiles = 1 << 20
	DefaultMaxPathLen    = 4096
)

// Config configures a store. Zero values mean defaults.
type Config struct {
	Dir    string // required; the daemon passes <state>/images
	Logger *slog.Logger
	// MaxBytes is the disk budget of blobs and unpacked layers together; 0 means none. A pull,
	// import or commit that would pass it prunes first, then fails with a payload_too_large error.
	MaxBytes int64
	// Limits of one layer's unpacking, which stop a decompression bomb early: uncompressed
	// bytes (tar headers included), entries, and the length of an entry's path.
	MaxLayerBytes int64
	MaxLayerFiles int
	MaxPathLen    int
}

// Validate reports a configuration that cannot work.
func (c *Config) Validate() error {
	if c.Dir == "" {
		return errors.New("image store: no directory")
	}
	if c.MaxBytes < 0 || c.MaxLayerBytes < 0 || c.MaxLayerFiles < 0 || c.MaxPathLen < 0 {
		return errors.New("image store: negative limit")
	}
	return nil
}

// Store is an image store in one directory, shared safely by every process that opens it.
type Store struct {
	cfg Config
	dir string
}

// Open opens (creating it if need be) the store in cfg.Dir.
func Open(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxLayerBytes == 0 {
		cfg.MaxLayerBytes = DefaultMaxLayerBytes
	}
	if cfg.MaxLayerFiles == 0 {
		cfg.MaxLayerFiles = DefaultMaxLayerFiles
	}
	if cfg.MaxPathLen == 0 {
		cfg.MaxPathLen = DefaultMaxPathLen
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("image store %s: %w", cfg.Dir, err)
	}
	for _, d := range []string{"blobs/sha256", "layers/sha256", "images/sha256", "leases", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
	}
	// The store holds other tenants' files: nobody but root may look in.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	return &Store{cfg: cfg, dir: dir}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Image is one image in the store.
type Image struct {
	ID          string    `json:"id"`           // sha256:… of the image's config
	Names       []string  `json:"names"`        // name:tag references to it, sorted
	RepoDigests []string  `json:"repo_digests"` // name@sha256:… of the manifests it was pulled as
	Source      string    `json:"source"`       // what it came from: a reference, a file, or "commit"
	Created     time.Time `json:"created"`      // as its config says
	Added       time.Time `json:"added"`        // when it entered this store
	Manifest    string    `json:"manifest_media_type"`
	Layers      []Layer   `json:"layers"` // lowest first
	Config      RunConfig `json:"config"`

	dir string // the store's directory, for LayerDirs
}

// Layer is one layer of an image.
type Layer struct {
	Digest    string `json:"digest"`     // of the blob as stored (compressed as pulled, or a plain tar)
	DiffID    string `json:"diff_id"`    // of the uncompressed tar; names the unpacked directory
	Size      int64  `json:"size"`       // bytes of the blob
	MediaType string `json:"media_type"` // of the blob
}

// RunConfig is what a sandbox takes from an image's config.
type RunConfig struct {
	Env        []string `json:"env"` // NAME=value, PATH always among them
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}

// defaultPath is the PATH of an image whose config sets none, as Docker's.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// LayerDirs are the host directories of the image's unpacked layers, lowest first, each in
// overlayfs format (whiteouts are 0:0 character devices, opaque directories carry
// trusted.overlay.opaque=y), to stack as overlay lower directories.
func (img *Image) LayerDirs() []string {
	dirs := make([]string, len(img.Layers))
	for i, l := range img.Layers {
		dirs[i] = filepath.Join(img.dir, "layers", digestPath(l.DiffID), "root")
	}
	return dirs
}

// ShortID is the image id's first 12 hex digits.
func (img *Image) ShortID() string {
	h := strings.TrimPrefix(img.ID, "sha256:")
	return h[:min(12, len(h))]
}

// digestPath turns sha256:<hex> into sha256/<hex>; callers pass only digests checked by
// parseDigest or computed here.
func digestPath(d string) string { return strings.Replace(d, ":", "/", 1) }

// parseDigest checks that d is sha256:<64 lowercase hex>, so it is safe in a path.
func parseDigest(d string) (string, bool) {
	h, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(h) != 64 {
		return "", false
	}
	for _, c := range h {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", false
		}
	}
	return h, true
}

// canonical turns a user's name into the form names.json keys: registry/repository:tag, the
// tag latest when none is given. A digest reference is refused: names are tags.
func canonical(ref string) (string, error) {
	t, err := name.NewTag(ref)
	if err != nil {
		return "", api.Errorf(api.ErrInvalidArgument, "image name %q: want name[:tag]: %v", ref, err)
	}
	return t.Name(), nil
}

// Familiar shortens a canonical name the way docker prints it (alpine:3.20 rather than
// index.docker.io/library/alpine:3.20).
func Familiar(n string) string {
	if s, ok := strings.CutPrefix(n, name.DefaultRegistry+"/"); ok {
		return strings.TrimPrefix(s, "library/")
	}
	return n
}

// writeAtomic writes b to path through a temporary file in tmp/ and a rename.
func (s *Store) writeAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "w-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// randomHex is a fresh name for temporary work.
func randomHex() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *Store) imagePath(id string) string {
	return filepath.Join(s.dir, "images", digestPath(id)+".json")
}

// readNames reads names.json; a missing file is no names.
func (s *Store) readNames() (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, "names.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read names: %w", err)
	}
	m := map[string]string{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("read names: %w", err)
	}
	return m, nil
}

// writeNames replaces names.json; the caller holds the lock.
func (s *Store) writeNames(m map[string]string) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return s.writeAtomic(filepath.Join(s.dir, "names.json"), b)
}

// readImage reads one record; names are filled from names.
func (s *Store) readImage(id string, names map[string]string) (*Image, error) {
	if _, ok := parseDigest(id); !ok {
		return nil, api.Errorf(api.ErrNotFound, "image %q not found", id)
	}
	b, err := os.ReadFile(s.imagePath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, api.Errorf(api.ErrNotFound, "image %s not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("read image %s: %w", id, err)
	}
	img := &Image{}
	if err := json.Unmarshal(b, img); err != nil {
		return nil, fmt.Errorf("read image %s: %w", id, err)
	}
	img.dir, img.Names = s.dir, nil
	for n, i := range names {
		if i == id {
			img.Names = append(img.Names, n)
		}
	}
	slices.Sort(img.Names)
	return img, nil
}

// writeImage writes a record (without its names, which live in names.json).
func (s *Store) writeImage(img *Image) error {
	c := *img
	c.Names = nil
	b, err := json.MarshalIndent(&c, "", "  ")
	if err != nil {
		return err
	}
	return s.writeAtomic(s.imagePath(img.ID), b)
}

// imageIDs lists the ids of every record.
func (s *Store) imageIDs() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "images", "sha256"))
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var ids []string
	for _, e := range ents {
		if h, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			if _, ok := parseDigest("sha256:" + h); ok {
				ids = append(ids, "sha256:"+h)
			}
		}
	}
	return ids, nil
}

// List returns every image, newest first.
func (s *Store) List() ([]*Image, error) {
	names, err := s.readNames()
	if err != nil {
		return nil, err
	}
	ids, err := s.imageIDs()
	if err != nil {
		return nil, err
	}
	var out []*Image
	for _, id := range ids {
		img, err := s.readImage(id, names)
		if errors.Is(err, api.ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	slices.SortFunc(out, func(a, b *Image) int { return b.Added.Compare(a.Added) })
	return out, nil
}

// Resolve finds an image by name[:tag], name@sha256:… (a manifest digest it was pulled as, or
// its id), its id sha256:…, or a prefix of at least 12 hex digits of its id.
func (s *Store) Resolve(ref string) (*Image, error) {
	names, err := s.readNames()
	if err != nil {
		return nil, err
	}
	if _, ok := parseDigest(ref); ok {
		return s.readImage(ref, names)
	}
	if len(ref) >= 12 && len(ref) < 64 && strings.Trim(ref, "0123456789abcdef") == "" {
		if img, err := s.byPrefix(ref, names); err == nil || !errors.Is(err, api.ErrNotFound) {
			return img, err
		}
	}
	if repo, dg, ok := strings.Cut(ref, "@"); ok {
		return s.byDigest(ref, repo, dg, names)
	}
	n, err := canonical(ref)
	if err != nil {
		return nil, err
	}
	id, ok := names[n]
	if !ok {
		return nil, api.Errorf(api.ErrNotFound, "image %q not found", ref)
	}
	return s.readImage(id, names)
}

func (s *Store) byPrefix(prefix string, names map[string]string) (*Image, error) {
	ids, err := s.imageIDs()
	if err != nil {
		return nil, err
	}
	var found []string
	for _, id := range ids {
		if strings.HasPrefix(id, "sha256:"+prefix) {
			found = append(found, id)
		}
	}
	switch len(found) {
	case 0:
		return nil, api.Errorf(api.ErrNotFound, "image %q not found", prefix)
	case 1:
		return s.readImage(found[0], names)
	}
	return nil, api.Errorf(api.ErrInvalidArgument, "image id prefix %q is ambiguous", prefix)
}

func (s *Store) byDigest(ref, repo, dg string, names map[string]string) (*Image, error) {
	d, err := name.NewDigest(ref)
	if err != nil {
		return nil, api.Errorf(api.ErrInvalidArgument, "image reference %q: %v", ref, err)
	}
	want := d.Context().Name() + "@" + d.DigestStr()
	ids, err := s.imageIDs()
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		img, err := s.readImage(id, names)
		if err != nil {
			continue
		}
		if id == dg || slices.Contains(img.RepoDigests, want) {
			return img, nil
		}
	}
	return nil, api.Errorf(api.ErrNotFound, "image %q not found", ref)
}

// Inspect is Resolve: the record holds everything there is to say. It exists for the CLI and
// API's symmetry with docker.
func (s *Store) Inspect(ref string) (*Image, error) { return s.Resolve(ref) }

// Tag gives the image src resolves to the name dst (replacing what dst named before).
func (s *Store) Tag(src, dst string) error {
	n, err := canonical(dst)
	if err != nil {
		return err
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	img, err := s.Resolve(src)
	if err != nil {
		return err
	}
	return s.setNames(img.ID, n)
}

// setNames points each name at id; the caller holds the lock.
func (s *Store) setNames(id string, ns ...string) error {
	if len(ns) == 0 {
		return nil
	}
	names, err := s.readNames()
	if err != nil {
		return err
	}
	for _, n := range ns {
		names[n] = id
	}
	return s.writeNames(names)
}

// Remove removes a name; given an id (or a name that is the image's last), the image itself,
// and then the layers and blobs no image uses any more. A leased image is not removed
// (conflict): a live sandbox stands on it.
func (s *Store) Remove(ref string) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	img, err := s.Resolve(ref)
	if err != nil {
		return err
	}
	names, err := s.readNames()
	if err != nil {
		return err
	}
	byName := false
	if n, err := canonical(ref); err == nil && names[n] == img.ID {
		byName = true
		if len(img.Names) > 1 {
			delete(names, n)
			return s.writeNames(names)
		}
	}
	leased, err := s.leased()
	if err != nil {
		return err
	}
	if leased[img.ID] {
		if byName {
			n, _ := canonical(ref)
			delete(names, n) // the name goes; the image stays for its sandboxes, until a prune after
			return s.writeNames(names)
		}
		return api.Errorf(api.ErrConflict, "image %s is in use by a sandbox", img.ShortID())
	}
	for _, n := range img.Names {
		delete(names, n)
	}
	if err := s.writeNames(names); err != nil {
		return err
	}
	if err := os.Remove(s.imagePath(img.ID)); err != nil {
		return fmt.Errorf("remove image %s: %w", img.ID, err)
	}
	_, err = s.collect(leased)
	return err
}
