// Package layout is the file-system layout of a sandbox as every layer sees it: where the
// workspace, scratch and operator directories are, and which trees belong to the image or the
// kernel. The engine validates requests against it, the agent resolves paths with it and the
// runtime mounts by it, so an image with another layout changes this one place.
package layout

import "strings"

const (
	// Workspace is the default working directory and HOME, and where relative request paths land.
	Workspace = "/workspace"
	// Tmp is the other writable scratch directory.
	Tmp = "/tmp"
	// WheelDir is where the operator's wheel directory appears, read-only.
	WheelDir = "/opt/airlock/wheels"
	// MainProgram is where a one-shot program too large for an argument is written.
	MainProgram = "/tmp/.airlock-main"
	// Scratch is the runtime's private tmpfs that backs the writable directories.
	Scratch = "/.scratch"
)

// writable are the directories user code may write to.
var writable = []string{Workspace, Tmp}

// system are the image's, the kernel's and Airlock's own trees: no workdir may be made in them.
var system = []string{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
	"/proc", "/dev", "/sys", "/opt/airlock", Scratch}

// kernel are the pseudo file systems, never reachable through the file API.
var kernel = []string{"/proc", "/dev", "/sys"}

// DevShm is the writable shared-memory directory inside the kernel's /dev.
const DevShm = "/dev/shm"

// Within reports whether the clean absolute path p is dir or lies below it.
func Within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

func withinAny(p string, dirs []string) bool {
	for _, d := range dirs {
		if Within(p, d) {
			return true
		}
	}
	return false
}

// Writable reports whether the clean absolute path p lies in a writable directory
// (Workspace or Tmp, or one of them).
func Writable(p string) bool { return withinAny(p, writable) }

// System reports whether the clean absolute path p lies in a system directory.
func System(p string) bool { return withinAny(p, system) }

// Kernel reports whether the clean absolute path p lies in a kernel pseudo file system
// (/dev/shm excepted: it is scratch space like Tmp).
func Kernel(p string) bool { return !Within(p, DevShm) && withinAny(p, kernel) }
