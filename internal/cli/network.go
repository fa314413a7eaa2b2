package cli

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/spf13/pflag"

	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// bindNetworkFlags binds the network knobs of serve: the modes requests may ask for and the
// default policy (the engine's), and the addresses, ranges, resolvers and bounds the runtime
// builds networks with (netpolicy's).
func bindNetworkFlags(fs *pflag.FlagSet, ec *engine.Config, nc *netpolicy.Config) {
	ec.NetworkModes = []netpolicy.Mode{netpolicy.Block, netpolicy.Internet, netpolicy.Allowlist}
	flagEnv(fs, (*modeList)(&ec.NetworkModes), "network-modes", "AIRLOCK_NETWORK_MODES", "network modes requests may ask for, comma-separated: block, internet, allowlist")
	flagEnv(fs, (*modeValue)(&ec.DefaultNetwork.Mode), "network-default", "AIRLOCK_NETWORK_DEFAULT", "network mode of a request that names none (default block)")
	flagEnv(fs, (*stringList)(&ec.DefaultNetwork.Allow), "network-default-allow", "AIRLOCK_NETWORK_DEFAULT_ALLOW", "allow rules of the default policy when --network-default is allowlist, comma-separated")
	flagEnv(fs, &ec.PipIndexURL, "pip-index-url", "AIRLOCK_PIP_INDEX_URL", "package index of session installs whose network allows it (default PyPI)")
	flagEnv(fs, (*prefixValue)(&nc.Pool), "network-pool", "AIRLOCK_NETWORK_POOL", "IPv4 range of sandbox addresses, a /30 per sandbox (default 10.201.0.0/16)")
	flagEnv(fs, (*prefixList)(&nc.Allow), "network-allow-ranges", "AIRLOCK_NETWORK_ALLOW_RANGES", "private or reserved IPv4 ranges internet mode may reach anyway, comma-separated CIDRs")
	flagEnv(fs, (*addrPortList)(&nc.Upstreams), "dns-upstream", "AIRLOCK_DNS_UPSTREAM", "resolvers the sandboxes' DNS forwarders ask, comma-separated IP[:PORT] (default the host's /etc/resolv.conf)")
	flagEnv(fs, &nc.MaxConns, "network-max-conns", "AIRLOCK_NETWORK_MAX_CONNS", "concurrent connections of one sandbox (default 256)")
	flagEnv(fs, &nc.ConnRate, "network-conn-rate", "AIRLOCK_NETWORK_CONN_RATE", "new connections per second of one sandbox (default 64)")
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// stringList is a comma-separated list flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Type() string   { return "list" }
func (l *stringList) Set(s string) error {
	*l = splitList(s)
	return nil
}

// modeValue is one network mode.
type modeValue netpolicy.Mode

func (m *modeValue) String() string { return string(*m) }
func (m *modeValue) Type() string   { return "mode" }
func (m *modeValue) Set(s string) error {
	switch netpolicy.Mode(s) {
	case netpolicy.Block, netpolicy.Internet, netpolicy.Allowlist:
		*m = modeValue(s)
		return nil
	}
	return fmt.Errorf("unknown network mode %q (want block, internet or allowlist)", s)
}

// modeList is a comma-separated list of network modes.
type modeList []netpolicy.Mode

func (l *modeList) String() string {
	s := make([]string, len(*l))
	for i, m := range *l {
		s[i] = string(m)
	}
	return strings.Join(s, ",")
}
func (l *modeList) Type() string { return "modes" }
func (l *modeList) Set(s string) error {
	var out []netpolicy.Mode
	for _, f := range splitList(s) {
		var m modeValue
		if err := m.Set(f); err != nil {
			return err
		}
		out = append(out, netpolicy.Mode(m))
	}
	*l = out
	return nil
}

// prefixValue is one IPv4 CIDR.
type prefixValue netip.Prefix

func (p *prefixValue) String() string {
	if !netip.Prefix(*p).IsValid() {
		return ""
	}
	return netip.Prefix(*p).String()
}
func (p *prefixValue) Type() string { return "cidr" }
func (p *prefixValue) Set(s string) error {
	v, err := netip.ParsePrefix(s)
	if err != nil || !v.Addr().Is4() {
		return fmt.Errorf("%q is not an IPv4 CIDR", s)
	}
	*p = prefixValue(v.Masked())
	return nil
}

// prefixList is a comma-separated list of IPv4 CIDRs.
type prefixList []netip.Prefix

func (l *prefixList) String() string {
	s := make([]string, len(*l))
	for i, p := range *l {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
func (l *prefixList) Type() string { return "cidrs" }
func (l *prefixList) Set(s string) error {
	var out []netip.Prefix
	for _, f := range splitList(s) {
		var p prefixValue
		if err := p.Set(f); err != nil {
			return err
		}
		out = append(out, netip.Prefix(p))
	}
	*l = out
	return nil
}

// addrPortList is a comma-separated list of IPv4 addresses with an optional port (53).
type addrPortList []netip.AddrPort

func (l *addrPortList) String() string {
	s := make([]string, len(*l))
	for i, a := range *l {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}
func (l *addrPortList) Type() string { return "addrs" }
func (l *addrPortList) Set(s string) error {
	var out []netip.AddrPort
	for _, f := range splitList(s) {
		ap, err := netip.ParseAddrPort(f)
		if err != nil {
			a, aerr := netip.ParseAddr(f)
			if aerr != nil || !a.Is4() {
				return fmt.Errorf("%q is not an IPv4 address or address:port", f)
			}
			ap = netip.AddrPortFrom(a, 53)
		}
		out = append(out, ap)
	}
	*l = out
	return nil
}
