package airlock

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/airlockhq/airlock/api"
)

// File paths are the sandbox's own: relative ones are relative to its workdir. The daemon acts
// with the sandbox user's permissions and refuses /proc, /dev and /sys.

// ReadFile returns the whole content of the file at path. Use OpenFile for large files.
func (s *Sandbox) ReadFile(ctx context.Context, path string) ([]byte, error) {
	rc, err := s.OpenFile(ctx, path)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

// OpenFile streams the content of the file at path. The caller must Close the reader; ctx
// bounds the whole read.
func (s *Sandbox) OpenFile(ctx context.Context, path string) (io.ReadCloser, error) {
	return s.open(ctx, "/files", path)
}

// OpenArchive streams the directory at dir as a tar: its regular files, directories and
// symlinks (as symlinks), with their permission bits, named relative to dir. The caller must
// Close the reader; a failure midway shows as a read error, not a short archive.
func (s *Sandbox) OpenArchive(ctx context.Context, dir string) (io.ReadCloser, error) {
	return s.open(ctx, "/files/archive", dir)
}

// WriteArchive unpacks the tar read from r into the directory dir (created with its parents):
// regular files with their permission bits and directories. The daemon refuses an archive with
// absolute names, "..", symlinks, hard links or device nodes (400, api.ErrInvalidArgument); entries
// before the refused one stay. It returns dir's description.
func (s *Sandbox) WriteArchive(ctx context.Context, dir string, r io.Reader) (*api.FileInfo, error) {
	return s.put(ctx, "/files/archive", pathQuery(dir), r, "application/x-tar")
}

// open GETs a raw download route for path.
func (s *Sandbox) open(ctx context.Context, suffix, path string) (io.ReadCloser, error) {
	req, err := s.c.newRequest(ctx, http.MethodGet, s.path(suffix), pathQuery(path), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/octet-stream, application/x-tar")
	resp, err := s.c.send(req)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// WriteFile creates or replaces the file at path (and its missing parent directories) with
// everything read from r, streaming it: the content is never held in memory whole, so files of
// any size the sandbox has room for work. WriteFile does not close r. Running out of the
// sandbox's scratch space fails with [IsQuota].
func (s *Sandbox) WriteFile(ctx context.Context, path string, r io.Reader) error {
	_, err := s.writeFile(ctx, path, r, 0)
	return err
}

// WriteFileMode is WriteFile with the file's permission bits (e.g. 0o755), and it returns the
// written file's description.
func (s *Sandbox) WriteFileMode(ctx context.Context, path string, r io.Reader, mode uint32) (*api.FileInfo, error) {
	return s.writeFile(ctx, path, r, mode)
}

func (s *Sandbox) writeFile(ctx context.Context, path string, r io.Reader, mode uint32) (*api.FileInfo, error) {
	q := pathQuery(path)
	if mode != 0 {
		q.Set("mode", fmt.Sprintf("%04o", mode))
	}
	return s.put(ctx, "/files", q, r, "application/octet-stream")
}

// put streams r to a raw upload route, which answers a FileInfo.
func (s *Sandbox) put(ctx context.Context, suffix string, q url.Values, r io.Reader, contentType string) (*api.FileInfo, error) {
	// NopCloser: the transport closes a request body, and r is the caller's.
	req, err := s.c.newRequest(ctx, http.MethodPut, s.path(suffix), q, io.NopCloser(r))
	if err != nil {
		return nil, err
	}
	req.ContentLength = -1 // chunked unless the size is known up front
	switch v := r.(type) {
	case *bytes.Buffer:
		req.ContentLength = int64(v.Len())
	case *bytes.Reader:
		req.ContentLength = int64(v.Len())
	case *strings.Reader:
		req.ContentLength = int64(v.Len())
	}
	if req.ContentLength == 0 {
		req.Body = http.NoBody
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json")
	resp, err := s.c.send(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var fi api.FileInfo
	if err := decodeJSON(resp.Body, &fi); err != nil {
		return nil, err
	}
	return &fi, nil
}

// List describes the entries of the directory at path.
func (s *Sandbox) List(ctx context.Context, path string) ([]api.FileInfo, error) {
	var list api.FileList
	if err := s.c.doQuery(ctx, http.MethodGet, s.path("/files/list"), pathQuery(path), nil, &list); err != nil {
		return nil, err
	}
	return list.Entries, nil
}

// Stat describes the file at path (a symlink itself, not its target).
func (s *Sandbox) Stat(ctx context.Context, path string) (*api.FileInfo, error) {
	var fi api.FileInfo
	if err := s.c.doQuery(ctx, http.MethodGet, s.path("/files/stat"), pathQuery(path), nil, &fi); err != nil {
		return nil, err
	}
	return &fi, nil
}

// Mkdir creates the directory at path and any missing parents, like mkdir -p; an existing
// directory is not an error.
func (s *Sandbox) Mkdir(ctx context.Context, path string) error {
	return s.c.doQuery(ctx, http.MethodPost, s.path("/files/mkdir"), pathQuery(path), nil, nil)
}

// Remove deletes the file or empty directory at path; with recursive it deletes a directory
// and everything in it.
func (s *Sandbox) Remove(ctx context.Context, path string, recursive bool) error {
	q := pathQuery(path)
	if recursive {
		q.Set("recursive", "true")
	}
	return s.c.doQuery(ctx, http.MethodDelete, s.path("/files"), q, nil, nil)
}

func pathQuery(path string) url.Values { return url.Values{"path": {path}} }
