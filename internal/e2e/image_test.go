package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/agentclient"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/testutil"
)

// imageLayers builds a two-layer image by hand, in overlayfs format, as the image store unpacks
// one: a lower layer with busybox (static) as the tools, and an upper layer that whites out a
// file, makes a directory opaque and adds a tool directory for PATH.
func imageLayers(t testing.TB) []string {
	t.Helper()
	testutil.MustHaveFile(t, "/bin/busybox", "busybox-static")
	base := t.TempDir()
	lower, upper := filepath.Join(base, "l0"), filepath.Join(base, "l1")
	write := func(p, content string, mode os.FileMode, uid int) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(lower, "bin/busybox"), string(b), 0o755, 0)
	for _, tool := range []string{"sh", "cat", "echo", "ls", "dd", "stat", "id", "rm", "touch", "mkdir", "whoami", "env", "df", "true", "ln"} {
		if err := os.Symlink("busybox", filepath.Join(lower, "bin", tool)); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(lower, "etc/os-release"), "ID=handmade\n", 0o644, 0)
	write(filepath.Join(lower, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n", 0o644, 0)
	write(filepath.Join(lower, "usr/share/secret.txt"), "image root's\n", 0o644, 0)
	write(filepath.Join(lower, "data/hidden.txt"), "whited out\n", 0o644, 0)
	write(filepath.Join(lower, "data/kept.txt"), "kept\n", 0o644, 0)
	write(filepath.Join(lower, "opq/old.txt"), "hidden by opaque\n", 0o644, 0)
	write(filepath.Join(lower, "workspace/img.txt"), "from the image\n", 0o644, 1000)
	if err := os.Chown(filepath.Join(lower, "workspace"), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(upper, "opq/new.txt"), "upper\n", 0o644, 0)
	if err := unix.Setxattr(filepath.Join(upper, "opq"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(upper, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(upper, "data/hidden.txt"), unix.S_IFCHR|0o000, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(upper, "opt/tool/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(upper, "opt/tool/bin/tool-echo"), "#!/bin/sh\necho \"$@\"\n", 0o755, 0)
	return []string{lower, upper}
}

func imageSandbox(t *testing.T, id string, layers []string, disk int64) *native.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	sb, err := rt.Create(ctx, native.Spec{ID: id, MemoryBytes: 256 << 20, Pids: 64, ScratchBytes: disk, NoFile: 256,
		Image: &native.ImageRoot{Layers: layers, Env: []string{"PATH=/opt/tool/bin:/bin", "IMAGE_VAR=yes", "HOME=/root"}}})
	if err != nil {
		t.Fatalf("create image sandbox: %v", err)
	}
	t.Cleanup(func() { sb.Destroy(context.Background()) })
	return sb
}

// sh runs script with the image's sh as the sandbox user and returns stdout, stderr, exit code.
func sh(t testing.TB, sb *native.Sandbox, script string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	end, err := sb.Agent().Exec(ctx, agentclient.Process{Cmd: "/bin/sh", Args: []string{"-c", script},
		Timeout: 20 * time.Second, OutputLimit: 1 << 20}, func(e agentclient.Event) {
		out.Write(e.Stdout)
		errb.Write(e.Stderr)
	})
	if err != nil {
		t.Fatalf("exec %q: %v", script, err)
	}
	return strings.TrimSpace(out.String()), strings.TrimSpace(errb.String()), end.ExitCode
}

// TestImageSandboxRoot: a sandbox of a hand-made two-layer image sees the merged tree with the
// whiteout and opaque directory applied, the image's root owns the image's files (and the
// sandbox user cannot write them), the contract holds (user, HOME, writable /workspace and
// /tmp, passwd naming the sandbox user) and PATH comes from the image.
func TestImageSandboxRoot(t *testing.T) {
	mustEngine(t)
	layers := imageLayers(t)
	sb := imageSandbox(t, "img-root", layers, 32<<20)
	for _, tt := range []struct {
		name, script, want string
	}{
		{"lower file", "cat /etc/os-release", "ID=handmade"},
		{"whiteout hides", "ls /data", "kept.txt"},
		{"opaque directory", "ls /opq", "new.txt"},
		{"image root owns image files", "stat -c %u:%g /usr/share/secret.txt /bin/busybox", "0:0\n0:0"},
		{"image uid 1000 is the sandbox user", "stat -c %u /workspace/img.txt", "1000"},
		{"sandbox user", "id -u; id -g; whoami", "1000\n1000\nsandbox"},
		{"PATH from the image", "echo $PATH; tool-echo hi", "/opt/tool/bin:/bin\nhi"},
		{"image env, contract's HOME", "echo $IMAGE_VAR $HOME $LANG", "yes /workspace C.UTF-8"},
		{"workspace and tmp writable", "echo a > /workspace/a && echo b > /tmp/b && cat /workspace/a /tmp/b", "a\nb"},
		{"hostname", "cat /etc/hostname", "sandbox"},
		{"proc is the sandbox's", "cat /proc/1/comm | grep -c .", "1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, stderr, code := sh(t, sb, tt.script)
			if code != 0 || out != tt.want {
				t.Errorf("got %q (exit %d, stderr %q), want %q", out, code, stderr, tt.want)
			}
		})
	}
	for _, tt := range []struct{ name, script string }{
		{"append to an image-root file", "echo x >> /usr/share/secret.txt"},
		{"create in an image-root directory", "touch /usr/share/new"},
		{"create at the root", "touch /newfile"},
		{"remove an image-root file", "rm -f /etc/os-release"},
		{"write the contract's passwd", "echo evil >> /etc/passwd"},
	} {
		t.Run("refused: "+tt.name, func(t *testing.T) {
			if out, stderr, code := sh(t, sb, tt.script); code == 0 {
				t.Errorf("succeeded (%q, %q): the sandbox user wrote where the image does not let it", out, stderr)
			}
		})
	}
}

// TestImageSandboxIsolation: writes through the overlay never reach the image's layer
// directories on the host, and a second sandbox of the same image sees none of the first's.
func TestImageSandboxIsolation(t *testing.T) {
	mustEngine(t)
	layers := imageLayers(t)
	a := imageSandbox(t, "img-iso-a", layers, 32<<20)
	b := imageSandbox(t, "img-iso-b", layers, 32<<20)
	script := "echo changed > /workspace/img.txt && rm /workspace/img.txt && echo mine > /workspace/a-only && echo t > /tmp/a-tmp"
	if out, stderr, code := sh(t, a, script); code != 0 {
		t.Fatalf("writes in sandbox a: exit %d (%q, %q)", code, out, stderr)
	}
	got, err := os.ReadFile(filepath.Join(layers[0], "workspace/img.txt"))
	if err != nil || string(got) != "from the image\n" {
		t.Errorf("the host's layer file after sandbox a changed and removed it: %q, %v", got, err)
	}
	for _, l := range layers {
		if _, err := os.Lstat(filepath.Join(l, "workspace/a-only")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("sandbox a's file reached layer %s: %v", l, err)
		}
	}
	out, _, _ := sh(t, b, "cat /workspace/img.txt; ls /workspace; ls /tmp")
	if want := "from the image\nimg.txt"; out != want {
		t.Errorf("sandbox b sees %q, want %q (none of a's writes)", out, want)
	}
}

// TestImageSandboxDiskCap fills the writable layer: the write fails with a disk-full error, the
// sandbox keeps working, the daemon-side usage stays at the cap, and destroy frees it all.
func TestImageSandboxDiskCap(t *testing.T) {
	mustEngine(t)
	const disk = 16 << 20
	sb := imageSandbox(t, "img-cap", imageLayers(t), disk)
	out, stderr, code := sh(t, sb, "dd if=/dev/zero of=/workspace/big bs=1M count=64")
	if code == 0 {
		t.Fatalf("writing 64 MiB into a 16 MiB layer succeeded: %q", out)
	}
	t.Logf("dd over the cap: %s", stderr)
	if !strings.Contains(stderr, "No space left on device") && !strings.Contains(stderr, "Disk quota exceeded") {
		t.Errorf("dd failed with %q, want a disk-full error", stderr)
	}
	if out, _, code := sh(t, sb, "echo ok"); code != 0 || out != "ok" {
		t.Errorf("after filling the layer: echo ok gave %q, exit %d", out, code)
	}
	used, err := sb.DiskUsage()
	if err != nil {
		t.Fatal(err)
	}
	if used > disk || used < disk/2 {
		t.Errorf("daemon-side usage %d bytes after filling a %d-byte layer", used, disk)
	}
	// Space freed inside is usable again.
	if out, stderr, code := sh(t, sb, "rm /workspace/big && dd if=/dev/zero of=/tmp/small bs=1M count=4 2>/dev/null && echo ok"); code != 0 || out != "ok" {
		t.Errorf("after freeing: %q %q exit %d", out, stderr, code)
	}
	if err := sb.Destroy(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "layers", "img-cap")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("writable layer after destroy: %v", err)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "rootfs", "img-cap")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("root mount point after destroy: %v", err)
	}
}

// TestImageSnapshot: files written and an image file deleted are in the snapshot tar as the
// files and a whiteout, owned by the image's uids; nothing of the lower layers is.
func TestImageSnapshot(t *testing.T) {
	mustEngine(t)
	sb := imageSandbox(t, "img-snap", imageLayers(t), 32<<20)
	script := "mkdir -p /workspace/d && echo new > /workspace/d/new.txt && rm /workspace/img.txt && ln -s d/new.txt /workspace/link"
	if out, stderr, code := sh(t, sb, script); code != 0 {
		t.Fatalf("exit %d (%q, %q)", code, out, stderr)
	}
	var buf bytes.Buffer
	if err := sb.Snapshot(t.Context(), &buf); err != nil {
		t.Fatal(err)
	}
	entries := map[string]*tar.Header{}
	contents := map[string]string{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		entries[h.Name] = h
		b, _ := io.ReadAll(tr)
		contents[h.Name] = string(b)
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	slices.Sort(names)
	t.Logf("snapshot: %v", names)
	if h := entries["workspace/d/new.txt"]; h == nil || contents["workspace/d/new.txt"] != "new\n" || h.Uid != 1000 || h.Gid != 1000 {
		t.Errorf("written file: %+v %q", h, contents["workspace/d/new.txt"])
	}
	if h := entries["workspace/.wh.img.txt"]; h == nil || h.Typeflag != tar.TypeReg {
		t.Errorf("no whiteout for the deleted image file: %+v", h)
	}
	if h := entries["workspace/link"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "d/new.txt" {
		t.Errorf("symlink: %+v", h)
	}
	for _, n := range []string{"bin/busybox", "etc/os-release", "data/kept.txt", "etc/hosts", "etc/passwd"} {
		if entries[n] != nil {
			t.Errorf("lower-layer file %s in the snapshot", n)
		}
	}
}

// TestImageCreateFailureUndoes: an image sandbox whose init never serves fails Create and
// leaves no writable layer or root mount behind.
func TestImageCreateFailureUndoes(t *testing.T) {
	testutil.MustHaveRoot(t)
	mustEngine(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	_, err := rt.Create(ctx, native.Spec{ID: "img-bad", MemoryBytes: 64 << 20, Pids: 16,
		Image: &native.ImageRoot{Layers: []string{"/nonexistent-layer"}}})
	if err == nil {
		t.Fatal("Create with a missing layer succeeded")
	}
	for _, d := range []string{"layers", "rootfs", "sandboxes"} {
		if _, err := os.Stat(filepath.Join(stateDir, d, "img-bad")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s/img-bad left behind: %v", d, err)
		}
	}
}

// TestImageSandboxRecovery: a runtime that goes away leaving image sandboxes alive finds a live
// one again with its root (and its writable layer, for snapshots) and removes what a dead
// one left (its writable layer's file and mount), and whatever a crashed create left.
func TestImageSandboxRecovery(t *testing.T) {
	mustEngine(t)
	layers := imageLayers(t)
	state, err := os.MkdirTemp("", "airlock-e2e-imgrec-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	if err := os.Chmod(state, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := native.Config{StateDir: state, CgroupRoot: "airlock-e2e-imgrec-" + filepath.Base(state)}
	rt1, err := native.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	spec := func(id string) native.Spec {
		return native.Spec{ID: id, MemoryBytes: 128 << 20, Pids: 32, ScratchBytes: 16 << 20,
			Image: &native.ImageRoot{Layers: layers, Env: []string{"PATH=/bin"}}}
	}
	live, err := rt1.Create(ctx, spec("rec-live"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { live.Destroy(context.Background()) })
	dead, err := rt1.Create(ctx, spec("rec-dead"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dead.Destroy(context.Background()) })
	if out, stderr, code := sh(t, live, "echo kept > /workspace/f"); code != 0 {
		t.Fatalf("write: %q %q", out, stderr)
	}
	rt1.Close() // sandboxes are alive: the runtime lets go of the state directory and leaves them
	if err := unix.Kill(dead.Pid(), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-dead.Done()
	// And the remains of a create that crashed before it wrote any state.
	for _, p := range []string{"layers/orphan", "layers/orphan.lower/0", "rootfs/orphan"} {
		if err := os.MkdirAll(filepath.Join(state, p), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(state, "layers/orphan.img"), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	rt2, err := native.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt2.Close() })
	found, err := rt2.Recover(ctx)
	if err != nil {
		t.Errorf("recover: %v", err)
	}
	if len(found) != 1 || found[0].Sandbox.ID() != "rec-live" {
		t.Fatalf("recovered %v, want rec-live alone", found)
	}
	sb := found[0].Sandbox
	if out, stderr, code := sh(t, sb, "cat /workspace/f; cat /etc/os-release"); code != 0 || out != "kept\nID=handmade" {
		t.Errorf("recovered sandbox's root: %q %q exit %d", out, stderr, code)
	}
	var buf bytes.Buffer
	if err := sb.Snapshot(ctx, &buf); err != nil || !bytes.Contains(buf.Bytes(), []byte("kept\n")) {
		t.Errorf("snapshot of the recovered sandbox: %v (has the file: %v)", err, bytes.Contains(buf.Bytes(), []byte("kept\n")))
	}
	for _, p := range []string{"layers/rec-dead.img", "layers/rec-dead", "rootfs/rec-dead",
		"layers/orphan", "layers/orphan.img", "layers/orphan.lower", "rootfs/orphan"} {
		if _, err := os.Lstat(filepath.Join(state, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s of the dead sandbox after recovery: %v", p, err)
		}
	}
	if err := sb.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(state, "layers/rec-live.img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("writable layer after destroying the recovered sandbox: %v", err)
	}
}

// BenchmarkImageCreate: create a sandbox, run `true` in it, destroy it — the host image and a
// two-layer image sandbox (overlay, 1 GiB writable layer) alternately in one loop, so that both
// see the same machine; reports each one's p50 and the image's over the host's.
func BenchmarkImageCreate(b *testing.B) {
	mustEngine(b)
	layers := imageLayers(b)
	var host, image []time.Duration
	once := func(i int, im *native.ImageRoot) time.Duration {
		t0 := time.Now()
		sb, err := rt.Create(b.Context(), native.Spec{ID: fmt.Sprintf("bench-img-%d", i), MemoryBytes: 256 << 20,
			Pids: 64, ScratchBytes: 1 << 30, Image: im})
		if err != nil {
			b.Fatal(err)
		}
		// Destroyed however the benchmark ends: the runtime outlives it.
		defer sb.Destroy(context.Background())
		if _, err := sb.Agent().Exec(b.Context(), agentclient.Process{Cmd: "/bin/true", Timeout: 10 * time.Second},
			func(agentclient.Event) {}); err != nil {
			b.Fatal(err)
		}
		if err := sb.Destroy(b.Context()); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	i := 0
	for b.Loop() {
		host = append(host, once(i, nil))
		image = append(image, once(i+1, &native.ImageRoot{Layers: layers, Env: []string{"PATH=/bin"}}))
		i += 2
	}
	b.ReportMetric(ms(pct(host, 50)), "host-p50-ms")
	b.ReportMetric(ms(pct(image, 50)), "image-p50-ms")
	b.ReportMetric(float64(pct(image, 50))/float64(pct(host, 50)), "ratio")
}
