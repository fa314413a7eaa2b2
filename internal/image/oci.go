package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/airlockhq/airlock/api"
)

// PullOptions are a pull's credentials. With none the pull is anonymous; with a username and
// password, basic auth (go-containerregistry's transport exchanges them for a bearer token when
// the registry asks for one); with a token, that bearer token.
type PullOptions struct {
	Username string
	Password string
	Token    string
	Insecure bool // plain http (for registries on 127.0.0.1 in tests)
}

// Platform is the platform a multi-arch index resolves to: this machine's.
var Platform = v1.Platform{OS: "linux", Architecture: runtime.GOARCH}

// Pull fetches ref (name[:tag] or name@sha256:…, which pins the manifest) from its registry,
// every blob checked against its digest, and names the image ref (when ref has a tag).
func (s *Store) Pull(ctx context.Context, ref string, opts PullOptions) (*Image, error) {
	var nopts []name.Option
	if opts.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, api.Errorf(api.ErrInvalidArgument, "image reference %q: %v", ref, err)
	}
	var auth authn.Authenticator = authn.Anonymous
	switch {
	case opts.Token != "":
		auth = &authn.Bearer{Token: opts.Token}
	case opts.Username != "" || opts.Password != "":
		auth = &authn.Basic{Username: opts.Username, Password: opts.Password}
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuth(auth), remote.WithPlatform(Platform))
	if err != nil {
		return nil, registryError(ref, err)
	}
	var names []string
	if t, ok := r.(name.Tag); ok {
		names = []string{t.Name()}
	}
	out, err := s.addV1(ctx, img, ref, r.Context().Name(), names, true)
	if err != nil {
		return nil, registryError(ref, err)
	}
	return out, nil
}

// registryError turns a registry's answer into the store's errors: a missing image is
// not_found, refused credentials invalid_argument, both saying so.
func registryError(ref string, err error) error {
	var te *transport.Error
	if !errors.As(err, &te) {
		return err
	}
	switch te.StatusCode {
	case http.StatusNotFound:
		return api.Errorf(api.ErrNotFound, "image %q not found in its registry", ref)
	case http.StatusUnauthorized, http.StatusForbidden:
		return api.Errorf(api.ErrInvalidArgument, "the registry refused access to %q: wrong or missing credentials (%v)", ref, te)
	}
	for _, d := range te.Errors {
		switch d.Code {
		case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
			return api.Errorf(api.ErrNotFound, "image %q not found in its registry", ref)
		}
	}
	return fmt.Errorf("registry: %w", err)
}

// addV1 ingests a go-containerregistry image, pulled from the repository repo ("" for an
// imported one, which gets no repo digest: computing a tarball's manifest digest would
// compress every layer). compressed: take each layer's blob as it is (a
// registry, an OCI layout), checked against its digest and its diff id; otherwise take the
// uncompressed tar (a docker-save tarball, whose blobs have no digest until compressed),
// checked against its diff id and stored as a plain tar.
func (s *Store) addV1(ctx context.Context, img v1.Image, source, repo string, names []string, compressed bool) (*Image, error) {
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	want, err := img.ConfigName()
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	if sum := sha256.Sum256(raw); "sha256:"+hex.EncodeToString(sum[:]) != want.String() {
		return nil, fmt.Errorf("%w: the image's config is not %s", ErrDigestMismatch, want)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, api.Errorf(api.ErrInvalidArgument, "image config: %v", err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("image layers: %w", err)
	}
	if len(layers) != len(cf.RootFS.DiffIDs) {
		return nil, api.Errorf(api.ErrInvalidArgument, "image has %d layers but its config names %d", len(layers), len(cf.RootFS.DiffIDs))
	}
	srcs := make([]layerSource, len(layers))
	for i, l := range layers {
		src := layerSource{diffID: cf.RootFS.DiffIDs[i].String(), size: -1}
		if compressed {
			d, err := l.Digest()
			if err != nil {
				return nil, err
			}
			if src.size, err = l.Size(); err != nil {
				return nil, err
			}
			m, err := l.MediaType()
			if err != nil {
				return nil, err
			}
			src.digest, src.mediaType, src.open = d.String(), string(m), l.Compressed
		} else {
			src.digest, src.mediaType, src.open = src.diffID, string(types.DockerUncompressedLayer), l.Uncompressed
		}
		if _, ok := parseDigest(src.digest); !ok {
			return nil, api.Errorf(api.ErrInvalidArgument, "layer digest %q: only sha256 is supported", src.digest)
		}
		if _, ok := parseDigest(src.diffID); !ok {
			return nil, api.Errorf(api.ErrInvalidArgument, "layer diff id %q: only sha256 is supported", src.diffID)
		}
		srcs[i] = src
	}
	rec := s.record(raw, cf, mt, source, srcs)
	if repo != "" {
		d, err := img.Digest()
		if err != nil {
			return nil, err
		}
		rec.RepoDigests = []string{repo + "@" + d.String()}
	}
	return s.addImage(ctx, rec, raw, srcs, names)
}

// Import adds the image of a docker-save tarball (the first one, named by its RepoTags) or of
// an OCI layout directory (the manifest for this machine's platform, named by its
// org.opencontainers.image.ref.name annotation when that is a full reference).
func (s *Store) Import(ctx context.Context, path string) (*Image, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, api.Errorf(api.ErrInvalidArgument, "import: %v", err)
	}
	if fi.IsDir() {
		return s.importLayout(ctx, path)
	}
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
	if err != nil {
		return nil, api.Errorf(api.ErrInvalidArgument, "import %s: not a docker-save tarball: %v", path, err)
	}
	if len(m) == 0 {
		return nil, api.Errorf(api.ErrInvalidArgument, "import %s: the tarball holds no image", path)
	}
	var tag *name.Tag
	var names []string
	for _, rt := range m[0].RepoTags {
		if t, err := name.NewTag(rt); err == nil {
			if tag == nil {
				tag = &t
			}
			names = append(names, t.Name())
		}
	}
	if tag == nil && len(m) > 1 {
		return nil, api.Errorf(api.ErrInvalidArgument, "import %s: the tarball holds %d images and the first has no tag", path, len(m))
	}
	img, err := tarball.ImageFromPath(path, tag)
	if err != nil {
		return nil, api.Errorf(api.ErrInvalidArgument, "import %s: %v", path, err)
	}
	return s.addV1(ctx, img, path, "", names, false)
}

func (s *Store) importLayout(ctx context.Context, dir string) (*Image, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, api.Errorf(api.ErrInvalidArgument, "import %s: not an OCI layout: %v", dir, err)
	}
	img, names, err := pickImage(idx, "")
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", dir, err)
	}
	return s.addV1(ctx, img, dir, "", names, true)
}

// pickImage finds in an index the first image for Platform (or without a platform), going
// into nested indexes; names are its ref.name annotation when that parses as a full tag.
func pickImage(idx v1.ImageIndex, refName string) (v1.Image, []string, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, nil, err
	}
	for _, d := range im.Manifests {
		rn := refName
		if a := d.Annotations["org.opencontainers.image.ref.name"]; a != "" {
			rn = a
		}
		if d.Platform != nil && !d.Platform.Satisfies(Platform) {
			continue
		}
		switch {
		case d.MediaType.IsImage():
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, nil, err
			}
			var names []string
			if t, err := name.NewTag(rn, name.StrictValidation); err == nil && rn != "" {
				names = []string{t.Name()}
			}
			return img, names, nil
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, nil, err
			}
			if img, names, err := pickImage(child, rn); err == nil {
				return img, names, nil
			}
		}
	}
	return nil, nil, api.Errorf(api.ErrInvalidArgument, "no image for %s/%s in the layout", Platform.OS, Platform.Architecture)
}

// Export writes the image ref resolves to as a docker-save tarball (docker load reads it),
// tagged with its names (or airlock/image:<short id> when it has none).
func (s *Store) Export(ctx context.Context, ref string, w io.Writer) error {
	img, err := s.Resolve(ref)
	if err != nil {
		return err
	}
	release := s.Lease(img) // not collected while it is written
	defer release()
	v, err := s.v1Image(img)
	if err != nil {
		return err
	}
	refs := map[name.Reference]v1.Image{}
	for _, n := range img.Names {
		if t, err := name.NewTag(n); err == nil {
			refs[t] = v
		}
	}
	if len(refs) == 0 {
		t, err := name.NewTag("airlock/image:" + img.ShortID())
		if err != nil {
			return err
		}
		refs[t] = v
	}
	if err := tarball.MultiRefWrite(refs, &ctxWriter{ctx: ctx, w: w}); err != nil {
		return fmt.Errorf("export %s: %w", ref, err)
	}
	return nil
}

// ctxWriter stops a long export when its context ends.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c *ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// v1Image is a stored image as a go-containerregistry image, its blobs read from the store.
func (s *Store) v1Image(img *Image) (v1.Image, error) {
	return partial.CompressedToImage(&storedImage{s: s, img: img})
}

type storedImage struct {
	s   *Store
	img *Image
}

func (si *storedImage) blobPath(d string) string {
	return filepath.Join(si.s.dir, "blobs", digestPath(d))
}

func (si *storedImage) RawConfigFile() ([]byte, error) { return os.ReadFile(si.blobPath(si.img.ID)) }

func (si *storedImage) MediaType() (types.MediaType, error) {
	if si.img.Manifest == "" {
		return types.OCIManifestSchema1, nil
	}
	return types.MediaType(si.img.Manifest), nil
}

func (si *storedImage) RawManifest() ([]byte, error) {
	mt, _ := si.MediaType()
	cfgType := types.OCIConfigJSON
	if mt == types.DockerManifestSchema2 {
		cfgType = types.DockerConfigJSON
	}
	raw, err := si.RawConfigFile()
	if err != nil {
		return nil, err
	}
	cfgHash, err := v1.NewHash(si.img.ID)
	if err != nil {
		return nil, err
	}
	m := v1.Manifest{SchemaVersion: 2, MediaType: mt,
		Config: v1.Descriptor{MediaType: cfgType, Size: int64(len(raw)), Digest: cfgHash}}
	for _, l := range si.img.Layers {
		h, err := v1.NewHash(l.Digest)
		if err != nil {
			return nil, err
		}
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: types.MediaType(l.MediaType), Size: l.Size, Digest: h})
	}
	return json.Marshal(m)
}

func (si *storedImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for _, l := range si.img.Layers {
		if l.Digest == h.String() {
			return &storedBlob{path: si.blobPath(l.Digest), hash: h, size: l.Size, mt: types.MediaType(l.MediaType)}, nil
		}
	}
	if h.String() == si.img.ID {
		raw, err := si.RawConfigFile()
		if err != nil {
			return nil, err
		}
		return &storedBlob{path: si.blobPath(si.img.ID), hash: h, size: int64(len(raw)), mt: types.OCIConfigJSON}, nil
	}
	return nil, fmt.Errorf("blob %s is not part of image %s", h, si.img.ID)
}

type storedBlob struct {
	path string
	hash v1.Hash
	size int64
	mt   types.MediaType
}

func (b *storedBlob) Digest() (v1.Hash, error)            { return b.hash, nil }
func (b *storedBlob) Compressed() (io.ReadCloser, error)  { return os.Open(b.path) }
func (b *storedBlob) Size() (int64, error)                { return b.size, nil }
func (b *storedBlob) MediaType() (types.MediaType, error) { return b.mt, nil }
