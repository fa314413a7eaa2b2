package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Found is a sandbox a previous daemon left running.
type Found struct {
	Sandbox *Sandbox
	Meta    []byte
}

// Recover adopts the sandboxes a previous daemon left running, and removes whatever else is
// left: sandbox directories whose sandbox is gone, runsc containers and cgroups with no
// directory. Call it once, before the first Create.
func (r *Runtime) Recover(ctx context.Context) ([]Found, error) {
	var (
		found []Found
		errs  []error
	)
	known := map[string]bool{}
	entries, err := os.ReadDir(filepath.Join(r.dir, "sandboxes"))
	if err != nil {
		return nil, fmt.Errorf("read sandboxes: %w", err)
	}
	for _, e := range entries {
		id := e.Name()
		dir := filepath.Join(r.dir, "sandboxes", id)
		f, err := r.recoverOne(ctx, id, dir)
		if err == nil {
			found = append(found, f)
			known[id] = true
			continue
		}
		r.cfg.Logger.Info("removing the remains of a gvisor sandbox", "sandbox", id, "why", err)
		if err := r.removeRemains(ctx, id, dir); err != nil {
			errs = append(errs, err)
		}
	}
	// runsc containers and cgroups without a directory: a daemon that died mid-Create.
	if out, err := r.runsc(ctx, "list", "--format", "json").Output(); err == nil {
		var list []struct {
			ID string `json:"id"`
		}
		json.Unmarshal(out, &list)
		for _, c := range list {
			if !known[c.ID] {
				if err := r.deleteContainer(c.ID); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	// Writable layers of sandboxes with no directory (a crash between making one and removing it).
	for _, id := range r.layers.IDs() {
		if !known[id] {
			if err := r.removeImage(id, filepath.Join(r.dir, "sandboxes", id)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if names, err := r.cg.List(); err == nil {
		for _, id := range names {
			if known[id] {
				continue
			}
			if g, err := r.cg.Load(id); err == nil {
				if err := r.removeGroup(ctx, g); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	if err := r.sweepNetworks(ctx, known); err != nil {
		errs = append(errs, err)
	}
	return found, errors.Join(errs...)
}

// recoverOne adopts the sandbox of dir if its runsc container still runs its recorded
// process; otherwise it says why not.
func (r *Runtime) recoverOne(ctx context.Context, id, dir string) (Found, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return Found{}, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return Found{}, fmt.Errorf("state: %w", err)
	}
	if st.ID != id || !idPattern.MatchString(id) {
		return Found{}, fmt.Errorf("state names sandbox %q", st.ID)
	}
	pid, err := r.containerPid(ctx, id)
	if err != nil {
		return Found{}, err
	}
	if pid != st.Pid {
		return Found{}, fmt.Errorf("runsc runs pid %d, not the recorded %d", pid, st.Pid)
	}
	g, err := r.cg.Load(id)
	if err != nil {
		return Found{}, err
	}
	sb, err := r.adopt(id, dir, pid, g)
	if err != nil {
		return Found{}, err
	}
	sb.scratchReq, sb.meta, sb.policy = st.ScratchReq, st.Meta, st.Network
	if err := r.adoptNetwork(ctx, sb, st.Slot, st.Network); err != nil {
		// A sandbox without the network it had is not the sandbox its owner made.
		sb.Destroy(ctx)
		return Found{}, fmt.Errorf("network: %w", err)
	}
	return Found{Sandbox: sb, Meta: st.Meta}, nil
}

// removeRemains removes everything of sandbox id: its runsc container, cgroup, uid claim and
// directory.
func (r *Runtime) removeRemains(ctx context.Context, id, dir string) error {
	var errs []error
	if err := r.deleteContainer(id); err != nil {
		errs = append(errs, err)
	}
	if g, err := r.cg.Load(id); err == nil {
		if err := r.removeGroup(ctx, g); err != nil {
			errs = append(errs, err)
		}
	}
	if r.slots != nil && len(errs) == 0 {
		// A networked sandbox's uid claim, once nothing of it runs on those uids (Drop leaves
		// a claim that names another sandbox).
		var st state
		if b, err := os.ReadFile(filepath.Join(dir, "state.json")); err == nil && json.Unmarshal(b, &st) == nil {
			r.slots.Drop(st.Slot, id)
		}
	}
	if err := r.removeDir(id, dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
