package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/testutil"
)

// The web playground (web/playground, embedded in the daemon) in headless Chromium, driven by
// playwright-core pinned in web/playground/package-lock.json: key prompt, a streamed one-shot
// run, a session with a matplotlib plot, the file panel and the sandbox list.
//
// Screenshots go to $AIRLOCK_PLAYGROUND_SHOTS (default a temporary directory, logged); with
// AIRLOCK_UPDATE_DOCS=1 the test also writes docs/playground.png.

const playgroundKey = "playground-key-000000000001"

func TestPlayground(t *testing.T) {
	chromium := "/usr/bin/chromium"
	testutil.MustHaveTool(t, chromium, "chromium")
	testutil.MustHaveTool(t, "node", "nodejs")
	testutil.MustHaveTool(t, "npm", "npm")
	d, _ := startLimitsDaemon(t, "playground", "AIRLOCK_API_KEYS", playgroundKey)

	t.Run("page headers", func(t *testing.T) {
		resp, err := http.Get(d.url + "/playground/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "Airlock") {
			t.Fatalf("GET /playground/: %d %.200s", resp.StatusCode, b)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.HasPrefix(csp, "default-src 'self'") {
			t.Errorf("Content-Security-Policy %q, want default-src 'self' first", csp)
		}
		// The page is public; the API behind it is not.
		resp, err = http.Get(d.url + "/v1/sandboxes")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET /v1/sandboxes without a key: %d, want 401", resp.StatusCode)
		}
	})

	dir := playwright(t)
	shots := os.Getenv("AIRLOCK_PLAYGROUND_SHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "drive.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PLAYGROUND_URL="+d.url, "PLAYGROUND_KEY="+playgroundKey,
		"PLAYGROUND_OUT="+shots, "CHROMIUM="+chromium, "HOME="+t.TempDir())
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var seen struct {
		URL, CSP, Error, OnceOutput, OnceStatus, Downloaded, UploadedReadBack string
		Problems, OffOrigin, Steps, Files, Failed                             []string
		KeyStored, Highlighted, Streamed                                      bool
		Image                                                                 struct {
			Src           string
			Width, Height int
		}
		SandboxRows [][]string
		OnceImages  []int
	}
	if jerr := json.Unmarshal(out, &seen); err != nil || jerr != nil {
		t.Fatalf("drive.mjs: %v %v\nstdout:\n%s\nstderr:\n%s", err, jerr, out, stderr.String())
	}
	t.Logf("screenshots in %s; the browser saw %+v", shots, seen)
	if seen.Error != "" {
		t.Fatalf("the browser script failed after steps %v: %s", seen.Steps, seen.Error)
	}
	checks := []struct {
		name string
		ok   bool
	}{
		{"/ redirects to /playground/", strings.HasSuffix(seen.URL, "/playground/")},
		{"the page's CSP is default-src 'self'", strings.HasPrefix(seen.CSP, "default-src 'self'")},
		{"no request left the daemon's origin", len(seen.OffOrigin) == 0},
		{"no script errors", len(seen.Problems) == 0},
		{"the key is kept in sessionStorage", seen.KeyStored},
		{"the editor highlights Python", seen.Highlighted},
		{"output streams before the run ends", seen.Streamed},
		{"the run's output", strings.Contains(seen.OnceOutput, "first line") && strings.Contains(seen.OnceOutput, "after 42")},
		{"the run's exit status", strings.HasPrefix(seen.OnceStatus, "exit 0")},
		{"the run's PNG output file is shown", slices.Equal(seen.OnceImages, []int{1})},
		{"the plot is an inline PNG", seen.Image.Src == "data:image/png;base64," && seen.Image.Width > 100 && seen.Image.Height > 50},
		{"the file panel lists the cell's file", slices.Contains(seen.Files, "result.txt")},
		{"a download gives the file", seen.Downloaded == "answer 42"},
		{"an upload reaches the session", strings.Contains(seen.UploadedReadBack, "a,b\n1,2")},
		{"the sandbox list shows the session", len(seen.SandboxRows) > 0},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("%s: not so; the browser saw %+v", c.name, seen)
		}
	}
	if os.Getenv("AIRLOCK_UPDATE_DOCS") == "1" && !t.Failed() {
		b, err := os.ReadFile(filepath.Join(shots, "playground.png"))
		if err == nil {
			err = os.WriteFile("../../docs/playground.png", b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// playwright installs web/playground's pinned npm packages (playwright-core among them) into a
// temporary directory beside drive.mjs and returns it.
func playwright(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for src, dst := range map[string]string{
		"../../web/playground/package.json":      "package.json",
		"../../web/playground/package-lock.json": "package-lock.json",
		"testdata/playground/drive.mjs":          "drive.mjs",
	} {
		b, err := os.ReadFile(src)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, dst), b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}
	return dir
}
