package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/testutil"
)

// TestPistonClient drives the stock npm piston-client (pinned in testdata/npm/piston, installed
// with npm ci into a temporary copy, its cache in a temporary directory) against /piston, the
// key as URL userinfo.
func TestPistonClient(t *testing.T) {
	ts := judgeServer(t)
	npm := testutil.MustHaveTool(t, "npm", "npm")
	dir := t.TempDir()
	for _, f := range []string{"package.json", "package-lock.json", "client.mjs"} {
		b, err := os.ReadFile(filepath.Join("testdata/npm/piston", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ci := exec.CommandContext(t.Context(), npm, "ci", "--cache", filepath.Join(dir, ".npm-cache"), "--prefer-offline",
		"--no-audit", "--no-fund", "--loglevel=error")
	ci.Dir = dir
	if out, err := ci.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}
	host := strings.TrimPrefix(ts.URL, "http://")
	node := exec.CommandContext(t.Context(), "node", "client.mjs")
	node.Dir = dir
	node.Env = append(os.Environ(), "PISTON_SERVER=http://anyuser:"+judgeKey+"@"+host+"/piston",
		"PISTON_BAD_SERVER=http://anyuser:wrong-key-0123456789abcdef@"+host+"/piston")
	out, err := node.Output()
	if err != nil {
		t.Fatalf("node client.mjs: %v\n%s", err, out)
	}
	type stage struct {
		Stdout, Stderr string
		Code           *int
		Signal, Status *string
	}
	var got struct {
		Runtimes                                         []struct{ Language, Version string }
		Python, C, Go, JavaScript, CompileError, Timeout struct {
			Language, Version string
			Run               stage
			Compile           *stage
		}
		Unknown, BadKey struct {
			Message string
			Success *bool
		}
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	langs := map[string]bool{}
	for _, r := range got.Runtimes {
		langs[r.Language] = r.Version != ""
	}
	for _, want := range []string{"python", "bash", "c", "c++", "go", "javascript"} {
		if !langs[want] {
			t.Errorf("runtimes lack %s: %+v", want, got.Runtimes)
		}
	}
	// The client's default args are "1", "2", "3".
	for _, c := range []struct {
		name, got, want string
	}{
		{"python", got.Python.Run.Stdout, "6 in\n"},
		{"c", got.C.Run.Stdout, "4 3\n"},
		{"go", got.Go.Run.Stdout, "go\n"},
		{"javascript", got.JavaScript.Run.Stdout, "1+2+3\n"},
		{"timeout", got.Timeout.Run.Stdout, "before\n"},
		{"unknown language", got.Unknown.Message, "version is required as a string"},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q (answer %s)", c.name, c.got, c.want, out)
		}
	}
	if got.C.Compile == nil || got.Python.Compile != nil {
		t.Errorf("compile stages: c %+v, python %+v", got.C.Compile, got.Python.Compile)
	}
	if ce := got.CompileError; ce.Compile == nil || ce.Compile.Code == nil || *ce.Compile.Code == 0 || !strings.Contains(ce.Run.Stderr, "error") {
		t.Errorf("compile error: %+v", ce)
	}
	if to := got.Timeout.Run; to.Status == nil || *to.Status != "TO" || to.Signal == nil || *to.Signal != "SIGKILL" {
		t.Errorf("timeout: %+v", to)
	}
	if got.BadKey.Success == nil || *got.BadKey.Success {
		t.Errorf("a wrong key: %+v, want success false", got.BadKey)
	}
}
