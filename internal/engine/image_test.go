package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
)

// fakeImages is an image store of named images; it counts live leases per image id.
type fakeImages struct {
	mu       sync.Mutex
	names    map[string]string // ref (name or id) → id
	leases   map[string]int    // id → live leases
	resolved []string          // every ref asked for, in order
	commits  []fakeCommit
}

type fakeCommit struct{ parent, name, layer string }

func newFakeImages(names map[string]string) *fakeImages {
	f := &fakeImages{names: map[string]string{}, leases: map[string]int{}}
	for n, id := range names {
		f.names[n], f.names[id] = id, id
	}
	return f
}

func (f *fakeImages) Resolve(ctx context.Context, ref string) (ImageRef, func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resolved = append(f.resolved, ref)
	id, ok := f.names[ref]
	if !ok {
		return ImageRef{}, nil, api.Errorf(api.ErrNotFound, "image %q not found", ref)
	}
	f.leases[id]++
	var once sync.Once
	return ImageRef{ID: id, Layers: []string{"/layers/" + id}, Env: []string{"PATH=/bin"}, Workdir: "/app"},
		func() {
			once.Do(func() {
				f.mu.Lock()
				f.leases[id]--
				f.mu.Unlock()
			})
		}, nil
}

func (f *fakeImages) Commit(ctx context.Context, parentID string, layer io.Reader, name string) (ImageRef, error) {
	b, err := io.ReadAll(layer)
	if err != nil {
		return ImageRef{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	id := fmt.Sprintf("sha256:snap%d", len(f.commits))
	f.commits = append(f.commits, fakeCommit{parentID, name, string(b)})
	f.names[id] = id
	if name != "" {
		f.names[name] = id
	}
	return ImageRef{ID: id}, nil
}

func (f *fakeImages) leased(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.leases[id]
}

// snapRuntime is fakeRuntime whose instances snapshot (their "layer" is a fixed string).
type snapRuntime struct{ fakeRuntime }

type snapInstance struct{ *fakeInstance }

func (s snapInstance) Snapshot(ctx context.Context, w io.Writer) error {
	_, err := io.WriteString(w, "layer of "+s.id)
	return err
}

func (r *snapRuntime) Create(ctx context.Context, s Spec) (Instance, error) {
	inst, err := r.fakeRuntime.Create(ctx, s)
	return snapInstance{inst.(*fakeInstance)}, err
}

func newImageEngine(t *testing.T, names map[string]string) (*Engine, *snapRuntime, *fakeImages) {
	t.Helper()
	rt, imgs := &snapRuntime{}, newFakeImages(names)
	e, err := New(Config{Runtime: rt, Images: imgs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(context.Background()) })
	return e, rt, imgs
}

// TestImageResolution: every kind of sandbox gets the image's root resolved through Images,
// the record and the info keep the id beside the name as the caller gave it, and the host
// image (named or not) needs no store.
func TestImageResolution(t *testing.T) {
	t.Parallel()
	e, rt, imgs := newImageEngine(t, map[string]string{"py:1": "sha256:aaa"})
	sb, err := e.CreateSandbox(t.Context(), SandboxSpec{Image: "py:1"})
	if err != nil {
		t.Fatal(err)
	}
	got := rt.created[0]
	if got.Image != "py:1" || got.ImageRoot == nil || got.ImageRoot.ID != "sha256:aaa" ||
		got.ImageRoot.Layers[0] != "/layers/sha256:aaa" || got.ImageRoot.Workdir != "/app" {
		t.Fatalf("runtime spec: got image %q root %+v, want py:1 resolved to sha256:aaa", got.Image, got.ImageRoot)
	}
	if info := sb.Info(); info.Spec.Image != "py:1" || info.Spec.ImageID != "sha256:aaa" {
		t.Errorf("info: got image %q id %q, want py:1 and sha256:aaa", info.Spec.Image, info.Spec.ImageID)
	}
	rec, err := decodeRecord(got.Meta)
	if err != nil || rec.Spec.ImageID != "sha256:aaa" || rec.Spec.Image != "py:1" {
		t.Errorf("record: got %+v, %v; want the image id sha256:aaa", rec.Spec, err)
	}
	if _, err := e.CreateSession(t.Context(), SessionSpec{Image: "sha256:aaa"}); err != nil {
		t.Fatalf("session of an image: %v", err)
	}
	if r := rt.created[1].ImageRoot; r == nil || r.ID != "sha256:aaa" {
		t.Errorf("session's root: got %+v, want sha256:aaa", r)
	}
	if _, err := e.Execute(t.Context(), OneShot{Code: "1", Image: "py:1"}); err != nil {
		t.Fatalf("one-shot of an image: %v", err)
	}
	if r := rt.created[2].ImageRoot; r == nil || r.ID != "sha256:aaa" {
		t.Errorf("one-shot's root: got %+v, want sha256:aaa", r)
	}
	for _, name := range []string{"", "host"} {
		n := len(imgs.resolved)
		if _, err := e.CreateSandbox(t.Context(), SandboxSpec{Image: name}); err != nil {
			t.Fatal(err)
		}
		s := rt.created[len(rt.created)-1]
		if s.Image != "host" || s.ImageRoot != nil || len(imgs.resolved) != n {
			t.Errorf("image %q: got %q root %+v (store asked %v), want host without the store", name, s.Image, s.ImageRoot, imgs.resolved[n:])
		}
	}
}

// TestImageMissing: an image the store lacks is a 404 naming it and how to get it, in every
// kind of run, and leaves no sandbox, slot or lease behind.
func TestImageMissing(t *testing.T) {
	t.Parallel()
	e, rt, imgs := newImageEngine(t, nil)
	for _, tt := range []struct {
		name string
		run  func() error
	}{
		{"sandbox", func() error { _, err := e.CreateSandbox(t.Context(), SandboxSpec{Image: "nope:1"}); return err }},
		{"session", func() error { _, err := e.CreateSession(t.Context(), SessionSpec{Image: "nope:1"}); return err }},
		{"one-shot", func() error { _, err := e.Execute(t.Context(), OneShot{Code: "1", Image: "nope:1"}); return err }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			if !errors.Is(err, api.ErrNotFound) {
				t.Fatalf("got %v, want not_found", err)
			}
			if msg := api.PublicDetail(err).Message; !strings.Contains(msg, `"nope:1"`) || !strings.Contains(msg, "airlock image pull") {
				t.Errorf("message %q: want the ref and how to pull it", msg)
			}
		})
	}
	if len(rt.created) != 0 || e.Live() != 0 || len(imgs.leases) != 0 {
		t.Fatalf("after missing images: %d created, %d live, leases %v; want none", len(rt.created), e.Live(), imgs.leases)
	}
	for _, bad := range []string{"a b", "x\x00", strings.Repeat("a", 600)} {
		if _, err := e.CreateSandbox(t.Context(), SandboxSpec{Image: bad}); !errors.Is(err, api.ErrInvalidArgument) {
			t.Errorf("image %q: got %v, want invalid_argument", bad, err)
		}
	}
	noStore, _ := newTestEngine(t, Config{})
	if _, err := noStore.CreateSandbox(t.Context(), SandboxSpec{Image: "py:1"}); !errors.Is(err, api.ErrInvalidArgument) ||
		!strings.Contains(err.Error(), "no image store") {
		t.Errorf("an image without a store: got %v, want invalid_argument saying there is no store", err)
	}
}

// TestImageLease: a sandbox holds its image's lease for its whole life and gives it back when
// it ends; a one-shot gives it back after its run; a failed creation never keeps it.
func TestImageLease(t *testing.T) {
	t.Parallel()
	e, _, imgs := newImageEngine(t, map[string]string{"py:1": "sha256:aaa"})
	sb, err := e.CreateSandbox(t.Context(), SandboxSpec{Image: "py:1"})
	if err != nil {
		t.Fatal(err)
	}
	if n := imgs.leased("sha256:aaa"); n != 1 {
		t.Fatalf("live sandbox: got %d leases, want 1", n)
	}
	if _, err := e.TerminateSandbox(t.Context(), sb.ID()); err != nil {
		t.Fatal(err)
	}
	if n := imgs.leased("sha256:aaa"); n != 0 {
		t.Fatalf("after terminate: got %d leases, want 0", n)
	}
	if _, err := e.Execute(t.Context(), OneShot{Code: "1", Image: "py:1"}); err != nil {
		t.Fatal(err)
	}
	waitLeases(t, imgs, "sha256:aaa", 0)

	// A creation the engine refuses after resolving (the closed engine) releases it too.
	closed, _, imgs2 := newImageEngine(t, map[string]string{"py:1": "sha256:aaa"})
	closed.Close(t.Context())
	if _, err := closed.CreateSandbox(t.Context(), SandboxSpec{Image: "py:1"}); err == nil {
		t.Fatal("a closed engine created a sandbox")
	}
	if n := imgs2.leased("sha256:aaa"); n != 0 {
		t.Fatalf("after a failed create: got %d leases, want 0", n)
	}
}

func waitLeases(t *testing.T, imgs *fakeImages, id string, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for imgs.leased(id) != want {
		if time.Now().After(deadline) {
			t.Fatalf("image %s: got %d leases, want %d", id, imgs.leased(id), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestImageRecoverReleasesByID: a recovered sandbox leases the image its record names by id,
// even when its name now points at another image, and releases it when it ends.
func TestImageRecoverReleasesByID(t *testing.T) {
	t.Parallel()
	e, rt, _ := newImageEngine(t, map[string]string{"py:1": "sha256:aaa"})
	if _, err := e.CreateSandbox(t.Context(), SandboxSpec{Image: "py:1"}); err != nil {
		t.Fatal(err)
	}
	meta := rt.created[0].Meta
	e.Close(t.Context())

	rt2, imgs2 := &snapRuntime{}, newFakeImages(map[string]string{"py:1": "sha256:bbb"})
	imgs2.names["sha256:aaa"] = "sha256:aaa"
	inst := &fakeInstance{rt: &rt2.fakeRuntime, id: "sb-rec", done: make(chan struct{})}
	rt2.recovered = []Recovered{{ID: "sb-rec", Inst: inst, Meta: meta}}
	e2, err := New(Config{Runtime: rt2, Images: imgs2})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close(context.Background())
	if adopted, _, err := e2.Recover(t.Context()); adopted != 1 || err != nil {
		t.Fatalf("recover: adopted %d, %v", adopted, err)
	}
	if n := imgs2.leased("sha256:aaa"); n != 1 || imgs2.leased("sha256:bbb") != 0 {
		t.Fatalf("recovered: leases %v (asked %v), want sha256:aaa by id", imgs2.leases, imgs2.resolved)
	}
	sb, err := e2.GetSandbox(t.Context(), "sb-rec")
	if err != nil || sb.Spec().ImageID != "sha256:aaa" {
		t.Fatalf("recovered sandbox: %v, %v", sb, err)
	}
	e2.TerminateSandbox(t.Context(), "sb-rec")
	if n := imgs2.leased("sha256:aaa"); n != 0 {
		t.Fatalf("after the recovered sandbox ended: %d leases, want 0", n)
	}
}

// TestSnapshot: a snapshot commits the instance's layer on top of the sandbox's image by id,
// and a sandbox starts from it by name; the host image cannot be snapshotted.
func TestSnapshot(t *testing.T) {
	t.Parallel()
	e, rt, imgs := newImageEngine(t, map[string]string{"py:1": "sha256:aaa"})
	sb, err := e.CreateSandbox(t.Context(), SandboxSpec{Image: "py:1"})
	if err != nil {
		t.Fatal(err)
	}
	img, err := sb.Snapshot(t.Context(), "mine:v1")
	if err != nil {
		t.Fatal(err)
	}
	if c := imgs.commits; len(c) != 1 || c[0].parent != "sha256:aaa" || c[0].name != "mine:v1" || c[0].layer != "layer of "+sb.ID() {
		t.Fatalf("commits: got %+v, want the sandbox's layer on sha256:aaa named mine:v1", c)
	}
	if _, err := e.CreateSandbox(t.Context(), SandboxSpec{Image: "mine:v1"}); err != nil {
		t.Fatal(err)
	}
	if r := rt.created[1].ImageRoot; r == nil || r.ID != img.ID {
		t.Fatalf("sandbox of the snapshot: root %+v, want %s", r, img.ID)
	}
	host, err := e.CreateSandbox(t.Context(), SandboxSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := host.Snapshot(t.Context(), ""); !errors.Is(err, api.ErrInvalidArgument) || !strings.Contains(err.Error(), "host image") {
		t.Fatalf("snapshot of a host sandbox: got %v, want invalid_argument about the host image", err)
	}
}
