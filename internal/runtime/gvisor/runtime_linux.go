package gvisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/airlockhq/airlock/internal/cgroup"
	"github.com/airlockhq/airlock/internal/layout"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

// Runtime starts sandboxes under runsc.
type Runtime struct {
	cfg      Config
	dir      string // StateDir/gvisor
	runscDir string // runsc's --root
	cg       *cgroup.Manager
	binds    []native.Bind
	links    [][2]string
	// imageBinds are an image sandbox's read-only binds: the contract's files of the daemon's
	// /etc over the image's (as the native runtime binds them) and the operator's wheels.
	imageBinds []native.Bind
	layers     *native.Layers     // image sandboxes' writable layers, in StateDir/gvisor/layers
	slots      *native.Slots      // networked sandboxes' host-wide slots; nil without Network
	net        native.LazyNetwork // made on first use (netManager)
	version    string             // runsc's, for doctor and the logs
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// New checks that runsc is there and really runs a sandbox on this host with the configured
// platform (the probe), and prepares the state directory and cgroup root. An error says why
// the runtime cannot be offered, for the start-up log and airlock doctor.
func New(cfg Config) (_ *Runtime, err error) {
	separate := cfg.Exe != ""
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if cfg.StateDir == "" {
		return nil, errors.New("the gvisor runtime needs a state directory")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the gvisor runtime needs root (runsc creates namespaces and cgroups)")
	}
	if !validPlatform(cfg.Platform) {
		return nil, fmt.Errorf("gvisor platform %q: want one of %s", cfg.Platform, strings.Join(Platforms, ", "))
	}
	path, err := exec.LookPath(cfg.Runsc)
	if err != nil {
		return nil, fmt.Errorf("runsc not found (install gVisor's runsc, e.g. apt-get install runsc): %w", err)
	}
	cfg.Runsc = path
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	cfg.StateDir = filepath.Clean(abs)
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = native.DefaultCgroupRoot(cfg.StateDir) + "-gvisor"
	}
	r := &Runtime{cfg: cfg, dir: filepath.Join(cfg.StateDir, "gvisor")}
	r.runscDir = filepath.Join(r.dir, "runsc")
	for _, d := range []string{r.dir, r.runscDir, filepath.Join(r.dir, "sandboxes")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("state directory: %w", err)
		}
	}
	if separate {
		// A separate sandbox binary (airlock-sandbox) is bound into sandboxes from a copy of
		// the runtime's own, as the native runtime starts its sandboxes from one.
		if r.cfg.Exe, err = native.CopyInit(cfg.Exe, filepath.Join(r.dir, "airlock-sandbox")); err != nil {
			return nil, err
		}
	}
	out, err := exec.Command(cfg.Runsc, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("runsc --version: %w", err)
	}
	r.version, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	if r.cg, err = cgroup.New(cfg.CgroupRoot); err != nil {
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	if r.binds, r.links, err = native.HostImage(filepath.Join(r.dir, "etc"), cfg.UID, cfg.GID); err != nil {
		return nil, fmt.Errorf("host image: %w", err)
	}
	if cfg.WheelDir != "" {
		w, err := filepath.Abs(cfg.WheelDir)
		if err != nil {
			return nil, err
		}
		r.binds = append(r.binds, native.Bind{Source: w, Target: layout.WheelDir})
		r.imageBinds = append(r.imageBinds, native.Bind{Source: w, Target: layout.WheelDir})
	}
	for _, f := range native.ContractEtc() {
		r.imageBinds = append(r.imageBinds, native.Bind{Source: filepath.Join(r.dir, "etc", f), Target: "/etc/" + f, File: true})
	}
	r.layers = native.NewLayers(r.dir)
	if cfg.Network != nil {
		if r.slots, err = native.NewSlots(native.Config{StateDir: r.dir, HostDir: cfg.HostDir, UIDBase: cfg.UIDBase, UIDSlots: cfg.UIDSlots}); err != nil {
			return nil, fmt.Errorf("host claims: %w", err)
		}
	}
	if err := r.probe(); err != nil {
		return nil, fmt.Errorf("runsc (%s, platform %s) cannot run a sandbox here: %w", r.version, cfg.Platform, err)
	}
	return r, nil
}

func validPlatform(p string) bool {
	for _, x := range Platforms {
		if p == x {
			return true
		}
	}
	return false
}

// Version is runsc's version line.
func (r *Runtime) Version() string { return r.version }

// Close removes the runtime's parent cgroup once no sandbox is left in it. Live sandboxes
// outlive the daemon (Recover adopts them) and keep it.
func (r *Runtime) Close() error {
	if names, err := r.cg.List(); err != nil || len(names) > 0 {
		return nil
	}
	r.removeV1Leftovers(r.cfg.CgroupRoot)
	if r.slots != nil {
		r.slots.Close()
	}
	return errors.Join(r.net.Close(), r.layers.Close(), r.cg.RemoveRoot())
}

// runsc runs one runsc command with the runtime's global flags, the network none.
func (r *Runtime) runsc(ctx context.Context, args ...string) *exec.Cmd {
	return r.runscNet(ctx, "none", args...)
}

// runscNet runs one runsc command with the global flags and network mode network: "none" (a
// loopback only), or "sandbox" (the sentry's netstack on the interfaces of the namespace the
// spec names).
func (r *Runtime) runscNet(ctx context.Context, network string, args ...string) *exec.Cmd {
	global := []string{"--root", r.runscDir, "--platform", r.cfg.Platform, "--network", network, "--host-uds", "create"}
	return exec.CommandContext(ctx, r.cfg.Runsc, append(global, args...)...)
}

// probe runs the host's true in a sandbox of the host image: runsc, its platform and the
// cgroups all have to work for it to exit 0.
func (r *Runtime) probe() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id := "probe-" + strconv.Itoa(os.Getpid())
	dir := filepath.Join(r.dir, id)
	os.RemoveAll(dir)
	defer os.RemoveAll(dir)
	b := &bundle{dir: dir, exe: "/bin/true", binds: r.binds}
	if err := r.writeBundle(b, func(s *specs.Spec) { s.Process.Args = []string{guestExe} }); err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd := r.runsc(ctx, "run", "--bundle", dir, id)
	cmd.Stderr = &stderr
	err := cmd.Run()
	exec.Command(r.cfg.Runsc, "--root", r.runscDir, "delete", "--force", id).Run()
	if err != nil {
		return fmt.Errorf("%w: %s", err, lastLine(stderr.String()))
	}
	return nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
