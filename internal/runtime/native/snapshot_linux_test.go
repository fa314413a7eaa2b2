package native

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/testutil"
)

// upperSandbox is a Sandbox whose writable layer is a hand-made upper directory, as overlayfs
// leaves one: Snapshot reads nothing else.
func upperSandbox(t *testing.T, owner int) (*Sandbox, string) {
	t.Helper()
	dir := t.TempDir()
	upper := filepath.Join(dir, "upper")
	if err := os.Mkdir(upper, 0o755); err != nil {
		t.Fatal(err)
	}
	return &Sandbox{image: &sandboxImage{w: writable{upper: upper}, owner: owner}}, upper
}

func readTar(t *testing.T, b []byte) (map[string]*tar.Header, map[string]string) {
	t.Helper()
	hdrs, bodies := map[string]*tar.Header{}, map[string]string{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, bodies
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		hdrs[h.Name], bodies[h.Name] = h, string(body)
	}
}

// TestSnapshotUpperLayer: whiteouts, opaque directories, symlinks, hard links, ownership mapped
// back to the image's uids, setuid dropped, FIFOs and the contract's /etc mount points left out.
func TestSnapshotUpperLayer(t *testing.T) {
	testutil.MustHaveRoot(t)
	const owner = 3000000
	sb, upper := upperSandbox(t, owner)
	mk := func(rel, body string, mode os.FileMode, uid int) {
		t.Helper()
		p := filepath.Join(upper, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	mk("workspace/a.txt", "a\n", 0o644, owner+1000)
	mk("usr/bin/tool", "#!/bin/sh\n", 0o4755, owner)
	mk("etc/passwd", "", 0o644, owner)
	mk("etc/app.conf", "conf\n", 0o644, owner)
	if err := unix.Mknod(filepath.Join(upper, "workspace/gone.txt"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(upper, "opq"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(upper, "opq"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../etc/shadow", filepath.Join(upper, "workspace/link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(upper, "workspace/a.txt"), filepath.Join(upper, "workspace/b.txt")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(upper, "workspace/fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := sb.Snapshot(t.Context(), &buf); err != nil {
		t.Fatal(err)
	}
	hdrs, bodies := readTar(t, buf.Bytes())
	for _, tt := range []struct {
		name     string
		typ      byte
		uid      int
		mode     int64
		body     string
		linkname string
	}{
		{"workspace/", tar.TypeDir, 0, 0o755, "", ""},
		{"workspace/a.txt", tar.TypeReg, 1000, 0o644, "a\n", ""},
		{"workspace/b.txt", tar.TypeLink, 1000, 0o644, "", "workspace/a.txt"},
		{"workspace/.wh.gone.txt", tar.TypeReg, 0, 0o644, "", ""},
		{"workspace/link", tar.TypeSymlink, 0, 0o777, "", "../etc/shadow"},
		{"opq/.wh..wh..opq", tar.TypeReg, 0, 0o644, "", ""},
		{"usr/bin/tool", tar.TypeReg, 0, 0o755, "#!/bin/sh\n", ""},
		{"etc/app.conf", tar.TypeReg, 0, 0o644, "conf\n", ""},
	} {
		h := hdrs[tt.name]
		if h == nil {
			t.Errorf("%s: missing from the snapshot", tt.name)
			continue
		}
		if h.Typeflag != tt.typ || h.Uid != tt.uid || h.Gid != tt.uid || h.Mode != tt.mode || bodies[tt.name] != tt.body || h.Linkname != tt.linkname {
			t.Errorf("%s: got type %c uid %d gid %d mode %o body %q link %q, want type %c uid %d mode %o body %q link %q",
				tt.name, h.Typeflag, h.Uid, h.Gid, h.Mode, bodies[tt.name], h.Linkname, tt.typ, tt.uid, tt.mode, tt.body, tt.linkname)
		}
	}
	for _, n := range []string{"workspace/fifo", "workspace/gone.txt", "etc/passwd"} {
		if hdrs[n] != nil {
			t.Errorf("%s is in the snapshot", n)
		}
	}
	if (&Sandbox{}).Snapshot(t.Context(), io.Discard) != ErrNoWritableLayer {
		t.Error("a host-image sandbox's snapshot did not fail with ErrNoWritableLayer")
	}
}

// TestSnapshotSymlinkRace attacks the snapshot as a sandbox would: while it is read, a directory
// and a file of the upper layer are swapped again and again for symlinks to a host secret. The
// snapshot must never contain the secret, whatever the timing.
func TestSnapshotSymlinkRace(t *testing.T) {
	testutil.MustHaveRoot(t)
	sb, upper := upperSandbox(t, 3000000)
	secretDir := t.TempDir()
	const secret = "HOST-SECRET-do-not-snapshot"
	if err := os.WriteFile(filepath.Join(secretDir, "key"), []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	// Each name flips between a regular file and a symlink to the secret (or between a
	// directory and a symlink to the secret's directory), one atomic exchange at a time with
	// its twin kept outside the layer, as fast as it can.
	side := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for i := range 4 {
		file, dir := filepath.Join(upper, fmt.Sprintf("f%d", i)), filepath.Join(upper, fmt.Sprintf("d%d", i))
		fileTwin, dirTwin := filepath.Join(side, fmt.Sprintf("f%d", i)), filepath.Join(side, fmt.Sprintf("d%d", i))
		if err := os.WriteFile(file, []byte("ok"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "key"), []byte("ok"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(secretDir, "key"), fileTwin); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(secretDir, dirTwin); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				unix.Renameat2(unix.AT_FDCWD, file, unix.AT_FDCWD, fileTwin, unix.RENAME_EXCHANGE)
				unix.Renameat2(unix.AT_FDCWD, dir, unix.AT_FDCWD, dirTwin, unix.RENAME_EXCHANGE)
			}
		}()
	}
	for range 1000 {
		var buf bytes.Buffer
		// A file that changes under the reader may fail a snapshot; what was written up to
		// then may never hold the secret either.
		sb.Snapshot(t.Context(), &buf)
		if bytes.Contains(buf.Bytes(), []byte(secret)) {
			cancel()
			wg.Wait()
			t.Fatal("the snapshot contains the host secret reached through a swapped symlink")
		}
	}
	cancel()
	wg.Wait()
}

func TestCheckImage(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		im   ImageRoot
		ok   bool
	}{
		{"one layer", ImageRoot{Layers: []string{dir}, Env: []string{"PATH=/bin"}}, true},
		{"no layers", ImageRoot{}, false},
		{"relative layer", ImageRoot{Layers: []string{"layer"}}, false},
		{"unclean layer", ImageRoot{Layers: []string{dir + "/../" + filepath.Base(dir)}}, false},
		{"overlay separator in a layer", ImageRoot{Layers: []string{dir + ":/etc"}}, false},
		{"missing layer", ImageRoot{Layers: []string{dir + "/missing"}}, false},
		{"file as a layer", ImageRoot{Layers: []string{file}}, false},
		{"env without =", ImageRoot{Layers: []string{dir}, Env: []string{"PATH"}}, false},
		{"too many layers", ImageRoot{Layers: make([]string, maxLayers+1)}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := checkImage(&tt.im); (err == nil) != tt.ok {
				t.Errorf("got %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestDiskBytesAndWorkdir(t *testing.T) {
	for _, tt := range []struct {
		scratch, want int64
	}{{0, defaultDiskBytes}, {1, minDiskBytes}, {64<<20 + 5, 64 << 20}} {
		if got := diskBytes(Spec{ScratchBytes: tt.scratch}); got != tt.want {
			t.Errorf("diskBytes(%d): got %d, want %d", tt.scratch, got, tt.want)
		}
	}
	for _, tt := range []struct {
		spec Spec
		want string
	}{
		{Spec{Image: &ImageRoot{Workdir: "/app"}}, "/app"},
		{Spec{Workdir: "/srv", Image: &ImageRoot{Workdir: "/app"}}, "/srv"},
		{Spec{Image: &ImageRoot{Workdir: "/usr/src"}}, ""},
		{Spec{Image: &ImageRoot{Workdir: "/workspace/x"}}, ""},
		{Spec{Image: &ImageRoot{Workdir: "app"}}, ""},
		{Spec{Workdir: "/srv"}, "/srv"},
	} {
		if got := imageWorkdir(tt.spec); got != tt.want {
			t.Errorf("imageWorkdir(%+v): got %q, want %q", tt.spec, got, tt.want)
		}
	}
}

// TestCopySparse: the copy has the template's content and size, and its holes stay holes.
func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("head"), 0)
	f.WriteAt([]byte("middle"), 64<<20)
	f.Truncate(256 << 20)
	f.Close()
	if err := copySparse(src, dst); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 256<<20 {
		t.Errorf("size %d, want %d", fi.Size(), 256<<20)
	}
	if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > 1<<20 {
		t.Errorf("the copy takes %d bytes of disk: holes were filled", used)
	}
	b := make([]byte, 6)
	g, _ := os.Open(dst)
	defer g.Close()
	if g.ReadAt(b, 64<<20); string(b) != "middle" {
		t.Errorf("content at 64 MiB: %q", b)
	}
}
