package server

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/image"
	"github.com/airlockhq/airlock/internal/testutil"
)

func newImageServer(t *testing.T, st *image.Store) *httptest.Server {
	t.Helper()
	e, err := engine.New(engine.Config{Runtime: noRuntime{}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Engine: e, Images: st})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return ts
}

func TestImagesUnimplemented(t *testing.T) {
	t.Parallel()
	ts := newImageServer(t, nil)
	for _, r := range []struct{ method, path, body string }{
		{"GET", "/v1/images", ""}, {"GET", "/v1/images/alpine", ""}, {"DELETE", "/v1/images/alpine", ""},
		{"POST", "/v1/images/pull", `{"ref":"alpine"}`},
	} {
		resp, eb := do(t, ts, r.method, r.path, r.body, nil)
		if resp.StatusCode != http.StatusNotImplemented || !strings.Contains(eb.Error.Message, "no image store") {
			t.Errorf("%s %s: %d %+v, want 501 saying there is no image store", r.method, r.path, resp.StatusCode, eb)
		}
	}
}

func TestImagesAPI(t *testing.T) {
	testutil.MustHaveRoot(t) // unpacking keeps the layers' owners
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	host := strings.TrimPrefix(reg.URL, "http://")
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(host + "/team/app:v1")
	if err := remote.Write(ref, img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	st, err := image.Open(image.Config{Dir: filepath.Join(t.TempDir(), "images")})
	if err != nil {
		t.Fatal(err)
	}
	ts := newImageServer(t, st)
	cfg, _ := img.ConfigName()

	get := func(method, path, body string, want int) []byte {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), method, ts.URL+path, strings.NewReader(body))
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, want)
		}
		return b
	}
	var info api.ImageInfo
	json.Unmarshal(get("POST", "/v1/images/pull", `{"ref":"`+ref.String()+`"}`, 200), &info)
	if info.ID != cfg.String() || len(info.Layers) != 2 || len(info.Names) != 1 {
		t.Fatalf("pulled %+v, want %s with 2 layers and its name", info, cfg)
	}
	var list api.ImageList
	json.Unmarshal(get("GET", "/v1/images", "", 200), &list)
	if len(list.Images) != 1 || list.Images[0].ID != info.ID {
		t.Errorf("list %+v, want the pulled image", list)
	}
	json.Unmarshal(get("GET", "/v1/images/"+ref.String(), "", 200), &info)
	if info.ID != cfg.String() {
		t.Errorf("GET by name: %s, want %s", info.ID, cfg)
	}
	get("GET", "/v1/images/"+info.ID[7:19], "", 200)

	for _, c := range []struct {
		method, path, body string
		status             int
	}{
		{"POST", "/v1/images/pull", `{"ref":"` + host + `/team/app:missing"}`, 404},
		{"POST", "/v1/images/pull", `{"ref":"Not A Ref"}`, 400},
		{"POST", "/v1/images/pull", `{}`, 400},
		{"POST", "/v1/images/pull", `{"ref":"x","bogus":1}`, 400},
		{"GET", "/v1/images/nope:v1", "", 404},
		{"PUT", "/v1/images/pull", "", 405},
		{"DELETE", "/v1/images/nope", "", 404},
	} {
		resp, _ := do(t, ts, c.method, c.path, c.body, nil)
		if resp.StatusCode != c.status {
			t.Errorf("%s %s %s: %d, want %d", c.method, c.path, c.body, resp.StatusCode, c.status)
		}
	}
	get("DELETE", "/v1/images/"+ref.String(), "", 204)
	get("GET", "/v1/images/"+info.ID, "", 404)
}
