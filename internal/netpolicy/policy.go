// Package netpolicy gives a sandbox the network its policy asks for: none (loopback only), the
// public internet, or an allowlist of ranges, ports and names. This file is the portable part —
// the policy and its rules — that the engine validates requests with; the Linux files build the
// network itself (a veth pair, addresses, routes, Airlock's own nftables table through netlink)
// and the per-sandbox DNS forwarder.
package netpolicy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Mode is how much network a sandbox gets.
type Mode string

const (
	// Block is no network at all: the sandbox's own namespace with loopback only. The default.
	Block Mode = "block"
	// Internet is the public internet only: never the host, loopback, other sandboxes,
	// link-local (the cloud metadata address), private, shared or multicast ranges, unless the
	// operator allowlists a range.
	Internet Mode = "internet"
	// Allowlist is only the listed ranges, ports and names; names are resolved by the
	// sandbox's DNS forwarder, which admits exactly the addresses it answered with.
	Allowlist Mode = "allowlist"
)

// MaxRules bounds a policy's allow list, which becomes nftables set elements and DNS rules.
const MaxRules = 256

// Policy is one sandbox's network policy. The zero value is Block.
type Policy struct {
	Mode  Mode     `json:"mode,omitempty"`
	Allow []string `json:"allow,omitempty"` // rules, see ParseRule; only with Allowlist
}

// Enabled reports whether the policy gives the sandbox a network beyond loopback.
func (p Policy) Enabled() bool { return p.Mode == Internet || p.Mode == Allowlist }

// Normalize returns the policy with the empty mode spelled Block.
func (p Policy) Normalize() Policy {
	if p.Mode == "" {
		p.Mode = Block
	}
	return p
}

// Rules validates the policy and returns its parsed allow list.
func (p Policy) Rules() ([]Rule, error) {
	switch p.Normalize().Mode {
	case Block, Internet:
		if len(p.Allow) > 0 {
			return nil, fmt.Errorf("network: allow is only for mode %q, not %q", Allowlist, p.Normalize().Mode)
		}
		return nil, nil
	case Allowlist:
	default:
		return nil, fmt.Errorf("network: unknown mode %q (want %q, %q or %q)", p.Mode, Block, Internet, Allowlist)
	}
	if len(p.Allow) == 0 {
		return nil, errors.New("network: mode allowlist needs at least one allow rule")
	}
	if len(p.Allow) > MaxRules {
		return nil, fmt.Errorf("network: %d allow rules, at most %d", len(p.Allow), MaxRules)
	}
	rules := make([]Rule, 0, len(p.Allow))
	for _, s := range p.Allow {
		r, err := ParseRule(s)
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// Rule is one allowlist entry: a range (Prefix) or a DNS name (Name), and optionally a port
// range; Port 0 means every port and protocol, else TCP and UDP to ports Port…PortEnd.
type Rule struct {
	Prefix  netip.Prefix
	Name    string // lower case, without the final dot; "*.example.com" matches subdomains only
	Port    uint16
	PortEnd uint16
}

// String spells the rule as ParseRule reads it.
func (r Rule) String() string {
	s := r.Name
	if r.Name == "" {
		s = r.Prefix.String()
		if r.Prefix.IsSingleIP() {
			s = r.Prefix.Addr().String()
		}
	}
	switch {
	case r.Port == 0:
		return s
	case r.PortEnd == r.Port:
		return s + ":" + strconv.Itoa(int(r.Port))
	default:
		return fmt.Sprintf("%s:%d-%d", s, r.Port, r.PortEnd)
	}
}

// MatchName reports whether a queried name (any case, with or without the final dot) is the
// rule's name or, for a "*." rule, one of its subdomains.
func (r Rule) MatchName(q string) bool {
	if r.Name == "" {
		return false
	}
	q = strings.ToLower(strings.TrimSuffix(q, "."))
	if suffix, ok := strings.CutPrefix(r.Name, "*."); ok {
		return strings.HasSuffix(q, "."+suffix)
	}
	return q == r.Name
}

// ParseRule reads one allowlist entry: an IPv4 address or CIDR ("10.1.2.0/24"), a DNS name
// ("pypi.org") or a subdomain wildcard ("*.pythonhosted.org"), each optionally followed by ":PORT"
// or ":LOW-HIGH". IPv6 is refused: sandboxes have no IPv6.
func ParseRule(s string) (Rule, error) {
	bad := func(why string) (Rule, error) { return Rule{}, fmt.Errorf("network: allow rule %q: %s", s, why) }
	if s == "" || len(s) > 260 {
		return bad("empty or too long")
	}
	if strings.Contains(s, "[") || strings.Count(s, ":") > 1 {
		return bad("IPv6 is not available in sandboxes")
	}
	host, port, hasPort := strings.Cut(s, ":")
	var r Rule
	if hasPort {
		lo, hi, isRange := strings.Cut(port, "-")
		a, err := parsePort(lo)
		if err != nil {
			return bad(err.Error())
		}
		b := a
		if isRange {
			if b, err = parsePort(hi); err != nil {
				return bad(err.Error())
			}
			if b < a {
				return bad("port range runs backwards")
			}
		}
		r.Port, r.PortEnd = a, b
	}
	if p, err := netip.ParsePrefix(host); err == nil {
		if !p.Addr().Is4() {
			return bad("IPv6 is not available in sandboxes")
		}
		if p.Masked() != p {
			return bad(fmt.Sprintf("host bits set (did you mean %s?)", p.Masked()))
		}
		r.Prefix = p
		return r, nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if !a.Is4() {
			return bad("IPv6 is not available in sandboxes")
		}
		r.Prefix = netip.PrefixFrom(a, 32)
		return r, nil
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	if err := checkName(strings.TrimPrefix(name, "*.")); err != nil {
		return bad(err.Error())
	}
	r.Name = name
	return r, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q: want 1-65535", s)
	}
	return uint16(n), nil
}

// checkName accepts a DNS name of letter-digit-hyphen labels (and underscores, which service
// names use), at least two labels, none empty.
func checkName(name string) error {
	if len(name) > 253 {
		return errors.New("name longer than 253 characters")
	}
	labels := strings.Split(name, ".")
	if len(labels) < 2 {
		return errors.New("want an address, a CIDR or a dotted DNS name")
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("bad DNS label %q", l)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("bad character %q in DNS name", c)
			}
		}
	}
	return nil
}

// Blocked is what Internet mode never reaches (unless the operator allowlists a range): the
// non-public IPv4 ranges of RFC 6890 — this network, private, shared (CGNAT), loopback,
// link-local (with the metadata address 169.254.169.254), IETF protocol assignments,
// benchmarking, multicast, reserved and broadcast. The host's own addresses and other sandboxes
// are refused separately, whatever their range.
var Blocked = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// IsBlocked reports whether a lies in one of the Blocked ranges and in none of allowed. An IPv6
// address is always blocked (sandboxes have no IPv6), except an IPv4-mapped one, judged as IPv4.
func IsBlocked(a netip.Addr, allowed []netip.Prefix) bool {
	a = a.Unmap()
	if !a.Is4() {
		return true
	}
	for _, p := range allowed {
		if p.Contains(a) {
			return false
		}
	}
	for _, p := range Blocked {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
