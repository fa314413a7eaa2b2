package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/airlockhq/airlock/internal/agentclient"
	"github.com/airlockhq/airlock/internal/cgroup"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

// Phase keys.
const (
	PhaseCgroupCreate   = "cgroup_create"
	PhaseCgroupDelete   = "cgroup_delete"
	PhaseForkExecTrue   = "fork_exec_true"
	PhaseUserNSTrue     = "clone_userns_true"
	PhaseAllNSNoNetTrue = "clone_allns_nonet_true"
	PhaseAllNSTrue      = "clone_allns_true"
	PhaseSelfHost       = "self_exec_host"
	PhaseAllNSSelf      = "clone_allns_self"
	PhaseCreateIdle     = "sandbox_create_idle"
	PhaseCreate         = "sandbox_create"
	PhaseDestroyIdle    = "sandbox_destroy_idle"
	PhaseFirstExecPy    = "first_exec_python"
	PhaseDestroyRun     = "sandbox_destroy_after_run"
	PhaseRuntimeOneShot = "runtime_one_shot"
	PhaseFirstExecTrue  = "first_exec_true"
	PhaseSecondExecPy   = "second_exec_python"
	PhaseExecTrue       = "exec_true"
	PhaseExecPython     = "exec_python"
	PhaseHostPython     = "host_python"
)

// The sandbox a one-shot gets with the engine's defaults (engine.Config.setDefaults); the
// runtime-level phases create the same, so that they add up to what engine.Execute does.
var oneShotSpec = native.Spec{MemoryBytes: 512 << 20, CPU: 1, Pids: 256, ScratchBytes: 1 << 30, NoFile: 1024}

// nsFlags are the namespaces the native runtime clones its init into on cgroup v1 (on v2 it
// adds CLONE_NEWCGROUP). uidBase is native.Config's default UIDBase; the runtime maps each
// sandbox onto its own 65536-uid range above it, which costs the same to write.
const (
	nsFlags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID |
		syscall.CLONE_NEWNET | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS
	uidBase = 2000000
)

// phaseSet collects the samples of several phases in the order they are first recorded.
type phaseSet struct {
	order   []string
	names   map[string]string
	samples map[string][]time.Duration
}

func newPhaseSet() *phaseSet {
	return &phaseSet{names: map[string]string{}, samples: map[string][]time.Duration{}}
}

func (p *phaseSet) add(key, name string, d time.Duration) {
	if _, ok := p.names[key]; !ok {
		p.order = append(p.order, key)
		p.names[key] = name
	}
	p.samples[key] = append(p.samples[key], d)
}

// timed runs f and records how long it took under key.
func (p *phaseSet) timed(key, name string, f func() error) error {
	t0 := time.Now()
	if err := f(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	p.add(key, name, time.Since(t0))
	return nil
}

func (p *phaseSet) phases() []Phase {
	var out []Phase
	for _, k := range p.order {
		out = append(out, Phase{Key: k, Name: p.names[k], Latency: Summarize(p.samples[k])})
	}
	return out
}

// measurePhases times each step of a sandbox's life on its own, cfg.N times each.
func measurePhases(ctx context.Context, cfg Config, env *Env) ([]Phase, error) {
	ps := newPhaseSet()
	fmt.Fprintf(cfg.Progress, "bench: phases: cgroup create and delete\n")
	if err := measureCgroup(cfg, ps); err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Progress, "bench: phases: fork/exec and clone with namespaces\n")
	if err := measureClone(ctx, cfg, ps); err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Progress, "bench: phases: sandbox create and destroy\n")
	if err := measureSandbox(ctx, cfg, env, ps); err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Progress, "bench: phases: exec through the agent\n")
	if err := measureExec(ctx, cfg, env, ps); err != nil {
		return nil, err
	}
	return ps.phases(), nil
}

// measureCgroup creates and deletes a group with a one-shot's limits under a cgroup root of its
// own (the agent's pids reserve included, as the runtime adds it).
func measureCgroup(cfg Config, ps *phaseSet) (err error) {
	m, err := cgroup.New("airlock-bench-cg-" + strconv.Itoa(os.Getpid()))
	if err != nil {
		return fmt.Errorf("cgroup phases: %w", err)
	}
	defer func() {
		if rerr := m.RemoveRoot(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("cgroup phases: %w", rerr))
		}
	}()
	l := cgroup.Limits{MemoryBytes: oneShotSpec.MemoryBytes, CPU: oneShotSpec.CPU, Pids: oneShotSpec.Pids + 128}
	for i := range cfg.N {
		var g *cgroup.Group
		if err := ps.timed(PhaseCgroupCreate, "cgroup create (memory, cpu, pids limits)", func() (err error) {
			g, err = m.Create("g"+strconv.Itoa(i), l)
			return err
		}); err != nil {
			return err
		}
		if err := ps.timed(PhaseCgroupDelete, "cgroup delete (empty)", g.Delete); err != nil {
			return err
		}
	}
	return nil
}

// nsAttr is the SysProcAttr of a child cloned into flags, set up as the runtime sets up its
// init: mapped to uidBase, switched to the namespace's uid 0, in a new session.
func nsAttr(flags uintptr) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Cloneflags: flags, Setsid: true}
	if flags&syscall.CLONE_NEWUSER != 0 {
		a.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uidBase, Size: 65536}}
		a.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uidBase, Size: 65536}}
		a.GidMappingsEnableSetgroups = true
		a.Credential = &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{}}
	}
	return a
}

// spawn starts path with args in the namespaces of attr and waits for it to exit successfully.
func spawn(ctx context.Context, path string, args, env []string, attr *syscall.SysProcAttr) error {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = env
	cmd.SysProcAttr = attr
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// measureClone times a child that does nothing (/bin/true) started plainly and in namespaces,
// and the start of this binary itself, interleaved round by round. Each sample is start to
// reaped exit, so it includes tearing the namespaces down (except the network namespace's
// cleanup, which the kernel defers to a workqueue).
func measureClone(ctx context.Context, cfg Config, ps *phaseSet) error {
	type spawnPhase struct {
		key, name string
		path      string
		args, env []string
		flags     uintptr
		plain     bool
	}
	list := []spawnPhase{
		{key: PhaseForkExecTrue, name: "fork/exec /bin/true (no namespaces)", path: "/bin/true", plain: true},
		{key: PhaseUserNSTrue, name: "clone user ns + uid/gid maps, exec /bin/true", path: "/bin/true",
			flags: syscall.CLONE_NEWUSER},
		{key: PhaseAllNSNoNetTrue, name: "clone runtime namespaces except net, exec /bin/true", path: "/bin/true",
			flags: nsFlags &^ syscall.CLONE_NEWNET},
		{key: PhaseAllNSTrue, name: "clone runtime namespaces (user mnt pid net ipc uts), exec /bin/true",
			path: "/bin/true", flags: nsFlags},
	}
	if cfg.SelfArgs != nil {
		list = append(list,
			spawnPhase{key: PhaseSelfHost, name: "fork/exec this binary as a no-op (Go start)", path: "/proc/self/exe",
				args: cfg.SelfArgs, env: cfg.SelfEnv, plain: true},
			spawnPhase{key: PhaseAllNSSelf, name: "clone runtime namespaces, exec this binary as a no-op",
				path: "/proc/self/exe", args: cfg.SelfArgs, env: cfg.SelfEnv, flags: nsFlags})
	}
	// Round 0 runs the list in order, so the phases are reported in the list's order.
	for round := range cfg.N {
		for j := range list {
			p := list[(round+j)%len(list)]
			attr := nsAttr(p.flags)
			if p.plain {
				attr = &syscall.SysProcAttr{Setsid: true}
			}
			if err := ps.timed(p.key, p.name, func() error {
				return spawn(ctx, p.path, p.args, p.env, attr)
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

// measureSandbox times the runtime's Create and Destroy of a one-shot's sandbox: first with
// nothing run in it, then around the first exec of print(1), which is a one-shot at the runtime
// level.
func measureSandbox(ctx context.Context, cfg Config, env *Env, ps *phaseSet) error {
	rt := env.Runtime
	for i := range cfg.N {
		spec := oneShotSpec
		spec.ID = fmt.Sprintf("bench-idle-%d", i)
		var sb *native.Sandbox
		if err := ps.timed(PhaseCreateIdle, "sandbox create (cgroup, clone, mounts, pivot, seccomp, agent serving)",
			func() (err error) {
				sb, err = rt.Create(ctx, spec)
				return err
			}); err != nil {
			return err
		}
		if err := ps.timed(PhaseDestroyIdle, "sandbox destroy (nothing run)", func() error {
			return sb.Destroy(ctx)
		}); err != nil {
			return err
		}
	}
	for i := range cfg.N {
		spec := oneShotSpec
		spec.ID = fmt.Sprintf("bench-run-%d", i)
		t0 := time.Now()
		var sb *native.Sandbox
		if err := ps.timed(PhaseCreate, "sandbox create (the same, before a run)", func() (err error) {
			sb, err = rt.Create(ctx, spec)
			return err
		}); err != nil {
			return err
		}
		err := ps.timed(PhaseFirstExecPy, "exec python3 print(1), first in a fresh sandbox (new agent connection)",
			func() error { return execPython(ctx, sb.Agent()) })
		if err != nil {
			sb.Destroy(ctx)
			return err
		}
		if err := ps.timed(PhaseDestroyRun, "sandbox destroy (after that run)", func() error {
			return sb.Destroy(ctx)
		}); err != nil {
			return err
		}
		ps.add(PhaseRuntimeOneShot, "runtime one-shot: create + first exec + destroy, per iteration", time.Since(t0))
	}
	// Take the first exec's extra cost apart: a first exec of true pays for the new agent
	// connection and whatever the agent does the first time; a python3 right after it shows
	// what is left for a cold interpreter in a fresh sandbox.
	for i := range cfg.N {
		spec := oneShotSpec
		spec.ID = fmt.Sprintf("bench-cold-%d", i)
		sb, err := rt.Create(ctx, spec)
		if err != nil {
			return fmt.Errorf("sandbox create: %w", err)
		}
		cl := sb.Agent()
		err = ps.timed(PhaseFirstExecTrue, "exec true, first in a fresh sandbox (new agent connection)",
			func() error { return execTrue(ctx, cl) })
		if err == nil {
			err = ps.timed(PhaseSecondExecPy, "exec python3 print(1), second in a fresh sandbox (after that true)",
				func() error { return execPython(ctx, cl) })
		}
		if derr := sb.Destroy(ctx); derr != nil {
			err = errors.Join(err, fmt.Errorf("sandbox destroy: %w", derr))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// measureExec times execs through the agent of one running sandbox, over a warm connection,
// interleaved with python on the host.
func measureExec(ctx context.Context, cfg Config, env *Env, ps *phaseSet) (err error) {
	spec := oneShotSpec
	spec.ID = "bench-exec"
	sb, err := env.Runtime.Create(ctx, spec)
	if err != nil {
		return fmt.Errorf("sandbox create: %w", err)
	}
	defer func() {
		if derr := sb.Destroy(ctx); derr != nil {
			err = errors.Join(err, fmt.Errorf("sandbox destroy: %w", derr))
		}
	}()
	cl := sb.Agent()
	if err := execTrue(ctx, cl); err != nil { // open the connection
		return err
	}
	for range cfg.N {
		if err := ps.timed(PhaseExecTrue, "exec true in a running sandbox (warm agent connection)",
			func() error { return execTrue(ctx, cl) }); err != nil {
			return err
		}
		if err := ps.timed(PhaseExecPython, "exec python3 print(1) in a running sandbox (warm)",
			func() error { return execPython(ctx, cl) }); err != nil {
			return err
		}
		if err := ps.timed(PhaseHostPython, "python3 print(1) on the host (os/exec)",
			func() error { return BarePython(ctx, cfg.Python) }); err != nil {
			return err
		}
	}
	return nil
}

// execRequest is what the engine sends for a one-shot, minus the program.
func execRequest(cmd string, args ...string) agentclient.Process {
	return agentclient.Process{Cmd: cmd, Args: args, Dir: "/workspace", Timeout: 30 * time.Second,
		OutputLimit: 1 << 20, KillTree: true}
}

func execTrue(ctx context.Context, cl *agentclient.Client) error {
	end, err := cl.Exec(ctx, execRequest("true"), func(agentclient.Event) {})
	if err != nil {
		return fmt.Errorf("exec true: %w", err)
	}
	if end.ExitCode != 0 || end.Err != "" {
		return fmt.Errorf("exec true: exit %d %s", end.ExitCode, end.Err)
	}
	return nil
}

func execPython(ctx context.Context, cl *agentclient.Client) error {
	var out bytes.Buffer
	end, err := cl.Exec(ctx, execRequest("python3", "-c", printCode), func(ev agentclient.Event) { out.Write(ev.Stdout) })
	if err != nil {
		return fmt.Errorf("exec python3: %w", err)
	}
	if end.ExitCode != 0 || end.Err != "" || out.String() != wantOutput {
		return fmt.Errorf("exec python3: exit %d %s, stdout %q", end.ExitCode, end.Err, out.String())
	}
	return nil
}
