package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/testutil"
)

// entry is one tar entry of a test layer.
type entry struct {
	name, link string
	typ        byte
	mode       int64
	body       string
	uid, gid   int
	major      int64
	pax        map[string]string
}

func layerTar(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Devmajor: e.major, ModTime: time.Unix(1700000000, 0), PAXRecords: e.pax}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func newStore(t testing.TB, cfg Config) *Store {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(t.TempDir(), "images")
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// escapeName is a name no test writes on purpose: finding it anywhere but inside the layer
// means an entry escaped.
const escapeName = "airlock-escape-probe"

// assertNoEscape fails if escapeName exists anywhere under root (but inside the layer dir
// allowed) or in the host's /etc and /.
func assertNoEscape(t *testing.T, root, allowed string) {
	t.Helper()
	for _, p := range []string{"/etc/" + escapeName, "/" + escapeName, "/tmp/" + escapeName} {
		if _, err := os.Lstat(p); err == nil {
			os.Remove(p)
			t.Errorf("%s was written on the host", p)
		}
	}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), escapeName) && (allowed == "" || !strings.HasPrefix(p, allowed+"/")) {
			t.Errorf("%s was written outside the layer", p)
		}
		return nil
	})
}

func TestUnpackHostile(t *testing.T) {
	testutil.MustHaveRoot(t) // whiteouts are device nodes, opaque markers trusted xattrs
	tests := []struct {
		name    string
		entries []entry
		wantErr error // nil: the layer is accepted
	}{
		{"dotdot", []entry{{name: "../../etc/" + escapeName, body: "x"}}, ErrHostileLayer},
		{"dotdot inside a path", []entry{{name: "a/../../../" + escapeName, body: "x"}}, ErrHostileLayer},
		{"absolute is relative to the layer", []entry{{name: "/" + escapeName, body: "x"}}, nil},
		{"symlink to /etc then a file through it", []entry{
			{name: "etc", typ: tar.TypeSymlink, link: "/etc"},
			{name: "etc/" + escapeName, body: "x"}}, ErrHostileLayer},
		{"relative symlink out then a file through it", []entry{
			{name: "up", typ: tar.TypeSymlink, link: "../../../../../../../../tmp"},
			{name: "up/" + escapeName, body: "x"}}, ErrHostileLayer},
		{"symlink to a dir inside then a file through it", []entry{
			{name: "d", typ: tar.TypeDir, mode: 0o755},
			{name: "in", typ: tar.TypeSymlink, link: "d"},
			{name: "in/" + escapeName, body: "x"}}, ErrHostileLayer},
		{"hard link to /etc/shadow", []entry{{name: escapeName, typ: tar.TypeLink, link: "/etc/shadow"}}, ErrHostileLayer},
		{"hard link outside", []entry{{name: escapeName, typ: tar.TypeLink, link: "../../../etc/passwd"}}, ErrHostileLayer},
		{"hard link through a symlink", []entry{
			{name: "etc", typ: tar.TypeSymlink, link: "/etc"},
			{name: escapeName, typ: tar.TypeLink, link: "etc/passwd"}}, ErrHostileLayer},
		{"whiteout escaping", []entry{{name: "../.wh." + escapeName}}, ErrHostileLayer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t, Config{})
			img, err := s.Commit(t.Context(), nil, bytes.NewReader(layerTar(t, tt.entries...)), "")
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Commit: got %v, want %v", err, tt.wantErr)
				}
				assertNoEscape(t, filepath.Dir(s.Dir()), "")
				return
			}
			if err != nil {
				t.Fatalf("Commit: %v", err)
			}
			assertNoEscape(t, filepath.Dir(s.Dir()), img.LayerDirs()[0])
		})
	}
}

func TestUnpackFormat(t *testing.T) {
	testutil.MustHaveRoot(t)
	s := newStore(t, Config{})
	tr := layerTar(t,
		entry{name: "bin/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "bin/su", mode: 0o4755, body: "suid", uid: 0},
		entry{name: "bin/sg", mode: 0o2755, body: "sgid"},
		entry{name: "bin/sticky", mode: 0o1644, body: "sticky"},
		entry{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
		entry{name: "sgdir/", typ: tar.TypeDir, mode: 0o2775},
		entry{name: "home/u/f", mode: 0o600, body: "mine", uid: 1234, gid: 5678},
		entry{name: "home/u/ln", typ: tar.TypeSymlink, link: "/etc/passwd", uid: 1234, gid: 5678},
		entry{name: "home/u/hard", typ: tar.TypeLink, link: "home/u/f"},
		entry{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1},
		entry{name: "dev/fifo", typ: tar.TypeFifo, mode: 0o666},
		entry{name: "dev/sda", typ: tar.TypeBlock, mode: 0o666, major: 8},
		entry{name: "etc/.wh.removed"},
		entry{name: "opt/app/.wh..wh..opq"},
		entry{name: "var/", typ: tar.TypeDir, mode: 0o755, pax: map[string]string{paxOpaque: "y"}},
		entry{name: "unknown", typ: 'Z'},
		entry{name: "bin/su", mode: 0o4755, body: "later entry wins"},
	)
	img, err := s.Commit(t.Context(), nil, bytes.NewReader(tr), "fmt:test")
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	root := img.LayerDirs()[0]
	modes := map[string]fs.FileMode{
		"bin/su": 0o755, "bin/sg": 0o755, "bin/sticky": 0o644, "tmp": fs.ModeDir | fs.ModeSticky | 0o777,
		"sgdir": fs.ModeDir | 0o775, "home/u/f": 0o600, "home/u/ln": fs.ModeSymlink | 0o777,
	}
	for p, want := range modes {
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if got := fi.Mode(); got != want {
			t.Errorf("%s: mode %v, want %v", p, got, want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "bin/su")); string(b) != "later entry wins" {
		t.Errorf("bin/su holds %q, want the later entry's content", b)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(root, "home/u/ln"), &st); err != nil || st.Uid != 1234 || st.Gid != 5678 {
		t.Errorf("home/u/ln: owner %d:%d (%v), want 1234:5678", st.Uid, st.Gid, err)
	}
	if err := unix.Lstat(filepath.Join(root, "home/u/f"), &st); err != nil || st.Uid != 1234 || st.Gid != 5678 || st.Nlink != 2 {
		t.Errorf("home/u/f: owner %d:%d links %d (%v), want 1234:5678 with 2 links", st.Uid, st.Gid, st.Nlink, err)
	}
	if l, err := os.Readlink(filepath.Join(root, "home/u/ln")); err != nil || l != "/etc/passwd" {
		t.Errorf("home/u/ln -> %q (%v), want /etc/passwd kept as it is", l, err)
	}
	for _, p := range []string{"dev/null", "dev/fifo", "dev/sda", "unknown"} {
		if _, err := os.Lstat(filepath.Join(root, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: got %v, want it dropped", p, err)
		}
	}
	if err := unix.Lstat(filepath.Join(root, "etc/removed"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("etc/removed: mode %o rdev %d (%v), want an overlay whiteout (char 0:0)", st.Mode, st.Rdev, err)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/.wh.removed")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the OCI whiteout file itself is present: %v", err)
	}
	for _, p := range []string{"opt/app", "var"} {
		buf := make([]byte, 8)
		n, err := unix.Lgetxattr(filepath.Join(root, p), opaqueXattr, buf)
		if err != nil || string(buf[:n]) != "y" {
			t.Errorf("%s: %s=%q (%v), want y", p, opaqueXattr, buf[:max(n, 0)], err)
		}
	}
	if _, err := os.Lstat(filepath.Join(root, "opt/app/.wh..wh..opq")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the opaque marker itself is present: %v", err)
	}
}

// zeros is a reader of n zero bytes.
type zeros int64

func (z *zeros) Read(p []byte) (int, error) {
	if *z <= 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)), int64(*z))
	clear(p[:n])
	*z -= zeros(n)
	return int(n), nil
}

// gzipBomb is a gzip'd layer whose one file is size zero bytes: small compressed, huge unpacked.
func gzipBomb(t testing.TB, size int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: "bomb", Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	z := zeros(size)
	if _, err := io.Copy(tw, &z); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func TestUnpackLimits(t *testing.T) {
	testutil.MustHaveRoot(t)
	many := make([]entry, 50)
	for i := range many {
		many[i] = entry{name: "f" + strings.Repeat("x", i), body: ""}
	}
	tests := []struct {
		name  string
		cfg   Config
		layer []byte
	}{
		{"gzip bomb", Config{MaxLayerBytes: 1 << 20}, gzipBomb(t, 256<<20)},
		{"too many files", Config{MaxLayerFiles: 10}, layerTar(t, many...)},
		{"path too long", Config{MaxPathLen: 100}, layerTar(t, entry{name: strings.Repeat("a/", 60) + "f"})},
		{"link target too long", Config{}, layerTar(t, entry{name: "big", typ: tar.TypeSymlink, link: strings.Repeat("l", 5000)})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t, tt.cfg)
			t.Logf("layer: %d bytes", len(tt.layer))
			_, err := s.Commit(t.Context(), nil, bytes.NewReader(tt.layer), "")
			if !errors.Is(err, ErrLayerLimit) {
				t.Fatalf("Commit: got %v, want ErrLayerLimit", err)
			}
			t.Logf("refused: %v", err)
			if n := diskUsage(s.Dir()); n > 4<<20 {
				t.Errorf("the refused layer left %d bytes in the store", n)
			}
		})
	}
}
