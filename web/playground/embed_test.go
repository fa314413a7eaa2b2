package playground

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestDistIsCurrent fails when src/, build.mjs or package-lock.json changed without a rebuild:
// dist/SOURCES.sha256 is the hash build.mjs computed over them, recomputed here the same way.
func TestDistIsCurrent(t *testing.T) {
	inputs := []string{"build.mjs", "package-lock.json"}
	entries, err := os.ReadDir("src")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		inputs = append(inputs, "src/"+e.Name())
	}
	slices.Sort(inputs)
	h := sha256.New()
	for _, f := range inputs {
		b, err := os.ReadFile(filepath.FromSlash(f))
		if err != nil {
			t.Fatal(err)
		}
		h.Write([]byte(f + "\x00"))
		h.Write(b)
		h.Write([]byte("\x00"))
	}
	want, err := fs.ReadFile(FS(), "SOURCES.sha256")
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.TrimSpace(string(want)) {
		t.Errorf("sources hash %s, dist/SOURCES.sha256 %s: rebuild with `cd web/playground && npm ci && npm run build`",
			got, want)
	}
	for _, f := range []string{"index.html", "app.js", "app.css"} {
		if _, err := fs.Stat(FS(), f); err != nil {
			t.Errorf("dist lacks %s: %v", f, err)
		}
	}
}
