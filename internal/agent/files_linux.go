package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/layout"
)

// File operations resolve a path once and then act relative to the descriptor they got, never
// by name again. Checking a parent and then looking the path up by name let a swap loop in the
// sandbox (a directory exchanged with a symlink to /proc/self) redirect the second lookup into
// the agent's own /proc entries (review M2). Every descriptor is checked with fstatfs
// (checkDir, checkOrdinary) before anything is done through it.
//
// All functions here must run as the sandbox user, on a thread of the agent's fsPool (asUser).

// asUser runs fn on one of the agent's file-system threads, as the sandbox user (see fsPool).
func (a *Agent) asUser(ctx context.Context, fn func() error) error {
	return a.files.run(ctx, fn)
}

// sandboxPath resolves p (absolute, or relative to the workspace) to a clean absolute path and
// refuses NUL bytes and the kernel's pseudo file systems. The engine has already resolved and
// checked request paths; this is defence in depth, since the agent serves whatever reaches it.
func sandboxPath(p string) (string, error) {
	if p == "" {
		return "", errors.New("path is empty")
	}
	if strings.ContainsRune(p, 0) {
		return "", errors.New("path contains a NUL byte")
	}
	if !path.IsAbs(p) {
		p = path.Join(layout.Workspace, p)
	}
	p = path.Clean(p)
	if layout.Kernel(p) { // /dev/shm excepted: a writable area, like /tmp
		return "", fmt.Errorf("%s: not accessible through the file API", p)
	}
	return p, nil
}

// splitPath splits a clean absolute path into its directory and final name; "/" is itself.
func splitPath(p string) (dir, name string) {
	if p == "/" {
		return "/", "."
	}
	return path.Dir(p), path.Base(p)
}

// openat2 is unix.Openat2, falling back to openat on a kernel without openat2 (gVisor's, in
// the gvisor runtime's sandboxes). The fallback keeps RESOLVE_NO_SYMLINKS and RESOLVE_NO_XDEV
// for a single path component (O_NOFOLLOW; the device compared with dirfd's) and refuses them
// for more. RESOLVE_NO_MAGICLINKS it cannot keep; there, /proc's links of the agent (PID 1,
// root and not dumpable) are closed to the file API's threads by the kernel's own ptrace check.
func openat2(dirfd int, name string, how *unix.OpenHow) (int, error) {
	fd, err := unix.Openat2(dirfd, name, how)
	if !errors.Is(err, unix.ENOSYS) {
		return fd, err
	}
	flags := int(how.Flags)
	if how.Resolve&(unix.RESOLVE_NO_SYMLINKS|unix.RESOLVE_NO_XDEV) != 0 {
		if strings.Contains(name, "/") {
			return -1, unix.ENOSYS
		}
		flags |= unix.O_NOFOLLOW
	}
	if fd, err = unix.Openat(dirfd, name, flags, uint32(how.Mode)); err != nil {
		return -1, err
	}
	if how.Resolve&unix.RESOLVE_NO_XDEV != 0 {
		var st, parent unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || unix.Fstat(dirfd, &parent) != nil || st.Dev != parent.Dev {
			unix.Close(fd)
			return -1, unix.EXDEV
		}
	}
	return fd, nil
}

// openDirAt opens the directory name relative to dirfd with openat2 and refuses it if it is on
// a pseudo file system. resolve is ORed with RESOLVE_NO_MAGICLINKS: the user's own symlinks may
// be followed, /proc's fd, exe, cwd and root links never. flags is O_PATH for a directory only
// used as a base, O_RDONLY for one that is read.
func openDirAt(dirfd int, name string, flags int, resolve uint64) (int, error) {
	fd, err := openat2(dirfd, name, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_DIRECTORY | unix.O_CLOEXEC),
		Resolve: resolve | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, err
	}
	if err := checkDir(fd); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// openDir opens directory p (following the user's symlinks) as an O_PATH descriptor to act
// relative to. The caller closes it.
func openDir(p string) (int, error) {
	fd, err := openDirAt(unix.AT_FDCWD, p, unix.O_PATH, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: p, Err: err}
	}
	return fd, nil
}

// mkdirAll is os.MkdirAll done one component at a time relative to the previous one, so each
// directory it creates is in the directory it checked. It returns an O_PATH descriptor of p.
func mkdirAll(p string) (int, error) {
	if fd, err := openDir(p); err == nil || !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	fd, err := openDir("/")
	if err != nil {
		return -1, err
	}
	for _, name := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		next, err := openDirAt(fd, name, unix.O_PATH, 0)
		if errors.Is(err, unix.ENOENT) {
			if err = unix.Mkdirat(fd, name, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = openDirAt(fd, name, unix.O_PATH, 0)
			}
		}
		unix.Close(fd)
		if err != nil {
			return -1, &os.PathError{Op: "mkdir", Path: p, Err: err}
		}
		fd = next
	}
	return fd, nil
}

// openParent opens the directory p is in, creating it and its parents if create.
func openParent(p string, create bool) (dirfd int, name string, err error) {
	dir, name := splitPath(p)
	if create {
		dirfd, err = mkdirAll(dir)
	} else {
		dirfd, err = openDir(dir)
	}
	return dirfd, name, err
}

// openedFile is a file the API opened, with what a failed write needs to undo itself.
type openedFile struct {
	*os.File
	dirfd   int    // O_PATH descriptor of the file's directory (-1 unless O_CREAT); Close closes it
	name    string // the file's name in dirfd
	created bool   // the open created the file
	size    int64  // its size right after the open (0 when created or truncated)
	release func() // gives back the agent's transfer token; nil once done
}

// Close closes the file and its directory.
func (f *openedFile) Close() error {
	if f.release != nil {
		defer f.release()
		f.release = nil
	}
	if f.dirfd >= 0 {
		unix.Close(f.dirfd)
		f.dirfd = -1
	}
	return f.File.Close()
}

// openFile opens p as the sandbox user. Symlinks are followed (they are the user's own), but
// never through /proc "magic" links, and the result must be an ordinary file or directory on an
// ordinary file system. With O_CREAT it reports whether the file was created, trying O_EXCL
// first. The caller closes the file; I/O on it needs no worker thread (permission was checked
// when it was opened), so a slow client does not hold one.
func (a *Agent) openFile(ctx context.Context, p string, flags int, mode uint32, parents bool) (*openedFile, error) {
	p, err := sandboxPath(p)
	if err != nil {
		return nil, err
	}
	select {
	case a.transfers <- struct{}{}:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	var f *openedFile
	defer func() {
		if f == nil {
			<-a.transfers
		} else {
			f.release = func() { <-a.transfers }
		}
	}()
	err = a.asUser(ctx, func() error {
		dirfd, name, err := openParent(p, parents)
		if err != nil {
			return err
		}
		created := false
		fd := -1
		if flags&unix.O_CREAT != 0 {
			fd, err = openUser(dirfd, name, flags|unix.O_EXCL, mode)
			created = err == nil
			if errors.Is(err, unix.EEXIST) {
				// openat2 refuses a mode without O_CREAT (EINVAL).
				fd, err = openUser(dirfd, name, flags&^unix.O_CREAT, 0)
			}
		} else {
			fd, err = openUser(dirfd, name, flags, mode)
		}
		if err != nil {
			unix.Close(dirfd)
			return &os.PathError{Op: "open", Path: p, Err: err}
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			unix.Close(dirfd)
			return &os.PathError{Op: "open", Path: p, Err: err}
		}
		if flags&unix.O_CREAT == 0 {
			// Only a write may need to undo itself (discard); a read does not hold the directory.
			unix.Close(dirfd)
			dirfd = -1
		}
		f = &openedFile{File: os.NewFile(uintptr(fd), p), dirfd: dirfd, name: name, created: created, size: st.Size}
		return nil
	})
	return f, err
}

// openUser opens name in dirfd for the API: see openFile.
func openUser(dirfd int, name string, flags int, mode uint32) (int, error) {
	// O_NONBLOCK until the type is checked: opening a FIFO planted in the sandbox would
	// otherwise block this thread forever (and a write-open with no reader fails at once).
	fd, err := openat2(dirfd, name, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY),
		Mode:    uint64(mode),
		Resolve: unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, err
	}
	if err := checkOrdinary(fd); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags&unix.O_APPEND); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// discard undoes a failed write so the scratch is not left full (review L5): a file the write
// created is removed, if its name still refers to it; a file that existed is cut back to the
// size it had when it was opened (0 after O_TRUNC). Only what this write added is taken back.
func (a *Agent) discard(ctx context.Context, f *openedFile) error {
	if !f.created {
		return f.Truncate(f.size)
	}
	return a.asUser(ctx, func() error {
		var mine, named unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &mine); err != nil {
			return err
		}
		if err := unix.Fstatat(f.dirfd, f.name, &named, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		if mine.Dev != named.Dev || mine.Ino != named.Ino {
			// User code replaced the name meanwhile: what it put there is not ours to remove.
			return f.Truncate(0)
		}
		return unix.Unlinkat(f.dirfd, f.name, 0)
	})
}

var errPseudoFS = errors.New("not an ordinary file (pseudo file system, device or FIFO)")

// checkDir refuses a directory descriptor on a pseudo file system.
func checkDir(fd int) error {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return err
	}
	return pseudoFS(fs.Type)
}

// pseudoFS refuses the kernel's pseudo file systems.
func pseudoFS(t int64) error {
	switch t {
	case unix.PROC_SUPER_MAGIC, unix.SYSFS_MAGIC, unix.DEVPTS_SUPER_MAGIC, unix.CGROUP_SUPER_MAGIC,
		unix.CGROUP2_SUPER_MAGIC, unix.SECURITYFS_MAGIC, unix.DEBUGFS_MAGIC, unix.BPF_FS_MAGIC:
		return errPseudoFS
	}
	return nil
}

// checkOrdinary refuses descriptors on procfs, sysfs and friends, and device nodes, which a
// symlink planted in the sandbox could otherwise point the file API at.
func checkOrdinary(fd int) error {
	if err := checkDir(fd); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFDIR:
		return nil
	}
	return errPseudoFS
}

// maxLinkTarget bounds a symlink target the API reports (PATH_MAX).
const maxLinkTarget = 4096

// entryAt describes name in dirfd without following a final symlink; p is the path reported.
func entryAt(dirfd int, name, p string) (*pb.EntryInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	e := entryOf(&st, path.Base(p), p) // a substring of p: no copy of the name
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		buf := make([]byte, maxLinkTarget)
		if n, err := unix.Readlinkat(dirfd, name, buf); err == nil {
			t := string(buf[:n])
			e.SymlinkTarget = &t
		}
	}
	return e, nil
}

// entryOf turns a stat result into an entry called name at p.
func entryOf(st *unix.Stat_t, name, p string) *pb.EntryInfo {
	mode := fileMode(st.Mode)
	e := &pb.EntryInfo{
		Name: name, Path: p, Size: st.Size, Mode: uint32(mode.Perm()),
		Permissions: mode.String(), ModifiedTime: timestamppb.New(time.Unix(st.Mtim.Unix())),
		Uid: st.Uid, Gid: st.Gid, Owner: ownerName(st.Uid), Group: ownerName(st.Gid),
		Type: pb.FileType_FILE_TYPE_FILE,
	}
	switch {
	case mode&fs.ModeSymlink != 0:
		e.Type = pb.FileType_FILE_TYPE_SYMLINK
	case mode.IsDir():
		e.Type = pb.FileType_FILE_TYPE_DIRECTORY
	}
	return e
}

// fileMode converts a stat mode to an fs.FileMode, as os.Lstat does.
func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & unix.S_IFMT {
	case unix.S_IFBLK:
		mode |= fs.ModeDevice
	case unix.S_IFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFIFO:
		mode |= fs.ModeNamedPipe
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFSOCK:
		mode |= fs.ModeSocket
	}
	if m&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

func ownerName(id uint32) string {
	switch id {
	case 0:
		return "root"
	case 1000:
		return "sandbox"
	}
	return "nobody"
}

// readNames reads one getdents batch of dirfd (opened O_RDONLY) into names, without "." and
// "..". It returns no names at the end of the directory.
func readNames(dirfd int, buf []byte, names []string) ([]string, error) {
	for {
		n, err := unix.Getdents(dirfd, buf)
		if err != nil {
			return names, err
		}
		if n <= 0 {
			return names, nil
		}
		before := len(names)
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
		if len(names) > before {
			return names, nil
		}
	}
}

// removeAt removes name in dirfd; a directory only if recursive or empty. Directories are
// opened without following symlinks or crossing mounts, so the removal stays in the tree. It
// stops when ctx ends (user code recreating entries as fast as they go could otherwise keep a
// worker busy for ever) and refuses trees deeper than maxRemoveDepth (each level holds a
// descriptor).
func removeAt(ctx context.Context, dirfd int, name string, recursive bool) error {
	return removeDepth(ctx, dirfd, name, recursive, 0)
}

// maxRemoveDepth bounds the directory levels a recursive remove descends.
const maxRemoveDepth = 256

var errTooDeep = errors.New("directory tree too deep to remove")

func removeDepth(ctx context.Context, dirfd int, name string, recursive bool, depth int) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || !(errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EPERM)) {
		return err
	}
	if !recursive {
		return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
	}
	if depth >= maxRemoveDepth {
		return errTooDeep
	}
	fd, err := openDirAt(dirfd, name, unix.O_RDONLY, unix.RESOLVE_NO_SYMLINKS|unix.RESOLVE_NO_XDEV)
	if err != nil {
		return err
	}
	buf := make([]byte, 8<<10)
	var first error
	for {
		// Deleting while reading moves the directory's offsets: read from the start each time
		// and stop when a whole batch could not be removed.
		if err := ctx.Err(); err != nil {
			first = context.Cause(ctx)
			break
		}
		if _, err := unix.Seek(fd, 0, 0); err != nil {
			first = err
			break
		}
		names, err := readNames(fd, buf, nil)
		if err != nil || len(names) == 0 {
			if first == nil {
				first = err
			}
			break
		}
		removed := 0
		for _, n := range names {
			if err := removeDepth(ctx, fd, n, true, depth+1); err != nil {
				if first == nil {
					first = err
				}
				continue
			}
			removed++
		}
		if removed == 0 {
			break
		}
	}
	unix.Close(fd)
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil {
		if first != nil {
			return first
		}
		return err
	}
	return nil
}
