package airlock_test

import (
	"go/build"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

// TestImportBans enforces the layering around the agent protocol: the engine drives sandboxes
// through the Agent interface it declares and never sees connect codes or protobuf; the server
// sees only the engine's types; the PID-1 agent package is linked into neither; the daemon-side
// client stays portable and small in what it needs. Tests count too: a ban a test may break is
// no ban.
func TestImportBans(t *testing.T) {
	t.Parallel()
	const mod = "github.com/airlockhq/airlock/"
	bans := []struct {
		pkg    string
		direct []string // may not be imported by the package (or its tests)
		deps   []string // may not be anywhere in the package's dependencies
	}{
		{pkg: "internal/engine",
			direct: []string{"connectrpc.com/connect", mod + "internal/agent/agentpb", mod + "internal/agent/agentpb/agentpbconnect"},
			deps:   []string{mod + "internal/agent", mod + "internal/server"}},
		{pkg: "internal/server",
			direct: []string{mod + "internal/agentclient", "connectrpc.com/connect", mod + "internal/agent/agentpb"},
			deps:   []string{mod + "internal/agent"}},
		{pkg: "internal/agentclient",
			deps: []string{mod + "internal/agent", mod + "internal/engine", mod + "internal/server", "golang.org/x/sys/unix"}},
	}
	for _, b := range bans {
		t.Run(b.pkg, func(t *testing.T) {
			t.Parallel()
			for _, imp := range goList(t, "{{join .Imports \"\\n\"}}\n{{join .TestImports \"\\n\"}}\n{{join .XTestImports \"\\n\"}}", "./"+b.pkg) {
				if slices.Contains(b.direct, imp) {
					t.Errorf("%s imports %s", b.pkg, imp)
				}
			}
			for _, dep := range goList(t, "{{join .Deps \"\\n\"}}", "./"+b.pkg) {
				if slices.Contains(b.deps, dep) {
					t.Errorf("%s depends on %s", b.pkg, dep)
				}
			}
		})
	}
	// The client imports only the standard library, api and the protocol's generated code.
	for _, imp := range goList(t, "{{join .Imports \"\\n\"}}", "./internal/agentclient") {
		switch {
		case !strings.Contains(imp, "."), imp == "connectrpc.com/connect", imp == mod+"api",
			strings.HasPrefix(imp, mod+"internal/agent/agentpb"):
		default:
			t.Errorf("internal/agentclient imports %s; it may import only the standard library, api, agentpb and connect", imp)
		}
	}
}

// goList returns the lines go list prints for pkg with the template format.
func goList(t *testing.T, format, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-f", format, pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
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
