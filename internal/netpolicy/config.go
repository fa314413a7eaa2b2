package netpolicy

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"sync"
)

// ErrNotAdmissible marks an address Attachment.Admit refuses: one a name may not admit.
var ErrNotAdmissible = errors.New("address not admissible")

// Defaults for the zero fields of Config.
var (
	DefaultPool = netip.MustParsePrefix("10.201.0.0/16")
)

const (
	DefaultMaxConns = 256
	DefaultConnRate = 64
	// ifNameMax is the longest interface name Linux takes (IFNAMSIZ less the NUL).
	ifNameMax = 15
)

// Config configures a Manager, the host side of every sandbox network of one daemon. Zero
// values mean the defaults.
type Config struct {
	// Table is the nftables table (family inet) the daemon owns; one per daemon. Every object
	// the Manager creates is named after it: the chains and sets live in it, and the host-side
	// veths carry a prefix derived from it (see Manager.LinkPrefix).
	Table string
	// Pool holds the sandbox addresses (IPv4); slot N gets the N-th /30 of it: .1 on the host
	// side (gateway and DNS resolver), .2 in the sandbox. Default DefaultPool.
	Pool netip.Prefix
	// Allow lists ranges that Internet mode may reach although Blocked holds them (an
	// operator's choice, such as a company proxy). Never the pool; the host's own addresses stay
	// unreachable whatever Allow says, since the input hook drops them.
	Allow []netip.Prefix
	// MaxConns bounds the connections one sandbox has open at once (conntrack count).
	MaxConns int
	// ConnRate bounds the new connections per second of one sandbox (burst twice that).
	ConnRate int
	// EgressBytesPerSec, when positive, shapes what a sandbox sends with a tbf qdisc on its
	// side of the veth.
	EgressBytesPerSec int64
	// Upstreams are the resolvers every sandbox's DNS forwarder asks; default the IPv4
	// nameservers of the host's /etc/resolv.conf. Without any, names do not resolve in
	// sandboxes (addresses still work) and New logs why.
	Upstreams []netip.AddrPort
	Logger    *slog.Logger

	// noDNS starts no forwarders: the package's tests listen on the gateways' port 53 themselves.
	noDNS bool
}

// tableName and sandboxID are compiled on first use: their counted repetitions make large
// programs (≈ 120 KiB and 0.3 ms at start-up), and this binary is also every sandbox's PID 1.
var tableName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,63}$`) })

// withDefaults returns c with its zero fields filled in.
func (c Config) withDefaults() Config {
	if !c.Pool.IsValid() {
		c.Pool = DefaultPool
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.ConnRate == 0 {
		c.ConnRate = DefaultConnRate
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports a configuration New would refuse.
func (c Config) Validate() error {
	c = c.withDefaults()
	if !tableName().MatchString(c.Table) {
		return fmt.Errorf("network: table name %q: want a letter then up to 63 letters, digits, '_' or '-'", c.Table)
	}
	if !c.Pool.Addr().Is4() || c.Pool.Masked() != c.Pool || c.Pool.Bits() > 30 || c.Pool.Bits() < 8 {
		return fmt.Errorf("network: pool %s: want a masked IPv4 prefix between /8 and /30", c.Pool)
	}
	for _, p := range c.Allow {
		if !p.Addr().Is4() || p.Masked() != p {
			return fmt.Errorf("network: allow range %s: want a masked IPv4 prefix", p)
		}
		if p.Overlaps(c.Pool) {
			return fmt.Errorf("network: allow range %s overlaps the sandbox pool %s", p, c.Pool)
		}
	}
	if c.MaxConns < 0 || c.ConnRate < 0 || c.EgressBytesPerSec < 0 {
		return errors.New("network: negative connection or bandwidth limit")
	}
	return nil
}

// Addrs returns slot's gateway (host side) and sandbox address: pure arithmetic over the
// pool. Slots past the pool are an error.
func (c Config) Addrs(slot int) (gateway, addr netip.Addr, err error) {
	c = c.withDefaults()
	n := uint64(1) << (32 - c.Pool.Bits()) / 4
	if slot < 0 || uint64(slot) >= n {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("network: slot %d outside pool %s (%d slots)", slot, c.Pool, n)
	}
	base := u32(c.Pool.Addr()) + uint32(slot)*4
	return addr4(base + 1), addr4(base + 2), nil
}

// Sandbox names the sandbox a network is for. Slot is its host-wide unique claim, which
// picks its addresses and its host-side interface; Pid is its init, whose network namespace
// (/proc/Pid/ns/net) is the sandbox's.
type Sandbox struct {
	ID   string
	Slot int
	Pid  int
}

var sandboxID = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`) })

func (sb Sandbox) validate() error {
	if !sandboxID().MatchString(sb.ID) {
		return fmt.Errorf("network: sandbox id %q: want 1 to 64 letters, digits, '_' or '-'", sb.ID)
	}
	if sb.Pid <= 0 {
		return fmt.Errorf("network: sandbox %s: no pid", sb.ID)
	}
	return nil
}

// span is an inclusive IPv4 range.
type span struct{ lo, hi uint32 }

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr4(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func prefixSpan(p netip.Prefix) span {
	lo := u32(p.Masked().Addr())
	return span{lo, lo | (1<<(32-p.Bits()) - 1)}
}

// spans returns the prefixes as sorted, disjoint, non-adjacent ranges, which is what an
// nftables interval set accepts (it refuses overlapping elements).
func spans(ps []netip.Prefix) []span {
	var s []span
	for _, p := range ps {
		s = append(s, prefixSpan(p))
	}
	slices.SortFunc(s, func(a, b span) int {
		switch {
		case a.lo < b.lo:
			return -1
		case a.lo > b.lo:
			return 1
		}
		return 0
	})
	var out []span
	for _, r := range s {
		if n := len(out); n > 0 && (r.lo <= out[n-1].hi || r.lo == out[n-1].hi+1) {
			out[n-1].hi = max(out[n-1].hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// subtract returns the ranges of a not in b; both sorted and disjoint, as spans returns them.
func subtract(a, b []span) []span {
	var out []span
	for _, r := range a {
		for _, x := range b {
			if x.hi < r.lo || x.lo > r.hi {
				continue
			}
			if x.lo > r.lo {
				out = append(out, span{r.lo, x.lo - 1})
			}
			if x.hi >= r.hi {
				r.lo, r.hi = 1, 0 // consumed
				break
			}
			r.lo = x.hi + 1
		}
		if r.lo <= r.hi {
			out = append(out, r)
		}
	}
	return out
}

// blockedSpans is what Internet mode drops: Blocked less the operator's Allow.
func blockedSpans(allow []netip.Prefix) []span {
	return subtract(spans(Blocked), spans(allow))
}
