package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
)

// Manager is the host side of the sandbox networks of one daemon: its nftables table and the
// host ends of the sandboxes' veths. Safe for concurrent use.
type Manager struct {
	cfg    Config
	prefix string // host-side veth names: prefix + slot

	// nftMu serializes this Manager's nftables transactions, so that a look-then-delete
	// (Close, Sweep) never races another of ours over the same objects.
	nftMu sync.Mutex

	mu  sync.Mutex
	att map[string]*Attachment // by sandbox id
}

// New validates cfg, creates or refreshes the table and its base chains, and turns on IPv4
// forwarding, without which NAT cannot carry a sandbox's traffic.
func New(cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	cfg.Allow = append([]netip.Prefix(nil), cfg.Allow...)
	if len(cfg.Upstreams) == 0 && !cfg.noDNS {
		ups, err := UpstreamsFromResolvConf("/etc/resolv.conf")
		if err != nil {
			cfg.Logger.Warn("network: no DNS upstream, so names will not resolve in sandboxes (give --dns-upstream)", "err", err)
		}
		cfg.Upstreams = ups
	}
	m := &Manager{cfg: cfg, prefix: linkPrefix(cfg.Table), att: map[string]*Attachment{}}
	if err := m.program(); err != nil {
		return nil, err
	}
	if err := enableForwarding(); err != nil {
		return nil, err
	}
	cfg.Logger.Info("network: nftables table ready; net.ipv4.ip_forward=1 (host-wide, needed for NAT)",
		"table", cfg.Table, "pool", cfg.Pool, "veth_prefix", m.prefix)
	return m, nil
}

// linkPrefix derives the host-side veth prefix from the table, so that two daemons' drop
// rules ("every other interface of ours") never match each other's sandboxes: "al" and four
// hex digits of the table name's hash, leaving nine characters for the slot.
func linkPrefix(table string) string {
	h := fnv.New32a()
	h.Write([]byte(table))
	return fmt.Sprintf("al%04x", h.Sum32()&0xffff)
}

func enableForwarding() error {
	const path = "/proc/sys/net/ipv4/ip_forward"
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable ip_forward: %w", err)
	}
	return nil
}

// LinkPrefix is how the names of this Manager's host-side veths begin.
func (m *Manager) LinkPrefix() string { return m.prefix }

// LinkName is the host-side veth of a slot.
func (m *Manager) LinkName(slot int) string { return m.prefix + strconv.Itoa(slot) }

// Addrs returns a slot's gateway and sandbox addresses; see Config.Addrs.
func (m *Manager) Addrs(slot int) (gateway, addr netip.Addr, err error) { return m.cfg.Addrs(slot) }

// Attach gives a sandbox the network its (enabled) policy asks for: nftables first, so that
// the first packet the veth carries is already filtered, then the veth. A failure half way
// removes what was made.
func (m *Manager) Attach(ctx context.Context, sb Sandbox, p Policy) (*Attachment, error) {
	return m.attach(ctx, sb, p, false)
}

// Adopt takes over a sandbox a previous daemon attached: it rewrites the sandbox's nftables
// objects idempotently (keeping the addresses DNS admitted) and keeps its live veth, making
// one only if it is gone.
func (m *Manager) Adopt(ctx context.Context, sb Sandbox, p Policy) (*Attachment, error) {
	return m.attach(ctx, sb, p, true)
}

func (m *Manager) attach(ctx context.Context, sb Sandbox, p Policy, adopt bool) (*Attachment, error) {
	if err := sb.validate(); err != nil {
		return nil, err
	}
	p = p.Normalize()
	if !p.Enabled() {
		return nil, fmt.Errorf("network: sandbox %s: policy %q has no network to attach", sb.ID, p.Mode)
	}
	rules, err := p.Rules()
	if err != nil {
		return nil, err
	}
	gw, addr, err := m.Addrs(sb.Slot)
	if err != nil {
		return nil, err
	}
	a := &Attachment{m: m, sb: sb, policy: p, gw: gw, addr: addr, link: m.LinkName(sb.Slot), groups: groupRules(rules)}
	if len(a.link) > ifNameMax {
		return nil, fmt.Errorf("network: slot %d: interface name %q too long", sb.Slot, a.link)
	}
	m.mu.Lock()
	if old := m.att[sb.ID]; old != nil {
		m.mu.Unlock()
		return nil, fmt.Errorf("network: sandbox %s already attached", sb.ID)
	}
	m.att[sb.ID] = a // claimed; removed again on failure
	m.mu.Unlock()

	if err := m.setUp(ctx, a, adopt); err != nil {
		m.mu.Lock()
		delete(m.att, sb.ID)
		m.mu.Unlock()
		return nil, err
	}
	if err := a.startDNS(rules); err != nil {
		a.Close()
		return nil, err
	}
	m.cfg.Logger.InfoContext(ctx, "network: attached", "sandbox", sb.ID, "mode", p.Mode,
		"link", a.link, "addr", addr, "adopted", adopt)
	return a, nil
}

// setUp runs the steps of an attachment, undoing them all when one fails.
func (m *Manager) setUp(ctx context.Context, a *Attachment, adopt bool) (err error) {
	undo := func() {
		if rerr := a.remove(); rerr != nil {
			m.cfg.Logger.WarnContext(ctx, "network: undo a failed attach", "sandbox", a.sb.ID, "err", rerr)
		}
	}
	m.nftMu.Lock()
	err = m.programSandbox(a, adopt)
	m.nftMu.Unlock()
	if err != nil {
		undo()
		return err
	}
	if err := ctx.Err(); err != nil {
		undo()
		return fmt.Errorf("network: sandbox %s: %w", a.sb.ID, context.Cause(ctx))
	}
	if err := m.setUpVeth(a, adopt); err != nil {
		undo()
		return fmt.Errorf("network: sandbox %s: %w", a.sb.ID, err)
	}
	return nil
}

// Sweep removes the per-sandbox objects — chains, sets, map elements, host veths — of every
// sandbox keep does not report, such as those of a daemon that died. It leaves other tables'
// objects and other daemons' veths alone.
func (m *Manager) Sweep(ctx context.Context, keep func(id string) bool) error {
	gone := func(id string) bool { return !keep(id) }
	var errs []error
	for _, l := range m.ourLinks() {
		if l.id == "" || gone(l.id) {
			m.cfg.Logger.InfoContext(ctx, "network: sweep veth", "link", l.name, "sandbox", l.id)
			if err := deleteLink(l.name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	m.nftMu.Lock()
	_, err := m.removeSandboxes(gone)
	m.nftMu.Unlock()
	if err != nil {
		errs = append(errs, err)
	}
	m.mu.Lock()
	for id := range m.att {
		if gone(id) {
			delete(m.att, id)
		}
	}
	m.mu.Unlock()
	return errors.Join(errs...)
}

// Close forgets the attachments, leaving their networks to the sandboxes that outlive this
// daemon (the next one Adopts or Sweeps them), and deletes the table when no sandbox has
// objects in it.
func (m *Manager) Close() error {
	m.mu.Lock()
	atts := slices.Collect(maps.Values(m.att))
	clear(m.att)
	m.mu.Unlock()
	// The forwarders are this process's: they stop with it (the next daemon starts its own).
	for _, a := range atts {
		a.stopDNS()
	}
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	remaining, err := m.removeSandboxes(func(string) bool { return false })
	if err != nil {
		return err
	}
	if len(remaining) > 0 {
		return nil
	}
	return m.deleteTable()
}

// Attachment is one sandbox's network. Close removes it.
type Attachment struct {
	m      *Manager
	sb     Sandbox
	policy Policy
	gw     netip.Addr
	addr   netip.Addr
	link   string
	groups []ruleGroup

	mu     sync.Mutex
	closed bool
	dns    *Forwarder // nil without upstreams
}

// startDNS starts the sandbox's DNS forwarder on its gateway. An allowlist's forwarder admits
// what it answers; addresses Admit will not take (the policy's own CIDRs, which the sandbox
// reaches anyway) do not fail the answer.
func (a *Attachment) startDNS(rules []Rule) error {
	cfg := a.m.cfg
	if len(cfg.Upstreams) == 0 || cfg.noDNS {
		return nil
	}
	allowed := append([]netip.Prefix(nil), cfg.Allow...)
	for _, r := range rules {
		if r.Name == "" {
			allowed = append(allowed, r.Prefix)
		}
	}
	fc := ForwarderConfig{Listen: netip.AddrPortFrom(a.gw, 53), Upstreams: cfg.Upstreams,
		Mode: a.policy.Mode, Rules: rules, Allowed: allowed, Logger: cfg.Logger.With("sandbox", a.sb.ID)}
	if a.policy.Mode == Allowlist {
		fc.Admit = func(addrs []netip.Addr, port, portEnd uint16, ttl time.Duration) error {
			if err := a.Admit(addrs, port, portEnd, ttl); err != nil && !errors.Is(err, ErrNotAdmissible) {
				return err
			}
			return nil
		}
	}
	f, err := NewForwarder(fc)
	if err != nil {
		return fmt.Errorf("network: sandbox %s: DNS forwarder: %w", a.sb.ID, err)
	}
	a.mu.Lock()
	a.dns = f
	a.mu.Unlock()
	return nil
}

// Gateway is the host side of the sandbox's veth: its default route and the resolver its
// resolv.conf names.
func (a *Attachment) Gateway() netip.Addr { return a.gw }

// Addr is the sandbox's own address.
func (a *Attachment) Addr() netip.Addr { return a.addr }

// Link is the host-side veth.
func (a *Attachment) Link() string { return a.link }

// stopDNS stops the sandbox's DNS forwarder, if it runs. The forwarder is closed outside a.mu:
// a query in flight may be admitting (Admit takes a.mu).
func (a *Attachment) stopDNS() {
	a.mu.Lock()
	dns := a.dns
	a.dns = nil
	a.mu.Unlock()
	if dns != nil {
		dns.Close()
	}
}

// Admit bounds for the timeout of a DNS-admitted address: long enough to connect after the
// answer even for a TTL of 0, and not forever.
const (
	MinAdmitTTL = 5 * time.Second
	MaxAdmitTTL = 24 * time.Hour
)

// Admit lets an allowlist sandbox reach addrs (the answer of its DNS forwarder for a listed
// name) on the ports of that name's rule (port 0 = every port), for ttl (clamped to
// MinAdmitTTL…MaxAdmitTTL); admitting again refreshes the timeout. A name admits only public
// addresses: one in Blocked (less Config.Allow) or in the pool is refused with
// ErrNotAdmissible — the others are still admitted — so a listed name that resolves to the
// metadata service or a private host reaches nothing; list the CIDR to reach one. IPv6
// addresses are skipped: sandboxes have no IPv6.
func (a *Attachment) Admit(addrs []netip.Addr, port uint16, portEnd uint16, ttl time.Duration) error {
	if port == 0 {
		portEnd = 0
	}
	key := portKey(port, portEnd)
	found := false
	for _, g := range a.groups {
		found = found || g.names && g.key == key
	}
	if !found {
		return fmt.Errorf("network: sandbox %s: no name rule for ports %s", a.sb.ID, key)
	}
	ttl = min(max(ttl, MinAdmitTTL), MaxAdmitTTL)
	var els []nftables.SetElement
	var refused []string
	for _, ad := range addrs {
		ad = ad.Unmap()
		switch {
		case !ad.Is4():
		case IsBlocked(ad, a.m.cfg.Allow) || a.m.cfg.Pool.Contains(ad):
			refused = append(refused, ad.String())
		default:
			els = append(els, nftables.SetElement{Key: ad.AsSlice(), Timeout: ttl})
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return fmt.Errorf("network: sandbox %s: attachment closed", a.sb.ID)
	}
	if len(els) > 0 {
		if err := a.m.admit(a.admitSet(key), els); err != nil {
			return fmt.Errorf("network: sandbox %s: admit: %w", a.sb.ID, err)
		}
	}
	if len(refused) > 0 {
		return fmt.Errorf("network: sandbox %s: %s: %w", a.sb.ID, strings.Join(refused, ", "), ErrNotAdmissible)
	}
	return nil
}

func (a *Attachment) admitSet(key string) *nftables.Set {
	return &nftables.Set{Table: a.m.table(), Name: sbName(a.sb.ID, "adm."+key), HasTimeout: true, KeyType: nftables.TypeIPAddr}
}

// admit adds timeout elements, replacing any that exist: the add-delete-add in one
// transaction refreshes an element's timeout whether or not it was there before.
func (m *Manager) admit(s *nftables.Set, els []nftables.SetElement) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	keys := make([]nftables.SetElement, len(els))
	for i, e := range els {
		keys[i] = nftables.SetElement{Key: e.Key}
	}
	for _, err := range []error{c.SetAddElements(s, els), c.SetDeleteElements(s, keys), c.SetAddElements(s, els)} {
		if err != nil {
			return err
		}
	}
	return c.Flush()
}

// Close removes everything of this sandbox's network: the host veth (its peer goes with it,
// and with them their addresses and routes) and the nftables objects. Idempotent.
func (a *Attachment) Close() error {
	a.stopDNS()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	if err := a.remove(); err != nil {
		return fmt.Errorf("network: sandbox %s: %w", a.sb.ID, err)
	}
	a.closed = true
	a.m.mu.Lock()
	if a.m.att[a.sb.ID] == a {
		delete(a.m.att, a.sb.ID)
	}
	a.m.mu.Unlock()
	return nil
}

// remove deletes the veth and the nftables objects, each if present.
func (a *Attachment) remove() error {
	errLink := a.m.deleteOwnLink(a.link, a.sb.ID)
	a.m.nftMu.Lock()
	_, errNft := a.m.removeSandboxes(func(id string) bool { return id == a.sb.ID })
	a.m.nftMu.Unlock()
	return errors.Join(errLink, errNft)
}

// ruleGroup is the allowlist rules of one port range: CIDRs (a constant set) and whether
// names have it (a set the DNS forwarder fills through Admit).
type ruleGroup struct {
	key    string
	lo, hi uint16
	nets   []netip.Prefix
	names  bool
}

func groupRules(rules []Rule) []ruleGroup {
	var gs []ruleGroup
	idx := map[string]int{}
	for _, r := range rules {
		lo, hi := r.Port, r.PortEnd
		if lo == 0 {
			hi = 0
		}
		k := portKey(lo, hi)
		i, ok := idx[k]
		if !ok {
			i = len(gs)
			idx[k] = i
			gs = append(gs, ruleGroup{key: k, lo: lo, hi: hi})
		}
		if r.Name != "" {
			gs[i].names = true
		} else {
			gs[i].nets = append(gs[i].nets, r.Prefix)
		}
	}
	return gs
}

// TableExists reports whether the nftables table name (family inet) exists: a daemon that died
// with networked sandboxes left it, and its successor sweeps it.
func TableExists(name string) (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("nftables: list tables: %w", err)
	}
	return slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == name }), nil
}
