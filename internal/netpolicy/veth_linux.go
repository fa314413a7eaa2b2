package netpolicy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	airnetns "github.com/airlockhq/airlock/internal/netns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// sandboxIf is the sandbox's end of its veth.
const sandboxIf = "eth0"

// alias is what a host-side veth carries in IFLA_IFALIAS: the table and the sandbox id, so
// that Sweep knows whose it is without any other record, and never takes another daemon's.
func (m *Manager) alias(id string) string { return "airlock/" + m.cfg.Table + "/" + id }

// setUpVeth makes (or, adopting, keeps) the sandbox's veth pair: created in one netlink call
// with its peer placed straight in the sandbox's namespace, so that a crash half way leaves
// nothing in the host namespace that does not die with the sandbox's. IPv6 is off on both
// ends: sandboxes have no IPv6 (the table also drops any IPv6 from our veths).
func (m *Manager) setUpVeth(a *Attachment, adopt bool) error {
	ns, err := netns.GetFromPid(a.sb.Pid)
	if err != nil {
		return fmt.Errorf("open netns of pid %d: %w", a.sb.Pid, err)
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in netns of pid %d: %w", a.sb.Pid, err)
	}
	defer nh.Close()

	host, err := netlink.LinkByName(a.link)
	if err == nil {
		_, peerErr := nh.LinkByName(sandboxIf)
		if !adopt || host.Attrs().Alias != m.alias(a.sb.ID) || peerErr != nil {
			// Not this sandbox's live veth: the slot is this sandbox's claim now, so whatever
			// holds the name is a leftover (or half of a pair whose peer is gone).
			if err := netlink.LinkDel(host); err != nil {
				return fmt.Errorf("delete stale %s: %w", a.link, err)
			}
			host = nil
		}
	} else {
		host = nil
	}
	if host == nil {
		// The peer inherits the namespace's default, so it never gets an IPv6 address.
		if err := airnetns.Do(int(ns), func() error { return disableIPv6("default") }); err != nil {
			return err
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a.link},
			PeerName: sandboxIf, PeerNamespace: netlink.NsFd(int(ns))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s: %w", a.link, err)
		}
		if host, err = netlink.LinkByName(a.link); err != nil {
			return fmt.Errorf("veth %s: %w", a.link, err)
		}
		// The kernel ignores IFLA_IFALIAS on creation, so a crash right here leaves a veth
		// without an alias: ourLinks counts those of our prefix as ours, to be swept.
		if err := netlink.LinkSetAlias(host, m.alias(a.sb.ID)); err != nil {
			return fmt.Errorf("alias %s: %w", a.link, err)
		}
	}
	if err := disableIPv6(a.link); err != nil {
		return err
	}
	if err := netlink.AddrReplace(host, &netlink.Addr{IPNet: ipNet(a.gw, 30)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", a.gw, a.link, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("up %s: %w", a.link, err)
	}

	peer, err := nh.LinkByName(sandboxIf)
	if err != nil {
		return fmt.Errorf("sandbox %s: %w", sandboxIf, err)
	}
	if err := airnetns.Do(int(ns), func() error { return disableIPv6(sandboxIf) }); err != nil {
		return err
	}
	if err := nh.AddrReplace(peer, &netlink.Addr{IPNet: ipNet(a.addr, 30)}); err != nil {
		return fmt.Errorf("address %s in sandbox: %w", a.addr, err)
	}
	if err := nh.LinkSetUp(peer); err != nil {
		return fmt.Errorf("up sandbox %s: %w", sandboxIf, err)
	}
	route := &netlink.Route{LinkIndex: peer.Attrs().Index, Gw: a.gw.AsSlice(), Dst: ipNet(netip.IPv4Unspecified(), 0)}
	if err := nh.RouteReplace(route); err != nil {
		return fmt.Errorf("default route in sandbox: %w", err)
	}
	if m.cfg.EgressBytesPerSec > 0 {
		if err := shape(nh, peer, m.cfg.EgressBytesPerSec); err != nil {
			return err
		}
	}
	return nil
}

// shape puts a token bucket on the sandbox side of the veth, which is where the sandbox's
// egress queues: rate bytes/s, a burst of a tenth of a second (at least 64 KiB, so TSO
// segments pass), and at most half a second of backlog before tail drop.
func shape(nh *netlink.Handle, peer netlink.Link, rate int64) error {
	burst := max(uint32(min(rate/10, 1<<30)), 64<<10)
	tbf := &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: peer.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		Rate:       uint64(rate),
		Buffer:     burst,
		Limit:      max(uint32(min(rate/2, 1<<30)), burst),
	}
	if err := nh.QdiscReplace(tbf); err != nil {
		return fmt.Errorf("tbf qdisc in sandbox: %w", err)
	}
	return nil
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}
}

// disableIPv6 turns IPv6 off on an interface (or "default", for interfaces made later) in
// the namespace of the calling thread. A kernel without IPv6 has nothing to turn off.
func disableIPv6(ifname string) error {
	err := os.WriteFile("/proc/sys/net/ipv6/conf/"+ifname+"/disable_ipv6", []byte("1"), 0o644)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("disable IPv6 on %s: %w", ifname, err)
	}
	return nil
}

type ourLink struct{ name, id string }

// ourLinks lists the host-side veths of this Manager's table: named with its prefix, and
// with its alias or none (one that a crash caught between creation and alias; id "").
func (m *Manager) ourLinks() []ourLink {
	links, err := netlink.LinkList()
	if err != nil {
		return nil
	}
	var out []ourLink
	for _, l := range links {
		at := l.Attrs()
		if !strings.HasPrefix(at.Name, m.prefix) {
			continue
		}
		if id, ok := strings.CutPrefix(at.Alias, m.alias("")); ok || at.Alias == "" {
			out = append(out, ourLink{at.Name, id})
		}
	}
	return out
}

// deleteOwnLink deletes a host veth if it is there and belongs to sandbox id (or to nobody
// yet: the slot is the sandbox's claim).
func (m *Manager) deleteOwnLink(name, id string) error {
	l, err := netlink.LinkByName(name)
	if err != nil || l.Attrs().Alias != m.alias(id) && l.Attrs().Alias != "" {
		return nil
	}
	return deleteLink(name)
}

func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}
