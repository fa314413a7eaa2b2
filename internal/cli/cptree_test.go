package cli

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// An archive from a sandbox is untrusted: untar must not write outside its directory, whether
// by an absolute name, a "..", or a symlink the archive itself made.
func TestUntarStaysInside(t *testing.T) {
	type entry struct {
		name, link string
		typ        byte
	}
	tests := []struct {
		name    string
		entries []entry
	}{
		{"absolute", []entry{{name: "/OUT/x", typ: tar.TypeReg}}},
		{"dotdot", []entry{{name: "a/../../x", typ: tar.TypeReg}}},
		{"through a symlink", []entry{{name: "l", link: "OUT", typ: tar.TypeSymlink}, {name: "l/x", typ: tar.TypeReg}}},
		{"device", []entry{{name: "null", typ: tar.TypeChar}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			os.Mkdir(outside, 0o755)
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, e := range tc.entries {
				name, link := e.name, e.link
				if link == "OUT" {
					link = outside
				}
				if name == "/OUT/x" {
					name = outside + "/x"
				}
				tw.WriteHeader(&tar.Header{Name: name, Linkname: link, Typeflag: e.typ, Mode: 0o644, Size: 1})
				if e.typ == tar.TypeReg {
					tw.Write([]byte("x"))
				}
			}
			tw.Close()
			err := untar(&buf, filepath.Join(base, "in", "dir"))
			if err == nil {
				t.Error("untar accepted a hostile archive")
			}
			for _, p := range []string{filepath.Join(outside, "x"), filepath.Join(base, "in", "x"), filepath.Join(base, "x")} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s was written", p)
				}
			}
		})
	}
}
