package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/airlockhq/airlock/internal/sandboxmain"
)

// sandboxBinaryName is the small program the build puts beside airlock (cmd/airlock-sandbox).
const sandboxBinaryName = "airlock-sandbox"

// keptOpen holds the sandbox binaries' descriptors for the life of the process: a dropped
// *os.File would be closed by its finalizer, and with it the path sandboxes start from.
var keptOpen []*os.File

// sandboxBinary returns the path the native runtime starts sandboxes with: "" (this executable,
// re-executed) unless a separate sandbox binary is named (explicit, --sandbox-binary) or sits
// beside this executable. Such a binary runs as root when a sandbox starts, so it must be root's
// and writable by no one else, and of this very build (sandboxmain.Compatible). It is opened
// once and started through its descriptor, so replacing the file while the daemon runs (an
// upgrade) changes no sandbox this daemon starts. A named binary that fails a check stops the
// daemon; one merely found beside it is skipped with a warning.
func sandboxBinary(logger *slog.Logger, explicit string) (string, error) {
	path := explicit
	if path == "" {
		self, err := os.Executable()
		if err != nil {
			return "", nil
		}
		path = filepath.Join(filepath.Dir(self), sandboxBinaryName)
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
	}
	exe, err := openSandboxBinary(path)
	switch {
	case err == nil:
		return exe, nil
	case explicit != "":
		return "", fmt.Errorf("--sandbox-binary: %w", err)
	default:
		logger.Warn("not using the sandbox binary beside airlock: sandboxes start airlock itself", "path", path, "err", err)
		return "", nil
	}
}

// openSandboxBinary checks the sandbox binary at path and returns /proc/self/fd/N of a
// descriptor of it that this process keeps open (close-on-exec, as every descriptor Go opens).
func openSandboxBinary(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	keep := false
	defer func() {
		if !keep {
			f.Close()
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return "", fmt.Errorf("%s is not a regular file", path)
	case st == nil || st.Uid != 0:
		return "", fmt.Errorf("%s must belong to root: it runs as root in every sandbox's start", path)
	case fi.Mode().Perm()&0o022 != 0:
		return "", fmt.Errorf("%s must be writable by root alone (mode %v)", path, fi.Mode().Perm())
	}
	exe := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	out, err := exec.Command(exe, "build-id").Output()
	if err != nil {
		return "", fmt.Errorf("%s build-id: %w", path, err)
	}
	if other, self := strings.TrimSpace(string(out)), sandboxmain.BuildID(); !sandboxmain.Compatible(self, other) {
		return "", fmt.Errorf("%s is of another build (%s; this airlock is %s): build both from one tree", path, other, self)
	}
	keep = true
	keptOpen = append(keptOpen, f)
	return exe, nil
}
