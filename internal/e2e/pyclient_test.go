package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/testutil"
)

// The Python client (clients/python), installed as a user would (pip, offline, from the
// repository) and run against a real daemon with API keys on: its unittest suite, and the
// seed's code_executor example ported to it.

const pyclientKey = "pyclient-key-000000000001"

// pythonClient pip-installs clients/python into a temporary target and returns that directory,
// for PYTHONPATH. The source is copied first, since setuptools writes its build files beside it.
func pythonClient(t *testing.T) string {
	t.Helper()
	python := "/usr/bin/python3" // Debian's, with python3-pip and python3-setuptools (scripts/test)
	if _, err := os.Stat(python); err != nil {
		if testutil.Strict() {
			t.Fatalf("%s is not installed (apt-get install -y python3 python3-pip)", python)
		}
		t.Skipf("needs %s", python)
	}
	src := filepath.Join(t.TempDir(), "src")
	if err := os.CopyFS(src, os.DirFS("../../clients/python")); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "site")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-m", "pip", "install", "--quiet", "--no-index",
		"--no-build-isolation", "--target", target, src)
	cmd.Env = append(os.Environ(), "PIP_DISABLE_PIP_VERSION_CHECK=1", "HOME="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pip install ./clients/python: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(target, "airlock", "__init__.py")); err != nil {
		t.Fatalf("pip did not install the package: %v", err)
	}
	return target
}

// runPython runs python3 with args in an empty directory (so that only the installed package
// can be imported) against d, and returns its stdout; it fails the test on a non-zero exit.
func runPython(t *testing.T, site, server, key string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "PYTHONPATH="+site, "AIRLOCK_SERVER="+server, "AIRLOCK_API_KEY="+key,
		"PYTHONDONTWRITEBYTECODE=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3 %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, stderr.String())
	}
	t.Logf("python3 %s:\n%s", strings.Join(args, " "), stderr.String())
	return string(out)
}

func TestPythonClient(t *testing.T) {
	site := pythonClient(t)
	d, _ := startLimitsDaemon(t, "pyclient", "AIRLOCK_API_KEYS", pyclientKey)
	tests, err := filepath.Abs("../../clients/python/tests")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("unittest", func(t *testing.T) {
		// unittest reports to stderr, which runPython logs; a failing test exits non-zero.
		runPython(t, site, d.url, pyclientKey, "-m", "unittest", "discover", "-v", "-s", tests, "-t", tests)
	})
	t.Run("installed package is the one imported", func(t *testing.T) {
		got := strings.TrimSpace(runPython(t, site, d.url, pyclientKey, "-c", "import airlock; print(airlock.__file__)"))
		if want := filepath.Join(site, "airlock", "__init__.py"); got != want {
			t.Errorf("airlock imported from %s, want %s", got, want)
		}
	})
	example, err := filepath.Abs("../../clients/python/examples/code_executor.py")
	if err != nil {
		t.Fatal(err)
	}
	// What the seed's main prints, for its default code and for a failing one.
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"code_executor default", nil,
			"=== Execution Result ===\nSuccess: True\nReturn code: 0\n\n--- stdout ---\nHello from sandbox!\n\n"},
		{"code_executor sum", []string{"--code", "print(sum(range(100)))"},
			"=== Execution Result ===\nSuccess: True\nReturn code: 0\n\n--- stdout ---\n4950\n\n"},
		{"code_executor error", []string{"--code", "import sys; print('x'); sys.exit('bad')"},
			"=== Execution Result ===\nSuccess: False\nReturn code: 1\n\n--- stdout ---\nx\n\n\n--- stderr ---\nbad\n\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := runPython(t, site, d.url, pyclientKey, append([]string{example}, tc.args...)...)
			if got != tc.want {
				t.Errorf("code_executor printed %q, want %q", got, tc.want)
			}
		})
	}
}
