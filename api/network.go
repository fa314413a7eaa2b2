package api

// Network modes of a sandbox's network policy.
const (
	NetworkBlock     = "block"     // loopback only (the default)
	NetworkInternet  = "internet"  // the public internet only: never the host, other sandboxes, link-local, private or shared ranges
	NetworkAllowlist = "allowlist" // only the ranges, ports and names in allow
)

// NetworkModes lists every network mode.
var NetworkModes = []string{NetworkBlock, NetworkInternet, NetworkAllowlist}

// Network is a sandbox's network policy, on one-shot runs, sandboxes and sessions. Absent, the
// server's default applies (block unless the operator chose otherwise). The older boolean
// fields still work: allow_network: true (one-shot) and block_network: false (sandbox) mean
// mode internet; a request whose boolean and network object disagree is refused.
type Network struct {
	Mode string `json:"mode"` // block, internet or allowlist
	// Allow lists what mode allowlist may reach (at most 256 rules): an IPv4 address or CIDR
	// ("10.1.2.0/24"), a DNS name ("pypi.org") or subdomain wildcard ("*.pythonhosted.org"),
	// each optionally with ":PORT" or ":LOW-HIGH". Names resolve only through the sandbox's own
	// DNS forwarder, which answers listed names alone and admits exactly the addresses it
	// answered with. Sandboxes have no IPv6.
	Allow []string `json:"allow,omitempty"`
}
