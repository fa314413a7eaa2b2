package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/api"
)

// An argument naming an existing file runs that file; anything else, or anything after '--',
// is code (issue 18: `airlock run script.py` used to run the word "script.py" as Python).
func TestReadCode(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "script.py")
	if err := os.WriteFile(script, []byte("print('from file')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		file      string
		args      []string
		afterDash bool
		stdin     string
		wantCode  string
		wantPath  string
		wantErr   bool
	}{
		{name: "file argument", args: []string{script}, wantCode: "print('from file')\n", wantPath: script},
		{name: "file flag", file: script, wantCode: "print('from file')\n", wantPath: script},
		{name: "file name after dash is code", args: []string{script}, afterDash: true, wantCode: script},
		{name: "missing file is code", args: []string{filepath.Join(dir, "nope.py")}, wantCode: filepath.Join(dir, "nope.py")},
		{name: "directory is code", args: []string{dir}, wantCode: dir},
		{name: "code words", args: []string{"print(1);", "print(2)"}, wantCode: "print(1); print(2)"},
		{name: "stdin dash", args: []string{"-"}, stdin: "print(3)", wantCode: "print(3)"},
		{name: "stdin file flag", file: "-", stdin: "print(4)", wantCode: "print(4)"},
		{name: "both", file: script, args: []string{"x"}, wantErr: true},
		{name: "nothing", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, path, err := readCode(tt.file, tt.args, tt.afterDash, strings.NewReader(tt.stdin))
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("readCode error = %v, want error %v", err, tt.wantErr)
			}
			if code != tt.wantCode || path != tt.wantPath {
				t.Errorf("readCode = %q, %q, want %q, %q", code, path, tt.wantCode, tt.wantPath)
			}
		})
	}
}

// `airlock run --output DIR` keeps the files a run returned inside DIR, whatever their names.
func TestSaveFilesConfined(t *testing.T) {
	tests := []struct {
		name     string
		file     string
		wantPath string // relative to DIR; "" = refused
	}{
		{name: "plain", file: "plot.png", wantPath: "plot.png"},
		{name: "nested", file: "out/data.csv", wantPath: "out/data.csv"},
		{name: "absolute", file: "/tmp/x.txt", wantPath: "tmp/x.txt"},
		{name: "dot dot", file: "../escape.txt"},
		{name: "inner dot dot", file: "a/../../escape.txt"},
		{name: "through a link", file: "link/escape.txt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "dir")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(parent, filepath.Join(dir, "link")); err != nil {
				t.Fatal(err)
			}
			var log strings.Builder
			err := saveFiles(dir, []api.OutputFile{{Name: tt.file, Data: []byte("data")}}, &log)
			if tt.wantPath == "" {
				if err == nil {
					t.Errorf("saveFiles(%q) succeeded, want it refused", tt.file)
				}
				if _, err := os.Stat(filepath.Join(parent, "escape.txt")); err == nil {
					t.Errorf("saveFiles(%q) wrote outside %s", tt.file, dir)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(dir, tt.wantPath))
			if err != nil || string(got) != "data" {
				t.Errorf("%s = %q, %v; want %q", tt.wantPath, got, err, "data")
			}
		})
	}
}
