package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadBuildSpec: YAML and JSON specs parse strictly, and copy src paths become content
// read below the spec's directory, never outside it.
func TestReadBuildSpec(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app.py"), []byte("print(1)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(dir), "outside.txt"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(filepath.Join(filepath.Dir(dir), "outside.txt")) })
	if err := os.Symlink("../outside.txt", filepath.Join(dir, "link.txt")); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, file, spec, wantErr string }{
		{"yaml", "s.yaml", "name: ds:1\nbase: debian\npython_version: \"3.11\"\nsteps:\n  - apt_install: [curl]\n  - copy: {src: app.py, dst: /app/app.py}\n", ""},
		{"json", "s.json", `{"name":"ds:1","base":"debian","steps":[{"copy":{"src":"app.py","dst":"/app/app.py"}}]}`, ""},
		{"unknown field", "s.yaml", "name: ds:1\nbase: debian\nstep: []\n", "unknown field"},
		{"src outside", "s.yaml", "name: ds:1\nbase: debian\nsteps:\n  - copy: {src: ../outside.txt, dst: /x}\n", "copy"},
		{"src symlink out", "s.yaml", "name: ds:1\nbase: debian\nsteps:\n  - copy: {src: link.txt, dst: /x}\n", "copy"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, tt.file)
			if err := os.WriteFile(p, []byte(tt.spec), 0o644); err != nil {
				t.Fatal(err)
			}
			req, err := readBuildSpec(p)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error about %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := req.Steps[len(req.Steps)-1].Copy
			if got, want := c.Content, "cHJpbnQoMSkK"; got != want || c.Src != "" {
				t.Errorf("copy: content %q src %q, want %q and no src", got, c.Src, want)
			}
		})
	}
}
