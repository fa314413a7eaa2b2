package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/airlockhq/airlock/api"
)

// Debian's bootstrap: the base "debian" of a build spec, for machines that reach Debian's
// archive but no container registry.
const (
	DebianSuite     = "bookworm"
	DebianMirror    = "http://deb.debian.org/debian"
	DebianImageName = "debian:" + DebianSuite + "-minbase"
)

// ErrNoArchive is the cause of a Debian bootstrap that could not reach the archive.
var ErrNoArchive = errors.New("Debian's archive (" + DebianMirror + ") cannot be reached from this machine")

// Bootstrap makes DebianImageName with debootstrap (minbase variant) into one layer, installing
// the debootstrap package first when the host lacks it (the way scripts/common.sh need_pkgs
// does). It is a build tool run by the daemon on the host, as root; what it unpacks is
// Debian's own packages, and the layer goes through the store's defensive unpacking like any
// other. Its output goes to log.
func (s *Store) Bootstrap(ctx context.Context, log io.Writer) (*Image, error) {
	if err := needDebootstrap(ctx, log); err != nil {
		return nil, err
	}
	w, err := s.newWork()
	if err != nil {
		return nil, err
	}
	defer w.unlock()
	root := filepath.Join(w.dir, "root")
	cmd := exec.CommandContext(ctx, "debootstrap", "--variant=minbase", DebianSuite, root, DebianMirror)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, api.Errorf(api.ErrUnavailable, "debootstrap %s failed (%v): %v? see the build log", DebianSuite, err, ErrNoArchive)
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := tarDir(ctx, root, pw)
		pw.CloseWithError(err)
		done <- err
	}()
	img, err := s.Commit(ctx, nil, pr, DebianImageName)
	pr.CloseWithError(errors.New("commit ended"))
	if terr := <-done; err == nil && terr != nil {
		err = terr
	}
	if err != nil {
		return nil, fmt.Errorf("debian base: %w", err)
	}
	return img, nil
}

// needDebootstrap installs the debootstrap package when it is not on PATH.
func needDebootstrap(ctx context.Context, log io.Writer) error {
	if _, err := exec.LookPath("debootstrap"); err == nil {
		return nil
	}
	fmt.Fprintln(log, "installing debootstrap (apt-get install debootstrap)")
	cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if err := cmd.Run(); err != nil {
		return api.Errorf(api.ErrUnavailable, "install debootstrap failed (%v): %v?", err, ErrNoArchive)
	}
	return nil
}

// tarDir writes the tree at dir as a layer tar: directories, regular files (hard links once),
// symlinks; device nodes, FIFOs and sockets are left out (the store would drop them anyway).
func tarDir(ctx context.Context, dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
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
		if !fi.Mode().IsRegular() && !fi.IsDir() && fi.Mode()&fs.ModeSymlink == 0 {
			return nil
		}
		target := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return err
		}
		hdr.Name, hdr.Uname, hdr.Gname, hdr.Format = filepath.ToSlash(rel), "", "", tar.FormatPAX
		if fi.IsDir() {
			hdr.Name += "/"
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			if first, ok := links[key]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
				return tw.WriteHeader(hdr)
			}
			links[key] = hdr.Name
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.CopyN(tw, f, hdr.Size)
		return err
	})
	if err != nil {
		return fmt.Errorf("tar %s: %w", dir, err)
	}
	return tw.Close()
}
