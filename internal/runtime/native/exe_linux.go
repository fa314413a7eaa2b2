package native

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// selfExe is the default init program: the running binary, re-executed.
const selfExe = "/proc/self/exe"

// copyInit copies a separate init program (Config.Exe, e.g. /proc/self/fd/N of the
// airlock-sandbox binary the daemon checked) to dst in the state directory, which this runtime
// alone writes, and returns dst. Sandboxes then start from the copy: replacing the original
// while the runtime lives (an upgrade) changes no sandbox it starts, and the path is one a
// sandbox's init can exec from inside its new user namespace (a /proc/self/fd link is not: it
// belongs to the daemon's root). A sandbox of an earlier runtime keeps the inode it started
// from: the copy replaces dst by rename.
func copyInit(src, dst string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("init program: %w", err)
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".init-*")
	if err != nil {
		return "", fmt.Errorf("init program: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	_, err = io.Copy(tmp, in)
	if err == nil {
		err = tmp.Chmod(0o755)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), dst)
	}
	if err != nil {
		return "", fmt.Errorf("init program: copy to the state directory: %w", err)
	}
	return dst, nil
}
