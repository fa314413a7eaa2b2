package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	opaqueXattr    = "trusted.overlay.opaque"
	paxOpaque      = "SCHILY.xattr." + opaqueXattr
	entryOverhead  = 512 // bytes counted per entry beyond its content, for the disk budget
)

// unpacker writes one OCI layer tar into an empty directory in overlayfs format. All of it goes
// through an os.Root, so no path or link resolves outside the directory even if the checks
// below had a hole; on top of that, no entry is written through a symlink at all (not even one
// that stays inside), since the layer's directories are exactly those this unpacker made.
type unpacker struct {
	root  *os.Root
	lim   limits
	kinds map[string]byte // what this layer put at each path: tar.TypeDir, TypeReg, TypeSymlink, 'w' (whiteout)
	dirs  []dirTimes      // to set last, as creating children changes them
	meta  layerMeta
	// Dropped counts entries left out: device nodes, fifos, unknown types.
	dropped int
}

type dirTimes struct {
	rel   string
	mtime time.Time
}

// unpack unpacks the tar stream r into dir (which must exist and be empty).
func unpack(ctx context.Context, r io.Reader, dir string, lim limits) (layerMeta, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return layerMeta{}, fmt.Errorf("unpack: %w", err)
	}
	defer root.Close()
	u := &unpacker{root: root, lim: lim, kinds: map[string]byte{".": tar.TypeDir}}
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return u.meta, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return u.meta, fmt.Errorf("read layer tar: %w", err)
		}
		if u.meta.Files++; u.meta.Files > lim.files {
			return u.meta, fmt.Errorf("%w: more than %d entries", ErrLayerLimit, lim.files)
		}
		u.meta.Bytes += entryOverhead
		if err := u.entry(hdr, tr); err != nil {
			return u.meta, fmt.Errorf("layer entry %q: %w", hdr.Name, err)
		}
	}
	for _, d := range slices.Backward(u.dirs) {
		if err := root.Chtimes(d.rel, d.mtime, d.mtime); err != nil {
			return u.meta, fmt.Errorf("unpack: %w", err)
		}
	}
	return u.meta, nil
}

// clean turns an entry's name into a path relative to the layer's root, or refuses it. An
// absolute name is taken as relative to the layer (as docker does); one whose .. climbs past
// the root is refused.
func (u *unpacker) clean(n string) (string, error) {
	if len(n) > u.lim.pathLen {
		return "", fmt.Errorf("%w: a path longer than %d bytes", ErrLayerLimit, u.lim.pathLen)
	}
	if strings.IndexByte(n, 0) >= 0 {
		return "", fmt.Errorf("%w: a NUL byte in a path", ErrHostileLayer)
	}
	p := path.Clean(strings.TrimLeft(n, "/"))
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", fmt.Errorf("%w: the path %q leaves the layer", ErrHostileLayer, n)
	}
	return p, nil
}

// parents makes sure every parent directory of rel is a directory this layer made, creating
// missing ones; a parent that is a symlink, a file or a whiteout is refused.
func (u *unpacker) parents(rel string) error {
	dir := path.Dir(rel)
	if dir == "." {
		return nil
	}
	var missing []string
	for d := dir; d != "."; d = path.Dir(d) {
		k, ok := u.kinds[d]
		if ok && k == tar.TypeDir {
			break
		}
		if ok {
			return fmt.Errorf("%w: %q is not a directory (a symlink is never followed)", ErrHostileLayer, d)
		}
		missing = append(missing, d)
	}
	for _, d := range slices.Backward(missing) {
		if err := u.root.Mkdir(d, 0o755); err != nil {
			return err
		}
		u.kinds[d] = tar.TypeDir
	}
	return nil
}

// replace removes what this layer put at rel before, unless both it and the new entry are
// directories (a later entry of a tar overrides an earlier one).
func (u *unpacker) replace(rel string, newKind byte) error {
	k, ok := u.kinds[rel]
	if !ok || (k == tar.TypeDir && newKind == tar.TypeDir) {
		return nil
	}
	if rel == "." {
		return fmt.Errorf("%w: an entry replaces the layer's root", ErrHostileLayer)
	}
	if err := u.root.RemoveAll(rel); err != nil {
		return err
	}
	delete(u.kinds, rel)
	if k == tar.TypeDir {
		for p := range u.kinds {
			if strings.HasPrefix(p, rel+"/") {
				delete(u.kinds, p)
			}
		}
	}
	return nil
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	rel, err := u.clean(hdr.Name)
	if err != nil {
		return err
	}
	base := path.Base(rel)
	switch {
	case base == opaqueMarker:
		dir := path.Dir(rel)
		if err := u.mkdir(dir, 0o755, hdr); err != nil {
			return err
		}
		return u.setOpaque(dir)
	case strings.HasPrefix(base, whiteoutPrefix):
		name := strings.TrimPrefix(base, whiteoutPrefix)
		if name == "" || name == "." || name == ".." {
			return fmt.Errorf("%w: a malformed whiteout", ErrHostileLayer)
		}
		return u.whiteout(path.Join(path.Dir(rel), name))
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := u.mkdir(rel, hdr.FileInfo().Mode()&(fs.ModePerm|fs.ModeSticky), hdr); err != nil {
			return err
		}
		if hdr.PAXRecords[paxOpaque] == "y" {
			return u.setOpaque(rel)
		}
		return nil
	case tar.TypeReg, tar.TypeRegA:
		return u.file(rel, hdr, r)
	case tar.TypeSymlink:
		if len(hdr.Linkname) > u.lim.pathLen {
			return fmt.Errorf("%w: a link target longer than %d bytes", ErrLayerLimit, u.lim.pathLen)
		}
		if err := u.prepare(rel, tar.TypeSymlink); err != nil {
			return err
		}
		// Stored as it is, never followed here: the sandbox resolves it inside its own root.
		if err := u.root.Symlink(hdr.Linkname, rel); err != nil {
			return err
		}
		u.kinds[rel] = tar.TypeSymlink
		return u.root.Lchown(rel, hdr.Uid, hdr.Gid)
	case tar.TypeLink:
		target, err := u.clean(hdr.Linkname)
		if err != nil {
			return err
		}
		if u.kinds[target] != tar.TypeReg {
			return fmt.Errorf("%w: a hard link to %q, not a file earlier in this layer", ErrHostileLayer, hdr.Linkname)
		}
		if target == rel {
			return nil
		}
		if err := u.prepare(rel, tar.TypeReg); err != nil {
			return err
		}
		if err := u.root.Link(target, rel); err != nil {
			return err
		}
		u.kinds[rel] = tar.TypeReg
		return nil
	case tar.TypeChar:
		if hdr.Devmajor == 0 && hdr.Devminor == 0 {
			return u.whiteout(rel) // already in overlay format (a tar of an upper directory)
		}
	}
	// Device nodes, fifos and types this unpacker does not know are left out.
	u.dropped++
	return nil
}

// prepare readies rel for a new entry of kind k: its parents exist, an older entry is gone.
func (u *unpacker) prepare(rel string, k byte) error {
	if rel == "." {
		return fmt.Errorf("%w: an entry replaces the layer's root", ErrHostileLayer)
	}
	if err := u.parents(rel); err != nil {
		return err
	}
	return u.replace(rel, k)
}

func (u *unpacker) mkdir(rel string, mode fs.FileMode, hdr *tar.Header) error {
	if rel != "." {
		if err := u.prepare(rel, tar.TypeDir); err != nil {
			return err
		}
		if _, ok := u.kinds[rel]; !ok {
			if err := u.root.Mkdir(rel, 0o700); err != nil {
				return err
			}
			u.kinds[rel] = tar.TypeDir
		}
	}
	if hdr.Typeflag != tar.TypeDir {
		return nil // made for an opaque marker: default attributes
	}
	if err := u.root.Lchown(rel, hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	if err := u.root.Chmod(rel, mode); err != nil {
		return err
	}
	u.dirs = append(u.dirs, dirTimes{rel, hdr.ModTime})
	return nil
}

func (u *unpacker) file(rel string, hdr *tar.Header, r io.Reader) error {
	if hdr.Size < 0 {
		return fmt.Errorf("%w: a negative size", ErrHostileLayer)
	}
	// Checked before a byte is written. archive/tar expands a sparse entry's holes without
	// reading them, so the limit on the decompressed stream (see ingest) alone would not do.
	if u.meta.Bytes+hdr.Size > u.lim.bytes {
		return fmt.Errorf("%w: more than %d bytes unpacked", ErrLayerLimit, u.lim.bytes)
	}
	if err := u.lim.budget.take(hdr.Size + entryOverhead); err != nil {
		return err
	}
	if err := u.prepare(rel, tar.TypeReg); err != nil {
		return err
	}
	f, err := u.root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	u.kinds[rel] = tar.TypeReg
	n, err := io.Copy(f, r)
	u.meta.Bytes += n
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := u.root.Lchown(rel, hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	// Permission bits only: no setuid, setgid or sticky bit on a file.
	if err := u.root.Chmod(rel, fs.FileMode(hdr.Mode)&fs.ModePerm); err != nil {
		return err
	}
	return u.root.Chtimes(rel, hdr.ModTime, hdr.ModTime)
}

// whiteout puts an overlayfs whiteout, a 0:0 character device, at rel.
func (u *unpacker) whiteout(rel string) error {
	if err := u.prepare(rel, 'w'); err != nil {
		return err
	}
	d, err := u.openDir(path.Dir(rel))
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.Mknodat(int(d.Fd()), path.Base(rel), unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("whiteout: mknod: %w", err)
	}
	u.kinds[rel] = 'w'
	return nil
}

// setOpaque marks the directory rel opaque for overlayfs.
func (u *unpacker) setOpaque(rel string) error {
	d, err := u.openDir(rel)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.Fsetxattr(int(d.Fd()), opaqueXattr, []byte("y"), 0); err != nil {
		return fmt.Errorf("opaque directory: setxattr: %w", err)
	}
	return nil
}

// openDir opens a directory of this layer (made by it: never through a symlink).
func (u *unpacker) openDir(rel string) (*os.File, error) {
	if u.kinds[rel] != tar.TypeDir {
		return nil, fmt.Errorf("%w: %q is not a directory", ErrHostileLayer, rel)
	}
	return u.root.OpenFile(rel, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
}
