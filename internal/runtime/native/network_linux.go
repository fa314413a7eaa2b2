package native

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/airlockhq/airlock/internal/netpolicy"
)

// ErrNetworkUnsupported is returned for a networked Spec when the runtime was built without a
// network configuration (Config.Network nil).
var ErrNetworkUnsupported = errors.New("this runtime was started without sandbox networking")

// resolvDir holds the resolv.conf of each networked sandbox (naming its own gateway, where its
// DNS forwarder listens), bound read-only over the sandbox's /etc/resolv.conf. It sits in the
// state directory (0711) and is 0711 itself, so the init, an unprivileged host uid, can reach a
// file by name without listing the others.
const resolvDir = "resolv"

// netTable is the runtime's nftables table: one per cgroup root, which is one per state
// directory, so that daemons of different state directories never touch each other's rules.
func (r *Runtime) netTable() string { return NetTable(r.cfg.CgroupRoot) }

// NetTable is the nftables table of the runtime whose sandboxes' cgroups are under cgroupRoot.
func NetTable(cgroupRoot string) string {
	name := strings.NewReplacer("/", "_", ".", "_").Replace(cgroupRoot)
	if len(name) > 60 {
		name = name[:60]
	}
	return "airlock_" + name
}

// netManager returns the runtime's network manager, creating it (the nftables table, IPv4
// forwarding) on first use, so that a daemon that never networks a sandbox changes nothing on
// the host.
func (r *Runtime) netManager() (*netpolicy.Manager, error) {
	return r.net.Manager(r.cfg.Network, r.netTable(), r.cfg.Logger)
}

// LazyNetwork is a runtime's network manager, made on first use; its zero value has none.
// The gvisor runtime keeps its own the same way.
type LazyNetwork struct {
	mu sync.Mutex
	m  *netpolicy.Manager
}

// Manager returns the manager of table, making it from cfg (nil: ErrNetworkUnsupported) on
// first use.
func (l *LazyNetwork) Manager(cfg *netpolicy.Config, table string, logger *slog.Logger) (*netpolicy.Manager, error) {
	if cfg == nil {
		return nil, ErrNetworkUnsupported
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m != nil {
		return l.m, nil
	}
	c := *cfg
	c.Table, c.Logger = table, logger
	m, err := netpolicy.New(c)
	if err != nil {
		return nil, fmt.Errorf("sandbox networking: %w", err)
	}
	l.m = m
	return m, nil
}

// Sweep removes the network objects of table's sandboxes that live does not hold, if the
// table exists (a previous daemon's): making no table where there is none.
func (l *LazyNetwork) Sweep(ctx context.Context, cfg *netpolicy.Config, table string, logger *slog.Logger, live map[string]bool) error {
	if cfg == nil {
		return nil
	}
	l.mu.Lock()
	m := l.m
	l.mu.Unlock()
	if m == nil {
		exists, err := netpolicy.TableExists(table)
		if err != nil || !exists {
			return nil // no table: nothing to sweep (or no nftables at all, found out on first use)
		}
		if m, err = l.Manager(cfg, table, logger); err != nil {
			return err
		}
	}
	return m.Sweep(ctx, func(id string) bool { return live[id] })
}

// Close stops the forwarders and drops the table when no sandbox has objects left in it.
func (l *LazyNetwork) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		return nil
	}
	err := l.m.Close()
	l.m = nil
	return err
}

// network attaches the sandbox to the network its policy asks for, once its init (and with it
// its network namespace) exists and before the agent serves: nothing of the sandbox's runs
// before its firewall does.
func (c *creation) network(ctx context.Context) error {
	if !c.spec.Network.Enabled() {
		return nil
	}
	m, err := c.r.netManager()
	if err != nil {
		return err
	}
	att, err := m.Attach(ctx, netpolicy.Sandbox{ID: c.spec.ID, Slot: c.slot, Pid: c.sb.pid}, c.spec.Network)
	if err != nil {
		return err
	}
	c.undo.add(func() { att.Close() })
	file, err := c.r.writeResolv(c.spec.ID, att)
	if err != nil {
		return err
	}
	c.undo.add(func() { os.Remove(file) })
	// The sandbox keeps the path too: its destroy removes the file (closeNetwork).
	c.sb.net, c.sb.resolv = att, file
	return nil
}

// writeResolv writes the sandbox's resolv.conf and returns its path.
func (r *Runtime) writeResolv(id string, att *netpolicy.Attachment) (string, error) {
	file := r.resolvPath(id)
	if err := os.Mkdir(filepath.Dir(file), 0o711); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("resolv.conf directory: %w", err)
	}
	if err := os.WriteFile(file, ResolvConf(att.Gateway()), 0o644); err != nil {
		return "", fmt.Errorf("resolv.conf: %w", err)
	}
	return file, nil
}

// resolvPath is where sandbox id's resolv.conf lives.
func (r *Runtime) resolvPath(id string) string {
	return filepath.Join(r.cfg.StateDir, resolvDir, id+".conf")
}

// closeNetwork removes a sandbox's network and its resolv.conf.
func (s *Sandbox) closeNetwork() error {
	if s.net == nil {
		return nil
	}
	err := s.net.Close()
	os.Remove(s.resolv)
	return err
}

// adoptNetwork takes over the network of a sandbox a previous daemon left running.
func (r *Runtime) adoptNetwork(ctx context.Context, sb *Sandbox, slot int, p netpolicy.Policy) error {
	if !p.Enabled() {
		return nil
	}
	m, err := r.netManager()
	if err != nil {
		return err
	}
	att, err := m.Adopt(ctx, netpolicy.Sandbox{ID: sb.id, Slot: slot, Pid: sb.pid}, p)
	if err != nil {
		return err
	}
	sb.net, sb.resolv = att, r.resolvPath(sb.id)
	return nil
}

// sweepNetworks removes what a previous daemon's sandboxes that are gone left of their networks
// (chains, sets, veths, resolv.conf files); live ones keep theirs.
func (r *Runtime) sweepNetworks(ctx context.Context, live map[string]bool) error {
	if r.cfg.Network == nil {
		return nil
	}
	dir := filepath.Join(r.cfg.StateDir, resolvDir)
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			if id, ok := strings.CutSuffix(e.Name(), ".conf"); ok && !live[id] {
				os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	return r.net.Sweep(ctx, r.cfg.Network, r.netTable(), r.cfg.Logger, live)
}

// closeNetworks stops the forwarders and drops the table when no sandbox has objects left in it.
func (r *Runtime) closeNetworks() error { return r.net.Close() }
