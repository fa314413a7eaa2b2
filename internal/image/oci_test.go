package image

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/testutil"
)

const (
	testUser  = "alice"
	testPass  = "s3cret-pass"
	testToken = "tok-0123456789"
)

// testRegistry is go-containerregistry's registry behind an auth front on 127.0.0.1.
type testRegistry struct {
	srv    *httptest.Server
	host   string
	tamper atomic.Value // string: a blob digest whose bytes the front flips
}

// newRegistry serves a registry: auth "" (anonymous), "basic", or "token" (a bearer-token
// front: 401 with a Bearer challenge, a /token endpoint that takes basic credentials).
func newRegistry(t testing.TB, auth string) *testRegistry {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r := &testRegistry{}
	r.tamper.Store("")
	mux := http.NewServeMux()
	mux.HandleFunc("/token", func(w http.ResponseWriter, req *http.Request) {
		u, p, ok := req.BasicAuth()
		if !ok || u != testUser || p != testPass {
			http.Error(w, "bad credentials", http.StatusUnauthorized)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"token": testToken})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		switch auth {
		case "basic":
			if u, p, ok := req.BasicAuth(); !ok || u != testUser || p != testPass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
				return
			}
		case "token":
			if req.Header.Get("Authorization") != "Bearer "+testToken {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="test"`, r.srv.URL))
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
				return
			}
		}
		if d := r.tamper.Load().(string); d != "" && req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/blobs/"+d) {
			rec := httptest.NewRecorder()
			reg.ServeHTTP(rec, req)
			b := rec.Body.Bytes()
			b[len(b)/2] ^= 0xff
			w.WriteHeader(rec.Code)
			w.Write(b)
			return
		}
		reg.ServeHTTP(w, req)
	})
	r.srv = httptest.NewServer(mux)
	t.Cleanup(r.srv.Close)
	r.host = strings.TrimPrefix(r.srv.URL, "http://")
	return r
}

// push writes img to repo:tag (or an index when idx is set) and returns the reference.
func (r *testRegistry) push(t testing.TB, repoTag string, img v1.Image, idx v1.ImageIndex) string {
	t.Helper()
	ref, err := name.ParseReference(r.host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	a := remote.WithAuth(&authn.Basic{Username: testUser, Password: testPass})
	if idx != nil {
		err = remote.WriteIndex(ref, idx, a)
	} else {
		err = remote.Write(ref, img, a)
	}
	if err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref.String()
}

// testImage is a random image with a known last layer: a file /hello.
func testImage(t testing.TB) v1.Image {
	t.Helper()
	img, err := random.Image(64<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar(t, entry{name: "hello", body: "hello from the image"}))), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.AppendLayers(img, l); err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.Config.Env = []string{"PATH=/custom/bin:/usr/bin", "LANG=C.UTF-8"}
	cf.Config.WorkingDir, cf.Config.User, cf.Config.Cmd = "/work", "1000:1000", []string{"python3"}
	cf.OS, cf.Architecture = "linux", Platform.Architecture
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

func configDigest(t testing.TB, img v1.Image) string {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

// checkImage checks that got is want's image, its layers unpacked.
func checkImage(t *testing.T, got *Image, want v1.Image) {
	t.Helper()
	if id := configDigest(t, want); got.ID != id {
		t.Fatalf("image id %s, want %s", got.ID, id)
	}
	dirs := got.LayerDirs()
	if len(dirs) != 3 {
		t.Fatalf("%d layer dirs, want 3", len(dirs))
	}
	if b, err := os.ReadFile(filepath.Join(dirs[2], "hello")); err != nil || string(b) != "hello from the image" {
		t.Errorf("top layer's hello: %q (%v)", b, err)
	}
	c := got.Config
	if len(c.Env) != 2 || c.Env[0] != "PATH=/custom/bin:/usr/bin" || c.WorkingDir != "/work" || c.User != "1000:1000" || len(c.Cmd) != 1 {
		t.Errorf("config %+v, want the image's env, workdir, user and cmd", c)
	}
}

func TestPull(t *testing.T) {
	testutil.MustHaveRoot(t)
	img := testImage(t)
	for _, auth := range []string{"", "basic", "token"} {
		t.Run("auth="+auth, func(t *testing.T) {
			r := newRegistry(t, auth)
			ref := r.push(t, "team/app:v1", img, nil)
			creds := []struct {
				name    string
				opts    PullOptions
				wantErr bool
			}{
				{"anonymous", PullOptions{}, auth != ""},
				{"wrong password", PullOptions{Username: testUser, Password: "nope"}, auth != ""},
				{"basic", PullOptions{Username: testUser, Password: testPass}, false},
			}
			if auth == "token" {
				creds = append(creds,
					struct {
						name    string
						opts    PullOptions
						wantErr bool
					}{"token", PullOptions{Token: testToken}, false},
					struct {
						name    string
						opts    PullOptions
						wantErr bool
					}{"wrong token", PullOptions{Token: "forged"}, true})
			}
			for _, c := range creds {
				t.Run(c.name, func(t *testing.T) {
					s := newStore(t, Config{})
					c.opts.Insecure = true
					got, err := s.Pull(t.Context(), ref, c.opts)
					if c.wantErr {
						if !errors.Is(err, api.ErrInvalidArgument) || !strings.Contains(err.Error(), "credentials") {
							t.Fatalf("Pull: got %v, want a refusal naming the credentials", err)
						}
						return
					}
					if err != nil {
						t.Fatalf("Pull: %v", err)
					}
					checkImage(t, got, img)
					if res, err := s.Resolve(ref); err != nil || res.ID != got.ID {
						t.Errorf("Resolve(%s): %v, %v", ref, res, err)
					}
				})
			}
		})
	}
}

func TestPullByDigestAndErrors(t *testing.T) {
	testutil.MustHaveRoot(t)
	r := newRegistry(t, "")
	img := testImage(t)
	ref := r.push(t, "app:v1", img, nil)
	d, _ := img.Digest()
	pinned := r.host + "/app@" + d.String()
	opts := PullOptions{Insecure: true}

	t.Run("by digest", func(t *testing.T) {
		s := newStore(t, Config{})
		start := time.Now()
		got, err := s.Pull(t.Context(), pinned, opts)
		if err != nil {
			t.Fatalf("Pull: %v", err)
		}
		t.Logf("pull of a 3-layer image took %v", time.Since(start))
		checkImage(t, got, img)
		if len(got.Names) != 0 {
			t.Errorf("names %v, want none for a digest pull", got.Names)
		}
		if res, err := s.Resolve(pinned); err != nil || res.ID != got.ID {
			t.Errorf("Resolve(%s): %v", pinned, err)
		}
		// Pulled again, nothing is downloaded: every layer is already here.
		if _, err := s.Pull(t.Context(), ref, opts); err != nil {
			t.Fatalf("second Pull: %v", err)
		}
	})
	t.Run("pinned digest of another image", func(t *testing.T) {
		s := newStore(t, Config{})
		_, err := s.Pull(t.Context(), r.host+"/app@sha256:"+strings.Repeat("ab", 32), opts)
		if !errors.Is(err, api.ErrNotFound) {
			t.Fatalf("Pull: got %v, want not found", err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		s := newStore(t, Config{})
		for _, ref := range []string{r.host + "/app:nope", r.host + "/nothing:v1"} {
			_, err := s.Pull(t.Context(), ref, opts)
			if !errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), "not found") {
				t.Errorf("Pull(%s): got %v, want a clear not found", ref, err)
			}
		}
	})
	t.Run("tampered blob", func(t *testing.T) {
		ls, _ := img.Layers()
		ld, _ := ls[2].Digest()
		r.tamper.Store(ld.String())
		defer r.tamper.Store("")
		s := newStore(t, Config{})
		_, err := s.Pull(t.Context(), ref, opts)
		if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), ld.String()) {
			t.Fatalf("Pull: got %v, want a digest mismatch naming %s", err, ld)
		}
		if imgs, _ := s.List(); len(imgs) != 0 {
			t.Errorf("the refused image is listed: %v", imgs)
		}
		if _, err := os.Stat(filepath.Join(s.Dir(), "blobs", digestPath(ld.String()))); err == nil {
			t.Errorf("the tampered blob is in the store")
		}
	})
	t.Run("index picks this platform", func(t *testing.T) {
		other, _ := random.Image(1024, 1)
		cf, _ := other.ConfigFile()
		cf = cf.DeepCopy()
		cf.Architecture = "s390x"
		other, _ = mutate.ConfigFile(other, cf)
		idx := mutate.AppendManifests(empty.Index,
			mutate.IndexAddendum{Add: other, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}}},
			mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &Platform}},
		)
		iref := r.push(t, "multi:latest", nil, idx)
		s := newStore(t, Config{})
		got, err := s.Pull(t.Context(), iref, opts)
		if err != nil {
			t.Fatalf("Pull: %v", err)
		}
		checkImage(t, got, img)
	})
}

func TestImportExport(t *testing.T) {
	testutil.MustHaveRoot(t)
	img := testImage(t)
	dir := t.TempDir()

	t.Run("docker save tarball", func(t *testing.T) {
		tag, _ := name.NewTag("example.com/app:v2")
		p := filepath.Join(dir, "save.tar")
		if err := tarball.WriteToFile(p, tag, img); err != nil {
			t.Fatal(err)
		}
		s := newStore(t, Config{})
		start := time.Now()
		got, err := s.Import(t.Context(), p)
		if err != nil {
			t.Fatalf("Import: %v", err)
		}
		t.Logf("import of a docker-save tarball took %v", time.Since(start))
		checkImage(t, got, img)
		if len(got.Names) != 1 || got.Names[0] != "example.com/app:v2" {
			t.Errorf("names %v, want the tarball's RepoTags", got.Names)
		}

		// Export round trip: the tarball holds the same image, and imports as it.
		var buf bytes.Buffer
		if err := s.Export(t.Context(), "example.com/app:v2", &buf); err != nil {
			t.Fatalf("Export: %v", err)
		}
		back, err := tarball.Image(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil }, nil)
		if err != nil {
			t.Fatalf("read the export: %v", err)
		}
		if configDigest(t, back) != got.ID {
			t.Errorf("export's config %s, want %s", configDigest(t, back), got.ID)
		}
		p2 := filepath.Join(dir, "export.tar")
		os.WriteFile(p2, buf.Bytes(), 0o600)
		s2 := newStore(t, Config{})
		again, err := s2.Import(t.Context(), p2)
		if err != nil {
			t.Fatalf("Import of the export: %v", err)
		}
		checkImage(t, again, img)
	})
	t.Run("OCI layout", func(t *testing.T) {
		lp, err := layout.Write(filepath.Join(dir, "layout"), empty.Index)
		if err != nil {
			t.Fatal(err)
		}
		if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "example.com/oci:v3"})); err != nil {
			t.Fatal(err)
		}
		s := newStore(t, Config{})
		got, err := s.Import(t.Context(), filepath.Join(dir, "layout"))
		if err != nil {
			t.Fatalf("Import: %v", err)
		}
		checkImage(t, got, img)
		if len(got.Names) != 1 || got.Names[0] != "example.com/oci:v3" {
			t.Errorf("names %v, want the layout's ref.name", got.Names)
		}
		if got.Layers[0].MediaType != string(types.DockerLayer) {
			t.Errorf("layer media type %s, want the layout's", got.Layers[0].MediaType)
		}
	})
	t.Run("not an image", func(t *testing.T) {
		p := filepath.Join(dir, "junk")
		os.WriteFile(p, []byte("junk"), 0o600)
		s := newStore(t, Config{})
		if _, err := s.Import(t.Context(), p); !errors.Is(err, api.ErrInvalidArgument) {
			t.Errorf("Import: got %v, want invalid argument", err)
		}
	})
}
