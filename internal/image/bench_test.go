package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/airlockhq/airlock/internal/testutil"
)

// benchTree is the host directory the benchmarks' image is made of: a typical small image's
// worth of files (AIRLOCK_BENCH_TREE overrides).
func benchTree(b *testing.B) string {
	if d := os.Getenv("AIRLOCK_BENCH_TREE"); d != "" {
		return d
	}
	for _, d := range []string{"/usr/lib/python3.11", "/usr/lib/python3", "/usr/share/perl"} {
		if _, err := os.Stat(d); err == nil {
			return d
		}
	}
	b.Skip("no host tree to build an image of")
	return ""
}

// treeTar tars dir (regular files, directories and symlinks); it returns the tar and the bytes
// of file content in it.
func treeTar(b *testing.B, dir string) ([]byte, int64) {
	b.Helper()
	var buf bytes.Buffer
	var content int64
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			link, _ = os.Readlink(p)
		} else if !fi.Mode().IsRegular() && !fi.IsDir() {
			return nil
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(filepath.Dir(dir), p)
		h.Name = rel
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			n, err := io.Copy(tw, f)
			content += n
			return err
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	tw.Close()
	return buf.Bytes(), content
}

func gzipped(b *testing.B, p []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(p)
	zw.Close()
	return buf.Bytes()
}

// BenchmarkUnpack measures the unpack rate of a gzip'd layer (MB/s of file content).
func BenchmarkUnpack(b *testing.B) {
	testutil.MustHaveRoot(b)
	raw, content := treeTar(b, benchTree(b))
	gz := gzipped(b, raw)
	b.Logf("layer: %d bytes of files, tar %d, gzip %d", content, len(raw), len(gz))
	b.SetBytes(content)
	for b.Loop() {
		b.StopTimer()
		s := newStore(b, Config{})
		b.StartTimer()
		if _, err := s.Commit(b.Context(), nil, bytes.NewReader(gz), ""); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPullImport measures a pull from a registry on 127.0.0.1 and an import of the same
// image as a docker-save tarball, each into an empty store.
func BenchmarkPullImport(b *testing.B) {
	testutil.MustHaveRoot(b)
	raw, content := treeTar(b, benchTree(b))
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
	if err != nil {
		b.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		b.Fatal(err)
	}
	ref := newRegistry(b, "").push(b, "bench/app:v1", img, nil)
	save := filepath.Join(b.TempDir(), "save.tar")
	tag, _ := name.NewTag("bench/app:v1")
	if err := tarball.WriteToFile(save, tag, img); err != nil {
		b.Fatal(err)
	}
	b.Run("pull", func(b *testing.B) {
		b.SetBytes(content)
		for b.Loop() {
			b.StopTimer()
			s := newStore(b, Config{})
			b.StartTimer()
			if _, err := s.Pull(b.Context(), ref, PullOptions{Insecure: true}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("import", func(b *testing.B) {
		b.SetBytes(content)
		for b.Loop() {
			b.StopTimer()
			s := newStore(b, Config{})
			b.StartTimer()
			if _, err := s.Import(b.Context(), save); err != nil {
				b.Fatal(err)
			}
		}
	})
}
