package netpolicy

import (
	"net/netip"
	"testing"
)

func TestBlockedSpans(t *testing.T) {
	allow := []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16"), netip.MustParsePrefix("240.0.0.0/4")}
	in := func(a netip.Addr, rs []span) bool {
		for _, r := range rs {
			if u32(a) >= r.lo && u32(a) <= r.hi {
				return true
			}
		}
		return false
	}
	for _, allowed := range [][]netip.Prefix{nil, allow} {
		rs := blockedSpans(allowed)
		for i := 1; i < len(rs); i++ {
			if rs[i].lo <= rs[i-1].hi+1 {
				t.Fatalf("spans %v: not sorted, disjoint and apart at %d", rs, i)
			}
		}
		for _, s := range []string{"0.0.0.0", "0.255.255.255", "1.0.0.0", "9.255.255.255", "10.0.0.0", "10.8.255.255",
			"10.9.0.0", "10.9.255.255", "10.10.0.0", "11.0.0.0", "100.63.255.255", "100.64.0.0", "127.0.0.1",
			"169.254.169.254", "172.15.255.255", "172.16.0.0", "172.31.255.255", "172.32.0.0", "192.0.0.7",
			"192.0.2.1", "192.168.1.1", "198.18.0.1", "198.20.0.0", "203.0.113.7", "224.0.0.1", "239.255.255.255",
			"240.0.0.1", "255.255.255.255", "8.8.8.8"} {
			a := netip.MustParseAddr(s)
			if got, want := in(a, rs), IsBlocked(a, allowed); got != want {
				t.Errorf("allow %v: %s in blocked spans = %v, want %v (IsBlocked)", allowed, s, got, want)
			}
		}
	}
}

func TestAddrs(t *testing.T) {
	c := Config{Pool: netip.MustParsePrefix("10.201.0.0/16")}
	for _, tc := range []struct {
		slot    int
		gw, sb  string
		wantErr bool
	}{
		{0, "10.201.0.1", "10.201.0.2", false},
		{1, "10.201.0.5", "10.201.0.6", false},
		{64, "10.201.1.1", "10.201.1.2", false},
		{16383, "10.201.255.253", "10.201.255.254", false},
		{16384, "", "", true},
		{-1, "", "", true},
	} {
		gw, sb, err := c.Addrs(tc.slot)
		if (err != nil) != tc.wantErr {
			t.Errorf("Addrs(%d) error %v, want error %v", tc.slot, err, tc.wantErr)
			continue
		}
		if err == nil && (gw.String() != tc.gw || sb.String() != tc.sb) {
			t.Errorf("Addrs(%d) = %s, %s; want %s, %s", tc.slot, gw, sb, tc.gw, tc.sb)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		ok   bool
	}{
		{"defaults", Config{Table: "airlock"}, true},
		{"no table", Config{}, false},
		{"bad table", Config{Table: "a b"}, false},
		{"ipv6 pool", Config{Table: "airlock", Pool: netip.MustParsePrefix("fd00::/64")}, false},
		{"pool too small", Config{Table: "airlock", Pool: netip.MustParsePrefix("10.0.0.0/31")}, false},
		{"pool unmasked", Config{Table: "airlock", Pool: netip.MustParsePrefix("10.0.0.1/16")}, false},
		{"allow overlaps pool", Config{Table: "airlock", Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, false},
		{"allow", Config{Table: "airlock", Allow: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}}, true},
		{"negative", Config{Table: "airlock", MaxConns: -1}, false},
	} {
		if err := tc.c.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
