package native

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/cgroup"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/layout"
	"github.com/airlockhq/airlock/internal/runtime/native/sandboxinit"
)

// A zygote sandbox is a sandbox like any other (its own user namespace and uid range, the
// read-only root, its cgroup, its state directory, recovered and destroyed like any) whose PID 1
// is not the agent but the Python zygote (zygote.py): the init builds the root as usual, then —
// instead of locking itself down and serving the agent protocol — executes python3, which keeps
// the capabilities of the sandbox's user namespace (it needs CAP_SYS_ADMIN there to unshare and
// mount for each run) and never runs user code. Each run (Sandbox.RunZygote) is one connection
// on the sandbox's socket: the zygote forks, and the child makes itself a fresh sandbox inside
// the zygote's (see the wire sequence in zygote.py) after the daemon has moved it into a cgroup of
// the run's own, below the zygote's.

// ZygoteConfig makes Spec a zygote sandbox.
type ZygoteConfig struct {
	// Modules are imported besides numpy, pandas and matplotlib (Agg); one the image lacks is
	// skipped (and logged in the sandbox's agent.log).
	Modules []string
	// Lean makes a zygote that imports none of them: only the standard library modules the
	// zygote itself uses. Its children are a fraction of the full zygote's size, so a fork, the
	// copy-on-write faults and an exit cost a fraction too; it is for programs that need none
	// of the full zygote's modules.
	Lean bool
	// RunMemoryBytes is the usual run's memory limit: children are prepared with the scratch
	// size (ScratchFor) a run of it gets; a run whose scratch size differs gets a child
	// prepared for it on the spot.
	RunMemoryBytes int64
}

// configureZygote marks a zygote spec's init config.
func (c *creation) configureZygote(icfg *initConfig) {
	if c.spec.Zygote == nil {
		return
	}
	icfg.Zygote = &zygoteInit{Modules: c.spec.Zygote.Modules, Lean: c.spec.Zygote.Lean, UID: c.r.cfg.UID, GID: c.r.cfg.GID}
	c.sb.zygote = newZygotePool(ScratchFor(c.spec.ScratchBytes, c.spec.Zygote.RunMemoryBytes))
}

// ErrZygoteSetup wraps a run the zygote could not start: nothing of its program ran, so the
// caller may run it elsewhere. It is the engine's sentinel.
var ErrZygoteSetup = engine.ErrZygoteSetup

// ErrNotZygote is returned by RunZygote on a sandbox that is not a zygote sandbox.
var ErrNotZygote = errors.New("not a zygote sandbox")

// ZygoteRun is one program for a zygote's child; zero limits are unlimited.
type ZygoteRun struct {
	Code, Stdin  string
	Files        map[string]string // clean absolute path → content, written by the program's user
	Env          map[string]string // over the sandbox's base environment (PATH, LANG, HOME)
	Timeout      time.Duration
	MemoryBytes  int64
	CPU          float64
	Pids         int64
	ScratchBytes int64
	OutputLimit  int64 // bytes per stream; past it output is read and dropped
	// Output, if set, is called with each piece of output kept (stream 1 stdout, 2 stderr),
	// from the calling goroutine only.
	Output func(stream int, b []byte)
}

// ZygoteEnd is how a zygote run ended, as the agent reports a process's end.
type ZygoteEnd struct {
	Stdout, Stderr                   []byte
	ExitCode                         int // 128+signal when killed
	Signal                           int // the signal that ended the program, 0 if it exited
	TimedOut                         bool
	StdoutTruncated, StderrTruncated bool
	Duration                         time.Duration
	Stats                            cgroup.Stats // the run's own cgroup
	Processes                        int
}

// zygoteRequest is the request line a prepared child's user process reads.
type zygoteRequest struct {
	Code        string            `json:"code"`
	Env         map[string]string `json:"env"`
	Files       map[string]string `json:"files,omitempty"`
	ScratchSize int64             `json:"scratch_size"`
}

// zygoteReply is one JSON line of a zygote child's.
type zygoteReply struct {
	Hello   int     `json:"hello"`
	Ready   int     `json:"ready"`
	Started int     `json:"started"`
	Status  *uint32 `json:"status"`
	Error   string  `json:"error"`
}

// The prepared children a zygote sandbox keeps (zygotePrepared: one per concurrent run of a
// daemon's default admission on two cores, 4 per core, so that a burst of 8 clients finds each
// a child; each costs ≈ 1.5 MiB of private memory), and what a run's cgroup holds besides the
// program's processes: nothing (the run's PID 1, a clone sharing the zygote's memory, stays in
// the zygote's cgroup; see zygote.py).
const (
	zygotePrepared = 8
	runPidsReserve = 0
)

// prepared is a zygote child made ready for one run: in a cgroup of its own (with the limits of
// the run before it, which its own run keeps if they are its own too: see RunZygote), in
// namespaces of its own with its scratch and /proc mounted, its user process waiting for the
// request. It serves one run, or none.
type prepared struct {
	g   *cgroup.Group
	lim cgroup.Limits // the limits written in g: at its preparation, then by its run
	// unknown is set when writing a run's limits failed part way: g's limits are then neither
	// lim nor the run's, and g is not recycled.
	unknown bool
	conn    *net.UnixConn
	r       *bufio.Reader
}

// zygotePool is a zygote sandbox's prepared children, refilled in the background by one filler
// (started on the first run, stopped by Destroy, which waits for it and for the cleanups).
type zygotePool struct {
	scratch int64           // the scratch size children are prepared with (the usual run's; another run gets a child of its own)
	ready   chan *prepared  // capacity zygotePrepared
	want    chan struct{}   // a child was taken: the filler makes another
	quit    chan struct{}   // closed by close
	ctx     context.Context // the first run's, without its cancellation: for the filler and cleanups
	start   sync.Once

	mu     sync.Mutex     // guards closed, last, free and the additions to wg
	closed bool           // closeZygote has begun: nothing more is started
	last   cgroup.Limits  // the limits of the last run given a prepared child: refills are prepared with them
	free   []runGroup     // emptied run cgroups, recycled for the next children (v1; at most zygoteFreeGroups)
	wg     sync.WaitGroup // the filler and the cleanups of ended runs
}

// runGroup is a recycled run cgroup and the limits written in it.
type runGroup struct {
	g   *cgroup.Group
	lim cgroup.Limits
}

// A run cgroup is recycled (cgroup.Group.Recycle) rather than removed when the run has left at
// most zygoteResidue bytes charged to it (page cache of files it read first: the next run's
// usage and peak include it until the kernel reclaims it), and a zygote keeps at most
// zygoteFreeGroups of them, enough for its prepared children and the runs beside them.
const (
	zygoteResidue    = 1 << 20
	zygoteFreeGroups = 2 * zygotePrepared
)

// spawn runs fn in a goroutine closeZygote waits for; once it has begun, fn runs inline.
func (p *zygotePool) spawn(fn func()) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		fn()
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		fn()
	}()
}

func newZygotePool(scratch int64) *zygotePool {
	return &zygotePool{scratch: scratch, ready: make(chan *prepared, zygotePrepared),
		want: make(chan struct{}, 1), quit: make(chan struct{})}
}

// closeZygote stops the filler and lets the prepared children go; a no-op for other sandboxes.
// Destroy calls it once PID 1 is gone (which took every child with it).
func (s *Sandbox) closeZygote() {
	p := s.zygote
	if p == nil {
		return
	}
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.quit)
	}
	p.mu.Unlock()
	p.wg.Wait()
	for {
		select {
		case c := <-p.ready:
			c.conn.Close()
		default:
			// Closed, and the cleanups done (wg): nothing adds to free any more.
			p.mu.Lock()
			free := p.free
			p.free = nil
			p.mu.Unlock()
			for _, f := range free {
				if err := f.g.Delete(); err != nil {
					s.logger.Warn("delete recycled zygote run cgroup", "err", err)
				}
			}
			return
		}
	}
}

// runCgroup is a cgroup for a new child with limits lim: a recycled one whose limits lim can
// replace (settable), else a new one.
func (s *Sandbox) runCgroup(p *zygotePool, lim cgroup.Limits) (*cgroup.Group, error) {
	p.mu.Lock()
	var f *runGroup
	for i := len(p.free) - 1; i >= 0; i-- {
		if settable(p.free[i].lim, lim) {
			f = &runGroup{p.free[i].g, p.free[i].lim}
			p.free = append(p.free[:i], p.free[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
	if f != nil {
		if f.lim == lim {
			return f.g, nil
		}
		if err := f.g.SetLimits(lim); err == nil {
			return f.g, nil
		}
		f.g.Delete() // best effort: a new one instead
	}
	return s.cg.CreateChild("r"+randomHex(8), lim)
}

// recycle readies the cgroup of an ended run for another (runCgroup), once its processes have
// gone (they exit on their own after a run: within milliseconds), and reports whether it did.
func (s *Sandbox) recycle(p *zygotePool, c *prepared) bool {
	p.mu.Lock()
	room := !p.closed && len(p.free) < zygoteFreeGroups
	p.mu.Unlock()
	if !room || c.unknown {
		return false
	}
	var g *cgroup.Group
	var err error
	// The run's two processes exit right after its end: give them the time first.
	time.Sleep(time.Millisecond)
	for delay := time.Millisecond; ; delay *= 2 {
		if g, err = c.g.Recycle(zygoteResidue); !errors.Is(err, cgroup.ErrNotEmpty) || delay > 32*time.Millisecond {
			break
		}
		time.Sleep(delay)
	}
	if err != nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.free) >= zygoteFreeGroups {
		return false // removed by the caller like any
	}
	p.free = append(p.free, runGroup{g, c.lim})
	return true
}

// fill keeps the pool full until quit.
func (s *Sandbox) fill(p *zygotePool) {
	for {
		for len(p.ready) < cap(p.ready) {
			p.mu.Lock()
			lim := p.last
			p.mu.Unlock()
			c, err := s.prepare(p, p.scratch, lim)
			if err != nil {
				// Perhaps those limits do not leave room for a child's set-up: the next
				// refills are prepared without, and their runs write their own.
				p.mu.Lock()
				p.last = cgroup.Limits{}
				p.mu.Unlock()
				select {
				case <-p.quit:
					return // the zygote is being destroyed: that is why
				case <-s.done:
					return
				case <-time.After(200 * time.Millisecond):
				}
				s.logger.WarnContext(p.ctx, "prepare zygote child", "err", err)
				select {
				case <-p.quit:
					return
				case <-s.done:
					return
				case <-time.After(time.Second):
				}
				continue
			}
			select {
			case p.ready <- c:
			case <-p.quit:
				s.releaseChild(p, c)
				return
			}
		}
		select {
		case <-p.want:
		case <-p.quit:
			return
		case <-s.done:
			return
		}
	}
}

// prepare makes one prepared child with a scratch tmpfs of scratch bytes: the zygote forks it
// on a new connection, the daemon moves it (by the host pid its hello carries) into a cgroup
// below the zygote's with limits lim, and it makes its namespaces and mounts and locks its user
// process down.
func (s *Sandbox) prepare(p *zygotePool, scratch int64, lim cgroup.Limits) (_ *prepared, err error) {
	g, err := s.runCgroup(p, lim)
	if err != nil {
		return nil, fmt.Errorf("run cgroup: %w", err)
	}
	c := &prepared{g: g, lim: lim}
	defer func() {
		if err != nil {
			s.releaseChild(p, c)
		}
	}()
	if c.conn, err = dialPassCred(s.sock); err != nil {
		return nil, fmt.Errorf("dial zygote: %w", err)
	}
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	pid, r, err := readHello(c.conn)
	if err != nil {
		return nil, err
	}
	c.r = r
	if err := g.Add(pid); err != nil {
		return nil, fmt.Errorf("place child: %w", err)
	}
	// The prepare line is the scratch size alone (zygote.py's user reads a number, not JSON).
	if _, err := c.conn.Write(append(strconv.AppendInt([]byte("go\n"), scratch, 10), '\n')); err != nil {
		return nil, fmt.Errorf("start child: %w", err)
	}
	rep, err := readReply(c.r)
	switch {
	case err != nil:
		return nil, fmt.Errorf("wait for prepared child: %w", err)
	case rep.Error != "":
		return nil, errors.New(rep.Error)
	case rep.Ready != 1:
		return nil, errors.New("prepared child: unexpected answer")
	}
	c.conn.SetReadDeadline(time.Time{})
	return c, nil
}

// releaseChild ends c in the background: its connection closed, its cgroup recycled, or killed
// and removed.
func (s *Sandbox) releaseChild(p *zygotePool, c *prepared) {
	if c.conn != nil {
		c.conn.Close()
	}
	p.spawn(func() {
		if s.recycle(p, c) {
			return
		}
		ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		defer cancel()
		// After a run what the program left is exiting (the zygote killed the run's PID 1, which
		// takes its PID namespace along): Delete's retries on EBUSY wait for that, and the
		// freezer's kill (costlier) is for what does not go.
		if c.g.Delete() == nil {
			return
		}
		if err := c.g.Kill(ctx); err != nil {
			s.logger.WarnContext(ctx, "kill zygote run", "err", err)
		}
		if err := c.g.Delete(); err != nil {
			s.logger.WarnContext(ctx, "delete zygote run cgroup", "err", err)
		}
	})
}

func readReply(r *bufio.Reader) (zygoteReply, error) {
	var rep zygoteReply
	line, err := r.ReadBytes('\n')
	if err != nil {
		return rep, err
	}
	if err := json.Unmarshal(line, &rep); err != nil {
		return rep, fmt.Errorf("zygote child: %w", err)
	}
	return rep, nil
}

// RunZygote runs one program in a prepared child of the zygote (one made on the spot when none
// is ready) and returns how it ended. The child's cgroup gets run's limits before the request is
// sent; it is killed at the time limit, and removed in the background after the run.
func (s *Sandbox) RunZygote(ctx context.Context, run ZygoteRun) (*ZygoteEnd, error) {
	p := s.zygote
	if p == nil {
		return nil, ErrNotZygote
	}
	select {
	case <-s.done:
		return nil, fmt.Errorf("%w: the zygote has exited", ErrZygoteSetup)
	default:
	}
	p.start.Do(func() {
		p.ctx = context.WithoutCancel(ctx)
		p.spawn(func() {
			select {
			case <-p.quit: // closed before the first run: no filler
			default:
				s.fill(p)
			}
		})
	})
	// A prepared child's user process is locked down before its request (it could no longer
	// resize its scratch): a run of another scratch size than the usual gets a child made on
	// the spot with its own, as does a run that finds none ready.
	scratch := ScratchFor(run.ScratchBytes, run.MemoryBytes)
	lim := cgroup.Limits{MemoryBytes: run.MemoryBytes, CPU: run.CPU}
	if run.Pids > 0 {
		lim.Pids = run.Pids + runPidsReserve
	}
	var c *prepared
	if scratch == p.scratch {
		// Most runs have the usual limits: the refills are prepared with this run's, so that
		// the next run usually finds its own already written and writes none on its path.
		p.mu.Lock()
		p.last = lim
		p.mu.Unlock()
		select {
		case c = <-p.ready:
			// Its replacement is made once this run has ended, not beside it: a refill is
			// a fork of the zygote and a child's set-up, which would take CPU from the run.
			defer func() {
				select {
				case p.want <- struct{}{}:
				default:
				}
			}()
		default:
		}
	}
	if c != nil && !settable(c.lim, lim) {
		// Its limits cannot be lifted to the run's (below): a child of its own instead.
		s.releaseChild(p, c)
		c = nil
	}
	if c == nil {
		var err error
		if c, err = s.prepare(p, scratch, lim); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrZygoteSetup, err)
		}
	}
	defer s.releaseChild(p, c)
	// A child prepared with other limits than the run's gets the run's now, before any byte
	// of the program (settable made sure that each limit it has is one the run sets).
	if c.lim != lim {
		if err := c.g.SetLimits(lim); err != nil {
			c.unknown = true
			return nil, fmt.Errorf("%w: %w", ErrZygoteSetup, err)
		}
		c.lim = lim // what recycle labels the group with for the next run
	}

	var ours, theirs []*os.File // our ends; the child's ends, closed once sent
	defer func() {
		for _, f := range append(ours, theirs...) {
			f.Close()
		}
	}()
	for i := range 3 {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("%w: pipe: %w", ErrZygoteSetup, err)
		}
		if i == 0 {
			ours, theirs = append(ours, w), append(theirs, r)
		} else {
			ours, theirs = append(ours, r), append(theirs, w)
		}
	}
	env := map[string]string{"PATH": sandboxinit.DefaultPath}
	for k, v := range run.Env {
		env[k] = v
	}
	env["LANG"], env["HOME"] = "C.UTF-8", layout.Workspace
	for k, v := range run.Env { // a request may set LANG or HOME, as the agent lets it
		if k == "LANG" || k == "HOME" {
			env[k] = v
		}
	}
	req, _ := json.Marshal(zygoteRequest{Code: run.Code, Env: env, Files: run.Files, ScratchSize: scratch})
	rights := unix.UnixRights(int(theirs[0].Fd()), int(theirs[1].Fd()), int(theirs[2].Fd()))
	start := time.Now()
	if _, _, err := c.conn.WriteMsgUnix(append(req, '\n'), rights, nil); err != nil {
		return nil, fmt.Errorf("%w: send run: %w", ErrZygoteSetup, err)
	}
	for _, f := range theirs {
		f.Close()
	}
	theirs = nil
	return s.superviseRun(ctx, run, c, ours, start)
}

// superviseRun feeds stdin, reads output up to the limit, and waits for the child's reports,
// killing the run's cgroup at the time limit or when ctx ends.
func (s *Sandbox) superviseRun(ctx context.Context, run ZygoteRun, c *prepared, ours []*os.File, start time.Time) (*ZygoteEnd, error) {
	stdinW, outR, errR := ours[0], ours[1], ours[2]
	type chunk struct {
		stream int
		b      []byte
	}
	// Unbuffered: a pump's last chunk is taken before its end is signalled on pumps.
	chunks := make(chan chunk)
	done := make(chan struct{}) // closed when superviseRun returns: pumps drop what they read
	defer close(done)
	var wg sync.WaitGroup
	defer wg.Wait()
	if run.Stdin == "" {
		stdinW.Close() // end of file at once: no writer to start
	} else {
		wg.Go(func() {
			// The program may never read its stdin; EPIPE and a killed run end this write.
			io.WriteString(stdinW, run.Stdin)
			stdinW.Close()
		})
	}
	pumps := make(chan struct{}, 2)
	for i, r := range []*os.File{outR, errR} {
		wg.Go(func() {
			defer func() { pumps <- struct{}{} }()
			buf := make([]byte, 32<<10)
			for {
				n, err := r.Read(buf)
				if n > 0 {
					select {
					case chunks <- chunk{i + 1, bytes.Clone(buf[:n])}:
					case <-done:
						return
					}
				}
				if err != nil {
					return
				}
			}
		})
	}
	// started: the program runs (or its setup failed: Error); status: U's wait status, which the
	// zygote reports when it has reaped U (killed or not), nil if the connection ended without
	// it (the zygote died, or the run was killed before it).
	type outcome struct {
		started bool
		rep     zygoteReply
	}
	replies := make(chan outcome, 1)
	wg.Go(func() {
		var o outcome
		for {
			rep, err := readReply(c.r)
			if err != nil {
				break
			}
			if rep.Error != "" || rep.Status != nil {
				o.rep = rep
				break
			}
			o.started = o.started || rep.Started == 1
		}
		replies <- o
	})

	end := &ZygoteEnd{}
	var out, errb bytes.Buffer
	limit := int(run.OutputLimit)
	timer := time.NewTimer(run.Timeout)
	defer timer.Stop()
	var res *outcome
	var stopped time.Time
	kill := func() {
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := c.g.Kill(kctx); err != nil {
			s.logger.WarnContext(ctx, "kill zygote run", "err", err)
		}
	}
	var ctxErr error
	for open := 2; open > 0 || res == nil; {
		select {
		case ch := <-chunks:
			buf, trunc := &out, &end.StdoutTruncated
			if ch.stream == 2 {
				buf, trunc = &errb, &end.StderrTruncated
			}
			room := len(ch.b)
			if limit > 0 {
				room = limit - buf.Len()
			}
			kept := ch.b[:max(0, min(len(ch.b), room))]
			if len(kept) < len(ch.b) {
				*trunc = true
			}
			if len(kept) > 0 {
				buf.Write(kept)
				if run.Output != nil {
					run.Output(ch.stream, kept)
				}
			}
		case <-pumps:
			open--
		case o := <-replies:
			res, stopped = &o, time.Now()
			if !o.started || o.rep.Error != "" {
				kill() // nothing of the program runs: nothing may hold the pipes
			}
		case <-timer.C:
			end.TimedOut = true
			kill()
		case <-ctx.Done():
			if ctxErr == nil {
				ctxErr = context.Cause(ctx)
				kill()
			}
		}
	}
	switch {
	case ctxErr != nil:
		return nil, ctxErr
	case res.rep.Error != "":
		return nil, fmt.Errorf("%w: %s", ErrZygoteSetup, res.rep.Error)
	case !res.started && !end.TimedOut:
		return nil, fmt.Errorf("%w: the prepared child ended before its program started", ErrZygoteSetup)
	}
	end.Stdout, end.Stderr = out.Bytes(), errb.Bytes()
	end.Duration = stopped.Sub(start)
	switch {
	case end.TimedOut:
		end.Duration, end.ExitCode, end.Signal = run.Timeout, 128+int(syscall.SIGKILL), int(syscall.SIGKILL)
	case res.rep.Status == nil && s.exited():
		// The zygote's death took the run with it: not the program's doing.
		return nil, errors.New("the zygote exited during the run")
	case res.rep.Status == nil:
		// Killed before the zygote could report (with its cgroup).
		end.ExitCode, end.Signal = 128+int(syscall.SIGKILL), int(syscall.SIGKILL)
	default:
		ws := syscall.WaitStatus(*res.rep.Status)
		switch {
		case ws.Exited():
			end.ExitCode = ws.ExitStatus()
		case ws.Signaled():
			end.ExitCode, end.Signal = 128+int(ws.Signal()), int(ws.Signal())
		}
	}
	st, err := c.g.Stats()
	if err != nil {
		return nil, err
	}
	end.Stats = st
	return end, nil
}

// settable says whether SetLimits(to) makes a group limited by from limited by to: SetLimits
// writes only the limits to sets (a zero one, unlimited, is left as it was).
func settable(from, to cgroup.Limits) bool {
	return (from.MemoryBytes == 0 || to.MemoryBytes != 0) && (from.CPU == 0 || to.CPU != 0) &&
		(from.Pids == 0 || to.Pids != 0)
}

// exited reports whether the sandbox's PID 1 has exited (waiting briefly: a PID namespace's
// processes die before its init's exit is reported).
func (s *Sandbox) exited() bool {
	select {
	case <-s.done:
		return true
	case <-time.After(100 * time.Millisecond):
		return false
	}
}

// dialPassCred connects to the unix socket path with SO_PASSCRED set before the connection
// exists, so that the kernel attaches to every message the sender's credentials — its pid as
// the daemon's (the host's) PID namespace sees it — even to one sent the instant the peer
// accepts (set later, the first message could carry none: pid 0).
func dialPassCred(path string) (*net.UnixConn, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "zygote")
	defer f.Close() // FileConn dups it
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		return nil, fmt.Errorf("SO_PASSCRED: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, err
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

// readHello reads the child's hello line and the pid its credentials carry; the reader returned
// continues after it.
func readHello(conn *net.UnixConn) (int, *bufio.Reader, error) {
	buf := make([]byte, 64)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return 0, nil, fmt.Errorf("read hello: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) == 0 {
		return 0, nil, fmt.Errorf("hello without credentials (%d bytes %q)", n, buf[:n])
	}
	cred, err := unix.ParseUnixCredentials(&msgs[0])
	if err != nil {
		return 0, nil, fmt.Errorf("hello credentials: %w", err)
	}
	if cred.Pid <= 0 {
		return 0, nil, errors.New("hello credentials without a pid")
	}
	line, after, ok := bytes.Cut(buf[:n], []byte("\n"))
	var rep zygoteReply
	if !ok || json.Unmarshal(line, &rep) != nil || rep.Hello != 1 {
		return 0, nil, fmt.Errorf("unexpected hello %q", buf[:n])
	}
	return int(cred.Pid), bufio.NewReader(io.MultiReader(bytes.NewReader(after), conn)), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// engineZygote adapts a zygote Sandbox to engine.ZygoteInstance.
type engineZygote struct{ engineSandbox }

var _ engine.ZygoteInstance = engineZygote{}

// engineInstance adapts sb to the engine: a zygote sandbox is an engine.ZygoteInstance.
func engineInstance(sb *Sandbox) engine.Instance {
	if sb.zygote != nil {
		return engineZygote{engineSandbox{sb}}
	}
	return engineSandbox{sb}
}

// zygoteConfig converts the engine's zygote spec; nil is an ordinary sandbox.
func zygoteConfig(z *engine.ZygoteSpec) *ZygoteConfig {
	if z == nil {
		return nil
	}
	return &ZygoteConfig{Modules: z.Modules, Lean: z.Lean, RunMemoryBytes: z.RunMemoryBytes}
}

func (z engineZygote) RunZygote(ctx context.Context, r engine.ZygoteRun) (*engine.ZygoteEnd, error) {
	end, err := z.Sandbox.RunZygote(ctx, ZygoteRun{
		Code: r.Code, Stdin: r.Stdin, Files: r.Files, Env: r.Env, Timeout: r.Timeout,
		MemoryBytes: r.MemoryBytes, CPU: r.CPU, Pids: r.Pids, ScratchBytes: r.ScratchBytes,
		OutputLimit: r.OutputLimit, Output: r.Output,
	})
	if err != nil {
		return nil, err
	}
	st := end.Stats
	return &engine.ZygoteEnd{Stdout: end.Stdout, Stderr: end.Stderr, ExitCode: end.ExitCode, Signal: end.Signal, TimedOut: end.TimedOut,
		StdoutTruncated: end.StdoutTruncated, StderrTruncated: end.StderrTruncated, Duration: end.Duration,
		Usage: engine.Usage{CPUTime: st.CPUTime, Memory: st.Memory, PeakMemory: st.PeakMemory, OOMKills: st.OOMKills,
			MemoryLimitHits: st.MemoryFailcnt}}, nil
}
