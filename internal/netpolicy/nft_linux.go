package netpolicy

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The table's layout. Base chains and shared sets have fixed names; a sandbox's objects are
// named "sb.<id>.<what>", so Sweep and Close find them by id without any other record.
//
//	input        hook input:   from our veths, IPv6 dropped; iifname vmap @in; then drop
//	forward      hook forward: IPv6 to/from our veths dropped; to our veths only
//	             established/related; iifname vmap @fwd; then drop
//	postrouting  nat:          masquerade the pool out of every interface but ours
//	@in, @fwd    host veth name -> jump sb.<id>.in / sb.<id>.fw (comment: the id)
//	@blocked     Blocked less Config.Allow (interval set), for Internet mode
//	sb.<id>.in   anti-spoof; DNS (udp/tcp 53) to the sandbox's own gateway, else drop
//	sb.<id>.fw   anti-spoof, established, pool and mode drops, rate and count limits, mode
//	sb.<id>.net.<ports>, sb.<id>.adm.<ports>
//	             allowlist: the policy's CIDRs, and the DNS-admitted addresses (timeouts),
//	             one set per port range the policy names ("all" = every port and protocol)
const (
	chainInput   = "input"
	chainForward = "forward"
	chainNAT     = "postrouting"
	setIn        = "in"
	setFwd       = "fwd"
	setBlocked   = "blocked"
	sbPrefix     = "sb."
)

func sbName(id, what string) string { return sbPrefix + id + "." + what }

// sbID returns the sandbox id an object name carries, if it is a per-sandbox name.
func sbID(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, sbPrefix)
	if !ok {
		return "", false
	}
	id, _, ok := strings.Cut(rest, ".")
	return id, ok
}

// portKey names a port range in set names: "all" for Port 0, else "LO-HI".
func portKey(lo, hi uint16) string {
	if lo == 0 {
		return "all"
	}
	return strconv.Itoa(int(lo)) + "-" + strconv.Itoa(int(hi))
}

// Register 1 throughout: every match below loads one value and compares it.
const reg = 1

func ifnameBytes(name string) []byte {
	b := make([]byte, 16)
	copy(b, name)
	return b
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func ip4(v uint32) []byte  { return binary.BigEndian.AppendUint32(nil, v) }

func drop() expr.Any   { return &expr.Verdict{Kind: expr.VerdictDrop} }
func accept() expr.Any { return &expr.Verdict{Kind: expr.VerdictAccept} }

// ifPrefix matches an interface name that starts with prefix (nft's "iifname p*": a compare
// of only the prefix's bytes).
func ifPrefix(key expr.MetaKey, prefix string, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: reg},
		&expr.Cmp{Op: op, Register: reg, Data: []byte(prefix)},
	}
}

func nfproto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{p}},
	}
}

// ipField loads the IPv4 source (offset 12) or destination (16); the caller has matched
// nfproto ipv4 first, as the inet family carries both.
func ipField(offset uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}
}

const (
	saddr = 12
	daddr = 16
)

func ipIs(offset uint32, a netip.Addr, op expr.CmpOp) []expr.Any {
	return append(nfproto(unix.NFPROTO_IPV4), ipField(offset), &expr.Cmp{Op: op, Register: reg, Data: a.AsSlice()})
}

func ipIn(offset uint32, p netip.Prefix) []expr.Any {
	mask := ip4(^uint32(0) << (32 - p.Bits()))
	return append(nfproto(unix.NFPROTO_IPV4), ipField(offset),
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: p.Masked().Addr().AsSlice()})
}

func lookup(offset uint32, s *nftables.Set) []expr.Any {
	return append(nfproto(unix.NFPROTO_IPV4), ipField(offset), &expr.Lookup{SourceRegister: reg, SetName: s.Name, SetID: s.ID})
}

func ctState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: reg},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: make([]byte, 4)},
	}
}

// l4Ports matches TCP or UDP (proto) to a destination port in lo…hi.
func l4Ports(proto byte, lo, hi uint16) []expr.Any {
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{proto}},
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
	if lo == hi {
		return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: be16(lo)})
	}
	return append(e, &expr.Range{Op: expr.CmpOpEq, Register: reg, FromData: be16(lo), ToData: be16(hi)})
}

func vmap(s *nftables.Set, key expr.MetaKey) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: reg},
		&expr.Lookup{SourceRegister: reg, SetName: s.Name, SetID: s.ID, IsDestRegSet: true},
	}
}

func cat(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }

// intervalElements spells ranges as interval set elements: a start and, unless the range
// runs to the top of the space, an end one past it.
func intervalElements(rs []span) []nftables.SetElement {
	var out []nftables.SetElement
	for _, r := range rs {
		out = append(out, nftables.SetElement{Key: ip4(r.lo)})
		if r.hi != ^uint32(0) {
			out = append(out, nftables.SetElement{Key: ip4(r.hi + 1), IntervalEnd: true})
		}
	}
	return out
}

func (m *Manager) table() *nftables.Table {
	return &nftables.Table{Name: m.cfg.Table, Family: nftables.TableFamilyINet}
}

func (m *Manager) vmapSet(name string) *nftables.Set {
	return &nftables.Set{Table: m.table(), Name: name, IsMap: true, KeyType: nftables.TypeIFName, DataType: nftables.TypeVerdict}
}

// program creates or refreshes the table: base chains with their rules rewritten, the shared
// vmaps (kept with their elements, which belong to live sandboxes) and @blocked (refilled, as
// Config.Allow may have changed). One transaction, so a reader never sees half a table.
func (m *Manager) program() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t := c.AddTable(m.table())
	policy := nftables.ChainPolicyAccept
	input := c.AddChain(&nftables.Chain{Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &policy})
	fwd := c.AddChain(&nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &policy})
	nat := c.AddChain(&nftables.Chain{Name: chainNAT, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &policy})
	for _, ch := range []*nftables.Chain{input, fwd, nat} {
		c.FlushChain(ch)
	}
	inMap, fwdMap := m.vmapSet(setIn), m.vmapSet(setFwd)
	blocked := &nftables.Set{Table: t, Name: setBlocked, Interval: true, KeyType: nftables.TypeIPAddr}
	for _, s := range []*nftables.Set{inMap, fwdMap, blocked} {
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("nftables set %s: %w", s.Name, err)
		}
	}
	c.FlushSet(blocked)
	if err := c.SetAddElements(blocked, intervalElements(blockedSpans(m.cfg.Allow))); err != nil {
		return fmt.Errorf("nftables set %s: %w", setBlocked, err)
	}
	p := m.prefix
	rules := map[*nftables.Chain][][]expr.Any{
		input: {
			cat(ifPrefix(expr.MetaKeyIIFNAME, p, expr.CmpOpEq), nfproto(unix.NFPROTO_IPV6), []expr.Any{drop()}),
			vmap(inMap, expr.MetaKeyIIFNAME),
			cat(ifPrefix(expr.MetaKeyIIFNAME, p, expr.CmpOpEq), []expr.Any{drop()}),
		},
		fwd: {
			cat(ifPrefix(expr.MetaKeyIIFNAME, p, expr.CmpOpEq), nfproto(unix.NFPROTO_IPV6), []expr.Any{drop()}),
			cat(ifPrefix(expr.MetaKeyOIFNAME, p, expr.CmpOpEq), nfproto(unix.NFPROTO_IPV6), []expr.Any{drop()}),
			// Nothing opens a connection into a sandbox, another sandbox included; this comes
			// before the per-sandbox chains so that no accept there can skip it.
			cat(ifPrefix(expr.MetaKeyOIFNAME, p, expr.CmpOpEq), ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), []expr.Any{accept()}),
			cat(ifPrefix(expr.MetaKeyOIFNAME, p, expr.CmpOpEq), []expr.Any{drop()}),
			vmap(fwdMap, expr.MetaKeyIIFNAME),
			cat(ifPrefix(expr.MetaKeyIIFNAME, p, expr.CmpOpEq), []expr.Any{drop()}),
		},
		nat: {
			cat(ipIn(saddr, m.cfg.Pool), ifPrefix(expr.MetaKeyOIFNAME, p, expr.CmpOpNeq), []expr.Any{&expr.Masq{}}),
		},
	}
	for ch, rs := range rules {
		for _, e := range rs {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables table %s: %w", m.cfg.Table, err)
	}
	return nil
}

// programSandbox writes one sandbox's chains, sets and vmap elements in one transaction. It
// is idempotent: chains are flushed and rewritten and the policy's CIDR sets refilled; the
// DNS-admitted sets keep their elements when keepAdmitted (Adopt), as the sandbox may hold
// connections the forwarder admitted before a restart.
func (m *Manager) programSandbox(a *Attachment, keepAdmitted bool) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t := m.table()
	id := a.sb.ID
	in := c.AddChain(&nftables.Chain{Name: sbName(id, "in"), Table: t})
	fw := c.AddChain(&nftables.Chain{Name: sbName(id, "fw"), Table: t})
	c.FlushChain(in)
	c.FlushChain(fw)
	add := func(ch *nftables.Chain, parts ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: cat(parts...)})
	}
	// Anti-spoof here too: else the forwarder would answer, or refuse, a forged source.
	add(in, ipIs(saddr, a.addr, expr.CmpOpNeq), []expr.Any{drop()})
	for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
		add(in, ipIs(daddr, a.gw, expr.CmpOpEq), l4Ports(proto, 53, 53), []expr.Any{accept()})
	}
	add(in, []expr.Any{drop()})

	add(fw, ipIs(saddr, a.addr, expr.CmpOpNeq), []expr.Any{drop()})
	add(fw, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), []expr.Any{accept()})
	add(fw, ctState(expr.CtStateBitINVALID), []expr.Any{drop()})
	add(fw, ipIn(daddr, m.cfg.Pool), []expr.Any{drop()})
	if a.policy.Mode == Internet {
		add(fw, lookup(daddr, &nftables.Set{Name: setBlocked}), []expr.Any{drop()})
	}
	add(fw, []expr.Any{&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(m.cfg.ConnRate), Over: true,
		Unit: expr.LimitTimeSecond, Burst: uint32(2 * m.cfg.ConnRate)}, drop()})
	add(fw, []expr.Any{&expr.Connlimit{Count: uint32(m.cfg.MaxConns), Flags: expr.NFT_CONNLIMIT_F_INV}, drop()})
	if a.policy.Mode == Internet {
		add(fw, []expr.Any{accept()})
	}
	for _, g := range a.groups {
		var sets []*nftables.Set
		if len(g.nets) > 0 {
			s := &nftables.Set{Table: t, Name: sbName(id, "net."+g.key), Interval: true, KeyType: nftables.TypeIPAddr}
			if err := c.AddSet(s, nil); err != nil {
				return fmt.Errorf("nftables set %s: %w", s.Name, err)
			}
			c.FlushSet(s)
			if err := c.SetAddElements(s, intervalElements(spans(g.nets))); err != nil {
				return fmt.Errorf("nftables set %s: %w", s.Name, err)
			}
			sets = append(sets, s)
		}
		if g.names {
			s := a.admitSet(g.key)
			if err := c.AddSet(s, nil); err != nil {
				return fmt.Errorf("nftables set %s: %w", s.Name, err)
			}
			if !keepAdmitted {
				c.FlushSet(s)
			}
			sets = append(sets, s)
		}
		for _, s := range sets {
			if g.lo == 0 {
				add(fw, lookup(daddr, s), []expr.Any{accept()})
				continue
			}
			for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
				add(fw, lookup(daddr, s), l4Ports(proto, g.lo, g.hi), []expr.Any{accept()})
			}
		}
	}
	add(fw, []expr.Any{drop()})

	// A sandbox that died with the daemon may have left an element for this interface
	// pointing at its own chain; an add with other data fails, so replace it.
	for _, s := range []*nftables.Set{m.vmapSet(setIn), m.vmapSet(setFwd)} {
		els, err := c.GetSetElements(s)
		if err != nil {
			return fmt.Errorf("nftables map %s: %w", s.Name, err)
		}
		for _, e := range els {
			if string(e.Key) == string(ifnameBytes(a.link)) {
				if err := c.SetDeleteElements(s, []nftables.SetElement{{Key: e.Key}}); err != nil {
					return fmt.Errorf("nftables map %s: %w", s.Name, err)
				}
			}
		}
		target := sbName(id, "fw")
		if s.Name == setIn {
			target = sbName(id, "in")
		}
		if err := c.SetAddElements(s, []nftables.SetElement{{Key: ifnameBytes(a.link), Comment: id,
			VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: target}}}); err != nil {
			return fmt.Errorf("nftables map %s: %w", s.Name, err)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables sandbox %s: %w", id, err)
	}
	return nil
}

// removeSandboxes deletes, in one transaction, the vmap elements, chains and sets of every
// sandbox whose id gone reports true. It looks before it deletes, so it is idempotent, and it
// touches nothing outside the table. It returns the ids of what remains.
func (m *Manager) removeSandboxes(gone func(id string) bool) (remaining map[string]bool, err error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	t := m.table()
	if _, err := c.ListTableOfFamily(t.Name, t.Family); err != nil {
		return map[string]bool{}, nil // no table, nothing of ours
	}
	remaining = map[string]bool{}
	n := 0
	for _, s := range []*nftables.Set{m.vmapSet(setIn), m.vmapSet(setFwd)} {
		els, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("nftables map %s: %w", s.Name, err)
		}
		var del []nftables.SetElement
		for _, e := range els {
			// The library does not decode verdicts; the element's comment names the sandbox.
			if e.Comment == "" || !gone(e.Comment) {
				continue
			}
			del = append(del, nftables.SetElement{Key: e.Key})
		}
		if len(del) > 0 {
			n += len(del)
			if err := c.SetDeleteElements(s, del); err != nil {
				return nil, fmt.Errorf("nftables map %s: %w", s.Name, err)
			}
		}
	}
	chains, err := c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return nil, fmt.Errorf("nftables chains: %w", err)
	}
	for _, ch := range chains {
		id, ok := sbID(ch.Name)
		if ch.Table.Name != t.Name || !ok {
			continue
		}
		if !gone(id) {
			remaining[id] = true
			continue
		}
		n++
		c.FlushChain(ch)
		c.DelChain(ch)
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("nftables sets: %w", err)
	}
	for _, s := range sets {
		id, ok := sbID(s.Name)
		if !ok {
			continue
		}
		if !gone(id) {
			remaining[id] = true
			continue
		}
		n++
		c.DelSet(s)
	}
	if n == 0 {
		return remaining, nil
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("nftables remove sandboxes: %w", err)
	}
	return remaining, nil
}

// deleteTable removes the table when it holds no sandbox's objects.
func (m *Manager) deleteTable() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if _, err := c.ListTableOfFamily(m.cfg.Table, nftables.TableFamilyINet); err != nil {
		return nil
	}
	c.DelTable(m.table())
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables delete table %s: %w", m.cfg.Table, err)
	}
	return nil
}
