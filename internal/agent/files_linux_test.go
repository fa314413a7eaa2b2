package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/testutil"
)

// walkPath lists p to depth as ListDir does, without the pool (the test runs as root).
func walkPath(t *testing.T, p string, depth int) ([]string, error) {
	t.Helper()
	fd, err := openDirAt(unix.AT_FDCWD, p, unix.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	l := &lister{depth: depth}
	err = l.walk(fd, p, 1)
	var paths []string
	for _, e := range l.entries {
		paths = append(paths, strings.TrimPrefix(e.Path, p))
	}
	return paths, err
}

func TestListerStaysOnOrdinaryFiles(t *testing.T) {
	testutil.MustHaveRoot(t)
	dir := t.TempDir()
	for _, d := range []string{"a/b", "c"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	os.WriteFile(filepath.Join(dir, "a/b/f"), []byte("x"), 0o644)
	os.Symlink("/proc/self", filepath.Join(dir, "p"))
	os.Symlink(filepath.Join(dir, "a"), filepath.Join(dir, "c/link"))

	for _, tc := range []struct {
		name  string
		path  string
		depth int
		want  string
		err   error
	}{
		{"depth 1", dir, 1, "/a /c /p", nil},
		{"links below the root are not followed", dir, 3, "/a /a/b /a/b/f /c /c/link /p", nil},
		{"a root link to /proc is refused", filepath.Join(dir, "p"), 1, "", errPseudoFS},
		{"a root link to a directory is followed", filepath.Join(dir, "c/link"), 2, "/b /b/f", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := walkPath(t, tc.path, tc.depth)
			if !errors.Is(err, tc.err) {
				t.Fatalf("got error %v, want %v", err, tc.err)
			}
			if s := strings.Join(got, " "); s != tc.want {
				t.Fatalf("got %q, want %q", s, tc.want)
			}
		})
	}
}

func TestRemoveAtStaysInTheTree(t *testing.T) {
	testutil.MustHaveRoot(t)
	dir := t.TempDir()
	outside := filepath.Join(dir, "outside")
	os.MkdirAll(filepath.Join(dir, "tree/sub/deeper"), 0o755)
	os.MkdirAll(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "keep"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "tree/sub/deeper/f"), nil, 0o644)
	os.Symlink(outside, filepath.Join(dir, "tree/sub/link"))

	fd, err := openDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := removeAt(t.Context(), fd, "tree", true); err != nil {
		t.Fatalf("removeAt: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "tree")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("tree after removal: got %v, want not exist", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Fatalf("a file a symlink in the tree pointed at: got %v, want it kept", err)
	}
}

func TestMkdirAllThroughLinks(t *testing.T) {
	testutil.MustHaveRoot(t)
	dir := t.TempDir()
	os.Symlink("/proc/self", filepath.Join(dir, "p"))
	os.MkdirAll(filepath.Join(dir, "real"), 0o755)
	os.Symlink(filepath.Join(dir, "real"), filepath.Join(dir, "r"))
	for _, tc := range []struct {
		name, path string
		err        error
	}{
		{"new parents", "x/y/z", nil},
		{"through the user's own link", "r/n/m", nil},
		{"into /proc through a link", "p/fd/new", errPseudoFS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd, err := mkdirAll(filepath.Join(dir, tc.path))
			if err == nil {
				unix.Close(fd)
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("got %v, want %v", err, tc.err)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "real/n/m")); err != nil {
		t.Fatalf("directory made through a link: %v", err)
	}
}

// A recursive remove is bounded: it refuses trees deeper than maxRemoveDepth (each level holds a
// descriptor) and stops when its call ends, so user code recreating entries cannot pin a worker.
func TestRemoveAtIsBounded(t *testing.T) {
	testutil.MustHaveRoot(t)
	dir := t.TempDir()
	// MkdirAll on a path this long would pass PATH_MAX: build it level by level.
	cur, err := openDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range maxRemoveDepth + 3 {
		name := "d"
		if i == 0 {
			name = "deep"
		}
		if err := unix.Mkdirat(cur, name, 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(cur, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		unix.Close(cur)
		if err != nil {
			t.Fatal(err)
		}
		cur = next
	}
	unix.Close(cur)
	fd, err := openDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := removeAt(t.Context(), fd, "deep", true); !errors.Is(err, errTooDeep) {
		t.Errorf("remove of a tree %d levels deep: got %v, want %v", maxRemoveDepth+3, err, errTooDeep)
	}
	os.MkdirAll(filepath.Join(dir, "tree/sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "tree/sub/f"), nil, 0o644)
	ctx, cancel := context.WithCancelCause(t.Context())
	cancel(errors.New("caller gone"))
	if err := removeAt(ctx, fd, "tree", true); err == nil || err.Error() != "caller gone" {
		t.Errorf("remove with an ended call: got %v, want its cause", err)
	}
}
