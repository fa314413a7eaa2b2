package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/netpolicy"
	"github.com/airlockhq/airlock/internal/runtime/gvisor"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/runtime/native/sandboxinit"
	"github.com/airlockhq/airlock/internal/sandboxmain"
)

// runtimeDef is one runtime the daemon can offer: how to build it from its configuration, and
// how this binary, re-executed by it, becomes the init of one of its sandboxes. This is the
// composition root of the runtimes: adding one (gVisor) is one entry in runtimeDefs, its part
// of runtimeConfig, and its flags in bindRuntimeFlags.
type runtimeDef struct {
	name string
	// open builds the runtime. Its close releases what the runtime holds on the host.
	open func(logger *slog.Logger, c *runtimeConfig) (openedRuntime, error)
	// isInit reports whether this process was started as PID 1 of one of the runtime's sandboxes.
	isInit func() bool
	// init builds and locks down the sandbox from inside, and returns the listener and the
	// agent configuration the runtime-neutral agent.Serve runs with.
	init sandboxmain.Init
}

// openedRuntime is a runtime built by runtimeDef.open.
type openedRuntime struct {
	rt            engine.Runtime
	close         func() error
	cgroupVersion int
	noNetwork     error // why the runtime cannot network sandboxes; nil when it can
}

// runtimeConfig is the configuration of every runtime, bound to flags by bindRuntimeFlags.
type runtimeConfig struct {
	Default string // the runtime of specs that name none
	Native  native.Config
	// SandboxBinary is --sandbox-binary: the program the native runtime starts as each
	// sandbox's init and agent (sandboxbin.go); empty looks for airlock-sandbox beside this
	// executable and falls back to this executable itself.
	SandboxBinary string
	Gvisor        gvisor.Config // its StateDir, CgroupRoot, WheelDir and Logger come from Native's

	// The sandbox binary as sandboxBinary checked it, once for every runtime (sandboxExe;
	// openRuntimes opens the runtimes one after the other).
	exeDone bool
	exe     string
	exeErr  error
}

// sandboxExe is the program every runtime starts its sandboxes from (sandboxBinary): "" for
// this executable itself. It is checked and opened once, whichever runtime asks first.
func (c *runtimeConfig) sandboxExe(logger *slog.Logger) (string, error) {
	if !c.exeDone {
		c.exe, c.exeErr = sandboxBinary(logger, c.SandboxBinary)
		c.exeDone = true
	}
	return c.exe, c.exeErr
}

var runtimeDefs = []runtimeDef{{
	name: native.Name,
	open: func(logger *slog.Logger, c *runtimeConfig) (openedRuntime, error) {
		cfg := c.Native
		cfg.Logger = logger
		if cfg.Exe == "" {
			exe, err := c.sandboxExe(logger)
			if err != nil {
				return openedRuntime{}, err
			}
			cfg.Exe = exe
		}
		rt, err := native.New(cfg)
		if err != nil {
			return openedRuntime{}, fmt.Errorf("native runtime: %w", err)
		}
		return openedRuntime{rt: native.EngineRuntime(rt), close: rt.Close, cgroupVersion: rt.CgroupVersion(),
			noNetwork: native.Networks(rt)}, nil
	},
	isInit: sandboxinit.IsInit,
	init:   sandboxmain.NativeInit,
}, {
	name: gvisor.Name,
	open: func(logger *slog.Logger, c *runtimeConfig) (openedRuntime, error) {
		if c.Native.Private {
			return openedRuntime{}, errRuntimeSkipped // `airlock run`: native only, no probe
		}
		cfg := c.Gvisor
		cfg.Logger = logger
		cfg.StateDir = c.Native.StateDir
		if cfg.StateDir == "" {
			cfg.StateDir = "/var/lib/airlock"
		}
		if c.Native.CgroupRoot != "" {
			cfg.CgroupRoot = c.Native.CgroupRoot + "-gvisor"
		}
		cfg.WheelDir = c.Native.WheelDir
		if cfg.Exe == "" {
			// The same small airlock-sandbox as native sandboxes start, when there is one.
			exe, err := c.sandboxExe(logger)
			if err != nil {
				return openedRuntime{}, err
			}
			cfg.Exe = exe
		}
		// The native runtime's network configuration and host-wide claims: a networked gvisor
		// sandbox is attached as a native one is, its slot claimed among theirs.
		cfg.Network, cfg.HostDir, cfg.UIDBase, cfg.UIDSlots = c.Native.Network, c.Native.HostDir, c.Native.UIDBase, c.Native.UIDSlots
		rt, err := gvisor.New(cfg)
		if err != nil {
			return openedRuntime{}, fmt.Errorf("gvisor runtime: %w", err)
		}
		return openedRuntime{rt: gvisor.EngineRuntime(rt), close: rt.Close, noNetwork: gvisor.Networks(rt)}, nil
	},
	isInit: gvisor.IsInit,
	init:   gvisor.Init,
}}

// errRuntimeSkipped is what a runtime's open returns when the command does not offer it; it
// is left out without a warning.
var errRuntimeSkipped = errors.New("not offered by this command")

// bindRuntimeFlags binds the runtimes' knobs, each with its AIRLOCK_* variable. stateUsage
// says what the state directory defaults to for the command.
func bindRuntimeFlags(fs *pflag.FlagSet, c *runtimeConfig, stateUsage string) {
	if c.Default == "" {
		c.Default = runtimeDefs[0].name
	}
	if c.Native.Network == nil {
		c.Native.Network = &netpolicy.Config{} // defaults; serve binds its flags (bindNetworkFlags)
	}
	flagEnv(fs, &c.Default, "runtime", "AIRLOCK_RUNTIME", "runtime of sandboxes ("+strings.Join(runtimeNames(runtimeDefs), ", ")+")")
	flagEnv(fs, &c.Native.StateDir, "state-dir", "AIRLOCK_STATE_DIR", stateUsage)
	flagEnv(fs, &c.Native.CgroupRoot, "cgroup-root", "AIRLOCK_CGROUP_ROOT", "parent cgroup of the sandboxes (default one derived from --state-dir)")
	flagEnv(fs, &c.Native.WheelDir, "wheel-dir", "AIRLOCK_WHEEL_DIR", "directory of Python wheels sessions may pip-install from")
	flagEnv(fs, &c.SandboxBinary, "sandbox-binary", "AIRLOCK_SANDBOX_BINARY", "the program run as each sandbox's init and agent (default airlock-sandbox beside this binary if it is there, else this binary)")
	flagEnv(fs, &c.Native.UIDBase, "uid-base", "AIRLOCK_UID_BASE", "first host uid of the sandboxes' uid ranges (default 2000000; must not overlap host users or /etc/subuid)")
	flagEnv(fs, &c.Gvisor.Platform, "gvisor-platform", "AIRLOCK_GVISOR_PLATFORM", "runsc platform of gvisor sandboxes ("+strings.Join(gvisor.Platforms, ", ")+"; default ptrace)")
	flagEnv(fs, &c.Gvisor.Runsc, "gvisor-runsc", "AIRLOCK_GVISOR_RUNSC", "runsc binary of the gvisor runtime (default runsc on PATH)")
}

func runtimeNames(defs []runtimeDef) []string {
	names := make([]string, len(defs))
	for i, d := range defs {
		names[i] = d.name
	}
	return names
}

// runInit runs this process as a sandbox's init if one of the runtimes started it as such:
// the runtime builds the sandbox, then the agent serves. ok is false for any other process.
func runInit(defs []runtimeDef) (code int, ok bool) {
	for _, d := range defs {
		if !d.isInit() {
			continue
		}
		return sandboxmain.Serve(d.name, d.init), true
	}
	return 0, false
}

// RunInit is runInit over every runtime, for test binaries re-executed as a sandbox's init.
func RunInit() (code int, ok bool) { return runInit(runtimeDefs) }

// runtimes is the engine's Runtime: it builds each spec with the runtime the spec names, or
// the default one.
type runtimes struct {
	def    string
	names  []string // available, in runtimeDefs order
	byName map[string]openedRuntime
}

var (
	_ engine.Runtime   = (*runtimes)(nil)
	_ engine.Recoverer = (*runtimes)(nil)
)

// openRuntimes builds every runtime of defs. The default one must work; another that cannot be
// built (its binary missing, say) is left out with a warning, so /v1/info lists only what is
// really available.
func openRuntimes(logger *slog.Logger, c *runtimeConfig, defs []runtimeDef) (*runtimes, error) {
	if c.Default == "" {
		c.Default = defs[0].name
	}
	if !slices.Contains(runtimeNames(defs), c.Default) {
		return nil, fmt.Errorf("runtime %q is unknown (known: %s)", c.Default, strings.Join(runtimeNames(defs), ", "))
	}
	r := &runtimes{def: c.Default, byName: map[string]openedRuntime{}}
	for _, d := range defs {
		o, err := d.open(logger, c)
		if err != nil && d.name == c.Default {
			r.Close()
			return nil, err
		}
		if errors.Is(err, errRuntimeSkipped) {
			continue
		}
		if err != nil {
			logger.Warn("runtime not available", "runtime", d.name, "err", err)
			continue
		}
		r.names = append(r.names, d.name)
		r.byName[d.name] = o
	}
	return r, nil
}

// Names lists the available runtimes, for /v1/info.
func (r *runtimes) Names() []string { return slices.Clone(r.names) }

// networkErr says why the default runtime cannot network sandboxes; nil when it can.
func (r *runtimes) networkErr() error { return r.byName[r.def].noNetwork }

// cgroupVersion is the default runtime's cgroup version, for /v1/info.
func (r *runtimes) cgroupVersion() int { return r.byName[r.def].cgroupVersion }

func (r *runtimes) Create(ctx context.Context, s engine.Spec) (engine.Instance, error) {
	name := s.Runtime
	if name == "" {
		name = r.def
	}
	o, ok := r.byName[name]
	if !ok {
		return nil, api.Errorf(api.ErrInvalidArgument, "runtime %q is not available (this daemon offers %s)", name, strings.Join(r.names, ", "))
	}
	s.Runtime = name
	return o.rt.Create(ctx, s)
}

// Recover gathers the sandboxes every runtime's previous daemon left running.
func (r *runtimes) Recover(ctx context.Context) ([]engine.Recovered, error) {
	var (
		all  []engine.Recovered
		errs []error
	)
	for _, name := range r.names {
		rec, ok := r.byName[name].rt.(engine.Recoverer)
		if !ok {
			continue
		}
		found, err := rec.Recover(ctx)
		all = append(all, found...)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s runtime: %w", name, err))
		}
	}
	return all, errors.Join(errs...)
}

// Close releases every runtime.
func (r *runtimes) Close() error {
	var errs []error
	for _, name := range r.names {
		if err := r.byName[name].close(); err != nil {
			errs = append(errs, fmt.Errorf("closing the %s runtime: %w", name, err))
		}
	}
	return errors.Join(errs...)
}
