package native

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

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
func (r *Runtime) netTable() string {
	name := strings.NewReplacer("/", "_", ".", "_").Replace(r.cfg.CgroupRoot)
	if len(name) > 60 {
		name = name[:60]
	}
	return "airlock_" + name
}

// netManager returns the runtime's network manager, creating it (the nftables table, IPv4
// forwarding) on first use, so that a daemon that never networks a sandbox changes nothing on
// the host.
func (r *Runtime) netManager() (*netpolicy.Manager, error) {
	if r.cfg.Network == nil {
		return nil, ErrNetworkUnsupported
	}
	r.netMu.Lock()
	defer r.netMu.Unlock()
	if r.net != nil {
		return r.net, nil
	}
	cfg := *r.cfg.Network
	cfg.Table = r.netTable()
	cfg.Logger = r.cfg.Logger
	m, err := netpolicy.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("sandbox networking: %w", err)
	}
	r.net = m
	return m, nil
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
	// ndots:1 and no search domains: a sandbox resolves exactly the names it asks for.
	content := fmt.Sprintf("nameserver %s\noptions ndots:1 timeout:2 attempts:2\n", att.Gateway())
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
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
	r.netMu.Lock()
	m := r.net
	r.netMu.Unlock()
	if m == nil {
		exists, err := netpolicy.TableExists(r.netTable())
		if err != nil || !exists {
			return nil // no table: nothing to sweep (or no nftables at all, found out on first use)
		}
		if m, err = r.netManager(); err != nil {
			return err
		}
	}
	return m.Sweep(ctx, func(id string) bool { return live[id] })
}

// closeNetworks stops the forwarders and drops the table when no sandbox has objects left in it.
func (r *Runtime) closeNetworks() error {
	r.netMu.Lock()
	defer r.netMu.Unlock()
	if r.net == nil {
		return nil
	}
	err := r.net.Close()
	r.net = nil
	return err
}
