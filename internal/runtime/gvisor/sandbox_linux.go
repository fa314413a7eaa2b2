package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/agentclient"
	"github.com/airlockhq/airlock/internal/cgroup"
	"github.com/airlockhq/airlock/internal/layout"
	"github.com/airlockhq/airlock/internal/netpolicy"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

// Spec is what one gvisor sandbox gets.
type Spec struct {
	ID           string
	MemoryBytes  int64
	CPU          float64
	Pids         int64
	ScratchBytes int64 // /workspace, /tmp and /dev/shm together; default 1 GiB
	NoFile       uint64
	Meta         []byte
	Workdir      string
	Env          []string
	// Image, if set, is the sandbox's root: the overlay of the image's layers below a writable
	// layer capped at ScratchBytes as asked (native.DiskBytes), mounted on the host as the
	// bundle's root; nil is the host image.
	Image *native.ImageRoot
	// Network is the sandbox's network policy; block (the zero value) is a loopback only.
	Network netpolicy.Policy
}

// The host cgroup's pids limit is a backstop for the host, not the sandbox's limit: the user's
// limit is gVisor's own (the init puts every user process in a group of gVisor's pids cgroup
// with the sandbox's limit, userCgroup), where a fork bomb gets EAGAIN and the sentry goes on.
// The host limit must stay above what that many gVisor tasks cost the host, or the sentry
// meets it first and dies with the sandbox. On the ptrace platform a gVisor process costs far
// more than one host task: a stub process with a thread for every sentry thread that ran it,
// so the cost grows faster than the number of processes (measured here, fork bombs held 6 s at
// gVisor's limit: 32 → 521 host tasks at the peak, 64 → 992, 128 → 2538, 256 → 4366; and 200
// processes sleeping side by side, 10323). hostTasksPerTask and sentryPidsReserve (the
// sentry's and the gofer's own threads, ≈60 idle) size the backstop at about twice a bomb's
// peak — 8704 host tasks for the default 256 — not for hundreds of long-lived processes, which
// on ptrace may meet it and end the sandbox (the host stays within its bound either way).
const (
	hostTasksPerTask  = 32
	sentryPidsReserve = 512
)

// hostPids is the host cgroup's pids limit of a sandbox whose user may run pids tasks.
func hostPids(pids int64) int64 {
	if pids <= 0 {
		return 0
	}
	return pids*hostTasksPerTask + sentryPidsReserve
}

// The scratch layer's default size, as the native host image's.
const defaultScratch = 1 << 30

// Sandbox is one running gvisor sandbox.
type Sandbox struct {
	r      *Runtime
	id     string
	dir    string
	cg     *cgroup.Group
	client *agentclient.Client
	logger *slog.Logger

	pid   int             // the runsc sandbox process on the host
	pidfd *os.File        // the same, as a pidfd
	rc    syscall.RawConn // pidfd's, for the watcher and the kill
	// scratchReq is the scratch size asked for (before ScratchFor); SetLimits resizes the
	// scratch layer from it. metaMu guards meta, rewritten by SetMeta.
	scratchReq int64
	metaMu     sync.Mutex
	meta       []byte
	net        *netpolicy.Attachment // nil: no network
	policy     netpolicy.Policy      // net's
	slot       int                   // the host-wide slot of net
	done       chan struct{}         // closed when the sandbox process has exited
	watch      sync.WaitGroup
	destroy    sync.Once
	err        error
}

// state is persisted in the sandbox's directory for Recover.
type state struct {
	ID         string `json:"id"`
	Pid        int    `json:"pid"`
	Meta       []byte `json:"meta,omitempty"`
	ScratchReq int64  `json:"scratch_req,omitempty"`
	// Slot and Network are a networked sandbox's, for Recover to adopt its network.
	Slot    int              `json:"slot,omitempty"`
	Network netpolicy.Policy `json:"network,omitzero"`
}

// Create builds the sandbox's bundle, starts it under runsc and returns once its agent
// answers. On error nothing is left behind: each step pushes its undo.
func (r *Runtime) Create(ctx context.Context, spec Spec) (_ *Sandbox, err error) {
	if !idPattern.MatchString(spec.ID) {
		return nil, fmt.Errorf("sandbox id %q: invalid", spec.ID)
	}
	if spec.Image != nil {
		if err := native.CheckImage(spec.Image); err != nil {
			return nil, err
		}
		spec.Workdir = native.ImageWorkdir(spec.Workdir, spec.Image)
		spec.Env = spec.Image.Env
	}
	if spec.ScratchBytes <= 0 {
		spec.ScratchBytes = defaultScratch
	}
	req := spec.ScratchBytes
	spec.ScratchBytes = native.ScratchFor(spec.ScratchBytes, spec.MemoryBytes)
	c := &creation{r: r, spec: spec, req: req, dir: filepath.Join(r.dir, "sandboxes", spec.ID)}
	defer func() {
		if err != nil {
			for i := len(c.undo) - 1; i >= 0; i-- {
				c.undo[i]()
			}
		}
	}()
	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"sandbox directory", c.mkdir},
		{"scratch layer", c.scratch},
		{"image root", c.imageRoot},
		{"cgroup", c.cgroup},
		{"network", c.network},
		{"bundle", c.bundle},
		{"start", c.start},
		{"await agent", c.await},
		{"persist state", c.persist},
	}
	for _, st := range steps {
		if err := st.run(ctx); err != nil {
			return nil, fmt.Errorf("gvisor %s: %w", st.name, err)
		}
	}
	return c.sb, nil
}

type creation struct {
	r    *Runtime
	spec Spec
	req  int64 // the scratch size asked for
	dir  string
	undo []func()
	g    *cgroup.Group
	sb   *Sandbox
	pid  int
	// A networked sandbox's: its slot, attachment, and namespace, held open until runsc runs.
	slot  int
	att   *netpolicy.Attachment
	netns *os.File
}

func (c *creation) mkdir(context.Context) error {
	if err := os.Mkdir(c.dir, 0o700); err != nil {
		return err
	}
	c.undo = append(c.undo, func() { os.RemoveAll(c.dir) })
	return nil
}

// scratch mounts the tmpfs that /workspace, /tmp and /dev/shm share, capped at the scratch
// size, on the host: its pages are the host kernel's, counted once for all three.
func (c *creation) scratch(context.Context) error {
	dir := filepath.Join(c.dir, scratchDir)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	opts := "mode=0755,size=" + strconv.FormatInt(c.spec.ScratchBytes, 10)
	if err := unix.Mount("tmpfs", dir, "tmpfs", unixMountFlags, opts); err != nil {
		return fmt.Errorf("mount tmpfs: %w", err)
	}
	c.undo = append(c.undo, func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return nil
}

// imageRoot mounts an image sandbox's root at the bundle's rootfs: the image's layers below its
// capped writable layer, made by the native runtime's code.
func (c *creation) imageRoot(context.Context) error {
	if c.spec.Image == nil {
		return nil
	}
	root := filepath.Join(c.dir, rootfsDir)
	if err := os.Mkdir(root, 0o755); err != nil {
		return err
	}
	c.undo = append(c.undo, func() { c.r.removeImage(c.spec.ID, c.dir) })
	return c.r.layers.Mount(c.spec.ID, native.DiskBytes(c.req), c.spec.Image.Layers, root)
}

func (c *creation) cgroup(ctx context.Context) error {
	g, err := c.r.cg.Create(c.spec.ID, cgroup.Limits{MemoryBytes: c.spec.MemoryBytes, CPU: c.spec.CPU, Pids: hostPids(c.spec.Pids)})
	if err != nil {
		return err
	}
	c.g = g
	c.undo = append(c.undo, func() { c.r.removeGroup(ctx, g) })
	return nil
}

func (c *creation) bundle(context.Context) error {
	binds := c.r.binds
	if c.spec.Image != nil {
		binds = c.r.imageBinds
	}
	if c.att != nil {
		// The sandbox's own resolv.conf (its forwarder) over the daemon's /etc one.
		binds = append(slices.DeleteFunc(slices.Clone(binds), func(b native.Bind) bool { return b.Target == "/etc/resolv.conf" }),
			native.Bind{Source: filepath.Join(c.dir, resolvFile), Target: "/etc/resolv.conf", File: true})
	}
	b := &bundle{dir: c.dir, exe: c.r.cfg.Exe, binds: binds, cgroup: c.r.cgroupPath(c.spec.ID),
		workdir: c.spec.Workdir, image: c.spec.Image != nil, netns: c.netnsPath(),
		init: initConfig{UID: c.r.cfg.UID, GID: c.r.cfg.GID, NoFile: c.spec.NoFile, NProc: uint64(c.spec.Pids),
			Scratch: c.spec.ScratchBytes, Env: c.spec.Env}}
	return c.r.writeBundle(b, nil)
}

// start runs the bundle detached: runsc returns once the sandbox runs, leaving its sandbox and
// gofer processes in the sandbox's cgroup.
func (c *creation) start(ctx context.Context) error {
	logf, err := os.OpenFile(filepath.Join(c.dir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	// Not cut short by ctx: a runsc killed halfway leaves state that delete cannot find. It
	// returns in well under a second; the undo removes the sandbox if ctx ended meanwhile.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	network := "none"
	if c.netns != nil {
		network = "sandbox"
	}
	cmd := c.r.runscNet(rctx, network, "run", "--detach", "--bundle", c.dir, c.spec.ID)
	cmd.Stdout, cmd.Stderr = logf, logf
	c.undo = append(c.undo, func() { c.r.deleteContainer(c.spec.ID) })
	if c.netns != nil {
		err = runNetworked(cmd)
	} else {
		err = cmd.Run()
	}
	if c.netns != nil {
		// runsc's processes have joined the namespace (or failed): theirs keep it alive now.
		c.netns.Close()
		c.netns = nil
	}
	if err != nil {
		return fmt.Errorf("runsc run: %w (%s)", err, lastLine(readTail(logf.Name())))
	}
	pid, err := c.r.containerPid(ctx, c.spec.ID)
	if err != nil {
		return err
	}
	c.pid = pid
	sb, err := c.r.adopt(c.spec.ID, c.dir, pid, c.g)
	if err != nil {
		return err
	}
	sb.scratchReq, sb.meta = c.req, c.spec.Meta
	sb.net, sb.slot, sb.policy = c.att, c.slot, c.spec.Network
	c.sb = sb
	// Undone first: the sandbox process is killed and its watcher waited for before runsc's
	// state and the cgroup go. Waiting for a watcher whose process nobody killed (an await
	// cut short by ctx) hung Create, and with it the engine's shutdown.
	c.undo = append(c.undo, func() {
		if err := sb.kill(); err != nil {
			sb.logger.Warn("undo start", "err", err)
		}
		select {
		case <-sb.done:
			sb.stopWatch()
		case <-time.After(10 * time.Second):
			sb.logger.Warn("undo start: the sandbox process did not exit; the cgroup's kill follows")
			go sb.stopWatch() // the pidfd is closed once the cgroup's kill has ended it
		}
	})
	return nil
}

// await dials the agent's socket until it answers, the sandbox dies or ctx ends.
func (c *creation) await(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	sock := filepath.Join(c.dir, sockDir, filepath.Base(guestSock))
	for {
		if conn, err := net.Dial("unix", sock); err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-c.sb.done:
			return fmt.Errorf("the sandbox exited during start-up: %s", lastLine(readTail(filepath.Join(c.dir, "agent.log"))))
		case <-ctx.Done():
			return fmt.Errorf("the agent did not answer: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (c *creation) persist(context.Context) error { return c.sb.persist() }

// netnsPath is the spec's path of the sandbox's network namespace; "" for one of runsc's own.
func (c *creation) netnsPath() string {
	if c.netns == nil {
		return ""
	}
	return netnsPath(c.netns)
}

// persist writes the state Recover adopts the sandbox from.
func (s *Sandbox) persist() error {
	s.metaMu.Lock()
	defer s.metaMu.Unlock()
	b, _ := json.Marshal(state{ID: s.id, Pid: s.pid, Meta: s.meta, ScratchReq: s.scratchReq, Slot: s.slot, Network: s.policy})
	tmp := filepath.Join(s.dir, "state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(s.dir, "state.json"))
}

// SetMeta replaces what the sandbox keeps for Recover.
func (s *Sandbox) SetMeta(meta []byte) error {
	s.metaMu.Lock()
	s.meta = meta
	s.metaMu.Unlock()
	return s.persist()
}

// SetLimits changes the sandbox's cgroup limits and resizes its scratch layer to what a
// sandbox made with memory would have had (a pooled sandbox at hand-out, before user code
// runs). Shrinking the layer below what it holds fails.
func (s *Sandbox) SetLimits(memory int64, cpu float64, pids int64) error {
	req := s.scratchReq
	if req <= 0 {
		req = defaultScratch
	}
	size := native.ScratchFor(req, memory)
	opts := "size=" + strconv.FormatInt(size, 10)
	if err := unix.Mount("tmpfs", filepath.Join(s.dir, scratchDir), "tmpfs", unix.MS_REMOUNT|unixMountFlags, opts); err != nil {
		return fmt.Errorf("resize the scratch layer: %w", err)
	}
	return s.cg.SetLimits(cgroup.Limits{MemoryBytes: memory, CPU: cpu, Pids: hostPids(pids)})
}

// writeBundle lays out b's directory: the root's mount points, the writable directories, the
// guest directory with the agent's configuration, the socket's directory and config.json;
// edit, if set, changes the spec first.
func (r *Runtime) writeBundle(b *bundle, edit func(*specs.Spec)) error {
	if err := r.rootMountPoints(b); err != nil {
		return err
	}
	for _, d := range []struct {
		sub   string
		mode  os.FileMode
		owned bool
	}{{"tmp", 0o777 | os.ModeSticky, false}, {"shm", 0o777 | os.ModeSticky, false}, {"workspace", 0o755, true}, {"workdir", 0o755, true}} {
		if d.sub == "workdir" && b.workdir == "" || b.image && d.sub != "shm" {
			continue
		}
		p := filepath.Join(b.dir, scratchDir, d.sub)
		if err := os.MkdirAll(p, d.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, d.mode); err != nil {
			return err
		}
		if d.owned {
			if err := os.Chown(p, r.cfg.UID, r.cfg.GID); err != nil {
				return err
			}
		}
	}
	// The guest directory is root's alone (0700): the sandbox user cannot reach the agent's
	// binary, its configuration or its socket.
	guest := filepath.Join(b.dir, guestHostDir)
	for _, d := range []string{guest, filepath.Join(guest, filepath.Base(filepath.Dir(guestSock))),
		filepath.Join(guest, filepath.Base(guestCgroup)), filepath.Join(b.dir, sockDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(guest, filepath.Base(guestExe)), nil, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(guest, filepath.Base(guestConfig)), b.init.Encode(), 0o600); err != nil {
		return err
	}
	s := b.spec()
	if edit != nil {
		edit(s)
	}
	out, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(b.dir, "config.json"), out, 0o600)
}

// rootMountPoints makes the mount points of b's mounts in its root. The host image's root is
// a directory of the bundle's own; an image's is its overlay, whose paths are the image's, so
// they are made with the native runtime's checks (a symlink is refused, never followed out of
// the tree), and its /tmp, /workspace and workdir are given the contract's modes and owners.
func (r *Runtime) rootMountPoints(b *bundle) error {
	root := filepath.Join(b.dir, rootfsDir)
	dirs, files := b.mountPoints()
	if !b.image {
		if err := os.MkdirAll(root, 0o755); err != nil {
			return err
		}
		for _, d := range dirs {
			if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
				return err
			}
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); err != nil {
				return err
			}
		}
		for _, l := range r.links {
			if err := os.Symlink(l[1], filepath.Join(root, l[0])); err != nil && !errors.Is(err, os.ErrExist) {
				return err
			}
		}
		return nil
	}
	for _, d := range dirs {
		if err := native.ImageMountPoint(root, native.Bind{Target: d}); err != nil {
			return err
		}
	}
	for _, f := range files {
		if err := native.ImageMountPoint(root, native.Bind{Target: f, File: true}); err != nil {
			return err
		}
	}
	owned := []string{layout.Workspace}
	if b.workdir != "" {
		owned = append(owned, b.workdir)
	}
	for _, d := range append([]string{layout.Tmp}, owned...) {
		p, err := native.ImageDir(root, d)
		if err != nil {
			return err
		}
		mode := os.FileMode(0o755)
		if d == layout.Tmp {
			mode = 0o777 | os.ModeSticky
		}
		if err := os.Chmod(p, mode); err != nil {
			return err
		}
		if d != layout.Tmp {
			if err := os.Chown(p, r.cfg.UID, r.cfg.GID); err != nil {
				return err
			}
		}
	}
	return nil
}

// cgroupPath is the sandbox's cgroupsPath for runsc: the group cgroup.Manager made.
func (r *Runtime) cgroupPath(id string) string { return "/" + r.cfg.CgroupRoot + "/" + id }

// containerPid asks runsc for the pid of the sandbox's process on the host.
func (r *Runtime) containerPid(ctx context.Context, id string) (int, error) {
	out, err := r.runsc(ctx, "state", id).Output()
	if err != nil {
		return 0, fmt.Errorf("runsc state: %w", err)
	}
	var st struct {
		Pid    int    `json:"pid"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return 0, fmt.Errorf("runsc state: %w", err)
	}
	if st.Pid <= 0 || st.Status != "running" {
		return 0, fmt.Errorf("runsc state: container %s is %s", id, st.Status)
	}
	return st.Pid, nil
}

// adopt watches the sandbox process pid through a pidfd (so a reused pid is never mistaken
// for it), waited on by the Go poller, and makes the Sandbox.
func (r *Runtime) adopt(id, dir string, pid int, g *cgroup.Group) (*Sandbox, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("pidfd of the sandbox process: %w", err)
	}
	pf := os.NewFile(uintptr(fd), "pidfd")
	rc, err := pf.SyscallConn()
	if err != nil {
		pf.Close()
		return nil, fmt.Errorf("pidfd of the sandbox process: %w", err)
	}
	sb := &Sandbox{r: r, id: id, dir: dir, cg: g, pid: pid, pidfd: pf, rc: rc, done: make(chan struct{}),
		logger: r.cfg.Logger.With("sandbox", id, "runtime", Name),
		client: agentclient.Dial(filepath.Join(dir, sockDir, filepath.Base(guestSock)))}
	sb.watch.Add(1)
	go func() {
		defer sb.watch.Done()
		defer close(sb.done)
		// A pidfd turns readable when its process exits; until then the callback declines and
		// the poller parks this goroutine.
		rc.Read(func(fd uintptr) bool {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, 0)
			return err != nil && !errors.Is(err, unix.EINTR) || n > 0
		})
	}()
	return sb, nil
}

// stopWatch waits for the watcher, which ends with the sandbox process, and closes the pidfd.
func (s *Sandbox) stopWatch() {
	s.watch.Wait()
	s.pidfd.Close()
}

// forgetContainer removes runsc's state of container id once none of its processes is left:
// its state and lock files, where this runsc keeps them; anything else of id in runsc's root
// (another runsc's layout) goes through `runsc delete`.
func (r *Runtime) forgetContainer(id string) error {
	for _, f := range []string{id + "_sandbox:" + id + ".state", id + "_sandbox:" + id + ".lock"} {
		if err := os.Remove(filepath.Join(r.runscDir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove runsc state: %w", err)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(r.runscDir, "*"+id+"*")); len(m) > 0 {
		return r.deleteContainer(id)
	}
	return nil
}

// deleteContainer kills what runsc runs for id and removes runsc's state of it, the lock file
// runsc leaves behind included.
func (r *Runtime) deleteContainer(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := r.runsc(ctx, "delete", "--force", id).CombinedOutput()
	state := filepath.Join(r.runscDir, id+"_sandbox:"+id+".state")
	_, serr := os.Stat(state)
	if err != nil && !errors.Is(serr, os.ErrNotExist) {
		return fmt.Errorf("runsc delete: %w: %s", err, lastLine(string(out)))
	}
	// Never created, already gone, or deleted: what runsc leaves is removed.
	for _, f := range []string{state, filepath.Join(r.runscDir, id+"_sandbox:"+id+".lock")} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove runsc state: %w", err)
		}
	}
	return nil
}

// removeGroup kills whatever is left in g and removes it.
func (r *Runtime) removeGroup(ctx context.Context, g *cgroup.Group) error {
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	var errs []error
	if pids, err := g.Pids(); err != nil || len(pids) > 0 {
		if err := g.Kill(kctx); err != nil {
			errs = append(errs, fmt.Errorf("kill cgroup: %w", err))
		}
	}
	if err := g.Delete(); err != nil {
		errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
	}
	// runsc adds the group to the cgroup v1 hierarchies cgroup.Manager leaves alone (blkio,
	// cpuset, devices, …), and leaves them when it dies or is killed.
	r.removeV1Leftovers(filepath.Join(r.cfg.CgroupRoot, g.Name()))
	return errors.Join(errs...)
}

// removeV1Leftovers removes the (empty) directory rel in every cgroup v1 hierarchy.
func (r *Runtime) removeV1Leftovers(rel string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", rel))
	for _, d := range dirs {
		os.Remove(d)
	}
}

func readTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 4096 {
		f.Seek(-4096, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// ID is the sandbox's id.
func (s *Sandbox) ID() string { return s.id }

// Agent reaches the sandbox's agent.
func (s *Sandbox) Agent() *agentclient.Client { return s.client }

// Done is closed when the sandbox has exited.
func (s *Sandbox) Done() <-chan struct{} { return s.done }

// Stats reads the sandbox cgroup's usage: the whole sandbox's, the user-space kernel included.
func (s *Sandbox) Stats() (cgroup.Stats, error) { return s.cg.Stats() }

// Destroy kills the sandbox and removes its runsc state, cgroup, scratch layer and directory.
// It is idempotent and runs to completion even if ctx is already cancelled.
func (s *Sandbox) Destroy(ctx context.Context) error {
	s.destroy.Do(func() {
		var errs []error
		// SIGKILL to the sandbox process first, through its pidfd (never a reused pid): the
		// sentry takes everything inside with it at once. Then the cgroup's kill takes runsc's
		// host-side processes (the gofer, runsc's waiting parent), and what is left of runsc's
		// state is its files. `runsc delete` would do the same in 1.5–2 s of polling.
		if err := s.kill(); err != nil {
			errs = append(errs, err)
		}
		if err := s.r.removeGroup(ctx, s.cg); err != nil {
			errs = append(errs, err)
		}
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		select {
		case <-s.done:
		case <-wctx.Done():
			errs = append(errs, errors.New("the sandbox process did not exit"))
		}
		cancel()
		if err := s.r.forgetContainer(s.id); err != nil {
			errs = append(errs, err)
		}
		if err := s.closeNetwork(); err != nil {
			errs = append(errs, err)
		}
		s.client.CloseIdleConnections()
		if err := s.r.removeDir(s.id, s.dir); err != nil {
			errs = append(errs, err)
		}
		s.err = errors.Join(errs...)
		if s.err != nil {
			s.logger.Warn("destroy", "err", s.err)
		}
		select {
		case <-s.done:
			s.stopWatch()
		default: // the watcher keeps its descriptor until the process ends
		}
	})
	return s.err
}

// kill sends SIGKILL to the sandbox process through its pidfd (never a reused pid).
func (s *Sandbox) kill() error {
	var err error
	s.rc.Control(func(fd uintptr) { err = unix.PidfdSendSignal(int(fd), unix.SIGKILL, nil, 0) })
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill the sandbox process: %w", err)
	}
	return nil
}

// removeDir unmounts a sandbox directory's image root and scratch layer, removes the image's
// writable layer and the directory. A mount that stays keeps the directory: RemoveAll must
// never walk into a root.
func (r *Runtime) removeDir(id, dir string) error {
	if err := r.removeImage(id, dir); err != nil {
		return err
	}
	if err := unix.Unmount(filepath.Join(dir, scratchDir), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount scratch: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove sandbox directory: %w", err)
	}
	return nil
}

// removeImage unmounts an image sandbox's root and removes its writable layer (what exists of
// either; nothing for a host-image sandbox).
func (r *Runtime) removeImage(id, dir string) error {
	if err := unix.Unmount(filepath.Join(dir, rootfsDir), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount image root: %w", err)
	}
	return r.layers.Remove(id)
}
