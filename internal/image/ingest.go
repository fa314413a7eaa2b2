package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/airlockhq/airlock/api"
)

// ErrLayerLimit is the cause of a layer refused by the unpack limits (Config.MaxLayerBytes,
// MaxLayerFiles, MaxPathLen): a decompression bomb stops here, early.
var ErrLayerLimit = api.Errorf(api.ErrTooLarge, "layer over the unpack limits")

// ErrHostileLayer is the cause of a layer refused for an entry that tries to leave the layer:
// a path with .. past its root, a write through a symlink, a hard link to outside the layer.
var ErrHostileLayer = api.Errorf(api.ErrInvalidArgument, "layer refused")

// limits bound one layer's unpacking.
type limits struct {
	bytes   int64 // unpacked bytes (Config.MaxLayerBytes)
	files   int
	pathLen int
	budget  *budget
}

// limitReader fails once more than n bytes have been read.
type limitReader struct {
	r   io.Reader
	n   int64 // bytes still allowed
	err error // returned past the limit
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n < 0 {
		return 0, l.err
	}
	if int64(len(p)) > l.n+1 {
		p = p[:l.n+1]
	}
	n, err := l.r.Read(p)
	if l.n -= int64(n); l.n < 0 {
		return n, l.err
	}
	return n, err
}

// ErrDigestMismatch is the cause of content that does not match its digest: a tampered or
// corrupt blob, or a layer whose tar is not the one its image's config names.
var ErrDigestMismatch = api.Errorf(api.ErrInvalidArgument, "image content does not match its digest")

// work is a temporary directory tmp/<x>.d, locked (tmp/<x>.lock) while this process uses it so
// a prune elsewhere leaves it alone; whatever a crash leaves there, prune removes.
type work struct {
	dir    string
	unlock func()
}

func (s *Store) newWork() (*work, error) {
	base := filepath.Join(s.dir, "tmp", randomHex())
	unlock, err := flock(base+".lock", true)
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(base+".d", 0o700); err != nil {
		unlock()
		return nil, fmt.Errorf("image store work directory: %w", err)
	}
	return &work{dir: base + ".d", unlock: func() {
		os.RemoveAll(base + ".d")
		os.Remove(base + ".lock")
		unlock()
	}}, nil
}

// pendingLayer is a layer unpacked in a work directory, not yet in the store.
type pendingLayer struct {
	Layer
	blob  string // the blob's file in the work directory
	dir   string // the unpacked layer (root/ and meta.json) in the work directory
	bytes int64  // disk it takes: blob and unpacked files
}

// layerSource is one layer to ingest: its blob's stream, and what it must hash to.
type layerSource struct {
	open      func() (io.ReadCloser, error)
	digest    string // of the stream; "" when unknown (then the stream is checked by diffID only)
	diffID    string // of the uncompressed tar; "" when unknown (a commit)
	size      int64  // of the stream; -1 when unknown
	mediaType string // "" to derive from the stream's compression
}

// ingestLayer downloads or reads one layer into w: the blob as it comes (hashed), and the tar
// within it (hashed again) unpacked, both counted against b. Nothing is in the store yet:
// commit moves it there.
func (s *Store) ingestLayer(ctx context.Context, w *work, src layerSource, b *budget) (*pendingLayer, error) {
	rc, err := src.open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	n := randomHex()
	p := &pendingLayer{blob: filepath.Join(w.dir, n+".blob"), dir: filepath.Join(w.dir, n+".layer")}
	if err := os.MkdirAll(filepath.Join(p.dir, "root"), 0o755); err != nil {
		return nil, err
	}
	bf, err := os.OpenFile(p.blob, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	defer bf.Close()
	rawSum := sha256.New()
	maxRaw := s.cfg.MaxLayerBytes
	if src.size >= 0 {
		maxRaw = src.size // a registry that sends more than the manifest says is cut off
	}
	counted := &countingReader{r: rc}
	raw := io.TeeReader(io.LimitReader(counted, maxRaw+1), io.MultiWriter(bf, rawSum))
	br := bufio.NewReaderSize(raw, 64<<10)
	tarStream, mediaType, err := decompress(br)
	if err != nil {
		return nil, s.checkRaw(src, raw, rawSum, fmt.Errorf("layer %s: %w", src.digest, err))
	}
	diffSum := sha256.New()
	lim := &limitReader{r: tarStream, n: s.cfg.MaxLayerBytes,
		err: fmt.Errorf("%w: more than %d bytes uncompressed", ErrLayerLimit, s.cfg.MaxLayerBytes)}
	tarR := io.TeeReader(lim, diffSum)
	meta, err := unpack(ctx, tarR, filepath.Join(p.dir, "root"), limits{
		bytes: s.cfg.MaxLayerBytes, files: s.cfg.MaxLayerFiles, pathLen: s.cfg.MaxPathLen, budget: b})
	if err == nil {
		// The digests cover the whole stream, past the tar's end-of-archive blocks.
		_, err = io.Copy(io.Discard, tarR)
	}
	if err == nil {
		_, err = io.Copy(io.Discard, br)
	}
	if err == nil && counted.n > maxRaw {
		err = fmt.Errorf("layer %s: more bytes than its size %d", src.digest, maxRaw)
	}
	if err != nil {
		return nil, s.checkRaw(src, raw, rawSum, err)
	}
	if err := bf.Close(); err != nil {
		return nil, err
	}
	p.Digest = "sha256:" + hex.EncodeToString(rawSum.Sum(nil))
	p.DiffID = "sha256:" + hex.EncodeToString(diffSum.Sum(nil))
	p.Size = counted.n
	p.MediaType = src.mediaType
	if p.MediaType == "" {
		p.MediaType = string(mediaType)
	}
	if src.digest != "" && p.Digest != src.digest {
		return nil, fmt.Errorf("%w: blob %s arrived as %s: the source sent tampered or corrupt content", ErrDigestMismatch, src.digest, p.Digest)
	}
	if src.diffID != "" && p.DiffID != src.diffID {
		return nil, fmt.Errorf("%w: layer %s unpacks to the tar %s, but the image's config names %s", ErrDigestMismatch, p.Digest, p.DiffID, src.diffID)
	}
	if err := b.take(p.Size); err != nil {
		return nil, err
	}
	p.bytes = p.Size + meta.Bytes
	mb, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(p.dir, "meta.json"), mb, 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

// checkRaw turns a failure part way through a blob into the clearer digest mismatch when the
// blob does not match its digest (flipped bytes usually break the decompression first): it
// reads the rest of the blob, within its size, to tell.
func (s *Store) checkRaw(src layerSource, raw io.Reader, sum hash.Hash, err error) error {
	if src.digest == "" || errors.Is(err, ErrLayerLimit) || errors.Is(err, ErrBudget) || errors.Is(err, context.Canceled) {
		return err
	}
	// A read error here (go-containerregistry's own check at the blob's end, a cut stream)
	// leaves a sum that cannot match: the content is not the blob either way.
	io.Copy(io.Discard, raw)
	if got := "sha256:" + hex.EncodeToString(sum.Sum(nil)); got != src.digest {
		return fmt.Errorf("%w: blob %s arrived as %s: the source sent tampered or corrupt content", ErrDigestMismatch, src.digest, got)
	}
	return err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// decompress recognises the blob's compression by its first bytes (gzip, zstd, or a plain
// tar) rather than trusting a media type.
func decompress(br *bufio.Reader) (io.Reader, types.MediaType, error) {
	magic, _ := br.Peek(4)
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		return zr, types.OCILayer, err
	case len(magic) == 4 && magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd:
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, "", err
		}
		return zr.IOReadCloser(), types.OCILayerZStd, nil
	}
	return br, types.OCIUncompressedLayer, nil
}

// has reports whether the store holds the blob and the unpacked layer of l.
func (s *Store) has(digest, diffID string) bool {
	_, err1 := os.Stat(filepath.Join(s.dir, "blobs", digestPath(digest)))
	_, err2 := os.Stat(filepath.Join(s.dir, "layers", digestPath(diffID), "meta.json"))
	return err1 == nil && err2 == nil
}

// commit moves the pending layers and the config into the store and writes the record and its
// names, all under the lock; every layer of img must then be in the store (one a concurrent
// prune removed since it was found there fails the whole, to be retried).
func (s *Store) commit(img *Image, rawConfig []byte, pending []*pendingLayer, names []string) (*Image, error) {
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	for _, p := range pending {
		if err := renameAbsent(p.blob, filepath.Join(s.dir, "blobs", digestPath(p.Digest))); err != nil {
			return nil, err
		}
		if err := renameAbsent(p.dir, filepath.Join(s.dir, "layers", digestPath(p.DiffID))); err != nil {
			return nil, err
		}
	}
	for _, l := range img.Layers {
		if !s.has(l.Digest, l.DiffID) {
			return nil, api.Errorf(api.ErrConflict, "layer %s was pruned while the image was added; retry", l.DiffID)
		}
	}
	cfgPath := filepath.Join(s.dir, "blobs", digestPath(img.ID))
	if _, err := os.Stat(cfgPath); err != nil {
		if err := s.writeAtomic(cfgPath, rawConfig); err != nil {
			return nil, err
		}
	}
	if old, err := s.readImage(img.ID, nil); err == nil {
		// Already here: keep its record, learn the new repo digests.
		for _, d := range img.RepoDigests {
			if !contains(old.RepoDigests, d) {
				old.RepoDigests = append(old.RepoDigests, d)
			}
		}
		img = old
	} else if !errors.Is(err, api.ErrNotFound) {
		return nil, err
	}
	if err := s.writeImage(img); err != nil {
		return nil, err
	}
	if err := s.setNames(img.ID, names...); err != nil {
		return nil, err
	}
	all, err := s.readNames()
	if err != nil {
		return nil, err
	}
	return s.readImage(img.ID, all)
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// renameAbsent renames from to to unless to exists already (the same content, by its digest).
func renameAbsent(from, to string) error {
	if _, err := os.Lstat(to); err == nil {
		return nil
	}
	if err := os.Rename(from, to); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("image store: %w", err)
	}
	return nil
}

// addImage ingests an image whose config is rawConfig and whose layers come from srcs (nil
// entries: already in the store), then commits it.
func (s *Store) addImage(ctx context.Context, rec *Image, rawConfig []byte, srcs []layerSource, names []string) (*Image, error) {
	var need int64
	var todo []int
	for i, src := range srcs {
		if src.digest != "" && src.diffID != "" && s.has(src.digest, src.diffID) {
			continue
		}
		todo = append(todo, i)
		need += max(src.size, 0)
	}
	b, err := s.newBudget(ctx)
	if err != nil {
		return nil, err
	}
	if err := b.fits(need); err != nil {
		return nil, err
	}
	w, err := s.newWork()
	if err != nil {
		return nil, err
	}
	defer w.unlock()
	var pending []*pendingLayer
	for _, i := range todo {
		start := time.Now()
		p, err := s.ingestLayer(ctx, w, srcs[i], b)
		if err != nil {
			return nil, err
		}
		s.cfg.Logger.DebugContext(ctx, "image layer unpacked", "diff_id", p.DiffID, "bytes", p.bytes, "took", time.Since(start))
		rec.Layers[i] = p.Layer
		pending = append(pending, p)
	}
	return s.commit(rec, rawConfig, pending, names)
}

// record builds the record of an image from its parsed config; the layers are filled from srcs
// (digest, diff id, size, media type as far as known).
func (s *Store) record(rawConfig []byte, cf *v1.ConfigFile, manifestType types.MediaType, source string, srcs []layerSource) *Image {
	sum := sha256.Sum256(rawConfig)
	img := &Image{ID: "sha256:" + hex.EncodeToString(sum[:]), Source: source, Created: cf.Created.Time,
		Added: time.Now().UTC(), Manifest: string(manifestType), dir: s.dir}
	for _, src := range srcs {
		img.Layers = append(img.Layers, Layer{Digest: src.digest, DiffID: src.diffID, Size: src.size, MediaType: src.mediaType})
	}
	c := cf.Config
	img.Config = RunConfig{Env: c.Env, WorkingDir: c.WorkingDir, User: c.User, Entrypoint: c.Entrypoint, Cmd: c.Cmd}
	hasPath := false
	for _, e := range c.Env {
		if len(e) >= 5 && e[:5] == "PATH=" {
			hasPath = true
		}
	}
	if !hasPath {
		img.Config.Env = append([]string{defaultPath}, img.Config.Env...)
	}
	return img
}

// Commit adds one layer, an OCI layer tar (plain, gzip or zstd), on top of parent (nil: an
// image of that layer alone) and names the new image name (none if empty). Snapshots and the
// spec builder use it.
func (s *Store) Commit(ctx context.Context, parent *Image, layer io.Reader, name string) (*Image, error) {
	var names []string
	if name != "" {
		n, err := canonical(name)
		if err != nil {
			return nil, err
		}
		names = []string{n}
	}
	cf := &v1.ConfigFile{Architecture: runtime.GOARCH, OS: "linux", RootFS: v1.RootFS{Type: "layers"},
		Config: v1.Config{Env: []string{defaultPath}}}
	manifestType := types.OCIManifestSchema1
	var srcs []layerSource
	if parent != nil {
		raw, err := os.ReadFile(filepath.Join(s.dir, "blobs", digestPath(parent.ID)))
		if err != nil {
			return nil, fmt.Errorf("commit on %s: %w", parent.ID, err)
		}
		if cf, err = v1.ParseConfigFile(bytes.NewReader(raw)); err != nil {
			return nil, fmt.Errorf("commit on %s: %w", parent.ID, err)
		}
		manifestType = types.MediaType(parent.Manifest)
		for _, l := range parent.Layers {
			srcs = append(srcs, layerSource{digest: l.Digest, diffID: l.DiffID, size: l.Size, mediaType: l.MediaType})
		}
	}
	b, err := s.newBudget(ctx)
	if err != nil {
		return nil, err
	}
	w, err := s.newWork()
	if err != nil {
		return nil, err
	}
	defer w.unlock()
	p, err := s.ingestLayer(ctx, w, layerSource{open: func() (io.ReadCloser, error) { return io.NopCloser(layer), nil }, size: -1}, b)
	if err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	hash, err := v1.NewHash(p.DiffID)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	cf.RootFS.DiffIDs = append(cf.RootFS.DiffIDs, hash)
	cf.History = append(cf.History, v1.History{Created: v1.Time{Time: now}, CreatedBy: "airlock commit"})
	cf.Created = v1.Time{Time: now}
	raw, err := json.Marshal(cf)
	if err != nil {
		return nil, err
	}
	srcs = append(srcs, layerSource{digest: p.Digest, diffID: p.DiffID, size: p.Size, mediaType: p.MediaType})
	source := "commit"
	if parent != nil {
		source = "commit on " + parent.ID
	}
	return s.commit(s.record(raw, cf, manifestType, source, srcs), raw, []*pendingLayer{p}, names)
}
