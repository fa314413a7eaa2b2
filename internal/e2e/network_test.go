package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"

	airlock "github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/netpolicy"
	"github.com/airlockhq/airlock/internal/runtime/gvisor"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/testutil"
	"github.com/airlockhq/airlock/internal/testutil/testnet"
)

// Addresses of the test internet (netInternet). The public ones are TEST-NET-3, which
// netpolicy does not count as private; the others are each in a range internet mode must
// refuse.
var (
	pubAddr     = netip.MustParseAddr("203.0.113.10")
	pub2Addr    = netip.MustParseAddr("203.0.113.20")
	pipAddr     = netip.MustParseAddr("203.0.113.30")
	privateAddr = netip.MustParseAddr("10.55.0.10")
	metaAddr    = netip.MustParseAddr("169.254.169.254")
	// netTestPool is the sandbox pool of this file's runtimes: their own, so that no other
	// runtime's sandbox sits in it.
	netTestPool = netip.MustParsePrefix("10.233.0.0/16")
)

// netInternet is one test's "internet", built from network namespaces (testnet): two public
// hosts, a private one, a metadata service, a DNS server on the public host that logs every
// name it is asked, and two host services (on the host's loopback and on all its addresses).
type netInternet struct {
	net                 *testnet.Net
	pub                 *testnet.Host
	hostLoPort, hostAll int // host services: 127.0.0.1 and 0.0.0.0
	dnsMu               sync.Mutex
	asked               map[string]int // lower-case names without the final dot
	upstream            netip.AddrPort
}

// dnsZone is what the test DNS server answers; every other name is NXDOMAIN.
var dnsZone = map[string]netip.Addr{
	"pub.test.":    pubAddr,
	"pub2.test.":   pub2Addr,
	"rebind.test.": privateAddr,
	"meta.test.":   metaAddr,
}

func newNetInternet(t testing.TB) *netInternet {
	t.Helper()
	n := &netInternet{net: testnet.New(t), asked: map[string]int{}}
	n.pub = n.net.Host(t, "pub", pubAddr)
	n.pub.ServeHTTP(t, 80, testnet.Hello("pub"))
	pub2 := n.net.Host(t, "pub2", pub2Addr)
	pub2.ServeHTTP(t, 80, testnet.Hello("pub2"))
	priv := n.net.Host(t, "private", privateAddr)
	priv.ServeHTTP(t, 80, testnet.Hello("private"))
	meta := n.net.Host(t, "metadata", metaAddr)
	meta.ServeHTTP(t, 80, testnet.Hello("metadata"))
	n.upstream = netip.AddrPortFrom(pubAddr, 53)
	n.serveDNS(t)
	n.hostLoPort = serveHostHello(t, "127.0.0.1:0", "host-loopback")
	n.hostAll = serveHostHello(t, "0.0.0.0:0", "host-any")
	return n
}

// serveDNS runs the zone's server on the public host's port 53 (UDP and TCP).
func (n *netInternet) serveDNS(t testing.TB) {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for _, qq := range q.Question {
			n.dnsMu.Lock()
			n.asked[strings.TrimSuffix(strings.ToLower(qq.Name), ".")]++
			n.dnsMu.Unlock()
			a, ok := dnsZone[strings.ToLower(qq.Name)]
			switch {
			case !ok:
				m.Rcode = dns.RcodeNameError
			case qq.Qtype == dns.TypeA:
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: a.AsSlice()})
			}
		}
		w.WriteMsg(m)
	})
	var pc net.PacketConn
	var ln net.Listener
	err := n.pub.Do(func() (err error) {
		if pc, err = net.ListenPacket("udp4", n.upstream.String()); err != nil {
			return err
		}
		ln, err = net.Listen("tcp4", n.upstream.String())
		return err
	})
	if err != nil {
		t.Fatalf("test DNS server: %v", err)
	}
	var wg sync.WaitGroup
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h}
	wg.Go(func() { udp.ActivateAndServe() })
	wg.Go(func() { tcp.ActivateAndServe() })
	t.Cleanup(func() { udp.Shutdown(); tcp.Shutdown(); wg.Wait() })
}

// wasAsked reports whether the upstream DNS server ever saw name.
func (n *netInternet) wasAsked(name string) bool {
	n.dnsMu.Lock()
	defer n.dnsMu.Unlock()
	return n.asked[name] > 0
}

// serveHostHello serves "hello from NAME" on addr in the host's own namespace and returns its port.
func serveHostHello(t testing.TB, addr, name string) int {
	t.Helper()
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: testnet.Hello(name)}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ln) })
	t.Cleanup(func() { srv.Close(); wg.Wait() })
	return ln.Addr().(*net.TCPAddr).Port
}

// newNetRuntime is a native runtime with sandbox networking in netTestPool whose forwarders
// ask the test internet's DNS server; a state directory and cgroup root of its own.
func newNetRuntime(t testing.TB, upstream netip.AddrPort, name string) (*native.Runtime, string) {
	t.Helper()
	mustEngine(t)
	state, err := os.MkdirTemp("", "airlock-e2e-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	if err := os.Chmod(state, 0o755); err != nil { // traversable by the sandboxes' uids
		t.Fatal(err)
	}
	cg := cgRoot + "-" + name
	r, err := native.New(native.Config{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		StateDir: state, CgroupRoot: cg,
		Network: &netpolicy.Config{Pool: netTestPool, Upstreams: []netip.AddrPort{upstream}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); removeCgroupRoot(cg) }) // after the engine's cleanup (registered later, run first)
	return r, state
}

// probeScript connects, from inside a sandbox, to each target of each phase (phases one after
// the other, a phase's targets at once), by name or address, and prints a JSON object of
// label → "ok:BODY", "dns:ERROR" or "conn:ERROR". "GW" in a host is the sandbox's resolver
// (its gateway), read from /etc/resolv.conf.
const probeScript = `
import json, socket, sys, threading
gw = ''
try:
    for l in open('/etc/resolv.conf'):
        if l.startswith('nameserver'):
            gw = l.split()[1]
            break
except OSError:
    pass
def probe(label, host, port, out):
    host = host.replace('GW', gw)
    try:
        ip = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except Exception as e:
        out[label] = 'dns:' + type(e).__name__
        return
    try:
        s = socket.create_connection((ip, port), timeout=1.5)
    except Exception as e:
        out[label] = 'conn:' + type(e).__name__
        return
    try:
        s.settimeout(1.5)
        s.sendall(b'GET / HTTP/1.0\r\nHost: x\r\n\r\n')
        data = b''
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
        out[label] = 'ok:' + data.decode(errors='replace').split('\r\n\r\n', 1)[-1][:80]
    except Exception as e:
        out[label] = 'ok:' + type(e).__name__
    finally:
        s.close()
out = {}
for phase in PHASES:
    ts = [threading.Thread(target=probe, args=(l, h, p, out)) for l, h, p in phase]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
print(json.dumps(out))
`

// probeTarget is one connection the probe tries; want is the "hello from" name it must reach,
// or "" when it must not get through.
type probeTarget struct {
	label, host string
	port        int
	want        string
}

func probeCode(phases [][]probeTarget) string {
	var ps [][][]any
	for _, ph := range phases {
		var p [][]any
		for _, tg := range ph {
			p = append(p, []any{tg.label, tg.host, tg.port})
		}
		ps = append(ps, p)
	}
	b, _ := json.Marshal(ps)
	return "PHASES = " + string(b) + "\n" + probeScript
}

// checkProbe fails the test for every target whose outcome is not the wanted one.
func checkProbe(t *testing.T, stdout string, phases [][]probeTarget) {
	t.Helper()
	var got map[string]string
	if err := json.Unmarshal([]byte(strings.TrimSpace(stdout)), &got); err != nil {
		t.Fatalf("probe output %q: %v", stdout, err)
	}
	for _, ph := range phases {
		for _, tg := range ph {
			res, ok := got[tg.label]
			switch {
			case !ok:
				t.Errorf("%s: no result", tg.label)
			case tg.want == "" && strings.HasPrefix(res, "ok:"):
				t.Errorf("%s (%s:%d): got %q, want no connection (the attack worked)", tg.label, tg.host, tg.port, res)
			case tg.want != "" && res != "ok:hello from "+tg.want:
				t.Errorf("%s (%s:%d): got %q, want \"ok:hello from %s\"", tg.label, tg.host, tg.port, res, tg.want)
			}
		}
	}
}

// modeCase is one network policy with what it must and must not reach.
type modeCase struct {
	name    string
	network api.Network
	phases  func(exfil string) [][]probeTarget
}

// modeCases: every mode against the whole test internet. others is another sandbox's listener
// (addr:port), apiPort the API server's.
func modeCases(n *netInternet, other netip.AddrPort, apiPort int) []modeCase {
	// forbidden are what no mode reaches: the host, the API, another sandbox, private and
	// link-local ranges, and names that resolve into them.
	forbidden := []probeTarget{
		{"private by ip", privateAddr.String(), 80, ""},
		{"metadata by ip", metaAddr.String(), 80, ""},
		{"rebind.test", "rebind.test", 80, ""},
		{"meta.test", "meta.test", 80, ""},
		{"host loopback via gateway", "GW", n.hostLoPort, ""},
		{"host loopback via 127.0.0.1", "127.0.0.1", n.hostLoPort, ""},
		{"host any via gateway", "GW", n.hostAll, ""},
		{"host any via host address", n.pub.HostAddr.String(), n.hostAll, ""},
		{"api via gateway", "GW", apiPort, ""},
		{"api via 127.0.0.1", "127.0.0.1", apiPort, ""},
		{"api via host address", n.pub.HostAddr.String(), apiPort, ""},
		{"other sandbox", other.Addr().String(), int(other.Port()), ""},
	}
	with := func(ts ...probeTarget) []probeTarget { return append(ts, forbidden...) }
	return []modeCase{
		{"internet", api.Network{Mode: api.NetworkInternet}, func(exfil string) [][]probeTarget {
			return [][]probeTarget{with(
				probeTarget{"pub by ip", pubAddr.String(), 80, "pub"},
				probeTarget{"pub2 by ip", pub2Addr.String(), 80, "pub2"},
				probeTarget{"pub.test", "pub.test", 80, "pub"},
				probeTarget{"pub2.test", "pub2.test", 80, "pub2"},
			)}
		}},
		{"allowlist", api.Network{Mode: api.NetworkAllowlist, Allow: []string{"pub.test:80", "203.0.113.20/32:80"}}, func(exfil string) [][]probeTarget {
			return [][]probeTarget{
				// Before its name is resolved, the listed name's address is not open.
				with(probeTarget{"pub by ip before resolving", pubAddr.String(), 80, ""},
					probeTarget{"pub2 by ip (listed cidr)", pub2Addr.String(), 80, "pub2"},
					probeTarget{"pub2.test (name not listed)", "pub2.test", 80, ""},
					probeTarget{"exfil name", exfil, 80, ""}),
				{{"pub.test (listed name)", "pub.test", 80, "pub"}},
			}
		}},
		{"block", api.Network{Mode: api.NetworkBlock}, func(exfil string) [][]probeTarget {
			return [][]probeTarget{with(
				probeTarget{"pub by ip", pubAddr.String(), 80, ""},
				probeTarget{"pub2 by ip", pub2Addr.String(), 80, ""},
				probeTarget{"pub.test", "pub.test", 80, ""},
				probeTarget{"exfil name", exfil, 80, ""},
			)}
		}},
	}
}

func randomName(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return prefix + hex.EncodeToString(b) + ".test"
}

// TestNetworkModes attacks the test internet from inside sandboxes of every mode, through
// one-shot runs and sandboxes: internet reaches only the public hosts, allowlist only what it
// lists (and DNS leaks no unlisted name upstream), block nothing; no mode reaches the host,
// the API, metadata, private ranges or another sandbox.
func TestNetworkModes(t *testing.T) {
	n := newNetInternet(t)
	r, _ := newNetRuntime(t, n.upstream, "netmodes")
	networkModes(t, n, native.EngineRuntime(r))
}

// TestGvisorNetworkModes: the same attacks from gvisor sandboxes (runsc's netstack on the veth
// netpolicy attaches to the namespace the runtime makes), and nothing of their networks —
// veth, nftables object, sandbox directory, process — is left once they are gone.
func TestGvisorNetworkModes(t *testing.T) {
	n := newNetInternet(t)
	r, state, cg := newGvisorNetRuntime(t, n.upstream, "gvnetmodes")
	networkModes(t, n, gvisor.EngineRuntime(r))
	var left []string
	waitFor(t, "nothing left of the gvisor sandboxes' networks", func() bool {
		left = netLeftovers(t, cg, state, true)
		m, _ := filepath.Glob(filepath.Join(state, "gvisor", "sandboxes", "*"))
		left = append(left, m...)
		return len(left) == 0
	})
}

// newGvisorNetRuntime is a gvisor runtime with sandbox networking in netTestPool, as
// newNetRuntime's native one; its state directory and cgroup root.
func newGvisorNetRuntime(t testing.TB, upstream netip.AddrPort, name string) (*gvisor.Runtime, string, string) {
	t.Helper()
	mustGvisor(t)
	state, err := os.MkdirTemp("", "airlock-e2e-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	cg := cgRoot + "-" + name
	r, err := gvisor.New(gvisor.Config{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		StateDir: state, CgroupRoot: cg,
		Network: &netpolicy.Config{Pool: netTestPool, Upstreams: []netip.AddrPort{upstream}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); removeCgroupRoot(cg) })
	return r, state, cg
}

// networkModes runs TestNetworkModes' attacks on sandboxes of rt.
func networkModes(t *testing.T, n *netInternet, rt engine.Runtime) {
	a := newAPIServer(t, engine.Config{Runtime: rt, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	ctx := t.Context()
	c := airlock.New(a.url, "")
	apiPort, _ := strconv.Atoi(a.url[strings.LastIndex(a.url, ":")+1:])

	// Another sandbox, on the same network, listening on all its addresses.
	other, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{Network: &api.Network{Mode: api.NetworkInternet}, Timeout: 300})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Terminate(context.WithoutCancel(ctx))
	srv, err := other.Exec(ctx, "python3", "-c", `
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'hello from other')
http.server.ThreadingHTTPServer(('0.0.0.0', 8000), H).serve_forever()`)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Kill(); srv.Wait() })
	otherAddr := sandboxAddr(t, other)
	waitFor(t, "the other sandbox's server", func() bool {
		out, err := sandboxTry(ctx, other, "python3", "-c",
			"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/', timeout=1).read().decode())")
		return err == nil && strings.Contains(out, "hello from other")
	})
	// Its own listener answers it on its own address: the server is up, and "other sandbox"
	// failing below is the firewall, not a dead server.
	if out := sandboxRun(t, other, "python3", "-c", "import urllib.request; print(urllib.request.urlopen('http://"+otherAddr.String()+":8000/', timeout=1).read().decode())"); !strings.Contains(out, "hello from other") {
		t.Fatalf("the other sandbox does not reach its own server on %s: %q", otherAddr, out)
	}

	for _, mc := range modeCases(n, netip.AddrPortFrom(otherAddr, 8000), apiPort) {
		t.Run(mc.name, func(t *testing.T) {
			t.Run("one-shot", func(t *testing.T) {
				exfil := randomName("exfil-")
				phases := mc.phases(exfil)
				net := mc.network
				res, err := c.Execute(ctx, api.ExecuteRequest{Code: probeCode(phases), Network: &net, Timeout: 60})
				if err != nil {
					t.Fatal(err)
				}
				if !res.Success {
					t.Fatalf("probe failed: %+v", res)
				}
				checkProbe(t, res.Stdout, phases)
				if mc.network.Mode != api.NetworkInternet && n.wasAsked(exfil) {
					t.Errorf("the upstream DNS server saw the unlisted name %s: DNS is an exfiltration channel", exfil)
				}
			})
			t.Run("sandbox", func(t *testing.T) {
				net := mc.network
				sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{Network: &net, Timeout: 120})
				if err != nil {
					t.Fatal(err)
				}
				defer sb.Terminate(context.WithoutCancel(ctx))
				exfil := randomName("exfil-")
				phases := mc.phases(exfil)
				checkProbe(t, sandboxRun(t, sb, "python3", "-c", probeCode(phases)), phases)
				if mc.network.Mode != api.NetworkInternet && n.wasAsked(exfil) {
					t.Errorf("the upstream DNS server saw the unlisted name %s: DNS is an exfiltration channel", exfil)
				}
			})
		})
	}
	if !n.wasAsked("rebind.test") {
		t.Error("rebind.test was never asked upstream: the rebinding attack did not happen, so it proves nothing")
	}
}

// sandboxRun runs cmd in sb and returns its stdout, failing the test if it does not exit 0.
func sandboxRun(t testing.TB, sb *airlock.Sandbox, cmd ...string) string {
	t.Helper()
	stdout, err := sandboxTry(t.Context(), sb, cmd...)
	if err != nil {
		t.Fatal(err)
	}
	return stdout
}

// sandboxTry runs cmd in sb and returns its stdout, or an error unless it exits 0.
func sandboxTry(ctx context.Context, sb *airlock.Sandbox, cmd ...string) (string, error) {
	p, err := sb.ExecWith(ctx, api.ExecRequest{Cmd: cmd, Timeout: 60})
	if err != nil {
		return "", err
	}
	res, err := p.Wait()
	if err != nil {
		return "", err
	}
	stdout, _ := io.ReadAll(p.Stdout)
	if res.ExitCode != 0 {
		stderr, _ := io.ReadAll(p.Stderr)
		return "", fmt.Errorf("%q: exit %d, stderr %q", cmd, res.ExitCode, stderr)
	}
	return string(stdout), nil
}

// sandboxAddr is the sandbox's own address (the source of its route out; a UDP connect sends
// nothing).
func sandboxAddr(t testing.TB, sb *airlock.Sandbox) netip.Addr {
	t.Helper()
	out := sandboxRun(t, sb, "python3", "-c", fmt.Sprintf(
		"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('%s', 9)); print(s.getsockname()[0])", pubAddr))
	a, err := netip.ParseAddr(strings.TrimSpace(out))
	if err != nil || !netTestPool.Contains(a) {
		t.Fatalf("sandbox address %q: want one in %s", out, netTestPool)
	}
	return a
}

// TestNetworkSessionPipInstall: a session whose allowlist names the package index installs a
// wheel from it (a PEP 503 simple index the test serves on its own test host) and imports it;
// a blocked session's install is refused clearly.
func TestNetworkSessionPipInstall(t *testing.T) {
	n := newNetInternet(t)
	wheelPath := t.TempDir() + "/airlock_testpkg-1.0-py3-none-any.whl"
	writeWheel(t, wheelPath)
	wheel, err := os.ReadFile(wheelPath)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(wheel)
	var mu sync.Mutex
	var fetched []string
	idx := n.net.Host(t, "index", pipAddr)
	idx.ServeHTTP(t, 80, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		fetched = append(fetched, r.URL.Path)
		mu.Unlock()
		switch r.URL.Path {
		case "/simple/":
			fmt.Fprint(w, `<html><body><a href="airlock-testpkg/">airlock-testpkg</a></body></html>`)
		case "/simple/airlock-testpkg/":
			fmt.Fprintf(w, `<html><body><a href="/files/airlock_testpkg-1.0-py3-none-any.whl#sha256=%x">airlock_testpkg-1.0-py3-none-any.whl</a></body></html>`, sum)
		case "/files/airlock_testpkg-1.0-py3-none-any.whl":
			w.Write(wheel)
		default:
			http.NotFound(w, r)
		}
	}))
	r, _ := newNetRuntime(t, n.upstream, "netpip")
	a := newAPIServer(t, engine.Config{Runtime: native.EngineRuntime(r), PipIndexURL: "http://" + pipAddr.String() + "/simple/"})

	t.Run("allowlisted index", func(t *testing.T) {
		id := a.session(`{"network":{"mode":"allowlist","allow":["203.0.113.30:80"]}}`)
		defer a.call("DELETE", "/v1/sessions/"+id, nil, nil)
		var ir api.InstallResult
		if st := a.call("POST", "/v1/sessions/"+id+"/install", strings.NewReader(`{"packages":["airlock-testpkg==1.0"]}`), &ir); st != 200 || !ir.Success {
			mu.Lock()
			t.Fatalf("install: %d %+v (index saw %v)", st, ir, fetched)
		}
		if res := a.cell(id, "import airlock_testpkg; airlock_testpkg.VALUE", 0); res.Result == nil || *res.Result != "42" {
			t.Fatalf("installed package not importable: %+v", res)
		}
		mu.Lock()
		defer mu.Unlock()
		if !slices.Contains(fetched, "/files/airlock_testpkg-1.0-py3-none-any.whl") {
			t.Fatalf("the wheel did not come from the test index (it saw %v)", fetched)
		}
	})
	t.Run("blocked session", func(t *testing.T) {
		id := a.session(`{"network":{"mode":"block"}}`)
		defer a.call("DELETE", "/v1/sessions/"+id, nil, nil)
		var eb api.ErrorBody
		if st := a.call("POST", "/v1/sessions/"+id+"/install", strings.NewReader(`{"packages":["airlock-testpkg==1.0"]}`), &eb); st != 409 || !strings.Contains(eb.Error.Message, "no network") {
			t.Fatalf("install in a blocked session: %d %+v, want 409 saying it has no network", st, eb)
		}
	})
}

// netLeftovers lists what of a runtime's networks is on the host: host veths with its prefix,
// per-sandbox nftables objects in its table (and the table itself when wantTable is false),
// resolv.conf files in its state directory.
func netLeftovers(t *testing.T, cgroupRoot, state string, wantTable bool) []string {
	t.Helper()
	var left []string
	table := "airlock_" + strings.NewReplacer("/", "_", ".", "_").Replace(cgroupRoot)
	if len(table) > 60 {
		table = table[:60]
	}
	// The veth prefix netpolicy derives from the table name ("al" and 4 hex digits of its hash).
	h := fnv.New32a()
	h.Write([]byte(table))
	prefix := fmt.Sprintf("al%04x", h.Sum32()&0xffff)
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			left = append(left, "veth "+l.Attrs().Name)
		}
	}
	out, err := exec.Command("nft", "list", "table", "inet", table).CombinedOutput()
	switch {
	case err != nil && wantTable:
		left = append(left, fmt.Sprintf("no table %s: %v %s", table, err, out))
	case err == nil && !wantTable:
		left = append(left, "table "+table)
	}
	for _, line := range strings.Split(string(out), "\n") {
		// The base chains name the prefix with a wildcard ("al1234*"); a sandbox's objects
		// carry "sb.<id>." or its own veth's name (the prefix and a slot number).
		if strings.Contains(line, "sb.") || strings.Contains(strings.ReplaceAll(line, prefix+"*", ""), prefix) {
			left = append(left, "nft: "+strings.TrimSpace(line))
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(state, "resolv")); len(ents) != 0 {
		for _, e := range ents {
			left = append(left, "resolv "+e.Name())
		}
	}
	if procs := testutil.ProcsInCgroup(cgroupRoot); len(procs) != 0 {
		left = append(left, fmt.Sprintf("processes (and with them network namespaces) %v", procs))
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), "airlock") {
		left = append(left, "named netns: "+string(out))
	}
	return left
}

// TestNetworkNoLeaks: 200 create/destroy cycles of internet sandboxes, and creations cancelled
// part way, leave no veth, nftables object, resolv.conf or namespace behind; nor does the
// runtime's table outlive it.
func TestNetworkNoLeaks(t *testing.T) {
	n := newNetInternet(t)
	cg := cgRoot + "-netleak"
	var state string
	// Registered before the runtime's cleanup, so it runs after the runtime closed.
	t.Cleanup(func() {
		if left := netLeftovers(t, cg, state, false); len(left) != 0 {
			t.Errorf("after the runtime closed left: %v", left)
		}
	})
	r, state := newNetRuntime(t, n.upstream, "netleak")
	a := newAPIServer(t, engine.Config{Runtime: native.EngineRuntime(r)})
	c := airlock.New(a.url, "")
	ctx := t.Context()
	internet := &api.Network{Mode: api.NetworkInternet}

	t.Run("200 cycles", func(t *testing.T) {
		const cycles = 200
		for i := range cycles {
			sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{Network: internet, Timeout: 60})
			if err != nil {
				t.Fatalf("cycle %d: create: %v", i, err)
			}
			if i%50 == 0 {
				// Now and then prove the network is real, not just set up.
				if out := sandboxRun(t, sb, "python3", "-c",
					"import urllib.request; print(urllib.request.urlopen('http://pub.test/', timeout=5).read().decode())"); !strings.Contains(out, "hello from pub") {
					t.Fatalf("cycle %d: probe: %q", i, out)
				}
			}
			if err := sb.Terminate(ctx); err != nil {
				t.Fatalf("cycle %d: destroy: %v", i, err)
			}
		}
		waitNoProcsIn(t, cg)
		if left := netLeftovers(t, cg, state, true); len(left) != 0 {
			t.Fatalf("after %d cycles left: %v", cycles, left)
		}
	})
	t.Run("cancelled create", func(t *testing.T) {
		// Cancel at different points of the create; whatever it got to is undone.
		for delay := time.Duration(0); delay < 400*time.Millisecond; delay += 20 * time.Millisecond {
			cctx, cancel := context.WithTimeout(ctx, delay)
			sb, err := c.CreateSandbox(cctx, api.CreateSandboxRequest{Network: internet, Timeout: 60})
			cancel()
			if err == nil {
				sb.Terminate(ctx)
			}
			// And straight through the engine, whose create funnel gets the context itself.
			cctx, cancel = context.WithTimeout(ctx, delay)
			esb, err := a.e.CreateSandbox(cctx, engine.SandboxSpec{Network: netpolicy.Policy{Mode: netpolicy.Internet}})
			cancel()
			if err == nil {
				a.e.TerminateSandbox(ctx, esb.ID())
			}
		}
		// A create whose answer the client gave up on may still have finished: that sandbox
		// is the engine's (listed, ended at its timeout), not a leak; end those now. What the
		// engine does not know of must not exist.
		list, err := c.ListSandboxes(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, info := range list {
			t.Logf("a cancelled create finished anyway: %s", info.ID)
			if sb, err := c.Sandbox(ctx, info.ID); err == nil {
				sb.Terminate(ctx)
			}
		}
		var left []string
		deadline := time.Now().Add(15 * time.Second)
		for {
			if left = netLeftovers(t, cg, state, true); len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after cancelled creates left: %v", left)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// TestNetworkDaemonCrash: a daemon SIGKILLed with three networked sandboxes alive; the
// restarted one recovers them with working networks (addresses and names: the forwarders run
// again), and once they are destroyed and it stops, nothing of their networks is left.
func TestNetworkDaemonCrash(t *testing.T) {
	n := newNetInternet(t)
	state, err := os.MkdirTemp("", "airlock-netcrash-") // t.TempDir's parent is 0700: not traversable
	if err != nil {
		t.Fatal(err)
	}
	cg := fmt.Sprintf("airlock-netcrash-%d", os.Getpid())
	t.Cleanup(func() { os.RemoveAll(state); removeCgroupRoot(cg) })
	addr := freeAddr(t)
	env := func(cmd *exec.Cmd) {
		cmd.Env = append(cmd.Env, "AIRLOCK_DNS_UPSTREAM="+n.upstream.String(), "AIRLOCK_NETWORK_POOL="+netTestPool.String())
	}
	d := startDaemon(t, state, cg, addr, env)
	var ids []string
	stopped := false
	t.Cleanup(func() {
		// On failure part way: whatever daemon runs destroys the sandboxes and stops.
		if !stopped {
			c := airlock.New(d.url, "")
			for _, id := range ids {
				if sb, err := c.Sandbox(context.Background(), id); err == nil {
					sb.Terminate(context.Background())
				}
			}
			d.stop()
		}
	})
	c := airlock.New(d.url, "")
	ctx := t.Context()
	phases := [][]probeTarget{{{"pub by ip", pubAddr.String(), 80, "pub"}, {"pub.test", "pub.test", 80, "pub"},
		{"private by ip", privateAddr.String(), 80, ""}, {"metadata by ip", metaAddr.String(), 80, ""}}}
	probe := probeCode(phases)
	for range 3 {
		sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{Network: &api.Network{Mode: api.NetworkInternet}, Timeout: 300})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sb.ID())
		checkProbe(t, sandboxRun(t, sb, "python3", "-c", probe), phases)
	}
	d.kill()
	if len(testutil.ProcsInCgroup(cg)) == 0 {
		t.Fatal("sandboxes should outlive a daemon crash (the restarted daemon adopts them)")
	}

	d = startDaemon(t, state, cg, addr, env)
	c = airlock.New(d.url, "")
	for _, id := range ids {
		sb, err := c.Sandbox(ctx, id)
		if err != nil {
			t.Fatalf("sandbox %s after the restart: %v", id, err)
		}
		checkProbe(t, sandboxRun(t, sb, "python3", "-c", probe), phases)
		// Its /etc is the one it was made with (the restarted daemon rebuilt it in place).
		if got := strings.TrimSpace(sandboxRun(t, sb, "id", "-un")); got != "sandbox" {
			t.Errorf("after the restart the sandbox user is %q, want sandbox (its /etc was replaced under it)", got)
		}
	}
	for _, id := range ids {
		sb, err := c.Sandbox(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := sb.Terminate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitNoProcsIn(t, cg)
	if left := netLeftovers(t, cg, state, true); len(left) != 0 {
		t.Fatalf("after destroying the recovered sandboxes left: %v", left)
	}
	stopped = true
	d.stop()
	if left := netLeftovers(t, cg, state, false); len(left) != 0 {
		t.Fatalf("after the daemon stopped left: %v", left)
	}
}

// firstConnects is run in a fresh sandbox: it opens connections to the public host one after
// the other and prints, for each, the seconds it took and the TCP retransmissions it needed
// (tcpi_total_retrans, offset 100 of struct tcp_info): a SYN the new-connection rate limit
// dropped shows as a retransmission (and a second's wait).
const firstConnects = `
import json, socket, struct, time
out = []
for i in range(COUNT_):
    t0 = time.monotonic()
    s = socket.create_connection(('ADDR_', 80), timeout=5)
    dt = time.monotonic() - t0
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    out.append([dt, struct.unpack_from('I', info, 100)[0]])
    s.close()
print(json.dumps(out))
`

// TestNetworkFirstConnectNotRateLimited: the new-connection rate limit does not hold back the
// first connections of a fresh internet sandbox (its bucket starts full, with a burst), in a
// one-shot run and in a sandbox.
func TestNetworkFirstConnectNotRateLimited(t *testing.T) {
	n := newNetInternet(t)
	r, _ := newNetRuntime(t, n.upstream, "netfirst")
	a := newAPIServer(t, engine.Config{Runtime: native.EngineRuntime(r)})
	c := airlock.New(a.url, "")
	ctx := t.Context()
	// Within the burst (twice the default 64/s): none of them may be dropped.
	code := strings.NewReplacer("COUNT_", "20", "ADDR_", pubAddr.String()).Replace(firstConnects)
	check := func(t *testing.T, stdout string) {
		var got [][2]float64
		if err := json.Unmarshal([]byte(strings.TrimSpace(stdout)), &got); err != nil {
			t.Fatalf("output %q: %v", stdout, err)
		}
		t.Logf("connect times (s) and retransmissions: %v", got)
		for i, g := range got {
			if g[1] != 0 {
				t.Errorf("connection %d of a fresh sandbox needed %v retransmissions (%.2fs): the rate limit dropped its SYN", i, g[1], g[0])
			}
		}
	}
	for i := range 3 {
		t.Run(fmt.Sprintf("one-shot %d", i), func(t *testing.T) {
			res, err := c.Execute(ctx, api.ExecuteRequest{Code: code, Network: &api.Network{Mode: api.NetworkInternet}, Timeout: 60})
			if err != nil || !res.Success {
				t.Fatalf("run: %v %+v", err, res)
			}
			check(t, res.Stdout)
		})
		t.Run(fmt.Sprintf("sandbox %d", i), func(t *testing.T) {
			sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{Network: &api.Network{Mode: api.NetworkInternet}, Timeout: 60})
			if err != nil {
				t.Fatal(err)
			}
			defer sb.Terminate(context.WithoutCancel(ctx))
			check(t, sandboxRun(t, sb, "python3", "-c", code))
		})
	}
	// The limit is there, and the measure sees it: past the burst, SYNs are dropped.
	t.Run("flood past the burst", func(t *testing.T) {
		sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{Network: &api.Network{Mode: api.NetworkInternet}, Timeout: 60})
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Terminate(context.WithoutCancel(ctx))
		out := sandboxRun(t, sb, "python3", "-c", strings.NewReplacer("COUNT_", "200", "ADDR_", pubAddr.String()).Replace(firstConnects))
		var got [][2]float64
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &got); err != nil {
			t.Fatalf("output %q: %v", out, err)
		}
		var retrans float64
		for _, g := range got {
			retrans += g[1]
		}
		if retrans == 0 {
			t.Fatal("200 connections at once needed no retransmission: no new-connection rate limit")
		}
	})
}

// BenchmarkNetworkCreate: sandbox create, exec true, destroy, with an internet network against
// a blocked one, paired in one loop (each iteration does both, the order alternating).
func BenchmarkNetworkCreate(b *testing.B) {
	r, _ := newNetRuntime(b, netip.AddrPortFrom(pubAddr, 53), "netbench")
	e, err := engine.New(engine.Config{Runtime: native.EngineRuntime(r)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close(context.Background()) })
	ctx := b.Context()
	cycle := func(p netpolicy.Policy) time.Duration {
		t0 := time.Now()
		sb, err := e.CreateSandbox(ctx, engine.SandboxSpec{Network: p})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := sb.Exec(ctx, engine.ExecSpec{Cmd: []string{"true"}}, func(engine.Event) {}); err != nil {
			b.Fatal(err)
		}
		if _, err := e.TerminateSandbox(ctx, sb.ID()); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	internet, block := netpolicy.Policy{Mode: netpolicy.Internet}, netpolicy.Policy{Mode: netpolicy.Block}
	var net, off []time.Duration
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			net = append(net, cycle(internet))
			off = append(off, cycle(block))
		} else {
			off = append(off, cycle(block))
			net = append(net, cycle(internet))
		}
		i++
	}
	b.ReportMetric(ms(pct(net, 50)), "internet-p50-ms")
	b.ReportMetric(ms(pct(net, 90)), "internet-p90-ms")
	b.ReportMetric(ms(pct(off, 50)), "block-p50-ms")
	b.ReportMetric(ms(pct(off, 90)), "block-p90-ms")
	b.ReportMetric(float64(pct(net, 50))/float64(pct(off, 50)), "ratio-p50")
}

// downloadScript fetches URL_ to its end and prints the MB/s (10^6 bytes a second).
const downloadScript = `
import time, urllib.request
t0 = time.monotonic()
n = 0
with urllib.request.urlopen('URL_', timeout=60) as r:
    while True:
        b = r.read(1 << 20)
        if not b:
            break
        n += len(b)
dt = time.monotonic() - t0
assert n == SIZE_, n
print(n / dt / 1e6)
`

// BenchmarkNetworkDownload: 200 MiB over HTTP from the public test host, inside an internet
// sandbox (through its veth, the firewall and NAT) against the same python fetch from the
// host's own namespace, paired in one loop.
func BenchmarkNetworkDownload(b *testing.B) {
	const size = 200 << 20
	n := newNetInternet(b)
	zeros := make([]byte, 1<<20)
	n.net.Host(b, "bulk", netip.MustParseAddr("203.0.113.40")).ServeHTTP(b, 80, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		for range size / len(zeros) {
			if _, err := w.Write(zeros); err != nil {
				return
			}
		}
	}))
	r, _ := newNetRuntime(b, n.upstream, "netdl")
	a := newAPIServer(b, engine.Config{Runtime: native.EngineRuntime(r)})
	c := airlock.New(a.url, "")
	sb, err := c.CreateSandbox(b.Context(), api.CreateSandboxRequest{Network: &api.Network{Mode: api.NetworkInternet}, Timeout: 600})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sb.Terminate(context.Background()) })
	code := strings.NewReplacer("URL_", "http://203.0.113.40/", "SIZE_", strconv.Itoa(size)).Replace(downloadScript)
	rate := func(out string) float64 {
		v, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
		if err != nil {
			b.Fatalf("download output %q: %v", out, err)
		}
		return v
	}
	var inSb, onHost []float64
	for b.Loop() {
		inSb = append(inSb, rate(sandboxRun(b, sb, "python3", "-c", code)))
		out, err := exec.Command("python3", "-c", code).Output()
		if err != nil {
			b.Fatal(err)
		}
		onHost = append(onHost, rate(string(out)))
	}
	med := func(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }
	b.ReportMetric(med(inSb), "sandbox-MB/s")
	b.ReportMetric(med(onHost), "host-MB/s")
	b.ReportMetric(med(inSb)/med(onHost), "ratio")
}
