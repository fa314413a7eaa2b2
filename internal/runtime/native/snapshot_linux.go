package native

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoWritableLayer is returned by Snapshot for a sandbox of the host image.
var ErrNoWritableLayer = errors.New("the sandbox runs the host image: it has no writable layer to snapshot")

// Snapshot writes the sandbox's writable layer (the upper directory alone) to w as an OCI layer
// tar: overlay whiteouts become .wh.<name>, opaque directories .wh..wh..opq, uids and gids are
// mapped back to the image's, setuid and setgid bits are dropped, and anything but directories,
// regular files, symlinks and whiteouts (FIFOs, sockets) is left out, and so are the mount
// points of the contract's /etc files (the sandbox cannot write them). Files with several links
// are written once, then as hard links.
//
// The sandbox keeps running and may swap files for symlinks while it is read: the walk never
// resolves a path. Every entry is opened relative to its parent's descriptor with openat2
// (RESOLVE_BENEATH, no symlinks, no crossing of mounts), its header is taken from the opened
// descriptor, and its content is read from that same descriptor; a file that shrinks meanwhile
// fails the snapshot rather than producing a corrupt tar.
func (s *Sandbox) Snapshot(ctx context.Context, w io.Writer) error {
	if s.image == nil {
		return ErrNoWritableLayer
	}
	fd, err := unix.Open(s.image.w.upper, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("snapshot: open writable layer: %w", err)
	}
	sn := &snapshotter{ctx: ctx, tw: tar.NewWriter(w), owner: s.image.owner, links: map[[2]uint64]string{}}
	err = sn.dir(fd, "")
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := sn.tw.Close(); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

type snapshotter struct {
	ctx   context.Context
	tw    *tar.Writer
	owner int
	links map[[2]uint64]string // (dev, inode) of a multiply linked file → its name in the tar
}

const resolveConfined = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// openChild opens name (one component) below the directory dirfd, never through a symlink.
func openChild(dirfd int, name string, flags uint64) (int, error) {
	return unix.Openat2(dirfd, name, &unix.OpenHow{Flags: flags | unix.O_NOFOLLOW | unix.O_CLOEXEC, Resolve: resolveConfined})
}

// dir writes the entries of the directory open at fd, whose name in the tar is prefix.
func (sn *snapshotter) dir(fd int, prefix string) error {
	names, err := readNames(fd)
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := sn.ctx.Err(); err != nil {
			return err
		}
		full := path.Join(prefix, name)
		if prefix == "etc" && slices.Contains(contractEtc, name) {
			// The runtime's mount point for its own file, bound over it: never the sandbox's.
			continue
		}
		if err := sn.entry(fd, name, full); err != nil {
			return err
		}
	}
	return nil
}

// readNames lists the directory open at fd (sorted, for a reproducible tar).
func readNames(fd int) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list directory: %w", err)
	}
	slices.Sort(names)
	return names, nil
}

func (sn *snapshotter) entry(dirfd int, name, full string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil // removed meanwhile
		}
		return fmt.Errorf("stat %s: %w", full, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		if st.Rdev == 0 {
			// An overlay whiteout: name is deleted from the layers below.
			return sn.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: path.Join(path.Dir(full), ".wh."+name),
				Mode: 0o644, ModTime: time.Unix(st.Mtim.Unix())})
		}
		return nil
	case unix.S_IFLNK:
		target, err := readlinkat(dirfd, name)
		if err != nil {
			return nil // no longer a symlink: swapped meanwhile, left out
		}
		return sn.tw.WriteHeader(sn.header(&st, tar.TypeSymlink, full, target))
	case unix.S_IFDIR:
		fd, err := openChild(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return skipSwapped(full, err)
		}
		defer unix.Close(fd)
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		if err := sn.tw.WriteHeader(sn.header(&st, tar.TypeDir, full+"/", "")); err != nil {
			return err
		}
		if opaque(fd) {
			if err := sn.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: full + "/.wh..wh..opq",
				Mode: 0o644, ModTime: time.Unix(st.Mtim.Unix())}); err != nil {
				return err
			}
		}
		return sn.dir(fd, full)
	case unix.S_IFREG:
		// O_NONBLOCK: should it have become a FIFO meanwhile, the open must not hang.
		fd, err := openChild(dirfd, name, unix.O_RDONLY|unix.O_NONBLOCK)
		if err != nil {
			return skipSwapped(full, err)
		}
		f := os.NewFile(uintptr(fd), full)
		defer f.Close()
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return nil
		}
		key := [2]uint64{st.Dev, st.Ino}
		if first, ok := sn.links[key]; ok {
			return sn.tw.WriteHeader(sn.header(&st, tar.TypeLink, full, first))
		}
		if st.Nlink > 1 {
			sn.links[key] = full
		}
		hdr := sn.header(&st, tar.TypeReg, full, "")
		hdr.Size = st.Size
		if err := sn.tw.WriteHeader(hdr); err != nil {
			return err
		}
		if n, err := io.CopyN(sn.tw, f, st.Size); err != nil {
			return fmt.Errorf("read %s (changed while read? %d of %d bytes): %w", full, n, st.Size, err)
		}
		return nil
	}
	return nil // FIFOs, sockets, block devices: not part of an image
}

// skipSwapped ignores an entry that vanished or became a symlink between the listing and the
// open; anything else fails the snapshot.
func skipSwapped(name string, err error) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.EXDEV) {
		return nil
	}
	return fmt.Errorf("open %s: %w", name, err)
}

func (sn *snapshotter) header(st *unix.Stat_t, typ byte, name, link string) *tar.Header {
	return &tar.Header{
		Typeflag: typ, Name: name, Linkname: link,
		Mode: int64(st.Mode & (0o777 | unix.S_ISVTX)),
		Uid:  sn.imageID(st.Uid), Gid: sn.imageID(st.Gid),
		ModTime: time.Unix(st.Mtim.Unix()),
		Format:  tar.FormatPAX,
	}
}

// imageID maps a host uid or gid of the upper layer back to the image's: the sandbox's id N is
// host id owner+N. Anything else (never made by the sandbox) becomes the image's root.
func (sn *snapshotter) imageID(id uint32) int {
	if n := int(id) - sn.owner; n >= 0 && n < 65536 {
		return n
	}
	return 0
}

// opaque reports whether the directory open at fd is an overlay opaque directory.
func opaque(fd int) bool {
	buf := make([]byte, 4)
	n, err := unix.Fgetxattr(fd, "trusted.overlay.opaque", buf)
	return err == nil && n == 1 && buf[0] == 'y'
}

func readlinkat(dirfd int, name string) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// DiskUsage is the host disk the sandbox's writable layer takes (an image sandbox only).
func (s *Sandbox) DiskUsage() (int64, error) {
	if s.image == nil {
		return 0, ErrNoWritableLayer
	}
	return s.image.w.diskUsage()
}
