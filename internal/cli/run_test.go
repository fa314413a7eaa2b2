package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
