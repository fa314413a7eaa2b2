package native

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/agentclient"
	"github.com/airlockhq/airlock/internal/cgroup"
	"github.com/airlockhq/airlock/internal/layout"
	"github.com/airlockhq/airlock/internal/netpolicy"
	"github.com/airlockhq/airlock/internal/runtime/native/sandboxinit"
)

// Config configures the native runtime. Zero values mean defaults.
type Config struct {
	Logger *slog.Logger
	// StateDir holds sockets, logs and state of live sandboxes; default /var/lib/airlock. One
	// runtime at a time may use it (New locks it).
	StateDir string
	// Private, for embedded one-shot engines (`airlock run`): the runtime makes a fresh state
	// directory of its own under HostDir (StateDir must be empty) and Close removes it.
	Private bool
	// CgroupRoot is the parent cgroup of all sandboxes, claimed host-wide by this state
	// directory; default "airlock" for the default state directory, else "airlock-" and a hash
	// of StateDir, so that runtimes with different state directories never share one.
	CgroupRoot string
	// HostDir holds the host-wide claims every airlock process on the host honours (cgroup
	// roots, uid ranges); default /run/airlock. Only tests of the claims themselves change it.
	HostDir string
	// UIDBase is the first host uid (and gid) of the sandboxes' ranges; default 2000000. Each
	// sandbox maps its uids 0…65535 onto its own range UIDBase + slot×65536, claimed host-wide,
	// so no two live sandboxes (of any runtimes on the host) share a host uid, nor the kernel's
	// per-user quotas (pipe buffers, epoll watches, message queues, locked memory).
	UIDBase int
	// UIDSlots is how many ranges lie above UIDBase; default 4096, well above the sandbox
	// limit, spanning UIDBase … UIDBase + 2^28.
	UIDSlots int
	UID, GID int // the sandbox user inside; default 1000
	// Network, if set, lets sandboxes have a network (Spec.Network): their addresses, ranges,
	// resolvers and bounds. Nil: every networked spec is refused (ErrNetworkUnsupported). The
	// nftables table and IPv4 forwarding are set up on the first networked sandbox.
	Network *netpolicy.Config
	// WheelDir, if set, is a host directory of Python wheels bound read-only at
	// /opt/airlock/wheels in every sandbox, for installs without network.
	WheelDir string
	// Exe and Args start a sandbox's init: default /proc/self/exe with argument "agent", so the
	// running binary re-executes itself. The program must call Init first thing when IsInit.
	Exe  string
	Args []string
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.HostDir == "" {
		c.HostDir = "/run/airlock"
	}
	if c.StateDir == "" && !c.Private {
		c.StateDir = defaultStateDir
	}
	if c.UIDBase == 0 {
		c.UIDBase = 2000000
	}
	if c.UIDSlots == 0 {
		c.UIDSlots = 4096
	}
	if c.UID == 0 {
		c.UID, c.GID = 1000, 1000
	}
	if c.Exe == "" {
		c.Exe = selfExe
	}
	if c.Args == nil {
		c.Args = []string{"airlock", "agent"}
	}
}

// Spec is what one sandbox gets.
type Spec struct {
	ID           string
	MemoryBytes  int64
	CPU          float64
	Pids         int64
	ScratchBytes int64            // /workspace, /tmp and /dev/shm together
	NoFile       uint64           // RLIMIT_NOFILE
	Network      netpolicy.Policy // Block (the zero value) or a network of its own (network_linux.go)
	Meta         []byte           // opaque to the runtime; kept with the sandbox's state for Recover
	// Workdir, if set, is a writable directory created on the scratch layer at this clean
	// absolute path (outside /workspace and /tmp, which exist anyway). It must not lie in the
	// image's system directories.
	Workdir string
	// Image, if set, is the sandbox's root: overlayfs of the image's layers below a writable
	// layer of its own, capped on disk at ScratchBytes (default 1 GiB; not the memory limit,
	// and shared by the root, /workspace and /tmp; /dev/shm stays a tmpfs sized like the host
	// image's scratch). Nil is the host image.
	Image *ImageRoot
	// Build (an image sandbox only) is a sandbox of the image builder: its root is writable
	// through the overlay (apt writes /usr and /var) and the agent's processes run as the
	// image's root — uid 0 of the sandbox's user namespace, with no capabilities, like every
	// process the agent starts. Everything else (namespaces, cgroup, disk cap) is as for any
	// sandbox: a build step is untrusted code.
	Build bool
	// Zygote, if set, makes a zygote sandbox: its PID 1 is the Python zygote, driven through
	// RunZygote, not the agent (zygote_linux.go).
	Zygote *ZygoteConfig
}

// ErrReservedWorkdir is returned for a workdir inside a system directory.
var ErrReservedWorkdir = errors.New("workdir may not be inside /usr, /bin, /sbin, /lib*, /etc, /proc, /dev, /sys or /opt/airlock")

// checkWorkdir validates Spec.Workdir. The engine refuses such workdirs first (the rule is
// layout's); this is defence in depth, since the runtime bind-mounts whatever reaches it. The
// writable directories are refused too: the engine makes a workdir there itself, with no mount.
func checkWorkdir(w string) error {
	if w == "" {
		return nil
	}
	if !filepath.IsAbs(w) || filepath.Clean(w) != w || w == "/" || strings.ContainsRune(w, 0) {
		return fmt.Errorf("workdir %q must be a clean absolute path", w)
	}
	if layout.System(w) || layout.Writable(w) {
		return ErrReservedWorkdir
	}
	return nil
}

// The sandbox's cgroup holds two groups below it: the agent (PID 1) and its user processes.
//
//	<root>/<id>         memory: user + scratch + agentMemoryReserve; pids: user + agentPidsReserve; cpu
//	<root>/<id>/agent   v2 only (a v2 group with children may hold no process): the agent
//	<root>/<id>/user    memory: Spec.MemoryBytes; pids: Spec.Pids — every process the agent starts
//
// User code exhausting its memory or pids meets the user group's limits, so the kernel's OOM killer
// and fork failures stay among user processes: the agent is never the victim. The outer limit
// leaves room for what the agent itself holds — its heap, and scratch pages written through the
// file API, which are charged to the writer (the agent) rather than to the user group — and is
// reached only if the agent itself misbehaves.
//
// On v1 (but for a zygote sandbox, whose runs' groups nest below the outer one) the memory
// hierarchy has one group per sandbox instead of two (cgroup.Manager.CreateSplit):
//
//	memory/<root>/<id>        the user group's memory: Spec.MemoryBytes, every user process
//	memory/<root>             every agent of the runtime (the runtime's root group), unlimited
//	cpu,cpuacct,pids,freezer  as above: <root>/<id> (the agent) and <root>/<id>/user
//
// Each memory cgroup costs the kernel a map of every superblock's shrinker on the host, ≈ 1 KiB per
// 64 superblocks, ≈ 125 KiB at 1,000 sandboxes (BENCHMARKS.md, "Idle footprint"), and the agent
// needs none of its own: the user's limit stays the user's alone (the agent is in no group it
// could fill), and what the agent charges is bounded without one — the scratch pages it writes for
// the file API by the writable layers' tmpfs size, its heap by the limit it sets its collector
// (agent.Serve). The outer group's pids and CPU limits still cover the agent.
const (
	agentPidsReserve   = 128
	agentMemoryReserve = 128 << 20
)

// userGroup is the name of the child cgroup of a sandbox that holds its user processes.
const userGroup = "user"

// ScratchFor is the size of the writable layers a sandbox with memory limit memory (0: none)
// actually gets when scratch is requested: the layers are a tmpfs whose pages count against the
// memory limit of whoever writes them, so a cap above the memory limit could only ever be met by
// the OOM killer. Three quarters of the memory limit is the most the layers take, leaving a
// quarter for processes — a full disk answers ENOSPC (HTTP 413), not a killed sandbox.
func ScratchFor(scratch, memory int64) int64 {
	if memory <= 0 {
		return scratch
	}
	if c := memory / 4 * 3; scratch <= 0 || scratch > c {
		return c
	}
	return scratch
}

// Runtime starts sandboxes with the native isolation layers.
type Runtime struct {
	cfg Config

	selfStart uint64 // this process's start time, written into lock and claim files

	// Host-wide locks (hostlock_linux.go), released by Close.
	stateLock     *os.File // flock on <StateDir>/lock
	rootClaim     *os.File // flock on <HostDir>/cgroup-<root>.lock
	exclusiveRoot bool     // this state directory owned the cgroup root before, too
	uidLock       *os.File // flock'd around the choice of a uid range

	slotMu sync.Mutex     // guards slots and the use of uidLock
	slots  map[int]string // uid-range slots this runtime holds a host-wide claim on → sandbox id

	cg      *cgroup.Manager
	binds   []bindSpec
	links   [][2]string
	staging string

	images imageState // image sandboxes' writable layers and roots (overlay_linux.go)

	net LazyNetwork // made on first use (network_linux.go)
}

// idPattern is compiled on first use: this binary is also every sandbox's PID 1, whose
// start-up must stay lean.
var idPattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`) })

// New locks the state directory, claims the cgroup root, prepares both and the host image
// description. It fails with an error wrapping ErrInUse when another live runtime holds the state
// directory or the cgroup root.
func New(cfg Config) (_ *Runtime, err error) {
	cfg.setDefaults()
	if os.Geteuid() != 0 {
		return nil, errors.New("the native runtime needs root (it creates namespaces and cgroups)")
	}
	if cfg.UIDSlots < 1 || cfg.UIDSlots > 1<<14 {
		return nil, fmt.Errorf("uid slots %d: want 1…%d", cfg.UIDSlots, 1<<14)
	}
	selfStart, err := procStartTime(os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("own start time: %w", err)
	}
	r := &Runtime{cfg: cfg, selfStart: selfStart, slots: map[int]string{}}
	defer func() {
		if err != nil {
			r.releaseHost(false)
			if cfg.Private && r.cfg.StateDir != "" {
				os.RemoveAll(r.cfg.StateDir)
			}
		}
	}()
	if err := r.prepareHostDir(); err != nil {
		return nil, err
	}
	if cfg.Private {
		if cfg.StateDir != "" {
			return nil, errors.New("a private runtime makes its own state directory: leave StateDir empty")
		}
		if r.cfg.StateDir, err = os.MkdirTemp(cfg.HostDir, "run-"); err != nil {
			return nil, fmt.Errorf("private state directory: %w", err)
		}
	}
	// One spelling per directory: the lock and claims compare and hash it.
	if abs, err := filepath.Abs(r.cfg.StateDir); err == nil {
		r.cfg.StateDir = filepath.Clean(abs)
	}
	if r.cfg.CgroupRoot == "" {
		r.cfg.CgroupRoot = DefaultCgroupRoot(r.cfg.StateDir)
	}
	cfg = r.cfg
	r.staging = filepath.Join(cfg.StateDir, "root")
	// The sandbox's init (host uid UIDBase) must traverse the state directory to reach the
	// empty staging directory it mounts its root on: 0711 lets it pass without listing.
	// The sandboxes directory, with the agent sockets, stays private.
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{cfg.StateDir, 0o711}, {r.staging, 0o755}, {sandboxinit.EmptyDir(r.staging), 0o555}, {filepath.Join(cfg.StateDir, "sandboxes"), 0o700}} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			return nil, fmt.Errorf("state directory: %w", err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return nil, fmt.Errorf("state directory: %w", err)
		}
		// Nothing in the state directory is touched before it is ours (the host image below
		// rewrites <state>/etc, which a live runtime's sandboxes have bound).
		if d.path == cfg.StateDir {
			if err := r.lockStateDir(); err != nil {
				return nil, err
			}
		}
	}
	if err := checkTraversable(cfg.StateDir); err != nil {
		return nil, err
	}
	if r.cfg.Exe != selfExe {
		if r.cfg.Exe, err = copyInit(r.cfg.Exe, filepath.Join(cfg.StateDir, "airlock-sandbox")); err != nil {
			return nil, err
		}
	}
	if ents, err := os.ReadDir(sandboxinit.EmptyDir(r.staging)); err != nil || len(ents) > 0 {
		return nil, fmt.Errorf("state directory: %s must be an empty directory (sandboxes see it where the host's tree is hidden)", sandboxinit.EmptyDir(r.staging))
	}
	if err := checkUIDRange(cfg.UIDBase, cfg.UIDSlots); err != nil {
		return nil, err
	}
	if r.cg, err = cgroup.New(cfg.CgroupRoot); err != nil {
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	if err := r.claimCgroupRoot(); err != nil {
		return nil, err
	}
	r.binds, r.links, err = hostImage(filepath.Join(cfg.StateDir, "etc"), cfg.UID, cfg.GID)
	if err != nil {
		return nil, fmt.Errorf("host image: %w", err)
	}
	if cfg.WheelDir != "" {
		abs, err := filepath.Abs(cfg.WheelDir)
		if err != nil {
			return nil, err
		}
		if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("wheel directory %s: not a directory", abs)
		}
		if err := checkTraversable(filepath.Join(abs, "x")); err != nil {
			return nil, fmt.Errorf("wheel directory: %w", err)
		}
		r.binds = append(r.binds, bindSpec{Source: abs, Target: "/opt/airlock/wheels"})
	}
	return r, nil
}

// checkUIDRange refuses a sandbox uid range that overlaps host users or the subordinate ranges
// handed to rootless containers (/etc/subuid, /etc/subgid): a host process running as one of
// those uids could signal or trace sandbox processes.
func checkUIDRange(base, slots int) error {
	lo, hi := base, base+slots*65536
	overlaps := func(start, n int) bool { return start < hi && start+n > lo }
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			parts := strings.Split(strings.TrimSpace(line), ":")
			if len(parts) != 3 {
				continue
			}
			start, err1 := strconv.Atoi(parts[1])
			n, err2 := strconv.Atoi(parts[2])
			if err1 == nil && err2 == nil && overlaps(start, n) {
				return fmt.Errorf("sandbox uids %d…%d overlap %s (%s): choose another --uid-base", lo, hi-1, f, line)
			}
		}
	}
	if b, err := os.ReadFile("/etc/passwd"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			parts := strings.Split(line, ":")
			if len(parts) < 3 {
				continue
			}
			if uid, err := strconv.Atoi(parts[2]); err == nil && overlaps(uid, 1) {
				return fmt.Errorf("sandbox uids %d…%d include host user %s (uid %d): choose another --uid-base", lo, hi-1, parts[0], uid)
			}
		}
	}
	return nil
}

// ErrNoUIDRange is returned by Create when every uid range is claimed by a live sandbox.
var ErrNoUIDRange = errors.New("no free uid range for a sandbox")

// allocSlot claims a free uid-range slot for sandbox id, host-wide: the first free one from a
// random start, so that runtimes do not all probe the same slots first.
func (r *Runtime) allocSlot(id string) (int, error) {
	r.slotMu.Lock()
	defer r.slotMu.Unlock()
	unlock, err := r.lockUIDs()
	if err != nil {
		return 0, err
	}
	defer unlock()
	start := rand.IntN(r.cfg.UIDSlots)
	for i := range r.cfg.UIDSlots {
		n := (start + i) % r.cfg.UIDSlots
		if _, mine := r.slots[n]; mine {
			continue
		}
		free, err := r.uidClaimFree(r.cfg.hostUID(n, 0))
		if err != nil {
			return 0, err
		}
		if !free {
			continue
		}
		if err := r.writeUIDClaim(n, id); err != nil {
			return 0, err
		}
		r.slots[n] = id
		return n, nil
	}
	return 0, fmt.Errorf("%w (%d ranges from uid %d, all claimed)", ErrNoUIDRange, r.cfg.UIDSlots, r.cfg.UIDBase)
}

// keepSlot holds on to the claim of a sandbox found alive by Recover, claiming its range anew if
// the claim is missing (state written before host-wide claims, say).
func (r *Runtime) keepSlot(n int, id string) {
	r.slotMu.Lock()
	defer r.slotMu.Unlock()
	r.slots[n] = id
	first := r.cfg.hostUID(n, 0)
	if b, err := os.ReadFile(r.uidClaimPath(first)); err == nil {
		if o, ok := readOwner(b); ok && o.StateDir == r.cfg.StateDir && o.Sandbox == id && o.FirstUID == first {
			return
		}
	}
	unlock, err := r.lockUIDs()
	if err == nil {
		defer unlock()
		if free, ferr := r.uidClaimFree(first); ferr != nil || !free {
			err = errors.Join(ferr, errors.New("claimed by another sandbox"))
		} else {
			err = r.writeUIDClaim(n, id)
		}
	}
	if err != nil {
		r.cfg.Logger.Warn("recovered sandbox: uid range claim", "sandbox", id, "first_uid", first, "err", err)
	}
}

// freeSlot releases the host-wide claim on slot n.
func (r *Runtime) freeSlot(n int) {
	r.slotMu.Lock()
	defer r.slotMu.Unlock()
	if _, mine := r.slots[n]; !mine {
		return
	}
	delete(r.slots, n)
	if err := os.Remove(r.uidClaimPath(r.cfg.hostUID(n, 0))); err != nil && !errors.Is(err, os.ErrNotExist) {
		r.cfg.Logger.Warn("release uid range claim", "slot", n, "err", err)
	}
}

// hostUID is the host uid that uid inside the sandbox with uid-range slot n maps to.
func (c *Config) hostUID(slot, uid int) int { return c.UIDBase + slot*65536 + uid }

// CheckPTYPool reports whether the host's pool of PTYs for non-host devpts instances can serve
// sandboxes × PTYsPerSandbox; if not, an operator should raise kernel.pty.max or lower the
// sandbox limit, or sandboxes could be refused PTYs once many are busy.
func CheckPTYPool(sandboxes int) error {
	read := func(name string) (int, error) {
		b, err := os.ReadFile("/proc/sys/kernel/pty/" + name)
		if err != nil {
			return 0, err
		}
		return strconv.Atoi(strings.TrimSpace(string(b)))
	}
	maxPTY, err := read("max")
	if err != nil {
		return nil // no such knob: nothing to check
	}
	reserve, _ := read("reserve")
	if pool, need := maxPTY-reserve, sandboxes*PTYsPerSandbox; pool < need {
		return fmt.Errorf("kernel.pty.max − kernel.pty.reserve = %d PTYs, fewer than %d sandboxes × %d; "+
			"raise kernel.pty.max to at least %d (sysctl -w kernel.pty.max=%d)", pool, sandboxes, PTYsPerSandbox, need+reserve, need+reserve)
	}
	return nil
}

// checkTraversable makes sure every ancestor of dir lets others through (o+x): a sandbox's init
// runs as an unprivileged host uid and must reach the staging directory inside dir.
func checkTraversable(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := filepath.Dir(abs); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("state directory %s: its parent %s (mode %v) must be traversable by others (chmod o+x), "+
				"since sandboxes start as an unprivileged uid", abs, p, fi.Mode().Perm())
		}
		if p == "/" {
			return nil
		}
	}
}

// CgroupVersion is 1 or 2.
func (r *Runtime) CgroupVersion() int { return r.cg.Version() }

// Sandbox is one running sandbox: its init (the agent) as PID 1 of its namespaces, its cgroup and
// the socket the agent serves on.
type Sandbox struct {
	id   string
	pid  int
	proc *os.Process
	cg   *cgroup.Group
	// user is the user processes' group; for a sandbox recovered after a restart it is loaded
	// on first use, under userOnce.
	user     *cgroup.Group
	userOnce sync.Once
	dir      string
	sock     string
	client   *agentclient.Client
	logger   *slog.Logger

	done    chan struct{}         // closed when PID 1 has exited
	release func()                // frees the uid range; called once by Destroy
	image   *sandboxImage         // an image sandbox's writable layer; nil for the host image
	net     *netpolicy.Attachment // a networked sandbox's network; nil when blocked
	resolv  string                // its resolv.conf
	// What SetLimits needs (limits_linux.go): the writable layers' size and the request it
	// came from, the user memory limit now, and the cgroup version. Zero in a recovered sandbox.
	scratch, scratchReq, memory int64
	v2                          bool
	split                       bool        // v1: one memory group, the user group's (CreateSplit)
	zygote                      *zygotePool // PID 1 is the Python zygote: its prepared children (zygote_linux.go)
	destroy                     sync.Once
	err                         error // result of Destroy
}

// Create starts a sandbox and returns once its agent is serving. On error nothing is left behind.
//
// It runs the steps below in order over a cleanup stack: each step pushes the undo of what it
// acquired, and if a later one fails the undos run in reverse order. An error names its step.
func (r *Runtime) Create(ctx context.Context, spec Spec) (_ *Sandbox, err error) {
	if err := validateSpec(spec); err != nil {
		return nil, err
	}
	c := &creation{r: r, spec: spec}
	defer func() {
		if err != nil {
			c.undo.run()
		}
	}()
	// Descriptors the init inherits or Create only needs meanwhile are closed in any case,
	// before any undo runs.
	defer func() {
		for i := len(c.files) - 1; i >= 0; i-- {
			c.files[i].Close()
		}
	}()
	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"uid slot", c.uidSlot},
		{"state directory", c.stateDir},
		{"writable layer", c.writableLayer},
		{"cgroups", c.cgroups},
		{"socket and pipes", c.channels},
		{"spawn init", c.spawnInit},
		{"place in cgroups", c.place},
		{"network", c.network},
		{"image root", c.imageRoot},
		{"configure", c.configure},
		// While the init builds the sandbox from its config (≈ 2 ms), not after: if a later
		// step fails, the state directory's undo removes the state with everything else.
		{"persist state", c.persist},
		{"await ready", c.awaitReady},
		{"release host root", c.releaseHostRoot},
	}
	// Each step's duration goes to the debug log: create latency is a target (BENCHMARKS.md), and
	// this is where it is spent.
	took := make([]any, 0, 2*len(steps))
	for _, st := range steps {
		t0 := time.Now()
		if err := st.run(ctx); err != nil {
			var se *stepError
			if errors.As(err, &se) { // a step that found a later step's failure
				return nil, fmt.Errorf("%s: %w", se.step, se.err)
			}
			return nil, fmt.Errorf("%s: %w", st.name, err)
		}
		took = append(took, st.name, time.Since(t0))
	}
	r.cfg.Logger.DebugContext(ctx, "sandbox created", append([]any{"sandbox", spec.ID}, took...)...)
	c.undo.release()
	c.sb.client = agentClient(c.sock)
	return c.sb, nil
}

// validateSpec refuses a spec Create cannot honour before anything is acquired.
func validateSpec(spec Spec) error {
	if !idPattern().MatchString(spec.ID) {
		return fmt.Errorf("sandbox id %q: invalid", spec.ID)
	}
	if _, err := spec.Network.Rules(); err != nil {
		return err
	}
	if spec.Build && spec.Image == nil {
		return errors.New("a build sandbox needs an image")
	}
	if spec.Image != nil {
		if err := checkImage(spec.Image); err != nil {
			return err
		}
	}
	return checkWorkdir(spec.Workdir)
}

// creation is one Create in progress: what its steps have acquired so far.
type creation struct {
	r     *Runtime
	spec  Spec
	undo  cleanup
	files []*os.File // closed when Create returns, whatever the outcome

	slot, owner int // uid-range slot; the host uid of the sandbox's root inside (its agent)
	dir, sock   string

	scratch          int64
	user             cgroup.Limits // the user group's limits
	v2, split        bool          // split: the v1 layout with one memory group (see userGroup)
	g, agentG, userG *cgroup.Group
	userFiles        []*os.File // the user group's descriptor (v2) or tasks files (v1), for the init

	lnFile, cfgR, cfgW, statusR, statusW, logf *os.File

	sb *Sandbox

	image imageCreation // the image steps' acquisitions (overlay_linux.go)
}

// keep registers f to be closed when Create returns.
func (c *creation) keep(f *os.File) *os.File {
	c.files = append(c.files, f)
	return f
}

func (c *creation) uidSlot(context.Context) error {
	slot, err := c.r.allocSlot(c.spec.ID)
	if err != nil {
		return err
	}
	c.slot, c.owner = slot, c.r.cfg.hostUID(slot, 0)
	c.undo.add(func() { c.r.freeSlot(slot) })
	return nil
}

func (c *creation) stateDir(context.Context) error {
	c.dir = filepath.Join(c.r.cfg.StateDir, "sandboxes", c.spec.ID)
	if err := os.Mkdir(c.dir, 0o700); err != nil {
		return fmt.Errorf("sandbox directory: %w", err)
	}
	c.undo.add(func() { os.RemoveAll(c.dir) })
	return nil
}

// cgroups creates the outer group, then (v2) the agent's leaf and the user group, or (v1) the
// user group with its limits — the pair split, with the agent in the runtime's shared memory
// group, unless the sandbox is a zygote or the host cannot — and opens what the init inherits of
// the user group.
func (c *creation) cgroups(ctx context.Context) error {
	spec := c.spec
	c.scratch = ScratchFor(spec.ScratchBytes, spec.MemoryBytes)
	c.v2 = c.r.cg.Version() == 2
	c.split = !c.v2 && spec.Zygote == nil
	lim := Limits{MemoryBytes: spec.MemoryBytes, CPU: spec.CPU, Pids: spec.Pids}
	var outer cgroup.Limits
	outer, c.user = groupLimits(lim, c.scratch, c.v2, c.split)
	var g *cgroup.Group
	var err error
	if c.split {
		g, c.userG, err = c.r.cg.CreateSplit(spec.ID, userGroup, outer, c.user)
		if errors.Is(err, errors.ErrUnsupported) { // memory co-mounted with another controller
			c.split = false
			outer, c.user = groupLimits(lim, c.scratch, c.v2, false)
		}
	}
	if !c.split {
		g, err = c.r.cg.Create(spec.ID, outer)
	}
	if err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	c.g = g
	c.undo.add(func() {
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		g.Kill(kctx)
		g.Delete()
	})
	// On v2 the user group gets its limits only once the init has left the outer group (a group
	// that delegates controllers may hold no process); it must exist before the init starts,
	// though, because the init inherits a descriptor of it.
	if c.v2 {
		if c.agentG, err = g.CreateChild("agent", cgroup.Limits{}); err != nil {
			return err
		}
		if c.userG, err = g.CreateChild(userGroup, cgroup.Limits{}); err != nil {
			return err
		}
		fd, _, err := c.userG.DirFD()
		if err != nil {
			return err
		}
		c.userFiles = []*os.File{c.keep(os.NewFile(uintptr(fd), "user cgroup"))}
		return nil
	}
	if !c.split {
		if c.userG, err = g.CreateChild(userGroup, c.user); err != nil {
			return err
		}
	}
	files, err := c.userG.OpenTasks()
	for _, f := range files {
		c.keep(f)
	}
	if err != nil {
		return err
	}
	c.userFiles = files
	return nil
}

// channels opens the agent's socket, the config and status pipes and the agent's log.
func (c *creation) channels(context.Context) error {
	c.sock = filepath.Join(c.dir, "agent.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: c.sock, Net: "unix"})
	if err != nil {
		return fmt.Errorf("agent socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	lnFile, err := ln.File()
	ln.Close()
	if err != nil {
		return fmt.Errorf("agent socket: %w", err)
	}
	c.lnFile = c.keep(lnFile)

	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("config pipe: %w", err)
	}
	c.cfgR, c.cfgW = c.keep(cfgR), c.keep(cfgW)
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("status pipe: %w", err)
	}
	c.statusR, c.statusW = c.keep(statusR), c.keep(statusW)
	logf, err := os.OpenFile(filepath.Join(c.dir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("agent log: %w", err)
	}
	c.logf = c.keep(logf)
	return nil
}

// spawnInit starts the init, cloned into new namespaces, in a user namespace owned by the
// range's own host uid, and (v2) born in the outer group. Its descriptors 3, 4, 5 are the config
// pipe, the status pipe and the socket, then the user group's files.
func (c *creation) spawnInit(context.Context) error {
	size := 65536
	attr := &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID |
			syscall.CLONE_NEWNET | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: c.owner, Size: size}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: c.owner, Size: size}},
		GidMappingsEnableSetgroups: true,
		// The clone keeps the daemon's uid 0, which is unmapped inside the new user namespace;
		// switch to the namespace's own uid 0 (host owner) before exec, or exec drops every
		// capability.
		Credential: &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{}},
		Setsid:     true,
	}
	if fd, ok, err := c.g.DirFD(); err != nil {
		return fmt.Errorf("cgroup fd: %w", err)
	} else if ok {
		// cgroup v2: born inside its cgroup, and its cgroup namespace is rooted there, so the
		// agent sees (and may start children in) the user group below it.
		defer syscall.Close(fd)
		attr.UseCgroupFD, attr.CgroupFD = true, fd
		attr.Cloneflags |= syscall.CLONE_NEWCGROUP
	}
	cmd := &exec.Cmd{
		Path:        c.r.cfg.Exe,
		Args:        c.r.cfg.Args,
		Env:         append([]string{"AIRLOCK_SANDBOX_INIT=1"}, agentRuntimeEnv(c.spec.CPU)...),
		Stdout:      c.logf,
		Stderr:      c.logf,
		ExtraFiles:  append([]*os.File{c.cfgR, c.statusW, c.lnFile}, c.userFiles...),
		SysProcAttr: attr,
	}
	if err := startOwnedBy(cmd, c.owner); err != nil {
		return fmt.Errorf("start sandbox init: %w", err)
	}
	c.cfgR.Close()
	c.statusW.Close()
	slot := c.slot
	sb := &Sandbox{id: c.spec.ID, pid: cmd.Process.Pid, proc: cmd.Process, cg: c.g, user: c.userG, dir: c.dir, sock: c.sock,
		done: make(chan struct{}), logger: c.r.cfg.Logger.With("sandbox", c.spec.ID),
		release: func() { c.r.freeSlot(slot) }, scratch: c.scratch, scratchReq: c.spec.ScratchBytes,
		memory: c.spec.MemoryBytes, v2: c.v2, split: c.split}
	// The init's pid stays its own until it is reaped below, so the pidfd is the init's.
	pidfd, perr := unix.PidfdOpen(cmd.Process.Pid, unix.PIDFD_NONBLOCK)
	go func() {
		if perr == nil {
			awaitExit(pidfd) // then Wait reaps at once, without holding a thread meanwhile
		}
		cmd.Wait()
		close(sb.done)
	}()
	c.undo.add(func() {
		cmd.Process.Kill()
		<-sb.done
	})
	c.sb = sb
	return nil
}

// awaitExit returns once the process of pidfd (opened PIDFD_NONBLOCK) has exited, and closes
// pidfd. It waits on the Go runtime's poller: a goroutine blocked in wait4, waitid or poll
// holds an OS thread of the daemon for as long — one per live sandbox, each a task with its 16
// KiB kernel stack and the runtime's stacks for it (BENCHMARKS.md, "Idle footprint"). Where
// the poller refuses the descriptor it falls back to a blocking poll.
func awaitExit(pidfd int) {
	f := os.NewFile(uintptr(pidfd), "pidfd")
	defer f.Close()
	exited := func(fd uintptr, timeout int) (bool, error) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, timeout)
		return n > 0, err
	}
	if rc, err := f.SyscallConn(); err == nil {
		var perr error
		err = rc.Read(func(fd uintptr) bool {
			done, err := exited(fd, 0)
			if err != nil && err != unix.EINTR {
				perr = err
				return true
			}
			return done
		})
		if err == nil && perr == nil {
			return
		}
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		for {
			if done, err := exited(fd, -1); done || (err != nil && err != unix.EINTR) {
				return
			}
		}
	})
}

// agentRuntimeEnv tunes the Go runtime of a sandbox's init — the agent — which reads these
// variables before any of its code runs (the agent never passes its own environment on; see
// agent.Config.Env). Each costs or saves memory in every idle sandbox (BENCHMARKS.md, "Idle
// footprint"):
//   - GOMAXPROCS: as many Ps as the sandbox's CPU limit lets the agent use, not the host's cores:
//     the runtime cannot see a v1 cgroup's quota from inside the sandbox, and every P brings its
//     caches and the threads that run it.
//   - memprofilerate=0: no heap profiling, whose bucket table and records nothing in a sandbox
//     reads.
func agentRuntimeEnv(cpu float64) []string {
	procs := runtime.NumCPU()
	if cpu > 0 {
		procs = min(procs, max(1, int(math.Ceil(cpu))))
	}
	return []string{"GOMAXPROCS=" + strconv.Itoa(procs), "GODEBUG=memprofilerate=0"}
}

// place moves the init into its cgroups: on v1 it joins the outer group; on v2 it moves from
// the outer group into the agent's leaf (placeV2).
func (c *creation) place(context.Context) error {
	if c.v2 {
		return placeV2(c.g, c.agentG, c.userG, c.sb.pid, c.user, c.owner)
	}
	if err := c.g.Add(c.sb.pid); err != nil {
		return fmt.Errorf("join cgroup: %w", err)
	}
	return nil
}

// configure sends the init its config on fd 3.
func (c *creation) configure(context.Context) error {
	icfg := initConfig{
		ID: c.spec.ID, Hostname: "sandbox", Staging: c.r.staging,
		Binds: c.r.binds, Symlinks: c.r.links,
		ScratchSize: c.scratch, UID: c.r.cfg.UID, GID: c.r.cfg.GID, NoFile: c.spec.NoFile,
		NProc: uint64(c.spec.Pids), Workdir: c.spec.Workdir,
		UserCgroup: len(c.userFiles), CgroupV2: c.v2,
	}
	c.configureImage(&icfg)
	c.configureZygote(&icfg)
	if c.sb.resolv != "" {
		// After /etc (or the image's contract files): the sandbox's own resolver wins.
		icfg.Binds = append(icfg.Binds, bindSpec{Source: c.sb.resolv, Target: "/etc/resolv.conf", File: true})
	}
	if err := json.NewEncoder(c.cfgW).Encode(&icfg); err != nil {
		return fmt.Errorf("send sandbox config: %w", err)
	}
	c.cfgW.Close()
	return nil
}

// awaitReady waits for the init's report on fd 4 that the agent serves.
func (c *creation) awaitReady(ctx context.Context) error { return waitReady(ctx, c.statusR) }

// stepError is a creation step's failure that belongs to another step, named step.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// persist writes the state a restarted daemon recovers the sandbox from.
func (c *creation) persist(ctx context.Context) error {
	start, err := procStartTime(c.sb.pid)
	if err != nil {
		// The init is gone already (it runs while this step does): what it reported on its
		// way out, which await ready reads, is the reason, not the missing /proc entry.
		if rerr := waitReady(ctx, c.statusR); rerr != nil {
			return &stepError{step: "await ready", err: rerr}
		}
		return fmt.Errorf("sandbox init: %w", err)
	}
	return writeState(c.dir, state{ID: c.spec.ID, Pid: c.sb.pid, Start: start, Meta: c.spec.Meta, Slot: c.slot,
		Network: c.spec.Network, SplitMemory: c.split})
}

// placeV2 moves the init from the outer group into the agent's leaf, delegates the controllers
// to the children, sets the user group's limits, and lets the agent (host uid owner) start
// processes in the user group.
func placeV2(g, agentG, userG *cgroup.Group, pid int, user cgroup.Limits, owner int) error {
	if err := agentG.Add(pid); err != nil {
		return fmt.Errorf("join agent cgroup: %w", err)
	}
	if err := g.EnableChildren(); err != nil {
		return err
	}
	if err := userG.SetLimits(user); err != nil {
		return err
	}
	// clone3(CLONE_INTO_CGROUP) needs write access to cgroup.procs of the common ancestor of
	// the agent's group and the user group.
	for _, x := range []*cgroup.Group{g, userG} {
		if err := x.ChownProcs(owner, owner); err != nil {
			return err
		}
	}
	return nil
}

// startOwnedBy starts cmd — which clones a new user namespace — from a thread whose effective
// uid is uid, keeping the daemon's capabilities (SECBIT_NO_SETUID_FIXUP), so that the namespace
// is owned by uid rather than by root. The kernel charges per-user counts that a sandbox's
// processes consume (inotify instances and watches, user namespaces, …) at every level of the
// user-namespace tree; with root as the owner every sandbox and every host root process would
// share root's limits (fs.inotify.max_user_instances is 128), so one sandbox could make inotify
// fail for other tenants and for the host. Owned by its own range's uid, each sandbox gets the
// host's per-user limits for itself.
//
// Credentials are per thread in Linux, so raw syscalls change only this locked thread, which is
// never unlocked: the Go runtime discards it when the goroutine ends.
func startOwnedBy(cmd *exec.Cmd, uid int) error {
	const secbitNoSetuidFixup = 1 << 2 // <linux/securebits.h> SECURE_NO_SETUID_FIXUP
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if _, _, e := unix.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_SECUREBITS, secbitNoSetuidFixup, 0); e != 0 {
			errc <- fmt.Errorf("keep capabilities: %w", e)
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			errc <- fmt.Errorf("switch to uid %d: %w", uid, e)
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}

// waitReady reads the init's status: "ok", or a JSON SetupError, or EOF if it died.
func waitReady(ctx context.Context, status *os.File) error {
	if dl, ok := ctx.Deadline(); ok {
		status.SetReadDeadline(dl)
	} else {
		status.SetReadDeadline(time.Now().Add(30 * time.Second))
	}
	b, err := io.ReadAll(io.LimitReader(status, 64<<10))
	if err != nil {
		return fmt.Errorf("wait for sandbox init: %w", err)
	}
	switch {
	case string(b) == "ok":
		return nil
	case len(b) == 0:
		return errors.New("sandbox init exited during setup")
	}
	var se SetupError
	if err := json.Unmarshal(b, &se); err != nil {
		return fmt.Errorf("sandbox init: unexpected status %q", b)
	}
	return &se
}

// agentClient speaks HTTP/2 cleartext to the agent over the sandbox's unix socket; all calls
// multiplex over one connection.
func agentClient(sock string) *agentclient.Client { return agentclient.Dial(sock) }

// state is persisted beside the socket so a restarted daemon can find the sandbox again.
type state struct {
	ID    string `json:"id"`
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"` // PID 1's start time in clock ticks since boot: guards against pid reuse
	Meta  []byte `json:"meta,omitempty"`
	Slot  int    `json:"slot"` // uid-range slot
	// Network is the sandbox's policy; the zero value (Block) in states written before networks.
	Network netpolicy.Policy `json:"network,omitzero"`
	// SplitMemory is the v1 layout with one memory group (see userGroup); false in states
	// written before it, whose sandboxes have the outer and the user memory group.
	SplitMemory bool `json:"split_memory,omitempty"`
}

func writeState(dir string, st state) error {
	b, _ := json.Marshal(st)
	tmp := filepath.Join(dir, "state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write sandbox state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "state.json")); err != nil {
		return fmt.Errorf("write sandbox state: %w", err)
	}
	return nil
}

// ID is the sandbox's id.
func (s *Sandbox) ID() string { return s.id }

// Pid is the host pid of the sandbox's PID 1.
func (s *Sandbox) Pid() int { return s.pid }

// Agent is the client of the sandbox's agent.
func (s *Sandbox) Agent() *agentclient.Client { return s.client }

// Done is closed when the sandbox's PID 1 has exited.
func (s *Sandbox) Done() <-chan struct{} { return s.done }

// Processes counts the sandbox's processes (the agent included).
func (s *Sandbox) Processes() int {
	pids, _ := s.cg.Pids()
	return len(pids)
}

// Stats reads the sandbox cgroup's usage.
// CPU time is the whole sandbox's; memory, peak memory and the OOM and limit counters are the
// user processes' (their group is where the memory limit and so the OOM killer act).
func (s *Sandbox) Stats() (cgroup.Stats, error) {
	st, err := s.cg.Stats()
	if err != nil {
		return st, err
	}
	s.userOnce.Do(func() {
		if s.user == nil {
			s.user, _ = s.cg.LoadChild(userGroup) // recovered: absent for sandboxes made before the split
		}
	})
	if s.user == nil {
		return st, nil
	}
	us, err := s.user.Stats()
	if err != nil {
		return st, err
	}
	st.Memory, st.PeakMemory, st.OOMKills, st.MemoryFailcnt = us.Memory, us.PeakMemory, us.OOMKills, us.MemoryFailcnt
	return st, nil
}

// Destroy kills every process of the sandbox and removes its cgroup, socket and state. It is
// idempotent and runs to completion even if ctx is already cancelled (bounded by its own timeout).
func (s *Sandbox) Destroy(ctx context.Context) error {
	s.destroy.Do(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		// Every process of the sandbox is in its PID namespace, and when the namespace's init
		// dies the kernel kills all of them and waits for them before the init's own exit is
		// reported: once done is closed, nothing of the sandbox runs. The cgroup kill (freeze,
		// kill, thaw) is the fallback for an init that does not die in time, or for anything
		// left in the group regardless.
		s.proc.Signal(syscall.SIGKILL)
		var errs []error
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
		select {
		case <-s.done:
		case <-wctx.Done():
		}
		wcancel()
		s.closeZygote()
		if pids, err := s.cg.Pids(); err != nil || len(pids) > 0 {
			if err := s.cg.Kill(ctx); err != nil {
				errs = append(errs, fmt.Errorf("kill cgroup: %w", err))
			}
		}
		select {
		case <-s.done:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("wait for sandbox init: %w", ctx.Err()))
		}
		if s.client != nil {
			s.client.CloseIdleConnections()
		}
		if err := s.cg.Delete(); err != nil {
			errs = append(errs, fmt.Errorf("delete cgroup: %w", err))
		}
		if err := s.image.remove(); err != nil {
			errs = append(errs, err)
		}
		// Before the uid range (and with it the slot's addresses and veth name) is released.
		if err := s.closeNetwork(); err != nil {
			errs = append(errs, err)
		}
		if err := os.RemoveAll(s.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove state: %w", err))
		}
		// The uid range is reused only once nothing of this sandbox can still run under it.
		if s.release != nil && len(errs) == 0 {
			s.release()
		}
		s.err = errors.Join(errs...)
		if s.err != nil {
			s.logger.ErrorContext(ctx, "destroy sandbox", "err", s.err)
		}
	})
	return s.err
}

// Close removes the runtime's parent cgroup if no sandbox is left in it and releases the state
// directory and the cgroup root (a private state directory is removed). Live sandboxes are the
// engine's to destroy first.
func (r *Runtime) Close() error {
	if err := r.closeNetworks(); err != nil {
		r.cfg.Logger.Warn("closing sandbox networks", "err", err)
	}
	err := r.cg.RemoveRoot()
	if err == nil {
		err = r.closeImages()
	}
	r.releaseHost(err == nil)
	if r.cfg.Private && err == nil {
		if rerr := os.RemoveAll(r.cfg.StateDir); rerr != nil {
			err = fmt.Errorf("remove private state directory: %w", rerr)
		}
	}
	return err
}
