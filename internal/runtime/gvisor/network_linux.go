package gvisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/netpolicy"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

// A networked gvisor sandbox runs in a network namespace the daemon makes before runsc starts
// and gives runsc by path (the spec's linux.namespaces), with runsc's --network=sandbox: the
// sentry's netstack takes the namespace's interface, addresses and routes as it finds them at
// start — so netpolicy attaches the sandbox (nftables first, then the veth, and its DNS
// forwarder on the gateway) before runsc runs, exactly as for a native sandbox, and nothing of
// the sandbox's runs before its firewall does. The namespace lives as long as the sandbox's
// processes do: the daemon's descriptor is closed once runsc has joined it.

// resolvFile is the sandbox's resolv.conf in its directory, bound over /etc/resolv.conf.
const resolvFile = "resolv.conf"

// Networks reports whether the runtime can give sandboxes a network (it was configured with
// one and the host's nftables answers).
func Networks(r *Runtime) error {
	if r.cfg.Network == nil {
		return native.ErrNetworkUnsupported
	}
	if _, err := netpolicy.TableExists(native.NetTable(r.cfg.CgroupRoot)); err != nil {
		return err
	}
	return nil
}

// netManager returns the runtime's network manager, made on first use so that a daemon that
// never networks a gvisor sandbox changes nothing on the host.
func (r *Runtime) netManager() (*netpolicy.Manager, error) {
	return r.net.Manager(r.cfg.Network, native.NetTable(r.cfg.CgroupRoot), r.cfg.Logger)
}

// network (a Create step, before the bundle) claims the sandbox's slot, makes its network
// namespace, attaches it, and writes its resolv.conf.
func (c *creation) network(ctx context.Context) error {
	if !c.spec.Network.Enabled() {
		return nil
	}
	m, err := c.r.netManager()
	if err != nil {
		return err
	}
	slot, err := c.r.slots.Claim(c.spec.ID)
	if err != nil {
		return err
	}
	c.slot = slot
	c.undo = append(c.undo, func() { c.r.slots.Free(slot) })
	var att *netpolicy.Attachment
	ns, err := newNetns(func(tid int) error {
		att, err = m.Attach(ctx, netpolicy.Sandbox{ID: c.spec.ID, Slot: slot, Pid: tid}, c.spec.Network)
		return err
	})
	if err != nil {
		return err
	}
	c.netns = ns
	c.undo = append(c.undo, func() {
		if c.netns != nil {
			c.netns.Close()
		}
	})
	c.att = att
	c.undo = append(c.undo, func() { att.Close() })
	return os.WriteFile(filepath.Join(c.dir, resolvFile), native.ResolvConf(att.Gateway()), 0o644)
}

// newNetns makes a network namespace and returns it open (which keeps it alive), once attach
// has run with the id of a thread in it (netpolicy reaches a namespace as /proc/<id>/ns/net).
// attach runs on another thread: whatever sockets it opens (nftables, netlink) stay the host's.
func newNetns(attach func(tid int) error) (*os.File, error) {
	type entered struct {
		tid int
		ns  *os.File
		err error
	}
	in := make(chan entered, 1)
	release, back := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(back)
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			in <- entered{err: fmt.Errorf("open own netns: %w", err)}
			return
		}
		defer unix.Close(orig)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			in <- entered{err: fmt.Errorf("new netns: %w", err)}
			return
		}
		ns, err := os.OpenFile("/proc/thread-self/ns/net", os.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			err = fmt.Errorf("open the new netns: %w", err)
		} else if err = loUp(); err != nil {
			ns.Close()
			ns = nil
		}
		in <- entered{tid: unix.Gettid(), ns: ns, err: err}
		<-release
		// Back to the host's namespace, or the thread dies with this goroutine (locked).
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
	}()
	e := <-in
	if e.err == nil {
		e.err = attach(e.tid)
	}
	close(release)
	<-back
	if e.err != nil {
		if e.ns != nil {
			e.ns.Close()
		}
		return nil, e.err
	}
	return e.ns, nil
}

// runNetworked runs cmd (a `runsc run` with --network=sandbox) from a thread in a mount
// namespace of its own whose /proc/sys has no net directory. This runsc (20221219) decides that
// it was asked to network the host's own namespace when /proc/sys/net/core/rmem_default exists
// after joining the sandbox's; since Linux 6.x that file exists in every network namespace, so
// runsc would refuse every one. Hiding /proc/sys/net from runsc alone makes the check answer as
// meant (the namespace is never the host's: newNetns made it). /proc/sys is a tmpfs there with
// the host's kernel, vm and fs directories bound in (the sentry reads vm/mmap_min_addr, say).
// The mask is in runsc's mount namespace only; the thread is never unlocked, so it ends with
// its goroutine and no other code runs in it.
func runNetworked(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("mount namespace for runsc: %w", err)
			}
			// A slave: nothing mounted here reaches the host's namespace.
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
				return fmt.Errorf("mount namespace for runsc: %w", err)
			}
			keep := []string{"kernel", "vm", "fs"}
			trees := make([]int, len(keep))
			for i, d := range keep {
				fd, err := unix.OpenTree(unix.AT_FDCWD, "/proc/sys/"+d, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
				if err != nil {
					return fmt.Errorf("clone /proc/sys/%s: %w", d, err)
				}
				defer unix.Close(fd)
				trees[i] = fd
			}
			if err := unix.Mount("tmpfs", "/proc/sys", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=16k,mode=0555"); err != nil {
				return fmt.Errorf("mask /proc/sys for runsc: %w", err)
			}
			for i, d := range keep {
				if err := os.Mkdir("/proc/sys/"+d, 0o555); err != nil {
					return fmt.Errorf("mask /proc/sys for runsc: %w", err)
				}
				if err := unix.MoveMount(trees[i], "", unix.AT_FDCWD, "/proc/sys/"+d, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
					return fmt.Errorf("mask /proc/sys for runsc: %s: %w", d, err)
				}
			}
			return cmd.Run()
		}()
	}()
	return <-errc
}

// loUp brings up the loopback of the calling thread's network namespace: runsc gives the
// sandbox the interfaces it finds up, and a sandbox's loopback works in every mode.
func loUp() error {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("loopback of the new netns: %w", err)
	}
	return nil
}

// netnsPath is how runsc reaches the namespace open at f in this process.
func netnsPath(f *os.File) string {
	return "/proc/" + strconv.Itoa(os.Getpid()) + "/fd/" + strconv.Itoa(int(f.Fd()))
}

// adoptNetwork takes over the network of a sandbox a previous daemon left running: its slot
// claim, its nftables objects and veth (netpolicy's Adopt, which puts the sandbox's address
// back on its end of the veth), and its forwarder.
func (r *Runtime) adoptNetwork(ctx context.Context, sb *Sandbox, slot int, p netpolicy.Policy) error {
	if !p.Enabled() {
		return nil
	}
	m, err := r.netManager()
	if err != nil {
		return err
	}
	r.slots.Keep(slot, sb.id)
	att, err := m.Adopt(ctx, netpolicy.Sandbox{ID: sb.id, Slot: slot, Pid: sb.pid}, p)
	if err != nil {
		return err
	}
	sb.net, sb.slot = att, slot
	// runsc moved the address into the sentry's netstack and off the interface; the host
	// kernel's copy that Adopt restored would answer the sandbox's own traffic (resets).
	return stripAddrs(sb.pid)
}

// stripAddrs removes the IPv4 addresses of the sandbox's end of its veth, in the network
// namespace of process pid, where only gVisor's netstack may own them.
func stripAddrs(pid int) error {
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		return fmt.Errorf("netns of pid %d: %w", pid, err)
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in netns of pid %d: %w", pid, err)
	}
	defer nh.Close()
	l, err := nh.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("sandbox eth0: %w", err)
	}
	addrs, err := nh.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("sandbox eth0 addresses: %w", err)
	}
	var errs []error
	for _, a := range addrs {
		errs = append(errs, nh.AddrDel(l, &a))
	}
	return errors.Join(errs...)
}

// closeNetwork removes the sandbox's network (veth, nftables objects, forwarder) and frees its
// slot; its resolv.conf goes with its directory.
func (s *Sandbox) closeNetwork() error {
	if s.net == nil {
		return nil
	}
	err := s.net.Close()
	s.r.slots.Free(s.slot)
	s.net = nil
	return err
}

// sweepNetworks removes what sandboxes that are gone left of their networks; live ones keep theirs.
func (r *Runtime) sweepNetworks(ctx context.Context, live map[string]bool) error {
	return r.net.Sweep(ctx, r.cfg.Network, native.NetTable(r.cfg.CgroupRoot), r.cfg.Logger, live)
}
