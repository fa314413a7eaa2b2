package testnet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/netns"
	"github.com/airlockhq/airlock/internal/testutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// transit is where the host ends of the test veths get their addresses, one /30 per Host;
// TEST-NET-2, which no test host address uses.
var transit = netip.MustParsePrefix("198.51.100.0/24")

const lockPath = "/run/airlock-testnet.lock"

// Net is one test's set of hosts.
type Net struct {
	tag string // random, names the host-side veths
	mu  sync.Mutex
	n   int
}

// New returns an empty Net, waiting for any other test's Net to be done first.
func New(t testing.TB) *Net {
	t.Helper()
	testutil.MustHaveRoot(t)
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("testnet lock: %v", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("testnet lock: %v", err)
	}
	t.Cleanup(func() { f.Close() }) // releases the lock, after the hosts' cleanups (LIFO)
	b := make([]byte, 3)
	rand.Read(b)
	return &Net{tag: hex.EncodeToString(b)}
}

// Host is a test host: a network namespace whose veth0 has Addr, routed from the host.
type Host struct {
	Name string
	Addr netip.Addr
	// Link is the host-side veth; HostAddr its address, the host's own address on the link
	// (a "host address" a sandbox must not reach).
	Link     string
	HostAddr netip.Addr
	ns       int // fd of the namespace; the namespace lives as long as it is open
}

// Host makes a test host with address addr (IPv4).
func (n *Net) Host(t testing.TB, name string, addr netip.Addr) *Host {
	t.Helper()
	n.mu.Lock()
	i := n.n
	n.n++
	n.mu.Unlock()
	if i >= 64 {
		t.Fatal("testnet: at most 64 hosts")
	}
	base := transit.Addr().As4()
	base[3] = byte(4 * i)
	hostSide := netip.AddrFrom4([4]byte{base[0], base[1], base[2], base[3] + 1})
	nsSide := netip.AddrFrom4([4]byte{base[0], base[1], base[2], base[3] + 2})
	h := &Host{Name: name, Addr: addr, Link: fmt.Sprintf("tn%s%d", n.tag, i), HostAddr: hostSide}

	fd, err := newNetns()
	if err != nil {
		t.Fatalf("testnet %s: %v", name, err)
	}
	h.ns = fd
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(h.Link); err == nil {
			netlink.LinkDel(l)
		}
		unix.Close(h.ns) // the namespace, and the veth if still there, go with it
	})
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: h.Link}, PeerName: "veth0", PeerNamespace: netlink.NsFd(fd)}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("testnet %s: veth: %v", name, err)
	}
	link, err := netlink.LinkByName(h.Link)
	if err != nil {
		t.Fatalf("testnet %s: %v", name, err)
	}
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("testnet %s: %s: %v", name, what, err)
		}
	}
	must("host address", netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(hostSide, 30)}))
	must("host up", netlink.LinkSetUp(link))
	must("host route", netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(addr, 32), Gw: nsSide.AsSlice()}))
	must("inside", h.Do(func() error {
		nh, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer nh.Close()
		for _, name := range []string{"lo", "veth0"} {
			l, err := nh.LinkByName(name)
			if err != nil {
				return err
			}
			if err := nh.LinkSetUp(l); err != nil {
				return err
			}
			if name == "veth0" {
				if err := nh.AddrAdd(l, &netlink.Addr{IPNet: ipNet(nsSide, 30)}); err != nil {
					return err
				}
				if err := nh.AddrAdd(l, &netlink.Addr{IPNet: ipNet(addr, 32)}); err != nil {
					return err
				}
				return nh.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(netip.IPv4Unspecified(), 0), Gw: hostSide.AsSlice()})
			}
		}
		return nil
	}))
	return h
}

// Do runs f on an OS thread inside the host's namespace: a socket f opens stays there.
func (h *Host) Do(f func() error) error { return InNetns(h.ns, f) }

// ServeHTTP serves handler on Addr:port inside the host until the test ends.
func (h *Host) ServeHTTP(t testing.TB, port int, handler http.Handler) {
	t.Helper()
	ln := h.Listen(t, port)
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ln) })
	t.Cleanup(func() { srv.Close(); wg.Wait() })
}

// Listen opens a TCP listener on Addr:port inside the host, closed when the test ends.
func (h *Host) Listen(t testing.TB, port int) net.Listener {
	t.Helper()
	var ln net.Listener
	err := h.Do(func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(h.Addr, uint16(port)).String())
		return err
	})
	if err != nil {
		t.Fatalf("testnet %s: listen: %v", h.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Hello is a handler that answers "hello from NAME".
func Hello(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "hello from %s", name) })
}

// InNetns runs f on an OS thread inside the network namespace open at fd (see netns.Do): a
// socket f opens stays there.
func InNetns(fd int, f func() error) error { return netns.Do(fd, f) }

// InPid runs f inside the network namespace of process pid.
func InPid(pid int, f func() error) error {
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/net", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns of %d: %w", pid, err)
	}
	defer unix.Close(fd)
	return InNetns(fd, f)
}

// Dial reports whether a TCP connection to addr opens from inside pid's network namespace
// within timeout. A false answer for a blocked destination is the point; the timeout only
// bounds how long the test waits for a packet that a drop rule swallowed.
func Dial(pid int, addr netip.AddrPort, timeout time.Duration) error {
	return InPid(pid, func() error {
		c, err := net.DialTimeout("tcp4", addr.String(), timeout)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// Get fetches http://addr/ from inside pid's network namespace and returns the body.
func Get(ctx context.Context, pid int, addr netip.AddrPort, timeout time.Duration) (string, error) {
	var body string
	err := InPid(pid, func() error {
		// The connection must be made on this thread; a dialer that does so, no keep-alive.
		c, err := net.DialTimeout("tcp4", addr.String(), timeout)
		if err != nil {
			return err
		}
		tr := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) {
			if c == nil {
				return nil, errors.New("one connection only")
			}
			cc := c
			c = nil
			return cc, nil
		}, DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		cl := &http.Client{Transport: tr, Timeout: timeout}
		req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr.String()+"/", nil)
		if err != nil {
			return err
		}
		resp, err := cl.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		body = string(b)
		return err
	})
	return body, err
}

// newNetns returns an fd of a new, empty network namespace, made by a thread that unshares
// and then goes back, so no thread stays behind in it: closing the fd ends the namespace.
func newNetns() (int, error) {
	errc := make(chan error, 1)
	var fd int
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer unix.Close(orig)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		fd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return fd, <-errc
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}
}

// Process starts a child in a network namespace of its own (loopback down, nothing else), a
// stand-in for a sandbox's init, killed and reaped when the test ends. It returns its pid.
func Process(t testing.TB) int {
	t.Helper()
	cmd := exec.Command("sleep", "infinity")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatalf("testnet: start process in a new netns: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}
