package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/image"
	"github.com/airlockhq/airlock/internal/netpolicy"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/testutil"
)

// buildEngine is an engine on the shared runtime and image store that offers only network
// mode block, as the shared runtime (no network config) can build: what a daemon on a host
// without sandbox networking offers. Build steps run through it as a daemon runs them.
func buildEngine(t testing.TB) *engine.Engine {
	t.Helper()
	mustEngine(t)
	e, err := engine.New(engine.Config{Runtime: native.EngineRuntime(rt), Images: image.EngineImages(images),
		ScratchBytes: 256 << 20, NetworkModes: []netpolicy.Mode{netpolicy.Block}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		e.Close(ctx)
	})
	return e
}

// countingRunner counts the build sandboxes a runner starts.
type countingRunner struct {
	image.StepRunner
	runs atomic.Int64
}

func (r *countingRunner) RunStep(ctx context.Context, parent *image.Image, run image.StepRun, log io.Writer) (io.ReadCloser, int, error) {
	r.runs.Add(1)
	return r.StepRunner.RunStep(ctx, parent, run, log)
}

// buildBase commits a hand-made base: busybox (static) as the tools and a python3 that says
// it is 3.11.2, all owned by the image's root.
func buildBase(t *testing.T, st *image.Store) *image.Image {
	t.Helper()
	testutil.MustHaveFile(t, "/bin/busybox", "busybox-static")
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) {
		t.Helper()
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	for _, d := range []string{"bin/", "etc/", "usr/", "usr/bin/", "tmp/"} {
		add(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755}, nil)
	}
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755}, bb)
	for _, tool := range []string{"sh", "cat", "echo", "ls", "mkdir", "dirname", "chmod", "pwd", "id", "stat", "rm"} {
		add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + tool, Linkname: "busybox", Mode: 0o777}, nil)
	}
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/python3", Mode: 0o755}, []byte("#!/bin/sh\necho Python 3.11.2\n"))
	tw.Close()
	img, err := st.Commit(t.Context(), nil, &buf, "test/busybox:1")
	if err != nil {
		t.Fatalf("commit the base: %v", err)
	}
	return img
}

type buildResult struct {
	img     *image.Image
	cached  []bool // per step
	elapsed time.Duration
	events  []image.BuildEvent
}

func build(t *testing.T, b *image.Builder, sp *image.BuildSpec) (buildResult, error) {
	t.Helper()
	var res buildResult
	start := time.Now()
	img, err := b.Build(t.Context(), sp, "", func(e image.BuildEvent) {
		res.events = append(res.events, e)
		if e.Type == "done" && e.Step > 0 {
			res.cached = append(res.cached, e.Cached)
		}
	})
	res.img, res.elapsed = img, time.Since(start)
	return res, err
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// TestImageBuildSpec: run_commands, copy, env and workdir, run through the engine
// (image.EngineRunner), build an image whose sandboxes see the result; building again reuses every layer (no sandbox started); changing step 2
// rebuilds steps 2..n only; python_version is checked against the base.
func TestImageBuildSpec(t *testing.T) {
	e := buildEngine(t)
	st := images
	base := buildBase(t, st)
	runner := &countingRunner{StepRunner: image.EngineRunner(e, st)}
	b := &image.Builder{Store: st, Runner: runner}
	spec := func(copied string) *image.BuildSpec {
		return &image.BuildSpec{Name: "test/built:1", Base: base.ID, PythonVersion: "3.11", Steps: []image.BuildStep{
			{RunCommands: []string{"mkdir -p /usr/share/built", "echo built > /usr/share/built/x", "id -u > /usr/share/built/uid"}},
			{Copy: &image.CopyStep{Content: b64(copied), Dst: "/app/hello.txt"}},
			{Env: map[string]string{"GREETING": "hi"}},
			{Workdir: "/app"},
			{RunCommands: []string{"pwd > /app/where.txt", "echo $GREETING > /app/greet.txt"}},
		}}
	}
	first, err := build(t, b, spec("hello\n"))
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	if got, want := fmt.Sprint(first.cached), "[false false false false false]"; got != want {
		t.Errorf("first build cached %s, want %s", got, want)
	}
	firstRuns := runner.runs.Load()
	t.Logf("first build: %v (%d sandboxes)", first.elapsed, firstRuns)

	img := first.img
	sb := imageSandboxOf(t, "built-check", img)
	for _, tt := range []struct{ name, script, want string }{
		{"run_commands wrote /usr as the image's root", "cat /usr/share/built/x /usr/share/built/uid; stat -c %u /usr/share/built/x", "built\n0\n0"},
		{"copy", "cat /app/hello.txt", "hello"},
		{"env in the image", "echo $GREETING", "hi"},
		{"workdir for later steps", "cat /app/where.txt /app/greet.txt", "/app\nhi"},
		{"the sandbox user runs it", "id -u", "1000"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if out, stderr, code := sh(t, sb, tt.script); code != 0 || out != tt.want {
				t.Errorf("got %q (exit %d, %q), want %q", out, code, stderr, tt.want)
			}
		})
	}
	// The build step's writable root wrote its own layer only: never the base's on the host.
	for _, l := range base.LayerDirs() {
		if _, err := os.Lstat(filepath.Join(l, "usr/share/built")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a build step's write reached the base layer %s: %v", l, err)
		}
	}
	if got, want := img.Config.WorkingDir, "/app"; got != want {
		t.Errorf("image workdir %q, want %q", got, want)
	}

	again, err := build(t, b, spec("hello\n"))
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	if got, want := fmt.Sprint(again.cached), "[true true true true true]"; got != want {
		t.Errorf("rebuild cached %s, want %s", got, want)
	}
	if got, want := again.img.ID, img.ID; got != want {
		t.Errorf("rebuild made image %s, want the same %s", got, want)
	}
	if got := runner.runs.Load() - firstRuns; got != 0 {
		t.Errorf("rebuild started %d sandboxes, want 0", got)
	}
	t.Logf("cached rebuild: %v", again.elapsed)

	changed, err := build(t, b, spec("changed\n"))
	if err != nil {
		t.Fatalf("build with step 2 changed: %v", err)
	}
	if got, want := fmt.Sprint(changed.cached), "[true false false false false]"; got != want {
		t.Errorf("step 2 changed: cached %s, want %s", got, want)
	}
	t.Logf("rebuild from step 2: %v", changed.elapsed)
	out, _, _ := sh(t, imageSandboxOf(t, "built-changed", changed.img), "cat /app/hello.txt /usr/share/built/x")
	if want := "changed\nbuilt"; out != want {
		t.Errorf("changed image has %q, want %q", out, want)
	}

	t.Run("python_version mismatch", func(t *testing.T) {
		sp := spec("hello\n")
		sp.PythonVersion = "3.12"
		_, err := build(t, b, sp)
		if got, want := fmt.Sprint(err), "the base has Python 3.11; python_version 3.12 was asked"; got != want {
			t.Errorf("got error %q, want %q", got, want)
		}
	})
	t.Run("failing step", func(t *testing.T) {
		sp := spec("hello\n")
		sp.Steps = append(sp.Steps, image.BuildStep{RunCommands: []string{"echo about to fail", "exit 3"}})
		_, err := build(t, b, sp)
		if got, want := fmt.Sprint(err), "step 6 (run_commands): exited with status 3: about to fail"; got != want {
			t.Errorf("got error %q, want %q", got, want)
		}
	})
}

// imageSandboxOf starts an ordinary (not build) sandbox of img.
func imageSandboxOf(t *testing.T, id string, img *image.Image) *native.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	sb, err := rt.Create(ctx, native.Spec{ID: id, MemoryBytes: 256 << 20, Pids: 64, ScratchBytes: 32 << 20, NoFile: 256,
		Image: &native.ImageRoot{Layers: img.LayerDirs(), Env: img.Config.Env, Workdir: img.Config.WorkingDir}})
	if err != nil {
		t.Fatalf("create a sandbox of %s: %v", img.ShortID(), err)
	}
	t.Cleanup(func() { sb.Destroy(context.Background()) })
	return sb
}

// TestImageBuildLocalCLI: `airlock image build -f spec.yaml` without --server builds with an
// embedded engine into --state-dir's store, showing the progress; a sandbox of the result sees
// the step's work, and a second build is all cached.
func TestImageBuildLocalCLI(t *testing.T) {
	mustEngine(t)
	state, st := stateWithStore(t, "airlock-localbuild-")
	buildBase(t, st)
	spec := filepath.Join(t.TempDir(), "spec.yaml")
	if err := os.WriteFile(spec, []byte("name: test/local:1\nbase: test/busybox:1\nsteps:\n  - run_commands: [\"echo local > /etc/built\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := "image build -f " + spec + " --state-dir " + state
	out, stderr, code := runCLI(t, "", args)
	if code != 0 || !strings.Contains(out, "[1/1] run_commands (running)") || !strings.Contains(out, "built test/local:1 sha256:") {
		t.Fatalf("build: exit %d: %s%s", code, out, stderr)
	}
	img, err := st.Resolve("test/local:1")
	if err != nil {
		t.Fatal(err)
	}
	if got, _, _ := sh(t, imageSandboxOf(t, "local-built", img), "cat /etc/built"); got != "local" {
		t.Errorf("the built image has %q in /etc/built, want %q", got, "local")
	}
	if out, stderr, code := runCLI(t, "", args); code != 0 || !strings.Contains(out, "[1/1] run_commands (cached)") {
		t.Errorf("rebuild: exit %d: %s%s", code, out, stderr)
	}
}

// stateWithStore makes a state directory (removed at the end) and opens its image store, for a
// daemon or an embedded engine to use.
func stateWithStore(t *testing.T, prefix string) (string, *image.Store) {
	t.Helper()
	state, err := os.MkdirTemp("", prefix) // t.TempDir's parent is 0700: not traversable
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	st, err := image.Open(image.Config{Dir: filepath.Join(state, "images")})
	if err != nil {
		t.Fatal(err)
	}
	return state, st
}
