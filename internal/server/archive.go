package server

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// The directory archive routes build and unpack tar streams in the daemon from the agent's
// confined file calls (list, read, write, mkdir), so no host path is ever involved and a symlink
// in the sandbox is archived as a symlink, never followed.

func (s *Server) handleReadArchive(w http.ResponseWriter, r *http.Request) error {
	return s.withPath(r, func(sb *engine.Sandbox, p string) error {
		root, err := sb.Stat(r.Context(), p)
		if err != nil {
			return err
		}
		if root.Type != "dir" {
			return api.Errorf(api.ErrInvalidArgument, "%s is not a directory", p)
		}
		started := false
		start := func() {
			if !started {
				started = true
				w.Header().Set("Content-Type", "application/x-tar")
				w.WriteHeader(http.StatusOK)
			}
		}
		tw := tar.NewWriter(w)
		err = writeTree(r, sb, tw, root.Path, "", start)
		if err == nil {
			start() // an empty directory
			err = tw.Close()
		}
		if err != nil && started {
			// Headers are gone; abort the body so the client sees a broken archive, not a short one.
			panic(http.ErrAbortHandler)
		}
		return err
	})
}

// writeTree writes the entries of the sandbox directory dir, named rel in the archive ("" for
// the root), and what is below them, depth first.
func writeTree(r *http.Request, sb *engine.Sandbox, tw *tar.Writer, dir, rel string, start func()) error {
	entries, err := sb.List(r.Context(), dir, 1)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := path.Join(rel, e.Name)
		h := &tar.Header{Name: name, Mode: int64(e.Mode & 0o7777), ModTime: e.ModifiedAt, Format: tar.FormatPAX}
		switch e.Type {
		case "dir":
			h.Typeflag, h.Name = tar.TypeDir, name+"/"
		case "symlink":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.SymlinkTarget
		default:
			h.Typeflag, h.Size = tar.TypeReg, e.Size
		}
		start()
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		switch e.Type {
		case "dir":
			if err := writeTree(r, sb, tw, path.Join(dir, e.Name), name, start); err != nil {
				return err
			}
		case "symlink":
		default:
			// A file that changed size since it was listed fails the tar writer: the archive is
			// then aborted rather than wrong.
			if err := sb.ReadFile(r.Context(), path.Join(dir, e.Name), tw, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// handleWriteArchive unpacks a tar stream into a directory.
func (s *Server) handleWriteArchive(w http.ResponseWriter, r *http.Request) error {
	return s.withPath(r, func(sb *engine.Sandbox, p string) error {
		root, err := sb.Mkdir(r.Context(), p)
		if err != nil {
			return err
		}
		// No body cap beyond the sandbox's own writable-layer cap, as for a single file. Entries
		// are checked one by one as they stream: a refused one ends the unpacking there.
		tr := tar.NewReader(r.Body)
		var links []string // symlinks this archive made: no later entry may go through one
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return api.Errorf(api.ErrInvalidArgument, "reading the tar stream: %v", err)
			}
			name, err := archiveName(h.Name)
			if err != nil {
				return err
			}
			if name == "" {
				continue // the root itself ("./")
			}
			for _, l := range links {
				if strings.HasPrefix(name, l+"/") {
					return api.Errorf(api.ErrInvalidArgument, "tar entry %q goes through the symlink %q the archive made", h.Name, l)
				}
			}
			dst := path.Join(root.Path, name)
			switch h.Typeflag {
			case tar.TypeDir:
				if _, err := sb.Mkdir(r.Context(), dst); err != nil {
					return err
				}
			case tar.TypeReg:
				if _, err := sb.WriteFile(r.Context(), dst, tr, uint32(h.Mode&0o777)); err != nil {
					return err
				}
			case tar.TypeSymlink:
				if err := symlinkIn(r.Context(), sb, h.Linkname, dst); err != nil {
					return fmt.Errorf("tar entry %q: %w", h.Name, err)
				}
				links = append(links, name)
			default:
				return api.Errorf(api.ErrInvalidArgument, "tar entry %q is of type %q: only regular files and directories are unpacked", h.Name, string(h.Typeflag))
			}
		}
		fi, err := sb.Stat(r.Context(), root.Path)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, fi)
		return nil
	})
}

// archiveName is a tar entry's name as a clean path relative to the target directory ("" for
// the directory itself). Absolute names and names with a ".." component are refused, not
// cleaned into something else: an archive that has them is hostile or broken.
func archiveName(n string) (string, error) {
	if n == "" || strings.HasPrefix(n, "/") || strings.ContainsRune(n, 0) {
		return "", api.Errorf(api.ErrInvalidArgument, "tar entry %q: names must be relative", n)
	}
	for _, c := range strings.Split(n, "/") {
		if c == ".." {
			return "", api.Errorf(api.ErrInvalidArgument, "tar entry %q: names must not contain \"..\"", n)
		}
	}
	clean := path.Clean(n)
	if clean == "." {
		return "", nil
	}
	return clean, nil
}

// symlinkIn makes the symlink dst → target inside the sandbox by running ln there, as the
// sandbox's user: the agent's file calls make no symlinks, and a link made this way is exactly
// what code in the sandbox could make itself. Where it points is the user's business (the file
// API never follows magic links); that nothing of the archive is written through it is
// unpack's.
func symlinkIn(ctx context.Context, sb *engine.Sandbox, target, dst string) error {
	if target == "" || strings.ContainsRune(target, 0) {
		return api.Errorf(api.ErrInvalidArgument, "symlink %s has an empty or NUL target", dst)
	}
	var stderr []byte
	end, err := sb.Exec(ctx, engine.ExecSpec{Cmd: []string{"ln", "-sfT", "--", target, dst}, Timeout: 30 * time.Second,
		OutputLimit: 4 << 10}, func(ev engine.Event) { stderr = append(stderr, ev.Stderr...) })
	if err != nil {
		return err
	}
	if end.ExitCode != 0 {
		return api.Errorf(api.ErrInvalidArgument, "make symlink %s: %s", dst, strings.TrimSpace(string(stderr)))
	}
	return nil
}
