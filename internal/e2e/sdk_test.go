package e2e

import (
	"io"
	"strings"
	"testing"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// TestSDKAgainstRealServer drives every SDK call against the real server and sandboxes.
func TestSDKAgainstRealServer(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	c := airlock.New(a.url, "")
	ctx := t.Context()
	sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{Tags: map[string]string{"sdk": "yes"}, Env: map[string]string{"X": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Sandbox(ctx, sb.ID()); err != nil || got.ID() != sb.ID() {
		t.Fatalf("Sandbox(id): %v %v", got, err)
	}
	if l, err := c.ListSandboxes(ctx, map[string]string{"sdk": "yes"}); err != nil || len(l) != 1 {
		t.Fatalf("ListSandboxes: %v %v", l, err)
	}
	// Interactive exec: stdin streamed, output read while the process runs.
	p, err := sb.Exec(ctx, "python3", "-c", "import sys, os\nfor line in sys.stdin: print(line.strip().upper(), os.environ['X'], flush=True)")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(p.Stdin, "hello\n")
	buf := make([]byte, 64)
	n, _ := p.Stdout.Read(buf)
	if got := string(buf[:n]); got != "HELLO 1\n" {
		t.Fatalf("interactive stdout: %q", got)
	}
	io.WriteString(p.Stdin, "world\n")
	p.Stdin.Close()
	res, err := p.Wait()
	rest, _ := io.ReadAll(p.Stdout)
	if err != nil || res.ExitCode != 0 || string(rest) != "WORLD 1\n" {
		t.Fatalf("wait: %+v %v %q", res, err, rest)
	}
	// Kill, and the exit code says so.
	p, _ = sb.Exec(ctx, "sleep", "100")
	p.Kill()
	if res, err := p.Wait(); err != nil || res.ExitCode != 137 {
		t.Fatalf("killed: %+v %v", res, err)
	}
	// Files.
	if err := sb.Mkdir(ctx, "d/e"); err != nil {
		t.Fatal(err)
	}
	if err := sb.WriteFile(ctx, "d/e/f.txt", strings.NewReader("data")); err != nil {
		t.Fatal(err)
	}
	if b, err := sb.ReadFile(ctx, "d/e/f.txt"); err != nil || string(b) != "data" {
		t.Fatalf("ReadFile: %q %v", b, err)
	}
	if l, err := sb.List(ctx, "d/e"); err != nil || len(l) != 1 || l[0].Name != "f.txt" {
		t.Fatalf("List: %+v %v", l, err)
	}
	if fi, err := sb.Stat(ctx, "d/e/f.txt"); err != nil || fi.Size != 4 {
		t.Fatalf("Stat: %+v %v", fi, err)
	}
	if _, err := sb.ReadFile(ctx, "nope"); !airlock.IsNotFound(err) {
		t.Fatalf("missing file: %v", err)
	}
	if err := sb.Remove(ctx, "d", true); err != nil {
		t.Fatal(err)
	}
	if r, err := sb.Run(ctx, api.ExecRequest{Cmd: []string{"ls", "-A"}}); err != nil || r.Stdout != "" {
		t.Fatalf("after Remove: %+v %v", r, err)
	}
	// Terminate during a streamed exec: Wait reports the sandbox gone.
	p, _ = sb.Exec(ctx, "sleep", "100")
	if err := sb.Terminate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(); !airlock.IsGone(err) {
		t.Fatalf("exec of a terminated sandbox: %v, want gone", err)
	}
	if _, err := sb.Run(ctx, api.ExecRequest{Cmd: []string{"true"}}); !airlock.IsGone(err) {
		t.Fatalf("run in a terminated sandbox: %v, want gone", err)
	}
	if _, err := c.Sandbox(ctx, "sb-unknown"); !airlock.IsNotFound(err) {
		t.Fatalf("unknown sandbox: %v", err)
	}
}
