package e2e

import (
	"archive/tar"
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/image"
	"github.com/airlockhq/airlock/internal/testutil"
)

// imageMarker is a file only the pulled image has, so a run can tell which root it stands on.
const imageMarker = "/etc/airlock-e2e-image"

var pyImage struct {
	once sync.Once
	ref  string
	err  error
}

// pythonImage is the reference of an image pulled, once per test binary, into the shared
// engine's store from a registry this test serves on 127.0.0.1: one layer of the host's
// busybox (static) as the shell and tools and the host's python3 with its shared libraries
// and standard library (tests, tkinter and the like left out), and nothing else of the host.
func pythonImage(t testing.TB) string {
	t.Helper()
	mustEngine(t)
	testutil.MustHaveFile(t, "/bin/busybox", "busybox-static")
	pyImage.once.Do(func() { pyImage.ref, pyImage.err = buildPythonImage() })
	if pyImage.err != nil {
		t.Fatalf("python image: %v", pyImage.err)
	}
	return pyImage.ref
}

func buildPythonImage() (string, error) {
	dir, err := os.MkdirTemp(stateDir, "pyimage-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	ref, _, stop, err := servePythonImage(dir)
	if err != nil {
		return "", err
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := images.Pull(ctx, ref, image.PullOptions{Insecure: true}); err != nil {
		return "", fmt.Errorf("pull: %w", err)
	}
	return ref, nil
}

// servePythonImage makes the python image's layer in dir and pushes the image to a registry it
// serves on 127.0.0.1 until stop: its reference there, and the image.
func servePythonImage(dir string) (ref string, img v1.Image, stop func(), err error) {
	layerFile := filepath.Join(dir, "layer.tar")
	if err := writePythonLayer(layerFile); err != nil {
		return "", nil, nil, fmt.Errorf("layer: %w", err)
	}
	layer, err := tarball.LayerFromFile(layerFile)
	if err != nil {
		return "", nil, nil, err
	}
	if img, err = mutate.AppendLayers(empty.Image, layer); err != nil {
		return "", nil, nil, err
	}
	if img, err = mutate.Config(img, v1.Config{Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}}); err != nil {
		return "", nil, nil, err
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	ref = strings.TrimPrefix(srv.URL, "http://") + "/e2e/python:3"
	r, err := name.ParseReference(ref, name.Insecure)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		err = remote.Write(r, img, remote.WithContext(ctx))
		cancel()
	}
	if err != nil {
		srv.Close()
		return "", nil, nil, fmt.Errorf("push: %w", err)
	}
	return ref, img, srv.Close, nil
}

// layerWriter writes a layer tar of host files at the paths they have on the host.
type layerWriter struct {
	tw   *tar.Writer
	seen map[string]bool
}

func (l *layerWriter) dirs(p string) error {
	d := filepath.Dir(p)
	if d == "." || d == "/" || l.seen[d] {
		return nil
	}
	if err := l.dirs(d); err != nil {
		return err
	}
	l.seen[d] = true
	return l.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755})
}

func (l *layerWriter) symlink(at, target string) error {
	if l.seen[at] {
		return nil
	}
	l.seen[at] = true
	if err := l.dirs(at); err != nil {
		return err
	}
	return l.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: strings.TrimPrefix(at, "/"), Linkname: target, Mode: 0o777})
}

// file copies the host file host to at, without setuid and setgid bits.
func (l *layerWriter) file(host, at string, content []byte) error {
	if l.seen[at] {
		return nil
	}
	l.seen[at] = true
	if err := l.dirs(at); err != nil {
		return err
	}
	mode := int64(0o644)
	if content == nil {
		fi, err := os.Stat(host)
		if err != nil {
			return err
		}
		if content, err = os.ReadFile(host); err != nil {
			return err
		}
		mode = int64(fi.Mode().Perm())
	}
	if err := l.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(at, "/"), Mode: mode, Size: int64(len(content))}); err != nil {
		return err
	}
	_, err := l.tw.Write(content)
	return err
}

// lib copies the shared library p (as the dynamic loader names it) to its real path, and
// links p's name there when they differ.
func (l *layerWriter) lib(p string) error {
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return err
	}
	if err := l.file(real, real, nil); err != nil {
		return err
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(p))
	if err != nil {
		return err
	}
	if alias := filepath.Join(dir, filepath.Base(p)); alias != real {
		rel, _ := filepath.Rel(dir, real)
		return l.symlink(alias, rel)
	}
	return nil
}

// neededLibs are the shared libraries ldd finds for the files.
func neededLibs(files ...string) ([]string, error) {
	out, err := exec.Command("ldd", files...).Output()
	if err != nil && len(out) == 0 {
		return nil, fmt.Errorf("ldd: %w", err)
	}
	var libs []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/") && !strings.HasSuffix(f[0], ":"):
			libs = append(libs, f[0])
		}
	}
	return libs, nil
}

func writePythonLayer(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	l := &layerWriter{tw: tar.NewWriter(f), seen: map[string]bool{}}
	// Merged /usr, as Debian's: the loader and libraries are reached through /lib and /lib64.
	for _, d := range []string{"bin", "lib", "lib64", "sbin"} {
		if err := l.symlink("/"+d, "usr/"+d); err != nil {
			return err
		}
	}
	if err := l.file("/bin/busybox", "/usr/bin/busybox", nil); err != nil {
		return err
	}
	for _, tool := range []string{"sh", "cat", "echo", "ls", "dd", "df", "rm", "true", "id", "env", "mkdir", "test", "stat"} {
		if err := l.symlink("/usr/bin/"+tool, "busybox"); err != nil {
			return err
		}
	}
	py, err := filepath.EvalSymlinks("/usr/bin/python3")
	if err != nil {
		return err
	}
	if err := l.file(py, py, nil); err != nil {
		return err
	}
	if err := l.symlink("/usr/bin/python3", filepath.Base(py)); err != nil {
		return err
	}
	stdlib := filepath.Join("/usr/lib", filepath.Base(py))
	skip := map[string]bool{"test": true, "idlelib": true, "tkinter": true, "turtledemo": true, "lib2to3": true,
		"ensurepip": true, "pydoc_data": true, "site-packages": true, "dist-packages": true}
	elves := []string{py}
	err = filepath.WalkDir(stdlib, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (skip[d.Name()] || strings.HasPrefix(d.Name(), "config-")) {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil // directories come with their files; links to /etc are the host's
		}
		if strings.HasSuffix(p, ".so") {
			elves = append(elves, p)
		}
		return l.file(p, p, nil)
	})
	if err != nil {
		return err
	}
	libs, err := neededLibs(elves...)
	if err != nil {
		return err
	}
	for _, lib := range libs {
		if err := l.lib(lib); err != nil {
			return err
		}
	}
	if err := l.file("", imageMarker, []byte("pulled\n")); err != nil {
		return err
	}
	if err := l.tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// TestImagePulledOneShot: an image pulled from a registry runs a one-shot program: python3 of
// the image, on the image's root (the marker), with the image's PATH, and none of the host's
// tree.
func TestImagePulledOneShot(t *testing.T) {
	ref := pythonImage(t)
	resp := run(t, api.ExecuteRequest{Image: ref, Code: `
import os, sys
print(6 * 7)
print(open("` + imageMarker + `").read().strip())
print(os.environ["PATH"])
print(os.path.exists("/usr/bin/go"), os.path.exists("/usr/lib/python3/dist-packages"), os.path.exists("/etc/debian_version"))
`})
	want := "42\npulled\n/usr/local/bin:/usr/bin:/bin\nFalse False False"
	if got := strings.TrimSpace(resp.Stdout); !resp.Success || got != want {
		t.Fatalf("got %q (stderr %q, exit %d), want %q", got, resp.Stderr, resp.ReturnCode, want)
	}
	if resp := run(t, api.ExecuteRequest{Code: "import os; print(os.path.exists(" + fmt.Sprintf("%q", imageMarker) + "))"}); strings.TrimSpace(resp.Stdout) != "False" {
		t.Fatalf("the host image sees the pulled image's marker: %+v", resp)
	}
}

// TestImageMissingIs404: a run of an image the store lacks is a 404 naming the image and how
// to pull it, and creates no sandbox.
func TestImageMissingIs404(t *testing.T) {
	a := newAPIServer(t, engine.Config{Images: image.EngineImages(images)})
	var eb api.ErrorBody
	code := a.call("POST", "/v1/execute", strings.NewReader(`{"code":"print(1)","image":"127.0.0.1:1/nope:1"}`), &eb)
	if code != 404 || !strings.Contains(eb.Error.Message, "airlock image pull") {
		t.Fatalf("got %d %+v, want 404 naming airlock image pull", code, eb)
	}
	if code := a.call("POST", "/v1/sandboxes", strings.NewReader(`{"image":"127.0.0.1:1/nope:1"}`), &eb); code != 404 {
		t.Fatalf("sandbox of a missing image: got %d %+v, want 404", code, eb)
	}
	if n := a.e.Live(); n != 0 {
		t.Fatalf("%d sandboxes live after refusals", n)
	}
}

// TestImageSnapshotThroughAPI: a file written in sandbox A is in sandbox B started from A's
// snapshot (by name, and a session by id), and absent from sandbox C of the base image; the
// info names the image as asked and its id; a host sandbox's snapshot is a clear 400.
func TestImageSnapshotThroughAPI(t *testing.T) {
	ref := pythonImage(t)
	a := newAPIServer(t, engine.Config{Images: image.EngineImages(images), ScratchBytes: 64 << 20})
	var info api.SandboxInfo
	if code := a.call("POST", "/v1/sandboxes", strings.NewReader(`{"image":"`+ref+`"}`), &info); code != 201 {
		t.Fatalf("create: %d", code)
	}
	base, err := images.Resolve(ref)
	if err != nil {
		t.Fatal(err)
	}
	if info.Image != ref || info.ImageID != base.ID {
		t.Errorf("info: got image %q id %q, want %q and %s", info.Image, info.ImageID, ref, base.ID)
	}
	if r := a.exec(info.ID, "sh", "-c", "echo from-a > /workspace/a.txt && mkdir -p /workspace/tool && echo t > /workspace/tool/x"); r.ExitCode != 0 {
		t.Fatalf("write in A: %+v", r)
	}
	var snap api.ImageInfo
	if code := a.call("POST", "/v1/sandboxes/"+info.ID+"/snapshot", strings.NewReader(`{"name":"e2e/snap:a"}`), &snap); code != 201 {
		t.Fatalf("snapshot: %d %+v", code, snap)
	}
	if len(snap.Layers) != len(base.Layers)+1 || snap.ID == base.ID {
		t.Fatalf("snapshot image: %+v, want the base's layers and one more", snap)
	}
	t.Cleanup(func() { images.Remove(snap.ID) })
	if r := a.exec(info.ID, "cat", "/workspace/a.txt"); r.Stdout != "from-a\n" {
		t.Errorf("A after its snapshot: %+v", r)
	}
	b := a.create(`{"image":"e2e/snap:a"}`)
	if r := a.exec(b, "sh", "-c", "cat /workspace/a.txt /workspace/tool/x"); r.ExitCode != 0 || r.Stdout != "from-a\nt\n" {
		t.Errorf("B of the snapshot: got %q (%q, exit %d), want A's files", r.Stdout, r.Stderr, r.ExitCode)
	}
	var sess api.SessionInfo
	if code := a.call("POST", "/v1/sessions", strings.NewReader(`{"image":"`+snap.ID+`"}`), &sess); code != 201 {
		t.Fatalf("session of the snapshot: %d", code)
	}
	var cell api.RunResult
	if code := a.call("POST", "/v1/sessions/"+sess.ID+"/run", strings.NewReader(`{"code":"print(open('/workspace/a.txt').read().strip())"}`), &cell); code != 200 || strings.TrimSpace(cell.Stdout) != "from-a" {
		t.Errorf("session of the snapshot: %d %+v", code, cell)
	}
	c := a.create(`{"image":"` + ref + `"}`)
	if r := a.exec(c, "sh", "-c", "test -e /workspace/a.txt || test -e /workspace/tool/x || echo absent"); r.Stdout != "absent\n" {
		t.Errorf("C of the base image sees A's files: %+v", r)
	}
	// The SDK's Snapshot and `airlock sandbox snapshot` take the same route: B's own file goes
	// into an image of B's, named by the CLI, which a fourth sandbox then starts from.
	if r := a.exec(b, "sh", "-c", "echo from-b > /workspace/b.txt"); r.ExitCode != 0 {
		t.Fatalf("write in B: %+v", r)
	}
	sb, err := airlock.New(a.url, "").Sandbox(t.Context(), b)
	if err != nil {
		t.Fatal(err)
	}
	sdkSnap, err := sb.Snapshot(t.Context(), "")
	if err != nil || len(sdkSnap.Layers) != len(snap.Layers)+1 || len(sdkSnap.Names) != 0 {
		t.Fatalf("SDK snapshot of B: %+v %v, want an unnamed image one layer above A's", sdkSnap, err)
	}
	t.Cleanup(func() { images.Remove(sdkSnap.ID) })
	out, errOut, code := runCLI(t, "", "sandbox --server "+a.url+" snapshot --name e2e/snap:b "+b)
	if code != 0 || !strings.HasPrefix(out, "sha256:") || !strings.Contains(out, "e2e/snap:b") {
		t.Fatalf("airlock sandbox snapshot: exit %d stdout %q stderr %q, want the new image's id and name", code, out, errOut)
	}
	t.Cleanup(func() { images.Remove(strings.Fields(out)[0]) })
	d := a.create(`{"image":"e2e/snap:b"}`)
	if r := a.exec(d, "cat", "/workspace/a.txt", "/workspace/b.txt"); r.Stdout != "from-a\nfrom-b\n" {
		t.Errorf("a sandbox of the CLI's snapshot: %+v, want A's and B's files", r)
	}
	if _, errOut, code := runCLI(t, "", "sandbox --server "+a.url+" snapshot sb-nosuch"); code == 0 || !strings.Contains(errOut, "sb-nosuch") {
		t.Errorf("snapshot of a missing sandbox: exit %d stderr %q, want a failure naming it", code, errOut)
	}
	host := a.create(`{}`)
	var eb api.ErrorBody
	if code := a.call("POST", "/v1/sandboxes/"+host+"/snapshot", nil, &eb); code != 400 || !strings.Contains(eb.Error.Message, "host image") {
		t.Errorf("snapshot of a host sandbox: %d %+v, want 400 about the host image", code, eb)
	}
}

// TestImageWritableLayerCap: filling an image sandbox's writable layer gives ENOSPC in exec,
// the files API answers 413 for a write that hits it, and the sandbox keeps working.
func TestImageWritableLayerCap(t *testing.T) {
	ref := pythonImage(t)
	a := newAPIServer(t, engine.Config{Images: image.EngineImages(images), ScratchBytes: 16 << 20})
	id := a.create(`{"image":"` + ref + `"}`)
	r := a.exec(id, "sh", "-c", "dd if=/dev/zero of=/workspace/big bs=1M count=64")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "No space left on device") {
		t.Fatalf("dd past the cap: exit %d stderr %q, want ENOSPC", r.ExitCode, r.Stderr)
	}
	var eb api.ErrorBody
	code := a.call("PUT", "/v1/sandboxes/"+id+"/files?path=/workspace/more", strings.NewReader(strings.Repeat("y", 4<<20)), &eb)
	if code != 413 || eb.Error.Code != api.CodeTooLarge || !strings.Contains(eb.Error.Message, "disk is full") {
		t.Errorf("PUT into a full layer: %d %+v, want 413 too_large saying the disk is full", code, eb)
	}
	if r := a.exec(id, "echo", "ok"); r.ExitCode != 0 || r.Stdout != "ok\n" {
		t.Errorf("after filling the layer: %+v", r)
	}
	if r := a.exec(id, "sh", "-c", "rm /workspace/big && echo freed > /workspace/f && cat /workspace/f"); r.Stdout != "freed\n" {
		t.Errorf("after freeing: %+v", r)
	}
}

// BenchmarkImagePulledCreate measures a long-lived sandbox's create, first exec and terminate
// through the engine, paired in one loop: the host image against the pulled image (resolved
// and leased through the store, an overlay of its layer and an ext4 writable layer).
func BenchmarkImagePulledCreate(b *testing.B) {
	ref := pythonImage(b)
	e := mustEngine(b)
	once := func(image string) time.Duration {
		t0 := time.Now()
		sb, err := e.CreateSandbox(b.Context(), engine.SandboxSpec{Image: image})
		if err != nil {
			b.Fatal(err)
		}
		// Ended however the benchmark ends: the engine outlives it.
		defer e.TerminateSandbox(context.Background(), sb.ID())
		if _, err := sb.Exec(b.Context(), engine.ExecSpec{Cmd: []string{"true"}}, func(engine.Event) {}); err != nil {
			b.Fatal(err)
		}
		if _, err := e.TerminateSandbox(b.Context(), sb.ID()); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	var host, pulled []time.Duration
	for b.Loop() {
		host = append(host, once("host"))
		pulled = append(pulled, once(ref))
	}
	b.ReportMetric(ms(pct(host, 50)), "host-p50-ms")
	b.ReportMetric(ms(pct(pulled, 50)), "pulled-p50-ms")
	b.ReportMetric(ms(pct(host, 90)), "host-p90-ms")
	b.ReportMetric(ms(pct(pulled, 90)), "pulled-p90-ms")
	b.ReportMetric(float64(pct(pulled, 50))/float64(pct(host, 50)), "ratio")
}
