package native

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/cgroup"
)

// Recovered is a sandbox found alive by Recover.
type Recovered struct {
	Sandbox *Sandbox
	Meta    []byte
}

// Recover finds the sandboxes a previous daemon of this state directory left running and
// reattaches to them; it removes the remains of dead ones (state, cgroup). It touches only the
// sandboxes its state directory records: a group under the cgroup root without state is killed
// only when the root was this state directory's before too (see claimCgroupRoot), and is
// otherwise left alone and logged, since it may be another runtime's. Call it once at start-up,
// before creating sandboxes.
func (r *Runtime) Recover(ctx context.Context) ([]Recovered, error) {
	dir := filepath.Join(r.cfg.StateDir, "sandboxes")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var out []Recovered
	var errs []error
	known := map[string]bool{}
	live := map[string]bool{} // reattached, keeping their networks
	for _, e := range ents {
		id := e.Name()
		if !idPattern().MatchString(id) {
			continue
		}
		known[id] = true
		sb, meta, err := r.reattach(ctx, id)
		if err == nil {
			out = append(out, Recovered{Sandbox: sb, Meta: meta})
			live[id] = true
			continue
		}
		r.cfg.Logger.WarnContext(ctx, "cleaning up sandbox left by a previous daemon", "sandbox", id, "reason", err)
		if err := r.cleanup(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	if err := r.sweepImages(known); err != nil {
		errs = append(errs, err)
	}
	if err := r.sweepNetworks(ctx, live); err != nil {
		errs = append(errs, fmt.Errorf("sweep networks: %w", err))
	}
	groups, err := r.cg.List()
	if err != nil {
		errs = append(errs, fmt.Errorf("list cgroups: %w", err))
	}
	for _, id := range groups {
		switch {
		case known[id]:
		case !r.exclusiveRoot:
			r.cfg.Logger.WarnContext(ctx, "leaving alone a cgroup this state directory has no record of",
				"cgroup_root", r.cfg.CgroupRoot, "group", id, "state_dir", r.cfg.StateDir)
		default:
			if err := r.cleanup(ctx, id); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return out, errors.Join(errs...)
}

// reattach rebuilds the Sandbox of a live init from its state file.
func (r *Runtime) reattach(ctx context.Context, id string) (*Sandbox, []byte, error) {
	dir := filepath.Join(r.cfg.StateDir, "sandboxes", id)
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, nil, err
	}
	var st state
	st.Slot = -1 // state written before uid ranges existed: its range is the shared slot 0; keep it apart
	if err := json.Unmarshal(b, &st); err != nil || st.ID != id || st.Pid <= 0 {
		return nil, nil, fmt.Errorf("bad state file")
	}
	if start, err := procStartTime(st.Pid); err != nil || start != st.Start {
		return nil, nil, fmt.Errorf("sandbox init %d is gone", st.Pid)
	}
	pidfd, err := unix.PidfdOpen(st.Pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, nil, fmt.Errorf("pidfd: %w", err)
	}
	// Both layouts are adopted as they are: a sandbox keeps its cgroups for life.
	var g, user *cgroup.Group
	if st.SplitMemory {
		g, user, err = r.cg.LoadSplit(id, userGroup)
	} else {
		g, err = r.cg.Load(id) // its user group is loaded on first use (Stats)
	}
	if err != nil {
		unix.Close(pidfd)
		return nil, nil, fmt.Errorf("cgroup: %w", err)
	}
	proc, _ := os.FindProcess(st.Pid)
	if st.Slot >= 0 {
		r.keepSlot(st.Slot, id)
	}
	sock := filepath.Join(dir, "agent.sock")
	sb := &Sandbox{id: id, pid: st.Pid, proc: proc, cg: g, user: user, split: st.SplitMemory, dir: dir, sock: sock, client: agentClient(sock),
		done: make(chan struct{}), logger: r.cfg.Logger.With("sandbox", id),
		release: func() {
			if st.Slot >= 0 {
				r.freeSlot(st.Slot)
			}
		},
		image: r.recoverImage(id, st.Slot)}
	if err := r.adoptNetwork(ctx, sb, st.Slot, st.Network); err != nil {
		// Its processes run on, but without the network it was given: keep it (its owner may
		// still want its files) and say so; destroying it is the owner's call.
		r.cfg.Logger.ErrorContext(ctx, "recovered sandbox has lost its network", "sandbox", id, "err", err)
	}
	// Not our child any more: learn of its exit by polling its pidfd.
	go func() {
		awaitExit(pidfd)
		close(sb.done)
	}()
	return sb, st.Meta, nil
}

// cleanup kills and removes whatever is left of sandbox id.
func (r *Runtime) cleanup(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var errs []error
	if g, err := r.cg.Load(id); err == nil {
		if err := g.Kill(ctx); err != nil {
			errs = append(errs, fmt.Errorf("kill cgroup %s: %w", id, err))
		}
		if err := g.Delete(); err != nil {
			errs = append(errs, fmt.Errorf("delete cgroup %s: %w", id, err))
		}
	}
	r.dropUIDClaim(id)
	if err := r.removeImageRemains(id); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(filepath.Join(r.cfg.StateDir, "sandboxes", id)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// dropUIDClaim removes the uid claim of a dead sandbox of this state directory, if its state
// names one. (Were it left, the next runtime probing the range would find it stale anyway.)
func (r *Runtime) dropUIDClaim(id string) {
	b, err := os.ReadFile(filepath.Join(r.cfg.StateDir, "sandboxes", id, "state.json"))
	var st state
	if err != nil || json.Unmarshal(b, &st) != nil || st.Slot < 0 || st.Slot >= r.cfg.UIDSlots {
		return
	}
	r.dropClaim(st.Slot, id)
}

// dropClaim removes the uid claim of slot n if it names sandbox id of this state directory.
func (r *Runtime) dropClaim(n int, id string) {
	path := r.uidClaimPath(r.cfg.hostUID(n, 0))
	if b, err := os.ReadFile(path); err == nil {
		if o, ok := readOwner(b); ok && o.StateDir == r.cfg.StateDir && o.Sandbox == id {
			os.Remove(path)
		}
	}
}

// procStartTime reads a process's start time (field 22 of /proc/PID/stat, in clock ticks).
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces and parentheses: split after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, errors.New("malformed stat")
	}
	return strconv.ParseUint(f[19], 10, 64)
}
