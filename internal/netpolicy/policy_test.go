package netpolicy

import (
	"net/netip"
	"testing"
)

func TestParseRule(t *testing.T) {
	good := []struct{ in, want string }{
		{"pypi.org", "pypi.org"},
		{"PyPI.org.", "pypi.org"},
		{"*.pythonhosted.org:443", "*.pythonhosted.org:443"},
		{"10.1.2.0/24:443", "10.1.2.0/24:443"},
		{"203.0.113.7", "203.0.113.7"},
		{"203.0.113.7:8000-8100", "203.0.113.7:8000-8100"},
	}
	for _, c := range good {
		r, err := ParseRule(c.in)
		if err != nil {
			t.Errorf("ParseRule(%q): %v", c.in, err)
			continue
		}
		if got := r.String(); got != c.want {
			t.Errorf("ParseRule(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	for _, in := range []string{"", "localhost", "10.1.2.3/8", "::1", "[::1]:80", "fc00::/7", "a..b",
		"pypi.org:0", "pypi.org:70000", "pypi.org:9-3", "-a.com", "a b.com", "pypi.org:x"} {
		if r, err := ParseRule(in); err == nil {
			t.Errorf("ParseRule(%q) = %v, want an error", in, r)
		}
	}
}

func TestMatchName(t *testing.T) {
	exact, _ := ParseRule("pypi.org")
	wild, _ := ParseRule("*.example.com")
	for _, c := range []struct {
		r    Rule
		q    string
		want bool
	}{
		{exact, "PYPI.org.", true}, {exact, "evil.pypi.org", false}, {exact, "pypi.org.evil", false},
		{wild, "a.example.com.", true}, {wild, "a.b.example.com", true}, {wild, "example.com", false},
		{wild, "badexample.com", false},
	} {
		if got := c.r.MatchName(c.q); got != c.want {
			t.Errorf("%v.MatchName(%q) = %v, want %v", c.r, c.q, got, c.want)
		}
	}
}

func TestPolicyRules(t *testing.T) {
	for _, c := range []struct {
		p  Policy
		ok bool
	}{
		{Policy{}, true}, {Policy{Mode: Internet}, true}, {Policy{Mode: "open"}, false},
		{Policy{Mode: Internet, Allow: []string{"pypi.org"}}, false},
		{Policy{Mode: Allowlist}, false}, {Policy{Mode: Allowlist, Allow: []string{"pypi.org", "10.0.0.0/8:443"}}, true},
		{Policy{Mode: Allowlist, Allow: make([]string, MaxRules+1)}, false},
	} {
		if _, err := c.p.Rules(); (err == nil) != c.ok {
			t.Errorf("%+v.Rules() error %v, want ok=%v", c.p, err, c.ok)
		}
	}
}

func TestIsBlocked(t *testing.T) {
	for _, c := range []struct {
		a       string
		allowed []netip.Prefix
		want    bool
	}{
		{"169.254.169.254", nil, true}, {"10.0.0.1", nil, true}, {"172.31.255.255", nil, true},
		{"172.32.0.1", nil, false}, {"192.168.1.1", nil, true}, {"100.64.0.1", nil, true},
		{"127.0.0.1", nil, true}, {"224.0.0.1", nil, true}, {"255.255.255.255", nil, true},
		{"203.0.113.9", nil, false}, {"8.8.8.8", nil, false}, {"::ffff:10.0.0.1", nil, true},
		{"2001:db8::1", nil, true}, {"10.1.2.3", []netip.Prefix{netip.MustParsePrefix("10.1.2.0/24")}, false},
	} {
		if got := IsBlocked(netip.MustParseAddr(c.a), c.allowed); got != c.want {
			t.Errorf("IsBlocked(%s, %v) = %v, want %v", c.a, c.allowed, got, c.want)
		}
	}
}
