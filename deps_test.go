package airlock_test

import (
	"go/build"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDependencies enforces the layering: the SDK and api import only the standard library
// (and api); the agent never imports the server or the engine.
func TestDependencies(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{.Standard}}", ".", "./api").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, std, _ := strings.Cut(line, " ")
		if std == "true" || path == "github.com/airlockhq/airlock" || path == "github.com/airlockhq/airlock/api" {
			continue
		}
		t.Errorf("the SDK or api depends on %s; they may import only the standard library and api", path)
	}
	out, err = exec.Command("go", "list", "-deps", "./internal/agent").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasSuffix(p, "/internal/server") || strings.HasSuffix(p, "/internal/engine") {
			t.Errorf("internal/agent depends on %s", p)
		}
	}
}

// TestPackageDocs requires a package doc comment in every package.
func TestPackageDocs(t *testing.T) {
	t.Parallel()
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		if strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" {
			return filepath.SkipDir
		}
		pkg, err := build.ImportDir(path, 0)
		if err != nil || pkg.Name == "main" && strings.HasPrefix(path, "examples") {
			return nil // no Go files here
		}
		fset := token.NewFileSet()
		for _, f := range pkg.GoFiles {
			af, err := parser.ParseFile(fset, filepath.Join(path, f), nil, parser.PackageClauseOnly|parser.ParseComments)
			if err == nil && af.Doc != nil && strings.TrimSpace(af.Doc.Text()) != "" {
				return nil
			}
		}
		t.Errorf("package %s (%s) has no package doc comment", pkg.Name, path)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
