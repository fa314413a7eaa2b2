package sandboxinit

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/layout"
	"github.com/airlockhq/airlock/internal/seccomp"
)

//go:embed zygote.py
var zygoteScript []byte

// ZygoteDigest is the first 12 hex digits of the zygote script's SHA-256: the daemon and a
// separate sandbox binary must run the same script (sandboxmain.BuildID).
func ZygoteDigest() string {
	sum := sha256.Sum256(zygoteScript)
	return hex.EncodeToString(sum[:6])
}

// ZygoteInit is what a zygote sandbox's init passes on to the Python zygote (fd 3, JSON). The
// daemon's config sets Modules, Lean, UID and GID; the init adds the rest, which are its own.
type ZygoteInit struct {
	Modules  []string `json:"modules"`
	Lean     bool     `json:"lean,omitempty"`
	UID      int      `json:"uid"`
	GID      int      `json:"gid"`
	PTYs     int      `json:"ptys"`
	Devices  []string `json:"devices"` // the /dev entries restrictFS lets be written
	Masked   []string `json:"masked"`
	ReadOnly []string `json:"read_only"`
	Seccomp  string   `json:"seccomp"` // hex of the struct sock_filter array every user process runs under
}

// execZygote builds the zygote sandbox from inside and replaces the init with python3; it
// returns only on failure. The status pipe (fd 4) and the listener (fd 5) stay open for the
// zygote, which reports "ok" once its modules are imported.
func execZygote(cfg *Config) error {
	runtime.LockOSThread()
	if err := buildRoot(cfg); err != nil {
		return err
	}
	if err := step("sethostname", unix.Sethostname([]byte(cfg.Hostname))); err != nil {
		return err
	}
	if err := step("loopback up", loopbackUp()); err != nil {
		return err
	}
	if err := setRlimits(cfg); err != nil {
		return err
	}
	if err := step("set not dumpable", unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)); err != nil {
		return err
	}
	// The filter every user process gets on cgroup v1 (the stricter one: no clone3); a run's
	// user program installs it in its own process before it runs (see lock_down in zygote.py).
	prog, err := seccomp.Program()
	if err != nil {
		return step("seccomp program", err)
	}
	var fb bytes.Buffer
	for _, f := range prog {
		binary.Write(&fb, binary.NativeEndian, f)
	}
	zc := *cfg.Zygote
	zc.Seccomp = hex.EncodeToString(fb.Bytes())
	zc.PTYs, zc.Devices, zc.Masked, zc.ReadOnly = PTYsPerSandbox, devices, maskedPaths, readOnlyPaths
	b, err := json.Marshal(zc)
	if err != nil {
		return step("zygote config", err)
	}
	// Memory files, not arguments or environment: what a forked child could read back from
	// its /proc/self/cmdline or environ is only the short bootstrap below.
	if err := memfdAt(3, "zygote-config", b); err != nil {
		return err
	}
	if err := memfdAt(6, "zygote.py", zygoteScript); err != nil {
		return err
	}
	python, err := lookPython()
	if err != nil {
		return err
	}
	env := []string{"PATH=" + DefaultPath, "LANG=C.UTF-8", "HOME=" + layout.Workspace}
	for _, kv := range cfg.Env {
		env = append(env, kv)
	}
	const boot = "import os;s=os.read(6,1<<22);os.close(6);exec(compile(s,'zygote.py','exec'))"
	return step("exec python3", unix.Exec(python, []string{"python3", "-I", "-c", boot}, env))
}

// DefaultPath is the PATH of every sandbox process (the agent's base environment).
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func lookPython() (string, error) {
	for _, d := range filepath.SplitList(DefaultPath) {
		p := filepath.Join(d, "python3")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &SetupError{Step: "find python3", Msg: "the image has no python3"}
}

// memfdAt puts b in a memory file at descriptor fd, inherited across exec.
func memfdAt(fd int, name string, b []byte) error {
	m, err := unix.MemfdCreate(name, 0)
	if err != nil {
		return step("memfd "+name, err)
	}
	if _, err := unix.Pwrite(m, b, 0); err != nil {
		return step("write "+name, err)
	}
	if m != fd {
		if err := unix.Dup3(m, fd, 0); err != nil {
			return step("dup "+name, err)
		}
		unix.Close(m)
	}
	return nil
}
