package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/agent/agentpb/agentpbconnect"
)

// Config configures the agent.
type Config struct {
	Logger   *slog.Logger
	UID, GID int // the sandbox user
	// Spawn runs fn on the thread every user process must be forked from (see sandboxinit.Child);
	// nil runs fn directly.
	Spawn func(fn func())
	// CgroupFD, if > 0, is the cgroup v2 directory every user process is started in (clone3
	// CLONE_INTO_CGROUP), apart from the agent's own group; see sandboxinit.Child.
	CgroupFD int
	// MaxProcesses bounds the processes the agent runs at once (each holds up to three of the
	// agent's descriptors, which user code's limits share); default 256.
	MaxProcesses int
	// Env is the image's environment (KEY=value; see sandboxinit.Child): the base of every
	// process's environment, its PATH replacing the default; HOME and LANG stay the contract's.
	Env []string
}

// Agent serves the agent protocol inside a sandbox.
type Agent struct {
	cfg     Config
	reaper  *reaper
	files   *fsPool // threads for file-system calls, as the sandbox user
	started time.Time

	mu      sync.Mutex // guards procs, tags, running and tunnelsClosed
	procs   map[int]*proc
	tags    map[string]*proc
	running int // processes started through startProc and not yet ended
	// tunnelsClosed is set when Serve ends; no tunnel starts after it.
	tunnelsClosed bool

	// startMu serializes starting processes (the forks are serialized by the reaper anyway), so
	// that a burst of starts holds one start's descriptors at a time, not one per waiter.
	startMu sync.Mutex
	// procsWG owns every goroutine started for a process (its run loop, its stdin writer);
	// Serve waits for them after killing what still runs.
	procsWG sync.WaitGroup
	// transfers bounds the files the API holds open at once (openFile takes a token, Close of
	// the openedFile gives it back).
	transfers chan struct{}
	// tunnelSlots bounds the open tunnels (maxTunnels); tunnelsWG owns their handlers, which
	// Serve waits for after closing the server (which cancels them).
	tunnelSlots chan struct{}
	tunnelsWG   sync.WaitGroup
}

// The agent's descriptors: RLIMIT_NOFILE is the user's, and the agent lives within it. Each running
// process holds at most three (stdin, stdout, stderr pipes; one with a terminal), each open file
// transfer two (the file and its directory), each tunnel one, one start in progress five;
// fdReserve covers the transfers, the tunnels, a start, the listener and connections, and
// listings.
const (
	fdReserve     = 384
	fdsPerProcess = 3
	maxTransfers  = 64
)

// maxProcessesFor is MaxProcesses's default: as many processes as the agent's descriptors allow
// beside fdReserve, between 8 and 256.
func maxProcessesFor() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 256
	}
	return int(min(max((int64(rl.Cur)-fdReserve)/fdsPerProcess, 8), 256))
}

// errTooManyProcesses is returned when MaxProcesses processes are running already.
var errTooManyProcesses = errors.New("too many processes running in this sandbox")

// reserve claims one of MaxProcesses slots for a process about to start; release gives it back
// when the process has ended (or failed to start).
func (a *Agent) reserve() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running >= a.cfg.MaxProcesses {
		return errTooManyProcesses
	}
	a.running++
	return nil
}

func (a *Agent) release() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.running--
}

// intoUserCgroup makes a process started with sys begin life in the user processes' cgroup.
func (a *Agent) intoUserCgroup(sys *syscall.SysProcAttr) {
	if a.cfg.CgroupFD > 0 {
		sys.UseCgroupFD, sys.CgroupFD = true, a.cfg.CgroupFD
	}
}

// Serve runs the agent on ln until ctx ends. It must run as PID 1 of the sandbox.
func Serve(ctx context.Context, ln net.Listener, cfg Config) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Spawn == nil {
		cfg.Spawn = func(fn func()) { fn() }
	}
	if cfg.MaxProcesses <= 0 {
		cfg.MaxProcesses = maxProcessesFor()
	}
	// The agent's memory counts against the sandbox's reserve for it (see native's cgroup
	// layout): make the collector work harder well before that is reached.
	debug.SetMemoryLimit(64 << 20)
	a := &Agent{cfg: cfg, transfers: make(chan struct{}, maxTransfers), tunnelSlots: make(chan struct{}, maxTunnels), reaper: newReaper(cfg.Spawn), started: time.Now(),
		procs: map[int]*proc{}, tags: map[string]*proc{}}
	defer a.reaper.stop()
	a.files = newFSPool(cfg.UID, cfg.GID)
	defer a.files.close()

	mux := http.NewServeMux()
	for _, s := range a.services() {
		mux.Handle("/"+s.name+"/", s.handler())
	}
	mux.HandleFunc("POST "+agentpb.TunnelPath+"{port}", a.handleTunnel)
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:   mux,
		Protocols: &p,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          1000,
			MaxReceiveBufferPerConnection: 16 << 20,
			MaxReceiveBufferPerStream:     8 << 20,
		},
		ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		srv.Close()
		<-errc
		a.closeTunnels()
		a.killAll()
		a.procsWG.Wait()
		return nil
	}
}

// service is one Connect service of the agent: its full name and its generated constructor.
type service struct {
	name string
	make func() (string, http.Handler)
}

// services are every Connect service the agent serves: the one place they are registered.
func (a *Agent) services() []service {
	return []service{
		{agentpbconnect.ProcessName, func() (string, http.Handler) { return agentpbconnect.NewProcessHandler(&processService{a}) }},
		{agentpbconnect.AgentName, func() (string, http.Handler) { return agentpbconnect.NewAgentHandler(&agentService{a}) }},
		{agentpbconnect.FilesystemName, func() (string, http.Handler) { return agentpbconnect.NewFilesystemHandler(&fsService{a: a}) }},
		{agentpbconnect.ReplName, func() (string, http.Handler) { return agentpbconnect.NewReplHandler(&replService{a: a}) }},
	}
}

// handler builds the service on its first request. Building a Connect handler resolves the
// service's protobuf descriptors, ≈ 280 KiB of heap for the four services, which a sandbox
// that is never asked to use one (an idle or pooled sandbox; a one-shot uses Process only)
// should not hold.
func (s service) handler() http.Handler {
	h := sync.OnceValue(func() http.Handler {
		path, h := s.make()
		if path != "/"+s.name+"/" {
			// The generated code's path rule changed: serve nothing rather than misroute.
			return http.NotFoundHandler()
		}
		return h
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h().ServeHTTP(w, r) })
}

// killAll kills every process the agent runs (their groups).
func (a *Agent) killAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.procs {
		p.kill()
	}
}

func (a *Agent) track(p *proc) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.procs[p.pid] = p
	if p.spec.Tag != "" {
		a.tags[p.spec.Tag] = p
	}
}

func (a *Agent) untrack(p *proc) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.procs, p.pid)
	if p.spec.Tag != "" && a.tags[p.spec.Tag] == p {
		delete(a.tags, p.spec.Tag)
	}
}

var errNoProcess = errors.New("no such process")

func (a *Agent) lookup(pid uint32, tag string) (*proc, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if tag != "" {
		if p := a.tags[tag]; p != nil {
			return p, nil
		}
		return nil, errNoProcess
	}
	if p := a.procs[int(pid)]; p != nil {
		return p, nil
	}
	return nil, errNoProcess
}
