package doctor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/cgroup"
)

// probePath is a program that cannot exist: the clone probes start it, and an exec that fails
// with ENOENT proves that the clone itself, with every flag asked, succeeded.
const probePath = "/nonexistent/airlock-doctor-probe"

// Gather reads the host: files below c.Root, and system calls tried on the real host.
func Gather(c Config) Facts {
	c = c.withDefaults()
	f := gatherFiles(c.Root)
	f.EUID, f.PID = os.Geteuid(), os.Getpid()
	mount := filepath.Join(c.Root, "/sys/fs/cgroup")
	if top, ok := mountAt(f.Mounts, "/sys/fs/cgroup"); ok && top.Type == "cgroup2" {
		if parent, ok := cgroup.DelegatedParent(mount, []byte(f.ProcCgroup)); ok {
			f.Delegated = parent
			readControllers(c.Root, &f)
		}
		f.CloneIntoCgroup = probeCloneIntoCgroup(mount, cgroup.OwnGroup([]byte(f.ProcCgroup)))
	}
	f.State = statState(filepath.Join(c.Root, c.StateDir))
	f.CloneNamespaces = probeClone(syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID | syscall.CLONE_NEWNS |
		syscall.CLONE_NEWNET | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS | unix.CLONE_NEWCGROUP)
	f.LandlockABI, f.LandlockErr = llsys.LandlockGetABIVersion()
	// A range above any descriptor: nothing is closed, but the call must exist.
	f.CloseRange = unix.CloseRange(1<<30, 1<<30, unix.CLOSE_RANGE_CLOEXEC)
	if fd, err := unix.PidfdOpen(os.Getpid(), 0); err != nil {
		f.Pidfd = err
	} else {
		unix.Close(fd)
	}
	f.NFTables = probeNFTables()
	f.ForwardDrops, f.ForwardErr = forwardDrops()
	return f
}

// probeClone starts probePath in new namespaces of kinds flags.
func probeClone(flags uintptr) error {
	return probeStart(&syscall.SysProcAttr{Cloneflags: flags})
}

// probeCloneIntoCgroup starts probePath with clone3 straight into our own group (own, below
// mount), which we may always start children in.
func probeCloneIntoCgroup(mount, own string) error {
	if own == "" {
		return errors.New("no cgroup v2 line in /proc/self/cgroup")
	}
	fd, err := unix.Open(filepath.Join(mount, own), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open own cgroup: %w", err)
	}
	defer unix.Close(fd)
	return probeStart(&syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd})
}

// probeStart forks with sys and execs probePath: ENOENT from the exec means the fork worked
// (the child then exited at once, and ForkExec has reaped it).
func probeStart(sys *syscall.SysProcAttr) error {
	pid, err := syscall.ForkExec(probePath, []string{probePath}, &syscall.ProcAttr{Sys: sys})
	if err == nil {
		// Cannot happen (the path does not exist), but never leave a child behind.
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, 0, nil)
		return nil
	}
	if errors.Is(err, syscall.ENOENT) {
		return nil
	}
	return err
}

// statState measures the file system of dir, or of its nearest existing parent.
func statState(dir string) StateFS {
	p := filepath.Clean(dir)
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			bs := uint64(st.Bsize)
			return StateFS{Path: p, Type: fsName(st.Type), Free: st.Bavail * bs, Total: st.Blocks * bs,
				FreeInodes: st.Ffree, TotalInodes: st.Files}
		}
		if !errors.Is(err, unix.ENOENT) || p == "/" || p == "." {
			return StateFS{Path: p, Err: fmt.Errorf("statfs %s: %w", p, err)}
		}
		p = filepath.Dir(p)
	}
}

// fsName names a statfs magic number.
func fsName(magic int64) string {
	switch magic {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4" // ext2 and ext3 share the magic, and ext4 mounts them
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlay"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	case unix.V9FS_MAGIC:
		return "9p"
	case unix.FUSE_SUPER_MAGIC:
		return "fuse"
	case unix.F2FS_SUPER_MAGIC:
		return "f2fs"
	case unix.SQUASHFS_MAGIC:
		return "squashfs"
	case unix.EROFS_SUPER_MAGIC_V1:
		return "erofs"
	case unix.MSDOS_SUPER_MAGIC:
		return "vfat"
	case 0x2fc12fc1:
		return "zfs"
	}
	return fmt.Sprintf("0x%x", magic)
}

// probeNFTables builds, in a network namespace of its own that vanishes with the probe, what the
// daemon's table needs: an inet table, a filter chain on forward and a NAT chain on postrouting
// with a masquerade rule. The host's own rules are never touched.
func probeNFTables() error {
	ns, err := newNetns()
	if err != nil {
		return fmt.Errorf("make a network namespace for the probe: %w", err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	t := c.AddTable(&nftables.Table{Name: "airlock_doctor", Family: nftables.TableFamilyINet})
	accept := nftables.ChainPolicyAccept
	c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	nat := c.AddChain(&nftables.Chain{Name: "nat", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: []expr.Any{&expr.Masq{}}})
	return c.Flush()
}

// newNetns returns a new network namespace, leaving the calling thread in its own.
func newNetns() (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return 0, err
	}
	defer orig.Close()
	ns, err := netns.New() // unshares this thread into it
	if err != nil {
		runtime.UnlockOSThread()
		return 0, err
	}
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and dies with this goroutine rather than serve others in the
		// wrong namespace.
		ns.Close()
		return 0, fmt.Errorf("return to the original network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return ns, nil
}

// forwardDrops lists the host's base chains on the forward hook whose policy is drop (in the
// ip and inet families, which carry the sandboxes' IPv4 traffic).
func forwardDrops() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	chains, err := c.ListChains()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ch := range chains {
		if ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookForward || ch.Policy == nil || *ch.Policy != nftables.ChainPolicyDrop {
			continue
		}
		var fam string
		switch ch.Table.Family {
		case nftables.TableFamilyIPv4:
			fam = "ip"
		case nftables.TableFamilyINet:
			fam = "inet"
		default:
			continue
		}
		out = append(out, fam+" "+ch.Table.Name+" "+ch.Name)
	}
	return out, nil
}
