package image

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/testutil"
)

// commitFile commits a one-file layer on parent.
func commitFile(t *testing.T, s *Store, parent *Image, file string, size int, name string) *Image {
	t.Helper()
	img, err := s.Commit(t.Context(), parent, bytes.NewReader(layerTar(t, entry{name: file, body: strings.Repeat("x", size)})), name)
	if err != nil {
		t.Fatalf("Commit %s: %v", file, err)
	}
	return img
}

func layerExists(img *Image, i int) bool {
	_, err := os.Stat(img.LayerDirs()[i])
	return err == nil
}

func TestPruneAndLeases(t *testing.T) {
	testutil.MustHaveRoot(t)
	s := newStore(t, Config{})
	base := commitFile(t, s, nil, "base", 100, "base:1")
	child := commitFile(t, s, base, "child", 100, "child:1")
	if got := child.LayerDirs(); len(got) != 2 || got[0] != base.LayerDirs()[0] {
		t.Fatalf("child's layers %v, want base's below its own", got)
	}
	leasedImg := commitFile(t, s, nil, "leased", 100, "")
	orphan := commitFile(t, s, nil, "orphan", 100, "")
	release := s.Lease(leasedImg)

	res, err := s.Prune(t.Context())
	if err != nil {
		t.Fatalf("Prune: %v", err)
	}
	if len(res.Images) != 1 || res.Images[0] != orphan.ID || res.Layers != 1 {
		t.Errorf("Prune removed %+v, want only the unnamed, unleased image and its layer", res)
	}
	if layerExists(orphan, 0) {
		t.Errorf("the orphan's layer is still there")
	}
	for _, img := range []*Image{base, child, leasedImg} {
		if !layerExists(img, len(img.Layers)-1) {
			t.Errorf("%s's layer was collected", img.ShortID())
		}
	}
	if err := s.Remove(leasedImg.ID); !errors.Is(err, api.ErrConflict) {
		t.Errorf("Remove of a leased image: got %v, want conflict", err)
	}

	// Removing the base's name keeps its layer: the child stands on it.
	if err := s.Remove("base:1"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	release()
	if _, err := s.Prune(t.Context()); err != nil {
		t.Fatalf("Prune: %v", err)
	}
	if !layerExists(base, 0) || !layerExists(child, 1) {
		t.Errorf("the child's layers were collected")
	}
	if layerExists(leasedImg, 0) {
		t.Errorf("a released, unnamed image's layer is still there")
	}
	if _, err := s.Resolve(base.ID); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Resolve of the removed base: %v, want not found", err)
	}
	if err := s.Remove("child:1"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	for _, d := range []string{"layers/sha256", "blobs/sha256", "images/sha256"} {
		if ents, _ := os.ReadDir(filepath.Join(s.Dir(), d)); len(ents) != 0 {
			t.Errorf("%s holds %d entries after every image went, want none", d, len(ents))
		}
	}
}

func TestTagResolve(t *testing.T) {
	testutil.MustHaveRoot(t)
	s := newStore(t, Config{})
	img := commitFile(t, s, nil, "f", 1, "app")
	if err := s.Tag("app:latest", "registry.example.com/team/app:v1"); err != nil {
		t.Fatalf("Tag: %v", err)
	}
	for _, ref := range []string{"app", "app:latest", "docker.io/library/app", img.ID, img.ShortID(), "registry.example.com/team/app:v1"} {
		got, err := s.Resolve(ref)
		if err != nil || got.ID != img.ID {
			t.Errorf("Resolve(%q): %v, %v", ref, got, err)
		}
	}
	if got, _ := s.Resolve(img.ID); len(got.Names) != 2 {
		t.Errorf("names %v, want 2", got.Names)
	}
	for _, ref := range []string{"nope", "sha256:" + strings.Repeat("0", 64), "app@sha256:" + strings.Repeat("0", 64)} {
		if _, err := s.Resolve(ref); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("Resolve(%q): got %v, want not found", ref, err)
		}
	}
	if _, err := s.Resolve("UPPER/../x"); !errors.Is(err, api.ErrInvalidArgument) {
		t.Errorf("Resolve of a malformed name: got %v, want invalid argument", err)
	}
	if err := s.Remove("app"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Resolve(img.ID); err != nil {
		t.Errorf("removing one of two names removed the image: %v", err)
	}
}

func TestBudget(t *testing.T) {
	testutil.MustHaveRoot(t)
	s := newStore(t, Config{MaxBytes: 1 << 20})
	// An unnamed image takes most of the budget; the next commit prunes it to fit.
	commitFile(t, s, nil, "old", 400<<10, "")
	kept := commitFile(t, s, nil, "new", 300<<10, "new:1")
	if imgs, _ := s.List(); len(imgs) != 1 || imgs[0].ID != kept.ID {
		t.Errorf("images %v, want the old unnamed one pruned to make room", imgs)
	}
	// Past the budget even after a prune: a clear error, and nothing of it stays.
	_, err := s.Commit(t.Context(), nil, bytes.NewReader(layerTar(t, entry{name: "big", body: strings.Repeat("y", 2<<20)})), "big:1")
	if !errors.Is(err, ErrBudget) || !errors.Is(err, api.ErrTooLarge) || !strings.Contains(err.Error(), "budget") {
		t.Fatalf("Commit past the budget: got %v, want ErrBudget", err)
	}
	t.Logf("refused: %v", err)
	if used, _ := s.Usage(); used > 1<<20 {
		t.Errorf("usage %d after a refused commit, past the budget", used)
	}
	if _, err := s.Resolve("big:1"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("the refused image resolves: %v", err)
	}
}

// TestConcurrentStores commits through two stores on one directory (two daemons, or a daemon
// and the CLI) while a third prunes: every named image keeps every layer.
func TestConcurrentStores(t *testing.T) {
	testutil.MustHaveRoot(t)
	dir := filepath.Join(t.TempDir(), "images")
	a, b, c := newStore(t, Config{Dir: dir}), newStore(t, Config{Dir: dir}), newStore(t, Config{Dir: dir})
	base := commitFile(t, a, nil, "base", 10, "base:1")
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 8 {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			for j := range 4 {
				n := fmt.Sprintf("img%d-%d", i, j)
				_, err := s.Commit(t.Context(), base, bytes.NewReader(layerTar(t, entry{name: n, body: n})), n+":1")
				if err != nil {
					errs <- err
				}
				// An unnamed one too, for the pruner to take.
				if _, err := s.Commit(t.Context(), nil, bytes.NewReader(layerTar(t, entry{name: n + "-orphan"})), ""); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			if _, err := c.Prune(t.Context()); err != nil {
				errs <- err
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent use: %v", err)
	}
	imgs, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	named := 0
	for _, img := range imgs {
		if len(img.Names) == 0 {
			continue
		}
		named++
		for i := range img.Layers {
			if !layerExists(img, i) {
				t.Errorf("%v: layer %d is gone", img.Names, i)
			}
		}
	}
	if named != 33 {
		t.Errorf("%d named images, want 33", named)
	}
}
