package netpolicy

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/testutil"
	"github.com/airlockhq/airlock/internal/testutil/testnet"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// The test pool, apart from the default one a daemon on this machine may use.
var testPool = netip.MustParsePrefix("10.250.0.0/16")

const (
	blockedWait = time.Second     // how long a dial waits for a packet a drop rule swallowed
	okWait      = 5 * time.Second // how long a dial that must work may take
)

// newManager makes a Manager on a table of the test's own, and checks when the test ends
// that nothing of it is left: no table, no veth, no route into the pool.
func newManager(t *testing.T, cfg Config) *Manager {
	t.Helper()
	testutil.MustHaveRoot(t)
	b := make([]byte, 4)
	rand.Read(b)
	cfg.Table = "airlock-test-" + hex.EncodeToString(b)
	cfg.noDNS = true // the tests listen on the gateways' port 53 themselves
	if !cfg.Pool.IsValid() {
		cfg.Pool = testPool
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Sweep(t.Context(), func(string) bool { return false }); err != nil {
			t.Errorf("Sweep: %v", err)
		}
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if left := leftovers(t, m); left != "" {
			t.Errorf("left behind: %s", left)
		}
	})
	return m
}

// leftovers describes what of m exists on the host: its table, its veths, routes into its
// pool.
func leftovers(t *testing.T, m *Manager) string {
	t.Helper()
	var left []string
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListTableOfFamily(m.cfg.Table, nftables.TableFamilyINet); err == nil {
		left = append(left, "table "+m.cfg.Table)
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, m.prefix) {
			left = append(left, "link "+l.Attrs().Name)
		}
	}
	routes, _ := netlink.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst != nil {
			if p, ok := netip.AddrFromSlice(r.Dst.IP); ok && m.cfg.Pool.Contains(p.Unmap()) {
				left = append(left, "route "+r.Dst.String())
			}
		}
	}
	return strings.Join(left, ", ")
}

// sandboxObjects lists the nftables objects of sandbox id in m's table.
func sandboxObjects(t *testing.T, m *Manager, id string) []string {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	chains, _ := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	for _, ch := range chains {
		if got, ok := sbID(ch.Name); ok && got == id && ch.Table.Name == m.cfg.Table {
			out = append(out, "chain "+ch.Name)
		}
	}
	sets, _ := c.GetSets(m.table())
	for _, s := range sets {
		if got, ok := sbID(s.Name); ok && got == id {
			out = append(out, "set "+s.Name)
		}
	}
	for _, name := range []string{setIn, setFwd} {
		els, _ := c.GetSetElements(m.vmapSet(name))
		for _, e := range els {
			if e.Comment == id {
				out = append(out, "element "+name+" "+strings.TrimRight(string(e.Key), "\x00"))
			}
		}
	}
	return out
}

// sandbox attaches a fresh stand-in sandbox (a process in its own netns) in slot.
func sandbox(t *testing.T, m *Manager, id string, slot int, p Policy) (int, *Attachment) {
	t.Helper()
	pid := testnet.Process(t)
	a, err := m.Attach(t.Context(), Sandbox{ID: id, Slot: slot, Pid: pid}, p)
	if err != nil {
		t.Fatalf("Attach %s: %v", id, err)
	}
	t.Cleanup(func() { a.Close() })
	return pid, a
}

// hostAddr returns an address of the host's own default-route interface, if it has one.
func hostAddr(t *testing.T) (netip.Addr, bool) {
	routes, _ := netlink.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			l, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				continue
			}
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
			for _, a := range addrs {
				if ip, ok := netip.AddrFromSlice(a.IP); ok {
					return ip.Unmap(), true
				}
			}
		}
	}
	return netip.Addr{}, false
}

// listenHost listens on every address of the host's namespace, as a host service would.
func listenHost(t *testing.T) uint16 {
	ln, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

type reach struct {
	name string
	to   netip.AddrPort
	want bool
}

// checkReach dials every destination from inside pid, in parallel, and fails on each whose
// reachability is not as wanted. A destination that must be blocked fails the test if the
// connection opens: that is the attack.
func checkReach(t *testing.T, pid int, cases []reach) {
	t.Helper()
	t.Run("reach", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				wait := blockedWait
				if c.want {
					wait = okWait
				}
				err := testnet.Dial(pid, c.to, wait)
				if got := err == nil; got != c.want {
					t.Errorf("dial %s from the sandbox: connected=%v (err %v), want %v", c.to, got, err, c.want)
				}
			})
		}
	})
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

var (
	publicIP  = netip.MustParseAddr("203.0.113.7")
	metaIP    = netip.MustParseAddr("169.254.169.254")
	privateIP = netip.MustParseAddr("10.55.0.7")
	lanIP     = netip.MustParseAddr("192.168.55.7")
)

// world builds the test internet: a public host, the metadata address, two private hosts,
// each serving HTTP on 80 and 8080.
func world(t *testing.T) map[string]*testnet.Host {
	n := testnet.New(t)
	hosts := map[string]*testnet.Host{}
	for name, ip := range map[string]netip.Addr{"public": publicIP, "metadata": metaIP, "private": privateIP, "lan": lanIP} {
		h := n.Host(t, name, ip)
		h.ServeHTTP(t, 80, testnet.Hello(name))
		h.ServeHTTP(t, 8080, testnet.Hello(name))
		hosts[name] = h
	}
	return hosts
}

// TestInternet attacks from an internet-mode sandbox: only the public host answers; the
// metadata service, private ranges, the host (its gateway address on a non-DNS port, its link
// and default-route addresses), another sandbox and another sandbox's gateway do not.
func TestInternet(t *testing.T) {
	m := newManager(t, Config{})
	hosts := world(t)
	pid, a := sandbox(t, m, "inet-a", 1, Policy{Mode: Internet})
	pidB, b := sandbox(t, m, "inet-b", 2, Policy{Mode: Internet})

	body, err := testnet.Get(t.Context(), pid, ap(publicIP, 80), okWait)
	if err != nil || body != "hello from public" {
		t.Fatalf("GET public from the sandbox: %q, %v; want hello from public", body, err)
	}
	// Services the sandbox must not reach: one on every host address, DNS on both gateways,
	// and one inside the other sandbox.
	hostPort := listenHost(t)
	var dnsA, dnsB net.Listener
	for _, g := range []struct {
		l  *net.Listener
		gw netip.Addr
	}{{&dnsA, a.Gateway()}, {&dnsB, b.Gateway()}} {
		l, err := net.Listen("tcp4", ap(g.gw, 53).String())
		if err != nil {
			t.Fatalf("listen on gateway: %v", err)
		}
		t.Cleanup(func() { l.Close() })
		*g.l = l
	}
	err = testnet.InPid(pidB, func() error {
		l, err := net.Listen("tcp4", ap(b.Addr(), 8080).String())
		if err == nil {
			t.Cleanup(func() { l.Close() })
		}
		return err
	})
	if err != nil {
		t.Fatalf("listen in sandbox b: %v", err)
	}
	cases := []reach{
		{"public", ap(publicIP, 8080), true},
		{"own gateway DNS", ap(a.Gateway(), 53), true},
		{"metadata", ap(metaIP, 80), false},
		{"private 10/8", ap(privateIP, 80), false},
		{"private 192.168/16", ap(lanIP, 80), false},
		{"host service via gateway", ap(a.Gateway(), hostPort), false},
		{"host link address", ap(hosts["public"].HostAddr, hostPort), false},
		{"other sandbox", ap(b.Addr(), 8080), false},
		{"other sandbox's gateway DNS", ap(b.Gateway(), 53), false},
		{"host loopback via 127.0.0.1", ap(netip.MustParseAddr("127.0.0.1"), hostPort), false},
	}
	if h, ok := hostAddr(t); ok {
		cases = append(cases, reach{"host default-route address", ap(h, hostPort), false})
	}
	checkReach(t, pid, cases)

	t.Run("no IPv6", func(t *testing.T) {
		// The host side runs on this thread, in the host's namespace.
		inHost := func(_ int, f func() error) error { return f() }
		for _, side := range []struct {
			where string
			in    func(int, func() error) error
			link  string
		}{{"sandbox", testnet.InPid, sandboxIf}, {"host", inHost, a.Link()}} {
			err := side.in(pid, func() error {
				l, err := netlink.LinkByName(side.link)
				if err != nil {
					return err
				}
				addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
				if len(addrs) > 0 {
					return fmt.Errorf("IPv6 addresses %v", addrs)
				}
				return err
			})
			if err != nil {
				t.Errorf("%s %s: %v", side.where, side.link, err)
			}
		}
	})
	// Root in the sandbox forges its source (the other sandbox's address, on its own eth0)
	// and sends UDP to the public host and to its gateway's DNS port, then one datagram
	// from its real address as a marker. Each path is FIFO, so whatever arrives before the
	// marker arrived ahead of it: a forged datagram among them is the attack working.
	t.Run("spoofed source", func(t *testing.T) {
		var pubConn net.PacketConn
		if err := hosts["public"].Do(func() (err error) {
			pubConn, err = net.ListenPacket("udp4", ap(publicIP, 9999).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer pubConn.Close()
		gwConn, err := net.ListenPacket("udp4", ap(a.Gateway(), 53).String())
		if err != nil {
			t.Fatal(err)
		}
		defer gwConn.Close()
		forged := b.Addr()
		err = testnet.InPid(pid, func() error {
			l, err := netlink.LinkByName(sandboxIf)
			if err != nil {
				return err
			}
			if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(forged, 32)}); err != nil {
				return err
			}
			for _, to := range []netip.AddrPort{ap(publicIP, 9999), ap(a.Gateway(), 53)} {
				for _, from := range []netip.Addr{forged, forged, forged, a.Addr()} {
					c, err := net.DialUDP("udp4", &net.UDPAddr{IP: from.AsSlice()}, net.UDPAddrFromAddrPort(to))
					if err != nil {
						return err
					}
					_, err = c.Write([]byte(from.String()))
					c.Close()
					if err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []net.PacketConn{pubConn, gwConn} {
			buf := make([]byte, 64)
			c.SetReadDeadline(time.Now().Add(okWait))
			for {
				n, _, err := c.ReadFrom(buf)
				if err != nil {
					t.Fatalf("%s: no marker from the sandbox's real address: %v", c.LocalAddr(), err)
				}
				if got := string(buf[:n]); got == a.Addr().String() {
					break
				} else {
					t.Errorf("%s received a datagram forged from %s", c.LocalAddr(), got)
				}
			}
		}
	})
}

// TestAllowlist: only the listed CIDR/ports answer, and a name's address only once the DNS
// forwarder admitted it — never a private or metadata address through a name.
func TestAllowlist(t *testing.T) {
	m := newManager(t, Config{})
	world(t)
	pid, a := sandbox(t, m, "allow", 3, Policy{Mode: Allowlist,
		Allow: []string{"10.55.0.0/24:80", "192.168.55.7", "public.test:8080"}})

	checkReach(t, pid, []reach{
		{"listed cidr and port", ap(privateIP, 80), true},
		{"listed cidr, other port", ap(privateIP, 8080), false},
		{"listed address, any port", ap(lanIP, 8080), true},
		{"public, not admitted", ap(publicIP, 8080), false},
		{"metadata", ap(metaIP, 80), false},
		{"gateway, not DNS", ap(a.Gateway(), 80), false},
	})
	if err := a.Admit([]netip.Addr{publicIP}, 8080, 8080, time.Minute); err != nil {
		t.Fatalf("Admit: %v", err)
	}
	// Again, refreshing the timeout of an element that exists.
	if err := a.Admit([]netip.Addr{publicIP}, 8080, 8080, time.Hour); err != nil {
		t.Fatalf("Admit again: %v", err)
	}
	if err := a.Admit([]netip.Addr{metaIP, privateIP}, 8080, 8080, time.Minute); !errors.Is(err, ErrNotAdmissible) {
		t.Errorf("Admit(metadata, private) = %v, want ErrNotAdmissible", err)
	}
	if err := a.Admit([]netip.Addr{publicIP}, 80, 80, time.Minute); err == nil {
		t.Error("Admit for a port no name rule has: no error")
	}
	c, _ := nftables.New()
	els, err := c.GetSetElements(a.admitSet("8080-8080"))
	if err != nil || len(els) != 1 || els[0].Expires < 30*time.Minute {
		t.Errorf("admitted set after a refresh to an hour: %+v, %v; want one element expiring in about an hour", els, err)
	}
	checkReach(t, pid, []reach{
		{"admitted", ap(publicIP, 8080), true},
		{"admitted, other port", ap(publicIP, 80), false},
		{"metadata after refused admit", ap(metaIP, 8080), false},
	})
}

// TestConnLimit: the per-sandbox connection count bites, and frees up when one closes.
func TestConnLimit(t *testing.T) {
	m := newManager(t, Config{MaxConns: 3})
	n := testnet.New(t)
	h := n.Host(t, "public", publicIP)
	h.Listen(t, 9000) // never accepts: the kernel completes handshakes into the backlog
	pid, _ := sandbox(t, m, "limit", 4, Policy{Mode: Internet})

	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	dial := func(wait time.Duration) error {
		return testnet.InPid(pid, func() error {
			c, err := net.DialTimeout("tcp4", ap(publicIP, 9000).String(), wait)
			if err == nil {
				conns = append(conns, c)
			}
			return err
		})
	}
	for i := range 3 {
		if err := dial(okWait); err != nil {
			t.Fatalf("connection %d of 3: %v", i+1, err)
		}
	}
	if err := dial(blockedWait); err == nil {
		t.Fatal("a 4th connection opened past MaxConns 3")
	}
	conns[0].(*net.TCPConn).SetLinger(0) // RST: the conntrack entry goes at once
	conns[0].Close()
	conns = conns[1:]
	for i := 0; ; i++ {
		if err := dial(blockedWait); err == nil {
			break
		}
		if i == 20 {
			t.Fatal("no new connection after one of three closed")
		}
	}
}

// TestCloseAndSweep: Close removes a sandbox's objects, veth and route; Sweep on a new
// Manager (a restarted daemon) removes those of sandboxes it does not keep and leaves the
// kept one working; Adopt keeps the live veth.
func TestCloseAndSweep(t *testing.T) {
	m := newManager(t, Config{})
	n := testnet.New(t)
	n.Host(t, "public", publicIP).ServeHTTP(t, 80, testnet.Hello("public"))
	p := Policy{Mode: Allowlist, Allow: []string{"203.0.113.0/24:80", "pypi.org"}}
	_, a := sandbox(t, m, "closed", 5, p)
	if got := sandboxObjects(t, m, "closed"); len(got) == 0 {
		t.Fatal("no nftables objects after Attach")
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if got := sandboxObjects(t, m, "closed"); len(got) > 0 {
		t.Errorf("after Close: %v", got)
	}
	if _, err := netlink.LinkByName(a.Link()); err == nil {
		t.Errorf("after Close: link %s still there", a.Link())
	}

	pidKeep, keep := sandbox(t, m, "keep", 6, p)
	sandbox(t, m, "lost", 7, p)
	index := func(name string) int {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return 0
		}
		return l.Attrs().Index
	}
	before := index(keep.Link())

	// The daemon goes (its DNS forwarders with it; the sandboxes' objects stay) and a new one
	// on the same table recovers "keep" only.
	if err := m.Close(); err != nil {
		t.Fatalf("Close of the first daemon: %v", err)
	}
	m2, err := New(m.cfg)
	if err != nil {
		t.Fatalf("New again: %v", err)
	}
	if err := m2.Sweep(t.Context(), func(id string) bool { return id == "keep" }); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if got := sandboxObjects(t, m, "lost"); len(got) > 0 {
		t.Errorf("after Sweep, of the lost sandbox: %v", got)
	}
	if i := index(m.LinkName(7)); i != 0 {
		t.Errorf("after Sweep: link %s still there", m.LinkName(7))
	}
	if _, err := m2.Adopt(t.Context(), Sandbox{ID: "keep", Slot: 6, Pid: pidKeep}, p); err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	if got := index(keep.Link()); got != before || got == 0 {
		t.Errorf("Adopt: link index %d, want the live one %d", got, before)
	}
	checkReach(t, pidKeep, []reach{{"public after adopt", ap(publicIP, 80), true}})
	if err := m2.Close(); err != nil {
		t.Fatalf("Close with a live sandbox: %v", err)
	}
	if left := leftovers(t, m); !strings.Contains(left, "table") {
		t.Errorf("Close deleted the table under a live sandbox (left: %q)", left)
	}
}

// TestAttachCycles: 200 Attach/Close cycles leave nothing behind.
func TestAttachCycles(t *testing.T) {
	m := newManager(t, Config{})
	pid := testnet.Process(t)
	for i := range 200 {
		id := fmt.Sprintf("cycle-%d", i)
		a, err := m.Attach(t.Context(), Sandbox{ID: id, Slot: 8 + i%3, Pid: pid}, Policy{Mode: Allowlist, Allow: []string{"pypi.org:443", "10.1.0.0/16"}})
		if err != nil {
			t.Fatalf("cycle %d: Attach: %v", i, err)
		}
		if err := a.Close(); err != nil {
			t.Fatalf("cycle %d: Close: %v", i, err)
		}
	}
	c, _ := nftables.New()
	sets, _ := c.GetSets(m.table())
	for _, s := range sets {
		if _, ok := sbID(s.Name); ok {
			t.Errorf("left set %s", s.Name)
		}
	}
	if left := leftovers(t, m); left != "table "+m.cfg.Table {
		t.Errorf("after 200 cycles: %s", left)
	}
}

// TestAttachRefuses bad input without touching the host.
func TestAttachRefuses(t *testing.T) {
	m := newManager(t, Config{})
	pid := testnet.Process(t)
	for _, c := range []struct {
		name string
		sb   Sandbox
		p    Policy
	}{
		{"block mode", Sandbox{ID: "x", Slot: 1, Pid: pid}, Policy{}},
		{"bad id", Sandbox{ID: "a.b", Slot: 1, Pid: pid}, Policy{Mode: Internet}},
		{"slot past the pool", Sandbox{ID: "x", Slot: 1 << 14, Pid: pid}, Policy{Mode: Internet}},
		{"bad rule", Sandbox{ID: "x", Slot: 1, Pid: pid}, Policy{Mode: Allowlist, Allow: []string{"::1"}}},
		{"no such pid", Sandbox{ID: "x", Slot: 1, Pid: 1 << 30}, Policy{Mode: Internet}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if a, err := m.Attach(t.Context(), c.sb, c.p); err == nil {
				a.Close()
				t.Fatal("Attach: no error")
			}
			if got := sandboxObjects(t, m, "x"); len(got) > 0 {
				t.Errorf("left %v", got)
			}
		})
	}
}

// TestConnRate: a burst of new connections past ConnRate (burst twice that) is cut off.
func TestConnRate(t *testing.T) {
	const rate, burst = 5, 40
	m := newManager(t, Config{ConnRate: rate})
	n := testnet.New(t)
	n.Host(t, "public", publicIP).Listen(t, 9000)
	pid, _ := sandbox(t, m, "rate", 9, Policy{Mode: Internet})
	// The kernel starts an "over" limit's bucket empty: wait for a first connection.
	for i := 0; testnet.Dial(pid, ap(publicIP, 9000), blockedWait) != nil; i++ {
		if i == 10 {
			t.Fatal("no connection at all")
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	opened := 0
	for range burst {
		wg.Go(func() {
			// Under a second, so that no SYN is retried after the bucket refilled.
			if testnet.Dial(pid, ap(publicIP, 9000), 900*time.Millisecond) == nil {
				mu.Lock()
				opened++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Logf("%d of %d simultaneous new connections opened", opened, burst)
	// At most the bucket (2*rate) and what refills while the dials wait.
	if opened > 3*rate {
		t.Errorf("%d of %d simultaneous connections opened at ConnRate %d, want at most %d", opened, burst, rate, 3*rate)
	}
}

// TestShaping: EgressBytesPerSec puts a tbf of that rate on the sandbox's eth0.
func TestShaping(t *testing.T) {
	m := newManager(t, Config{EgressBytesPerSec: 1 << 20})
	pid, _ := sandbox(t, m, "shaped", 10, Policy{Mode: Internet})
	err := testnet.InPid(pid, func() error {
		l, err := netlink.LinkByName(sandboxIf)
		if err != nil {
			return err
		}
		qs, err := netlink.QdiscList(l)
		if err != nil {
			return err
		}
		for _, q := range qs {
			if tbf, ok := q.(*netlink.Tbf); ok && tbf.Rate == 1<<20 {
				return nil
			}
		}
		return fmt.Errorf("qdiscs %v, want a tbf at 1 MiB/s", qs)
	})
	if err != nil {
		t.Error(err)
	}
}

// BenchmarkAttachClose measures one sandbox network's set-up and tear-down (allowlist, two
// rules): what networking adds to a sandbox create and destroy.
func BenchmarkAttachClose(b *testing.B) {
	testutil.MustHaveRoot(b)
	m, err := New(Config{Table: "airlock-bench", Pool: testPool})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	pid := testnet.Process(b)
	p := Policy{Mode: Allowlist, Allow: []string{"pypi.org:443", "10.1.0.0/16"}}
	for i := 0; b.Loop(); i++ {
		a, err := m.Attach(b.Context(), Sandbox{ID: fmt.Sprintf("bench-%d", i), Slot: 1, Pid: pid}, p)
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
