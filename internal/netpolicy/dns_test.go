package netpolicy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// upstream is a fake resolver on 127.0.0.1 (UDP and TCP, one port) answering a fixed zone,
// counting the queries it sees by "name type network".
type upstream struct {
	addr netip.AddrPort

	mu   sync.Mutex
	seen map[string]int
}

// zone is what the fake upstream answers; owner names are matched exactly, except the
// special names in answerFor.
var zone = []string{
	"public.example.com. 300 IN A 203.0.113.5",
	"public.example.com. 300 IN AAAA 2001:db8::5",
	"rebind.example.com. 300 IN A 10.0.0.5",
	"rebind.example.com. 300 IN A 169.254.169.254",
	"mixed.example.com. 300 IN A 192.168.1.1",
	"mixed.example.com. 300 IN A 203.0.113.7",
	`txt.example.com. 300 IN TXT "hello"`,
	"long.example.com. 86400 IN A 203.0.113.10",
}

// chainAnswer is out of order on purpose and carries a record for a name off the chain.
var chainAnswer = []string{
	"www.chain.example.com. 600 IN CNAME edge.example.net.",
	"stray.example.org. 600 IN A 198.51.100.1",
	"cdn.example.org. 5 IN A 203.0.113.8",
	"edge.example.net. 600 IN CNAME cdn.example.org.",
}

func mustRRs(t testing.TB, lines ...string) []dns.RR {
	t.Helper()
	var rrs []dns.RR
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			t.Fatalf("record %q: %v", l, err)
		}
		rrs = append(rrs, rr)
	}
	return rrs
}

func startUpstream(t testing.TB) *upstream {
	t.Helper()
	pc, ln, err := listenBoth(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{addr: pc.LocalAddr().(*net.UDPAddr).AddrPort(), seen: map[string]int{}}
	records := mustRRs(t, zone...)
	chain := mustRRs(t, chainAnswer...)
	soa := mustRRs(t, "example.com. 300 IN SOA ns.example.com. admin.example.com. 1 3600 600 86400 60")
	var big []dns.RR
	for i := 1; i <= 100; i++ {
		big = append(big, mustRRs(t, fmt.Sprintf("big.example.com. 300 IN A 203.0.113.%d", i))...)
	}
	answerFor := func(q dns.Question) ([]dns.RR, bool) {
		name := strings.ToLower(q.Name)
		switch {
		case name == "www.chain.example.com.":
			return chain, true
		case name == "big.example.com." && q.Qtype == dns.TypeA:
			return big, true
		case strings.HasSuffix(name, ".wild.example.com.") && q.Qtype == dns.TypeA:
			return mustRRs(t, q.Name+" 300 IN A 203.0.113.9"), true
		}
		var rrs []dns.RR
		known := false
		for _, rr := range records {
			if rr.Header().Name == name {
				known = true
				if rr.Header().Rrtype == q.Qtype {
					rrs = append(rrs, rr)
				}
			}
		}
		return rrs, known
	}
	handler := func(network string) dns.HandlerFunc {
		return func(w dns.ResponseWriter, req *dns.Msg) {
			q := req.Question[0]
			u.mu.Lock()
			u.seen[fmt.Sprintf("%s %s %s", strings.ToLower(q.Name), dns.TypeToString[q.Qtype], network)]++
			u.mu.Unlock()
			m := new(dns.Msg)
			m.SetReply(req)
			rrs, known := answerFor(q)
			m.Answer = rrs
			if !known {
				m.Rcode = dns.RcodeNameError
				m.Ns = soa
			}
			size := dns.MaxMsgSize
			if network == "udp" {
				size = dns.MinMsgSize
				if opt := req.IsEdns0(); opt != nil {
					size = int(opt.UDPSize())
					m.SetEdns0(opt.UDPSize(), false)
				}
			}
			m.Truncate(size)
			w.WriteMsg(m)
		}
	}
	serveTest(t, &dns.Server{PacketConn: pc, Handler: handler("udp")})
	serveTest(t, &dns.Server{Listener: ln, Handler: handler("tcp")})
	return u
}

// serveTest runs srv until the test ends.
func serveTest(t testing.TB, srv *dns.Server) {
	t.Helper()
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	var wg sync.WaitGroup
	wg.Go(func() { srv.ActivateAndServe() })
	<-started
	t.Cleanup(func() {
		srv.Shutdown()
		wg.Wait()
	})
}

// queries counts the queries the upstream saw for name, of any type and over any network.
func (u *upstream) queries(name string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for k, c := range u.seen {
		if strings.HasPrefix(k, strings.ToLower(dns.Fqdn(name))+" ") {
			n += c
		}
	}
	return n
}

func (u *upstream) count(key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[key]
}

// admission is one Admit call.
type admission struct {
	addrs         []netip.Addr
	port, portEnd uint16
	ttl           time.Duration
}

// admits records Admit calls; fail makes Admit fail.
type admits struct {
	mu    sync.Mutex
	calls []admission
	fail  error
}

func (a *admits) admit(addrs []netip.Addr, port, portEnd uint16, ttl time.Duration) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, admission{slices.Clone(addrs), port, portEnd, ttl})
	return a.fail
}

func (a *admits) take() []admission {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.calls
	a.calls = nil
	return c
}

func rules(t testing.TB, specs ...string) []Rule {
	t.Helper()
	var rs []Rule
	for _, s := range specs {
		r, err := ParseRule(s)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	return rs
}

func newTestForwarder(t testing.TB, cfg ForwarderConfig) *Forwarder {
	t.Helper()
	cfg.Listen = netip.MustParseAddrPort("127.0.0.1:0")
	f, err := NewForwarder(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return f
}

// ask sends one query and returns the answer.
func ask(t testing.TB, f *Forwarder, network, name string, qtype uint16, edns bool) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns {
		m.SetEdns0(maxUDPSize, false)
	}
	return exchangeMsg(t, f, network, m)
}

func exchangeMsg(t testing.TB, f *Forwarder, network string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 10 * time.Second}
	r, _, err := c.Exchange(m, f.Addr().String())
	if err != nil {
		t.Fatalf("%s query %v: %v", network, m.Question, err)
	}
	return r
}

// addrsOf lists the A addresses of an answer, and checks it has no AAAA.
func addrsOf(t testing.TB, m *dns.Msg) []string {
	t.Helper()
	var out []string
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			t.Errorf("answer has an AAAA record: %v", rr)
		}
	}
	return out
}

func TestForwarderAllowlist(t *testing.T) {
	t.Parallel()
	up := startUpstream(t)
	var adm admits
	f := newTestForwarder(t, ForwarderConfig{
		Upstreams: []netip.AddrPort{up.addr},
		Mode:      Allowlist,
		Rules: rules(t, "public.example.com", "*.wild.example.com:443", "www.chain.example.com:80-81",
			"txt.example.com", "rebind.example.com", "mixed.example.com", "long.example.com:22",
			"long.example.com:22", "10.0.0.0/8"),
		Admit: adm.admit,
	})
	cases := []struct {
		name    string
		qname   string
		qtype   uint16
		rcode   int
		addrs   []string // A addresses answered
		admits  []admission
		upstrem int // queries the upstream saw for qname
	}{
		{name: "listed", qname: "public.example.com.", qtype: dns.TypeA, addrs: []string{"203.0.113.5"},
			admits: []admission{{addrs: addrs("203.0.113.5"), ttl: 300 * time.Second}}, upstrem: 1},
		{name: "listed any case", qname: "PUBLIC.Example.COM.", qtype: dns.TypeA, addrs: []string{"203.0.113.5"},
			admits: []admission{{addrs: addrs("203.0.113.5"), ttl: 300 * time.Second}}, upstrem: 1},
		{name: "unlisted", qname: "evil.example.com.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: "unlisted exfiltration", qname: "c2VjcmV0.exfil.example.com.", qtype: dns.TypeTXT, rcode: dns.RcodeRefused},
		{name: "unlisted subdomain of listed", qname: "x.public.example.com.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: "wildcard", qname: "a.wild.example.com.", qtype: dns.TypeA, addrs: []string{"203.0.113.9"},
			admits: []admission{{addrs: addrs("203.0.113.9"), port: 443, portEnd: 443, ttl: 300 * time.Second}}, upstrem: 1},
		{name: "wildcard deep", qname: "b.c.wild.example.com.", qtype: dns.TypeA, addrs: []string{"203.0.113.9"},
			admits: []admission{{addrs: addrs("203.0.113.9"), port: 443, portEnd: 443, ttl: 300 * time.Second}}, upstrem: 1},
		{name: "wildcard apex", qname: "wild.example.com.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		// The chain keeps its CNAMEs and the A at its end, not the stray record; the A's TTL
		// of 5 s is admitted for the minimum 30 s.
		{name: "cname chain", qname: "www.chain.example.com.", qtype: dns.TypeA, addrs: []string{"203.0.113.8"},
			admits: []admission{{addrs: addrs("203.0.113.8"), port: 80, portEnd: 81, ttl: minAdmitTTL}}, upstrem: 1},
		{name: "rebinding", qname: "rebind.example.com.", qtype: dns.TypeA, upstrem: 1},
		{name: "rebinding mixed", qname: "mixed.example.com.", qtype: dns.TypeA, addrs: []string{"203.0.113.7"},
			admits: []admission{{addrs: addrs("203.0.113.7"), ttl: 300 * time.Second}}, upstrem: 1},
		// A day's TTL is admitted for an hour; two rules with the same ports admit once.
		{name: "long ttl", qname: "long.example.com.", qtype: dns.TypeA, addrs: []string{"203.0.113.10"},
			admits: []admission{{addrs: addrs("203.0.113.10"), port: 22, portEnd: 22, ttl: maxAdmitTTL}}, upstrem: 1},
		{name: "txt", qname: "txt.example.com.", qtype: dns.TypeTXT, upstrem: 1},
		{name: "aaaa empty", qname: "public.example.com.", qtype: dns.TypeAAAA},
		{name: "aaaa unlisted", qname: "evil.example.com.", qtype: dns.TypeAAAA, rcode: dns.RcodeRefused},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := up.queries(c.qname)
			r := ask(t, f, "udp", c.qname, c.qtype, true)
			if r.Rcode != c.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[c.rcode])
			}
			if got := addrsOf(t, r); !slices.Equal(got, c.addrs) {
				t.Errorf("addresses %v, want %v", got, c.addrs)
			}
			if got := adm.take(); fmt.Sprint(got) != fmt.Sprint(c.admits) {
				t.Errorf("admitted %v, want %v", got, c.admits)
			}
			if got := up.queries(c.qname) - before; got != c.upstrem {
				t.Errorf("upstream saw %d queries, want %d", got, c.upstrem)
			}
			for _, rr := range r.Answer {
				if rr.Header().Ttl > uint32(maxAdmitTTL/time.Second) {
					t.Errorf("record %v outlives its admission", rr)
				}
			}
		})
	}
	t.Run("chain records", func(t *testing.T) {
		r := ask(t, f, "udp", "www.chain.example.com.", dns.TypeA, false)
		var got []string
		for _, rr := range r.Answer {
			got = append(got, rr.Header().Name+" "+dns.TypeToString[rr.Header().Rrtype])
		}
		slices.Sort(got)
		want := []string{"cdn.example.org. A", "edge.example.net. CNAME", "www.chain.example.com. CNAME"}
		if !slices.Equal(got, want) {
			t.Errorf("answer %v, want %v", got, want)
		}
		if ttl := r.Answer[0].Header().Ttl; ttl > uint32(minAdmitTTL/time.Second) {
			t.Errorf("TTL %d, want at most the %v admitted", ttl, minAdmitTTL)
		}
	})
	t.Run("txt", func(t *testing.T) {
		r := ask(t, f, "udp", "txt.example.com.", dns.TypeTXT, false)
		if len(r.Answer) != 1 || r.Answer[0].(*dns.TXT).Txt[0] != "hello" {
			t.Errorf("answer %v, want the TXT record", r.Answer)
		}
	})
	if got := up.count("public.example.com. AAAA udp"); got != 0 {
		t.Errorf("upstream saw %d AAAA queries, want none", got)
	}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestForwarderAdmitFailsServfail(t *testing.T) {
	t.Parallel()
	up := startUpstream(t)
	adm := admits{fail: errors.New("firewall says no")}
	f := newTestForwarder(t, ForwarderConfig{
		Upstreams: []netip.AddrPort{up.addr}, Mode: Allowlist,
		Rules: rules(t, "public.example.com", "rebind.example.com"), Admit: adm.admit,
	})
	// The answer waits on Admit: a failed admission is no answer at all.
	if r := ask(t, f, "udp", "public.example.com.", dns.TypeA, false); r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
		t.Errorf("got %s with %v, want SERVFAIL and no answer", dns.RcodeToString[r.Rcode], r.Answer)
	}
	// Nothing to admit, nothing to fail.
	if r := ask(t, f, "udp", "rebind.example.com.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("got %s with %v, want an empty NOERROR", dns.RcodeToString[r.Rcode], r.Answer)
	}
}

func TestForwarderInternet(t *testing.T) {
	t.Parallel()
	up := startUpstream(t)
	admit := func([]netip.Addr, uint16, uint16, time.Duration) error {
		t.Error("Admit called in internet mode")
		return nil
	}
	open := newTestForwarder(t, ForwarderConfig{Upstreams: []netip.AddrPort{up.addr}, Mode: Internet, Admit: admit})
	exempt := newTestForwarder(t, ForwarderConfig{Upstreams: []netip.AddrPort{up.addr}, Mode: Internet,
		Allowed: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	for _, c := range []struct {
		name  string
		f     *Forwarder
		qname string
		qtype uint16
		rcode int
		addrs []string
	}{
		{"public", open, "public.example.com.", dns.TypeA, dns.RcodeSuccess, []string{"203.0.113.5"}},
		{"any name", open, "b.wild.example.com.", dns.TypeA, dns.RcodeSuccess, []string{"203.0.113.9"}},
		{"rebinding", open, "rebind.example.com.", dns.TypeA, dns.RcodeSuccess, nil},
		{"rebinding mixed", open, "mixed.example.com.", dns.TypeA, dns.RcodeSuccess, []string{"203.0.113.7"}},
		{"operator allowed range", exempt, "rebind.example.com.", dns.TypeA, dns.RcodeSuccess, []string{"10.0.0.5"}},
		{"nxdomain", open, "nowhere.example.com.", dns.TypeA, dns.RcodeNameError, nil},
		{"aaaa empty", open, "public.example.com.", dns.TypeAAAA, dns.RcodeSuccess, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := ask(t, c.f, "udp", c.qname, c.qtype, false)
			if r.Rcode != c.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[c.rcode])
			}
			if got := addrsOf(t, r); !slices.Equal(got, c.addrs) {
				t.Errorf("addresses %v, want %v", got, c.addrs)
			}
			if c.rcode == dns.RcodeNameError && len(r.Ns) != 1 {
				t.Errorf("authority %v, want the SOA for negative caching", r.Ns)
			}
		})
	}
	if got := up.count("public.example.com. AAAA udp"); got != 0 {
		t.Errorf("upstream saw %d AAAA queries, want none", got)
	}
}

func TestForwarderRefuses(t *testing.T) {
	t.Parallel()
	up := startUpstream(t)
	// Internet mode forwards every name, so what refuses these is the query's shape.
	f := newTestForwarder(t, ForwarderConfig{Upstreams: []netip.AddrPort{up.addr}, Mode: Internet})
	query := func(name string, qtype uint16) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		return m
	}
	two := query("public.example.com.", dns.TypeA)
	two.Question = append(two.Question, dns.Question{Name: "txt.example.com.", Qtype: dns.TypeTXT, Qclass: dns.ClassINET})
	none := query("public.example.com.", dns.TypeA)
	none.Question = nil
	update := query("public.example.com.", dns.TypeSOA)
	update.Opcode = dns.OpcodeUpdate
	update.Ns = mustRRs(t, "evil.example.com. 300 IN A 10.0.0.1")
	notify := query("public.example.com.", dns.TypeSOA)
	notify.Opcode = dns.OpcodeNotify
	chaos := query("version.bind.", dns.TypeTXT)
	chaos.Question[0].Qclass = dns.ClassCHAOS
	badvers := query("public.example.com.", dns.TypeA)
	badvers.SetEdns0(maxUDPSize, false)
	badvers.IsEdns0().SetVersion(1)
	cases := []struct {
		name    string
		network string
		m       *dns.Msg
		rcode   int
	}{
		{"two questions", "udp", two, dns.RcodeRefused},
		{"no question", "udp", none, dns.RcodeRefused},
		{"ANY", "udp", query("public.example.com.", dns.TypeANY), dns.RcodeRefused},
		{"AXFR", "tcp", query("example.com.", dns.TypeAXFR), dns.RcodeRefused},
		{"IXFR", "udp", query("example.com.", dns.TypeIXFR), dns.RcodeRefused},
		{"TSIG", "udp", query("example.com.", dns.TypeTSIG), dns.RcodeRefused},
		{"MAILA", "udp", query("example.com.", dns.TypeMAILA), dns.RcodeRefused},
		{"type 0", "udp", query("example.com.", dns.TypeNone), dns.RcodeRefused},
		{"update", "udp", update, dns.RcodeRefused},
		{"notify", "udp", notify, dns.RcodeRefused},
		{"chaos class", "udp", chaos, dns.RcodeRefused},
		{"escaped name", "udp", query(`a\000b.example.com.`, dns.TypeA), dns.RcodeRefused},
		{"edns version 1", "udp", badvers, dns.RcodeBadVers},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := exchangeMsg(t, f, c.network, c.m)
			if r.Rcode != c.rcode {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[c.rcode])
			}
			if len(r.Answer) != 0 {
				t.Errorf("answer %v, want none", r.Answer)
			}
		})
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	if len(up.seen) != 0 {
		t.Errorf("upstream saw %v, want nothing", up.seen)
	}
}

func TestForwarderTCPAndSizes(t *testing.T) {
	t.Parallel()
	up := startUpstream(t)
	f := newTestForwarder(t, ForwarderConfig{Upstreams: []netip.AddrPort{up.addr}, Mode: Internet})
	t.Run("tcp", func(t *testing.T) {
		r := ask(t, f, "tcp", "public.example.com.", dns.TypeA, false)
		if got := addrsOf(t, r); !slices.Equal(got, []string{"203.0.113.5"}) {
			t.Errorf("addresses %v, want [203.0.113.5]", got)
		}
	})
	// 100 addresses: the upstream truncates them over UDP, so the forwarder asks again over
	// TCP, keeps maxAnswerAddrs and fits the answer to each client.
	for _, c := range []struct {
		name      string
		network   string
		edns      bool
		truncated bool
	}{
		{"udp without edns", "udp", false, true},
		{"udp with edns", "udp", true, false},
		{"tcp", "tcp", false, false},
	} {
		t.Run("big "+c.name, func(t *testing.T) {
			r := ask(t, f, c.network, "big.example.com.", dns.TypeA, c.edns)
			n := len(addrsOf(t, r))
			if r.Truncated != c.truncated {
				t.Errorf("truncated %v, want %v", r.Truncated, c.truncated)
			}
			if c.truncated && (n == 0 || n >= maxAnswerAddrs) || !c.truncated && n != maxAnswerAddrs {
				t.Errorf("%d addresses (truncated %v), want %d or, truncated, fewer", n, r.Truncated, maxAnswerAddrs)
			}
			if got := r.Len(); c.network == "udp" && got > maxUDPSize {
				t.Errorf("answer of %d bytes over UDP, want at most %d", got, maxUDPSize)
			}
		})
	}
	if got := up.count("big.example.com. A tcp"); got == 0 {
		t.Errorf("upstream saw no TCP query after its truncated answer")
	}
	t.Run("tcp connection limit", func(t *testing.T) {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		dial := func() net.Conn {
			c, err := net.Dial("tcp", f.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			return c
		}
		for range maxTCPConns {
			dial()
		}
		// One connection past the limit is closed by the forwarder unanswered, not queued.
		extra := &dns.Conn{Conn: dial()}
		extra.SetDeadline(time.Now().Add(10 * time.Second))
		extra.WriteMsg(new(dns.Msg).SetQuestion("public.example.com.", dns.TypeA))
		if r, err := extra.ReadMsg(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection past the limit: answer %v, error %v; want it closed", r, err)
		}
		// A freed slot serves again.
		conns[0].Close()
		for {
			c := &dns.Client{Net: "tcp", Timeout: 10 * time.Second}
			r, _, err := c.Exchange(new(dns.Msg).SetQuestion("public.example.com.", dns.TypeA), f.Addr().String())
			if err == nil {
				if r.Rcode != dns.RcodeSuccess {
					t.Errorf("rcode %s, want NOERROR", dns.RcodeToString[r.Rcode])
				}
				break
			}
			if t.Context().Err() != nil {
				t.Fatal(err)
			}
		}
	})
}

// closedPort is a local UDP port nothing listens on: queries to it fail at once.
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	return ap
}

// silentUpstream reads queries and never answers: the upstream that times out.
func silentUpstream(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestForwarderFailover(t *testing.T) {
	t.Parallel()
	up := startUpstream(t)
	f := newTestForwarder(t, ForwarderConfig{
		Upstreams: []netip.AddrPort{closedPort(t), silentUpstream(t), up.addr}, Mode: Internet,
	})
	r := ask(t, f, "udp", "public.example.com.", dns.TypeA, false)
	if got := addrsOf(t, r); !slices.Equal(got, []string{"203.0.113.5"}) {
		t.Errorf("addresses %v (rcode %s), want [203.0.113.5] from the third upstream", got, dns.RcodeToString[r.Rcode])
	}
	dead := newTestForwarder(t, ForwarderConfig{Upstreams: []netip.AddrPort{closedPort(t)}, Mode: Internet})
	if r := ask(t, dead, "udp", "public.example.com.", dns.TypeA, false); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s with every upstream dead, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
}

func TestForwarderRateLimit(t *testing.T) {
	t.Parallel()
	up := startUpstream(t)
	const rate = 5
	f := newTestForwarder(t, ForwarderConfig{Upstreams: []netip.AddrPort{up.addr}, Mode: Internet, QueryRate: rate})
	// 30 queries take far less than the 5 s the budget would need to refill for them all.
	refused := 0
	for range 30 {
		if r := ask(t, f, "udp", "public.example.com.", dns.TypeA, false); r.Rcode == dns.RcodeRefused {
			refused++
		}
	}
	if refused == 0 {
		t.Errorf("30 queries at a rate of %d/s: none refused", rate)
	}
	if got := up.queries("public.example.com."); got >= 30 {
		t.Errorf("upstream saw %d queries, want the refused ones kept from it", got)
	}
}

func TestTokenBucket(t *testing.T) {
	t.Parallel()
	b := newTokenBucket(2)
	now := time.Unix(1000, 0)
	var got []bool
	for _, step := range []time.Duration{0, 0, 0, 500 * time.Millisecond, 0, 10 * time.Second, 0, 0, 0} {
		now = now.Add(step)
		got = append(got, b.allow(now))
	}
	want := []bool{true, true, false, true, false, true, true, false, false}
	if !slices.Equal(got, want) {
		t.Errorf("allowed %v, want %v", got, want)
	}
}

// badPackets are inputs no resolver should crash or hang on; they seed FuzzForwarder too.
var badPackets = [][]byte{
	{},
	{0x12},
	{0x12, 0x34, 0x01, 0x00, 0x00, 0x01}, // header cut short
	{0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},             // a question announced, none sent
	{0x12, 0x34, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00},       // counts far past the data
	{0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0x0c}, // compression pointer to itself
	{0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 'a'},  // label length past 63
	{0x12, 0x34, 0x81, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
		0x01, 'a', 0x00, 0x00, 0x01, 0x00, 0x01, 0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1}, // a response
	{0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
		0x01, 'a', 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x29, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff}, // OPT with rdata past the end
	[]byte(strings.Repeat("\xff", 600)),
}

func TestForwarderMalformed(t *testing.T) {
	t.Parallel()
	up := startUpstream(t)
	f := newTestForwarder(t, ForwarderConfig{Upstreams: []netip.AddrPort{up.addr}, Mode: Internet})
	for i, p := range badPackets {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			u, err := net.Dial("udp", f.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			u.Write(p)
			c, err := net.Dial("tcp", f.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(append([]byte{byte(len(p) >> 8), byte(len(p))}, p...))
			c.Write([]byte{0xff, 0xff, 0x00}) // a length the connection never delivers
			// Still serving, over both.
			for _, network := range []string{"udp", "tcp"} {
				if r := ask(t, f, network, "public.example.com.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess {
					t.Errorf("%s after bad input: rcode %s", network, dns.RcodeToString[r.Rcode])
				}
			}
		})
	}
}

// FuzzForwarder feeds what unpacks as a DNS message to the forwarder's handler, in both modes
// and over both transports' size rules; `go test` runs the seeds.
func FuzzForwarder(f *testing.F) {
	up := startUpstream(f)
	var adm admits
	cfg := ForwarderConfig{Upstreams: []netip.AddrPort{up.addr}, QueryRate: 1 << 30}
	cfg.Mode = Internet
	internet := newTestForwarder(f, cfg)
	cfg.Mode, cfg.Rules, cfg.Admit = Allowlist, rules(f, "*.example.com", "www.chain.example.com:443"), adm.admit
	allow := newTestForwarder(f, cfg)
	for _, p := range badPackets {
		f.Add(p)
	}
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"public.example.com.", dns.TypeA}, {"www.chain.example.com.", dns.TypeA}, {"big.example.com.", dns.TypeA},
		{"mixed.example.com.", dns.TypeA}, {"txt.example.com.", dns.TypeTXT}, {"example.com.", dns.TypeAXFR},
	} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		m.SetEdns0(4096, true)
		p, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		req := new(dns.Msg)
		if err := req.Unpack(p); err != nil {
			return
		}
		for _, fw := range []*Forwarder{internet, allow} {
			for _, tcp := range []bool{false, true} {
				resp := fw.handle(t.Context(), req.Copy(), tcp)
				if resp == nil {
					continue
				}
				b, err := resp.Pack()
				if err != nil {
					t.Fatalf("answer does not pack: %v", err)
				}
				if !tcp && len(b) > maxUDPSize || len(b) > maxTCPSize {
					t.Fatalf("answer of %d bytes (tcp %v)", len(b), tcp)
				}
				for _, rr := range resp.Answer {
					if a, ok := rr.(*dns.A); ok && IsBlocked(netip.AddrFrom4([4]byte(a.A.To4())), nil) {
						t.Fatalf("blocked address answered: %v", rr)
					}
				}
			}
		}
		adm.take()
	})
}

func TestForwarderCloseLeavesNoGoroutine(t *testing.T) {
	// Not parallel: it counts the process's goroutines.
	up := startUpstream(t)
	silent := silentUpstream(t)
	baseline := runtime.NumGoroutine()
	f, err := NewForwarder(ForwarderConfig{
		Listen: netip.MustParseAddrPort("127.0.0.1:0"), Upstreams: []netip.AddrPort{silent, up.addr}, Mode: Internet,
	})
	if err != nil {
		t.Fatal(err)
	}
	// An idle TCP connection and a query stuck on the silent upstream are alive at Close.
	idle, err := net.Dial("tcp", f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	stuck, err := net.Dial("udp", f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	q, _ := new(dns.Msg).SetQuestion("public.example.com.", dns.TypeA).Pack()
	stuck.Write(q)
	for runtime.NumGoroutine() < baseline+4 { // two servers, the TCP connection, the query
		if t.Context().Err() != nil {
			t.Fatal("the query never reached the forwarder")
		}
		runtime.Gosched()
	}
	if err := f.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for n := runtime.NumGoroutine(); n > baseline; n = runtime.NumGoroutine() {
		if t.Context().Err() != nil {
			t.Fatalf("%d goroutines after Close, %d before NewForwarder", n, baseline)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, _, err := (&dns.Client{Timeout: time.Second}).Exchange(new(dns.Msg).SetQuestion("public.example.com.", dns.TypeA), f.Addr().String()); err == nil {
		t.Error("closed forwarder still answers")
	}
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", `# a comment
; another
search example.com
nameserver 127.0.0.53
nameserver ::1
nameserver   10.0.0.2  
options edns0
nameserver not-an-address
nameserver ::ffff:192.0.2.1
nameserver 8.8.8.8
`)
	got, err := UpstreamsFromResolvConf(good)
	if err != nil {
		t.Fatal(err)
	}
	if want := "[127.0.0.53:53 10.0.0.2:53 192.0.2.1:53]"; fmt.Sprint(got) != want {
		t.Errorf("got %v, want %s", got, want)
	}
	for _, p := range []string{write("v6", "nameserver ::1\n"), write("empty", ""), filepath.Join(dir, "missing")} {
		if got, err := UpstreamsFromResolvConf(p); err == nil {
			t.Errorf("%s: got %v, want an error", filepath.Base(p), got)
		}
	}
}

func TestForwarderConfigValidate(t *testing.T) {
	t.Parallel()
	listen := netip.MustParseAddrPort("127.0.0.1:0")
	ups := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")}
	admit := func([]netip.Addr, uint16, uint16, time.Duration) error { return nil }
	for _, c := range []struct {
		name string
		cfg  ForwarderConfig
		ok   bool
	}{
		{"internet", ForwarderConfig{Listen: listen, Upstreams: ups, Mode: Internet}, true},
		{"allowlist", ForwarderConfig{Listen: listen, Upstreams: ups, Mode: Allowlist, Admit: admit}, true},
		{"allowlist without admit", ForwarderConfig{Listen: listen, Upstreams: ups, Mode: Allowlist}, false},
		{"block", ForwarderConfig{Listen: listen, Upstreams: ups, Mode: Block}, false},
		{"no upstream", ForwarderConfig{Listen: listen, Mode: Internet}, false},
		{"upstream port 0", ForwarderConfig{Listen: listen, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Mode: Internet}, false},
		{"no listen", ForwarderConfig{Upstreams: ups, Mode: Internet}, false},
		{"ipv6 listen", ForwarderConfig{Listen: netip.MustParseAddrPort("[::1]:0"), Upstreams: ups, Mode: Internet}, false},
		{"negative rate", ForwarderConfig{Listen: listen, Upstreams: ups, Mode: Internet, QueryRate: -1}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := c.cfg.Validate(); (err == nil) != c.ok {
				t.Errorf("Validate() = %v, want ok %v", err, c.ok)
			}
		})
	}
}

// BenchmarkForwarderQuery is one allowlisted A query over UDP through the forwarder (with its
// Admit) against BenchmarkUpstreamQuery, the same query asked of the upstream directly.
func BenchmarkForwarderQuery(b *testing.B) {
	up := startUpstream(b)
	var adm admits
	f := newTestForwarder(b, ForwarderConfig{Upstreams: []netip.AddrPort{up.addr}, Mode: Allowlist,
		Rules: rules(b, "public.example.com"), Admit: adm.admit, QueryRate: 1 << 30})
	benchQuery(b, f.Addr(), adm.take)
}

func BenchmarkUpstreamQuery(b *testing.B) {
	benchQuery(b, startUpstream(b).addr, func() []admission { return nil })
}

func benchQuery(b *testing.B, addr netip.AddrPort, drain func() []admission) {
	c := &dns.Client{Timeout: 5 * time.Second}
	m := new(dns.Msg).SetQuestion("public.example.com.", dns.TypeA)
	for b.Loop() {
		r, _, err := c.Exchange(m, addr.String())
		if err != nil || len(r.Answer) != 1 {
			b.Fatalf("answer %v, error %v", r, err)
		}
		drain()
	}
}
