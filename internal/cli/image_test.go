package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/testutil"
)

// TestImageCommands drives airlock image import, ls, tag, inspect, export, rm and prune on a
// state directory of its own.
func TestImageCommands(t *testing.T) {
	testutil.MustHaveRoot(t)
	dir := t.TempDir()
	img, err := random.Image(2048, 2)
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("example.com/cli:v1")
	save := filepath.Join(dir, "save.tar")
	if err := tarball.WriteToFile(save, tag, img); err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigName()
	id := cfg.String()[7:19]
	state := filepath.Join(dir, "state")
	run := func(args ...string) string {
		t.Helper()
		root := newRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(append([]string{"image", "--state-dir", state}, args...))
		if err := root.ExecuteContext(t.Context()); err != nil {
			t.Fatalf("airlock image %s: %v", strings.Join(args, " "), err)
		}
		return out.String()
	}
	run("import", save, "--tag", "local/app:dev")
	ls := run("ls")
	for _, want := range []string{"example.com/cli:v1", "local/app:dev", id} {
		if !strings.Contains(ls, want) {
			t.Errorf("ls lacks %q:\n%s", want, ls)
		}
	}
	run("tag", "local/app:dev", "other:1")
	var infos []api.ImageInfo
	if err := json.Unmarshal([]byte(run("inspect", "other:1")), &infos); err != nil || len(infos) != 1 || infos[0].ID != cfg.String() || len(infos[0].Names) != 3 {
		t.Fatalf("inspect: %+v (%v), want the image with 3 names", infos, err)
	}
	out := filepath.Join(dir, "export.tar")
	run("export", "other:1", "-o", out)
	back, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatalf("read the export: %v", err)
	}
	if c, _ := back.ConfigName(); c != cfg {
		t.Errorf("export holds %s, want %s", c, cfg)
	}
	run("rm", "other:1", "local/app:dev", "example.com/cli:v1")
	if ls := run("ls", "-q"); ls != "" {
		t.Errorf("ls after rm of every name: %q, want nothing", ls)
	}
	run("prune")
	if ents, _ := os.ReadDir(filepath.Join(state, "images", "layers", "sha256")); len(ents) != 0 {
		t.Errorf("%d layers left after rm and prune", len(ents))
	}
}
