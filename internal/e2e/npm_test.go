package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/testutil"
)

// npmProjects are the npm projects of testdata/npm installed so far, by name: each once per
// test binary.
var npmProjects struct {
	mu   sync.Mutex
	done map[string]*npmProject
}

type npmProject struct {
	once sync.Once
	dir  string
	err  error
}

// npmInstall copies testdata/npm/NAME's files (package.json, the committed package-lock.json
// and the scripts given) into a fresh directory, installs the pinned packages there (npm ci from
// the registry), and returns the directory; once per test binary and project.
func npmInstall(t testing.TB, name string, scripts ...string) string {
	t.Helper()
	testutil.MustHaveTool(t, "node", "nodejs")
	testutil.MustHaveTool(t, "npm", "npm")
	npmProjects.mu.Lock()
	if npmProjects.done == nil {
		npmProjects.done = map[string]*npmProject{}
	}
	p := npmProjects.done[name]
	if p == nil {
		p = &npmProject{}
		npmProjects.done[name] = p
	}
	npmProjects.mu.Unlock()
	p.once.Do(func() {
		dir, err := os.MkdirTemp("", "airlock-npm-"+name+"-")
		if err != nil {
			p.err = err
			return
		}
		p.dir = dir
		for _, f := range append([]string{"package.json", "package-lock.json"}, scripts...) {
			b, err := os.ReadFile(filepath.Join("testdata/npm", name, f))
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, f), b, 0o644)
			}
			if err != nil {
				p.err = err
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		// --ignore-scripts: no package here needs an install script (modal's optional
		// cbor-extract native build falls back to JavaScript).
		cmd := exec.CommandContext(ctx, "npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			p.err = fmt.Errorf("npm ci: %v\n%s", err, out)
		}
	})
	if p.err != nil {
		t.Fatalf("installing testdata/npm/%s: %v", name, p.err)
	}
	return p.dir
}

// removeNPMProjects removes every npm project npmInstall made; TestMain calls it at the end.
func removeNPMProjects() {
	npmProjects.mu.Lock()
	defer npmProjects.mu.Unlock()
	for _, p := range npmProjects.done {
		if p.dir != "" {
			os.RemoveAll(p.dir)
		}
	}
}
