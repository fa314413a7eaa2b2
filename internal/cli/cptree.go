package cli

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
)

// tarDir writes the tree under the local directory dir to w as a tar named relative to dir:
// directories and regular files with their permission bits. Anything else (a symlink, a
// device) is skipped with a note on warn, since the daemon would refuse it.
func tarDir(dir string, w io.Writer, warn io.Writer) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		switch {
		case fi.IsDir():
			return tw.WriteHeader(&tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: int64(fi.Mode().Perm()), ModTime: fi.ModTime()})
		case fi.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: int64(fi.Mode().Perm()), Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			return err
		default:
			fmt.Fprintf(warn, "airlock: skipping %s: only files and directories are copied\n", p)
			return nil
		}
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// untar unpacks the tar read from r (from a sandbox: untrusted) into the local directory dir,
// created if missing. Every name is resolved inside dir through os.Root, so neither a ".." nor
// a symlink the archive made can lead a later entry out of it; absolute names and ".." are
// refused outright, and only files, directories and symlinks are made.
func untar(r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the archive: %w", err)
		}
		if strings.HasPrefix(h.Name, "/") || slices.Contains(strings.Split(h.Name, "/"), "..") {
			return fmt.Errorf("archive entry %q: refusing an absolute name or ..", h.Name)
		}
		name := path.Clean(h.Name)
		if name == "." {
			continue
		}
		mode := fs.FileMode(h.Mode).Perm()
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return err
			}
			if err := root.Chmod(name, mode|0o700); err != nil { // we must still write into it
				return err
			}
		case tar.TypeReg:
			if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
				return err
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("writing %s: %w", name, err)
			}
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, name); err != nil {
				return err
			}
		default:
			return fmt.Errorf("archive entry %q: refusing type %q", h.Name, string(h.Typeflag))
		}
	}
}

// copyTree is cp -r: a directory tree as a tar stream between src and dst, each a local
// directory, "-" (a tar on stdin or stdout) or a sandbox directory.
func copyTree(cmd *cobra.Command, o *clientOptions, src, dst location) error {
	ctx := cmd.Context()
	c := o.client()
	var in io.Reader
	switch {
	case src.sandbox != "":
		sb, err := c.Sandbox(ctx, src.sandbox)
		if err != nil {
			return err
		}
		rc, err := sb.OpenArchive(ctx, src.path)
		if err != nil {
			return fmt.Errorf("cp -r %s:%s: %w", src.sandbox, src.path, err)
		}
		defer rc.Close()
		in = rc
	case src.path == "-":
		in = cmd.InOrStdin()
	default:
		pr, pw := io.Pipe()
		defer pr.Close()
		go func() { pw.CloseWithError(tarDir(src.path, pw, cmd.ErrOrStderr())) }()
		in = pr
	}
	switch {
	case dst.sandbox != "":
		sb, err := c.Sandbox(ctx, dst.sandbox)
		if err != nil {
			return err
		}
		_, err = sb.WriteArchive(ctx, dst.path, in)
		return err
	case dst.path == "-":
		_, err := io.Copy(cmd.OutOrStdout(), in)
		return err
	default:
		return untar(in, dst.path)
	}
}
