package doctor

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/airlockhq/airlock/internal/cgroup"
)

// Check turns what Gather found into findings. It reads nothing itself, so tests feed it any host.
func Check(f Facts, c Config) Report {
	c = c.withDefaults()
	var r Report
	add := func(check string, s Status, detail, fix string) {
		r.Findings = append(r.Findings, Finding{Check: check, Status: s, Detail: detail, Fix: fix})
	}
	checkRoot(f, add)
	checkKernel(f, add)
	checkNamespaces(f, add)
	checkUserns(f, add)
	checkCgroups(f, add)
	checkSeccomp(f, add)
	checkLandlock(f, add)
	checkSyscalls(f, add)
	checkFilesystems(f, add)
	checkStateDir(f, c, add)
	checkPTY(f, c, add)
	checkNetwork(f, add)
	checkTools(f, add)
	return r
}

type addFunc func(check string, s Status, detail, fix string)

// version is a kernel release's major and minor number.
type version struct{ major, minor int }

func (v version) atLeast(major, minor int) bool {
	return v.major > major || v.major == major && v.minor >= minor
}

// parseRelease reads "6.1.0-27-amd64" as 6.1; ok is false for anything else.
func parseRelease(rel string) (v version, ok bool) {
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return v, false
	}
	minor := parts[1]
	if i := strings.IndexFunc(minor, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minor = minor[:i]
	}
	var err1, err2 error
	v.major, err1 = strconv.Atoi(parts[0])
	v.minor, err2 = strconv.Atoi(minor)
	return v, err1 == nil && err2 == nil
}

func checkRoot(f Facts, add addFunc) {
	if f.EUID != 0 {
		add("root", Fail, fmt.Sprintf("running as uid %d; the daemon creates namespaces, cgroups, mounts and uid ranges, which need root", f.EUID),
			"run airlock serve as root (sudo, or a systemd unit without User=)")
		return
	}
	add("root", OK, "running as root", "")
}

func checkKernel(f Facts, add addFunc) {
	v, ok := parseRelease(f.Release)
	switch {
	case !ok:
		add("kernel", Warn, fmt.Sprintf("cannot read the kernel release (%q)", f.Release), "")
	case !v.atLeast(5, 12):
		add("kernel", Fail, fmt.Sprintf("Linux %s: older than 5.12, which lacks idmapped mounts (mount_setattr) and the cgroup and pidfd interfaces the runtime uses", f.Release),
			"boot a Linux 6.1 or newer kernel (Debian 12: linux-image-amd64)")
	case !v.atLeast(6, 1):
		add("kernel", Warn, fmt.Sprintf("Linux %s works, but memory.peak (5.19), cgroup.kill (5.14) and tmpfs idmaps (6.3) are missing or partial; tested on 6.1+", f.Release),
			"boot Linux 6.1 or newer")
	default:
		add("kernel", OK, "Linux "+f.Release, "")
	}
}

// namespaces are the kinds every sandbox gets, as /proc/self/ns names them.
var namespaces = []string{"user", "pid", "mnt", "net", "ipc", "uts", "cgroup"}

func checkNamespaces(f Facts, add addFunc) {
	var missing []string
	for _, ns := range namespaces {
		if !slices.Contains(f.Namespaces, ns) {
			missing = append(missing, ns)
		}
	}
	if len(missing) > 0 {
		add("namespaces", Fail, "the kernel lacks the "+strings.Join(missing, ", ")+" namespace(s): /proc/self/ns has "+strings.Join(f.Namespaces, " "),
			"use a kernel built with CONFIG_USER_NS, CONFIG_PID_NS, CONFIG_NET_NS, CONFIG_IPC_NS, CONFIG_UTS_NS and CONFIG_CGROUPS (every distribution kernel has them)")
		return
	}
	if err := f.CloneNamespaces; err != nil {
		fix := "see the user-namespace finding; inside a container, run it with --privileged (or give it CAP_SYS_ADMIN and an unconfined seccomp and AppArmor profile)"
		if f.Container == "" {
			fix = "see the user-namespace finding, and check for a seccomp or LSM policy around the daemon (systemd: RestrictNamespaces= must not be set)"
		}
		add("namespaces", Fail, "cannot create a process in new user, pid, mount, net, ipc, uts and cgroup namespaces: "+err.Error(), fix)
		return
	}
	add("namespaces", OK, "user, pid, mnt, net, ipc, uts and cgroup namespaces can be created", "")
}

func checkUserns(f Facts, add addFunc) {
	// The limits are per user. A sandbox's namespaces are created by a thread running as the
	// sandbox's own host uid (native.startOwnedBy), so they are charged to that uid alone: even
	// a small limit serves every sandbox, while 0 refuses the namespace to everyone, root too.
	for _, ns := range []string{"user", "pid", "mnt", "net", "ipc", "uts", "cgroup"} {
		name := "user.max_" + ns + "_namespaces"
		if f.Sysctls[name] == "0" {
			add("userns", Fail, fmt.Sprintf("%s = 0: no %s namespace can be created, by root either", name, ns),
				fmt.Sprintf("sysctl -w %s=15000, and persist it in /etc/sysctl.d/90-airlock.conf", name))
			return
		}
	}
	detail := "user.max_user_namespaces = " + f.Sysctls["user.max_user_namespaces"] +
		" (per user: each sandbox's namespaces are charged to its own host uid)"
	if f.Sysctls["user.max_user_namespaces"] == "" {
		detail = "no user.max_*_namespaces limits"
	}
	add("userns", OK, detail, "")
	// Debian's kernel.unprivileged_userns_clone and Ubuntu's
	// kernel.apparmor_restrict_unprivileged_userns only restrict processes without
	// CAP_SYS_ADMIN: the daemon (root) creates every sandbox's namespaces itself, and code in a
	// sandbox may not create namespaces at all (its seccomp filter refuses them).
	if f.Sysctls["kernel.unprivileged_userns_clone"] == "0" {
		add("userns-debian", Info, "kernel.unprivileged_userns_clone = 0: only unprivileged users are refused user namespaces; the daemon runs as root, so sandboxes are unaffected", "")
	}
	if f.Sysctls["kernel.apparmor_restrict_unprivileged_userns"] == "1" {
		add("userns-apparmor", Info, "kernel.apparmor_restrict_unprivileged_userns = 1 (Ubuntu): it restricts only processes without CAP_SYS_ADMIN; the daemon runs as root, so sandboxes are unaffected, and nothing in a sandbox may create namespaces anyway", "")
	}
	if aa := f.AppArmor; aa != "" && aa != "unconfined" && !strings.HasSuffix(aa, "(unconfined)") {
		add("apparmor", Warn, "the daemon runs confined by AppArmor profile "+aa+": AppArmor 4 (Ubuntu 24.04) refuses user namespaces to a confined profile without a userns rule, root or not",
			"add \"userns,\" (and \"mount,\" \"pivot_root,\") to that profile, or run the daemon unconfined")
	}
}

func checkCgroups(f Facts, add addFunc) {
	top, ok := mountAt(f.Mounts, "/sys/fs/cgroup")
	if !ok {
		add("cgroup", Fail, "nothing is mounted at /sys/fs/cgroup", "mount -t cgroup2 none /sys/fs/cgroup (or boot with systemd, which mounts it)")
		return
	}
	if top.Type == "cgroup2" {
		checkCgroupV2(f, add)
		return
	}
	// v1: one hierarchy per controller (or co-mounted ones), under a tmpfs.
	have := map[string]bool{}
	for _, m := range f.Mounts {
		if m.Type != "cgroup" || path.Dir(m.Target) != "/sys/fs/cgroup" {
			continue
		}
		for _, o := range strings.Split(m.Options, ",") {
			have[o] = true
		}
	}
	mode := "v1"
	if u, ok := mountAt(f.Mounts, "/sys/fs/cgroup/unified"); ok && u.Type == "cgroup2" {
		mode = "hybrid (v1 controllers, a controller-less cgroup2 at /sys/fs/cgroup/unified)"
	}
	var missing []string
	for _, c := range []string{"memory", "cpu", "cpuacct", "pids", "freezer"} {
		if !have[c] {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		add("cgroup", Fail, "cgroup "+mode+": the "+strings.Join(missing, ", ")+" hierarchy(ies) are not mounted; sandboxes need memory, cpu, cpuacct, pids and freezer",
			"mount them (mount -t cgroup -o "+missing[0]+" cgroup /sys/fs/cgroup/"+missing[0]+"), or boot with systemd.unified_cgroup_hierarchy=1 for cgroup v2")
		return
	}
	add("cgroup", OK, "cgroup "+mode+": memory, cpu, cpuacct, pids and freezer hierarchies mounted", "")
	if f.Container != "" {
		add("cgroup-container", Info, "running in a container ("+f.Container+"): the sandboxes' cgroups are made below the container's own, within its limits", "")
	}
}

func checkCgroupV2(f Facts, add addFunc) {
	own := cgroup.OwnGroup([]byte(f.ProcCgroup))
	parent := "/sys/fs/cgroup"
	if f.Delegated != "" {
		parent = path.Join(parent, f.Delegated)
	}
	have := strings.Fields(f.CgroupControllers)
	var missing []string
	for _, c := range []string{"memory", "cpu", "pids"} {
		if !slices.Contains(have, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		// The mount root offers every controller the kernel has that no v1 hierarchy holds.
		fix := "free them from cgroup v1: boot with systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all (or unmount their v1 hierarchies)"
		if f.Delegated != "" {
			fix = "systemd: Delegate=yes delegates only the controllers its slice has; add them (e.g. DefaultCPUAccounting=yes, DefaultMemoryAccounting=yes, DefaultTasksAccounting=yes in system.conf) or set Delegate=memory cpu pids"
		} else if f.Container != "" {
			fix = "start the container with the memory, cpu and pids controllers delegated (docker run --cgroupns=private with cgroup v2, or --privileged)"
		}
		add("cgroup", Fail, fmt.Sprintf("cgroup v2: %s offers controllers %q, without %s, so sandboxes cannot be limited", parent, have, strings.Join(missing, ", ")), fix)
		return
	}
	add("cgroup", OK, fmt.Sprintf("cgroup v2: memory, cpu and pids available in %s", parent), "")
	switch {
	case f.Delegated != "" && slices.ContainsFunc(f.DelegatedProcs, func(p int) bool { return p != f.PID }):
		add("cgroup-delegation", Warn, fmt.Sprintf("systemd delegated /%s to us (Delegate=yes), but other processes sit in it (%v): the daemon moves only itself to /%s/%s, and a group holding processes cannot give controllers to the sandboxes' root (no internal processes)",
			f.Delegated, f.DelegatedProcs, f.Delegated, cgroup.DaemonLeaf),
			"start airlock serve itself as the unit's ExecStart= (no wrapper shell, no other processes in the unit)")
	case f.Delegated != "":
		// Everything in the unit's group, sandboxes included, is the unit's: systemd's default
		// KillMode=control-group would kill the sandboxes on every stop or restart.
		add("cgroup-delegation", OK, fmt.Sprintf("systemd delegated %s to us (Delegate=yes): the daemon moves itself to %s/%s and makes the sandboxes' root inside the unit, %s/<root>; set KillMode=process in the unit, or a restart kills the sandboxes with it",
			"/"+f.Delegated, "/"+f.Delegated, cgroup.DaemonLeaf, "/"+f.Delegated), "")
	case own == "/" && f.Container != "":
		add("cgroup-delegation", Warn, "in a container ("+f.Container+") at the root of its cgroup namespace: the container's processes there keep its root group from delegating controllers (no internal processes)",
			"run the daemon as the container's only process tree in a child group (e.g. mkdir /sys/fs/cgroup/init && echo $$ > /sys/fs/cgroup/init/cgroup.procs in the entrypoint), or run it on the host")
	case own != "/" && own != "":
		add("cgroup-delegation", Info, fmt.Sprintf("the daemon runs in %s, not delegated to it: the sandboxes' root goes at the top, /sys/fs/cgroup/<root>, outside the unit", own),
			"under systemd, set Delegate=yes in the unit so that its sandboxes stay inside it")
	}
	if !slices.Contains(strings.Fields(f.CgroupSubtree), "memory") && f.Delegated == "" && own == "/" {
		add("cgroup-delegation", Info, "the root's subtree_control does not enable memory yet; serve enables memory, cpu and pids at start", "")
	}
}

func checkSeccomp(f Facts, add addFunc) {
	acts, ok := f.Sysctls["kernel.seccomp.actions_avail"]
	if !ok {
		add("seccomp", Fail, "no seccomp filter mode (kernel.seccomp.actions_avail is missing)", "use a kernel built with CONFIG_SECCOMP_FILTER (every distribution kernel has it)")
		return
	}
	have := strings.Fields(acts)
	var missing []string
	for _, a := range []string{"allow", "errno", "kill_process"} {
		if !slices.Contains(have, a) {
			missing = append(missing, a)
		}
	}
	if len(missing) > 0 {
		add("seccomp", Fail, "seccomp lacks the "+strings.Join(missing, ", ")+" action(s): it offers "+acts, "boot a Linux 4.14 or newer kernel")
		return
	}
	add("seccomp", OK, "seccomp filters with actions "+acts, "")
}

func checkLandlock(f Facts, add addFunc) {
	if f.LandlockABI > 0 {
		add("landlock", OK, fmt.Sprintf("Landlock ABI %d (sandboxes get file-system rules on top of their mounts)", f.LandlockABI), "")
		return
	}
	detail := "Landlock is off: sandboxes keep their mount and seccomp confinement, without its extra file-system rules"
	if f.LandlockErr != nil {
		detail += " (" + f.LandlockErr.Error() + ")"
	}
	add("landlock", Warn, detail, "boot with landlock in the lsm= list (e.g. lsm=landlock,lockdown,yama,apparmor,bpf) on Linux 5.13+")
}

func checkSyscalls(f Facts, add addFunc) {
	if f.CloseRange != nil {
		add("close_range", Fail, "close_range(2) is missing: "+f.CloseRange.Error()+"; a sandbox's init closes every inherited descriptor with it", "boot Linux 5.11 or newer")
	} else {
		add("close_range", OK, "close_range(2) with CLOSE_RANGE_CLOEXEC", "")
	}
	if f.Pidfd != nil {
		add("pidfd", Warn, "pidfd_open(2) fails: "+f.Pidfd.Error()+"; killing a sandbox's processes falls back to kill(2), which a recycled pid can misdirect", "boot Linux 5.3 or newer")
	} else {
		add("pidfd", OK, "pidfd_open(2) and pidfd_send_signal(2)", "")
	}
	if top, ok := mountAt(f.Mounts, "/sys/fs/cgroup"); ok && top.Type == "cgroup2" {
		if f.CloneIntoCgroup != nil {
			add("clone-into-cgroup", Fail, "clone3(CLONE_INTO_CGROUP) fails: "+f.CloneIntoCgroup.Error()+"; on cgroup v2 each sandbox starts inside its group with it", "boot Linux 5.7 or newer")
		} else {
			add("clone-into-cgroup", OK, "clone3(CLONE_INTO_CGROUP): a sandbox starts inside its cgroup", "")
		}
	}
}

// idmapFS are the file systems that support idmapped mounts, with the release that added it.
var idmapFS = map[string]version{
	"ext4": {5, 12}, "xfs": {5, 12}, "vfat": {5, 12}, "btrfs": {5, 15}, "f2fs": {5, 18},
	"erofs": {6, 6}, "overlay": {5, 19}, "squashfs": {6, 13}, "tmpfs": {6, 3}, "fuse": {6, 12},
}

func checkFilesystems(f Facts, add addFunc) {
	if slices.Contains(f.Filesystems, "overlay") {
		add("overlayfs", OK, "overlay file system", "")
	} else {
		add("overlayfs", Warn, "overlay is not in /proc/filesystems: image sandboxes (an overlay of the image's layers) cannot start unless the module loads on first use",
			"modprobe overlay, and add overlay to /etc/modules-load.d/airlock.conf")
	}
	var missing []string
	if !f.Exists["/dev/loop-control"] {
		missing = append(missing, "/dev/loop-control (modprobe loop)")
	}
	if !slices.Contains(f.Filesystems, "ext4") {
		missing = append(missing, "ext4 (modprobe ext4)")
	}
	if f.Tools["mkfs.ext4"] == "" {
		missing = append(missing, "mkfs.ext4 (apt-get install e2fsprogs)")
	}
	if len(missing) > 0 {
		add("loop-ext4", Warn, "an image sandbox's writable layer is a loop-mounted ext4 file; missing: "+strings.Join(missing, ", "),
			"provide "+strings.Join(missing, ", "))
	} else {
		add("loop-ext4", OK, "loop devices, ext4 and mkfs.ext4 for image sandboxes' writable layers", "")
	}
}

func checkStateDir(f Facts, c Config, add addFunc) {
	st := f.State
	if st.Err != nil {
		add("state-dir", Warn, "cannot measure the state directory "+c.StateDir+": "+st.Err.Error(), "")
		return
	}
	where := c.StateDir
	if st.Path != "" && st.Path != c.StateDir {
		where = fmt.Sprintf("%s (not there yet; measured at %s)", c.StateDir, st.Path)
	}
	v, vok := parseRelease(f.Release)
	switch since, known := idmapFS[st.Type]; {
	case known && vok && !v.atLeast(since.major, since.minor):
		add("idmap", Warn, fmt.Sprintf("the state directory is on %s, which Linux %s cannot idmap (it can from %d.%d): image sandboxes cannot start",
			st.Type, f.Release, since.major, since.minor), "put --state-dir on ext4, xfs or btrfs, or boot a newer kernel")
	case known:
		add("idmap", OK, fmt.Sprintf("the state directory's file system (%s) supports idmapped mounts, which image sandboxes need", st.Type), "")
	default:
		add("idmap", Warn, fmt.Sprintf("the state directory is on %q, which may not support idmapped mounts (nfs, 9p and older zfs do not): image sandboxes may fail to start", st.Type),
			"put --state-dir on ext4, xfs or btrfs")
	}
	const gib = 1 << 30
	free := fmt.Sprintf("%.1f GiB free of %.1f GiB", float64(st.Free)/gib, float64(st.Total)/gib)
	if st.TotalInodes > 0 {
		free += fmt.Sprintf(", %d of %d inodes free", st.FreeInodes, st.TotalInodes)
	}
	switch {
	case st.Free < gib:
		add("state-dir", Warn, where+" on "+st.Type+": "+free+"; each sandbox's writable layer and the image store take their room from it",
			"free space there, or give --state-dir a larger file system")
	case st.TotalInodes > 0 && st.FreeInodes < 100_000:
		add("state-dir", Warn, where+" on "+st.Type+": "+free+"; few inodes left", "free inodes there, or give --state-dir another file system")
	default:
		add("state-dir", OK, where+" on "+st.Type+": "+free, "")
	}
}

func checkPTY(f Facts, c Config, add addFunc) {
	pts, ok := mountAt(f.Mounts, "/dev/pts")
	if !ok || pts.Type != "devpts" || !f.Exists["/dev/ptmx"] {
		add("pty", Warn, "no devpts at /dev/pts (or no /dev/ptmx): sandboxes' terminals (WebSocket PTYs, interactive REPLs) cannot open",
			"mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts")
		return
	}
	maxPTY, err1 := strconv.Atoi(f.Sysctls["kernel.pty.max"])
	reserve, _ := strconv.Atoi(f.Sysctls["kernel.pty.reserve"])
	if err1 != nil {
		add("pty", OK, "devpts at /dev/pts", "")
		return
	}
	pool, need := maxPTY-reserve, c.Sandboxes*c.PTYsPerSandbox
	if pool < need {
		add("pty", Warn, fmt.Sprintf("kernel.pty.max − kernel.pty.reserve = %d PTYs, fewer than %d sandboxes × %d terminals", pool, c.Sandboxes, c.PTYsPerSandbox),
			fmt.Sprintf("sysctl -w kernel.pty.max=%d (persist it in /etc/sysctl.d/90-airlock.conf), or lower --max-sandboxes", need+reserve))
		return
	}
	add("pty", OK, fmt.Sprintf("PTY pool %d (kernel.pty.max %d − reserve %d; %s in use) for %d sandboxes × %d", pool, maxPTY, reserve, f.Sysctls["kernel.pty.nr"], c.Sandboxes, c.PTYsPerSandbox), "")
}

func checkNetwork(f Facts, add addFunc) {
	if f.NFTables != nil {
		add("nftables", Warn, "cannot build an nftables table with filter and NAT chains (tried in a throwaway network namespace): "+f.NFTables.Error()+"; sandboxes get network mode block only",
			"use a kernel with nf_tables, nft_nat, nft_masq and nf_conntrack (modprobe nf_tables nft_chain_nat nft_masq)")
	} else {
		add("nftables", OK, "nftables with NAT and masquerade (networked policies: internet, allowlist)", "")
	}
	if _, ok := f.Sysctls["net.netfilter.nf_conntrack_max"]; ok {
		add("conntrack", OK, "connection tracking (nf_conntrack_max "+f.Sysctls["net.netfilter.nf_conntrack_max"]+")", "")
	} else if f.NFTables == nil {
		add("conntrack", Info, "nf_conntrack is not loaded yet; the first networked sandbox loads it with its NAT rules", "")
	} else {
		add("conntrack", Warn, "no connection tracking: sandboxes' replies cannot come back through NAT", "modprobe nf_conntrack")
	}
	for _, d := range f.ForwardDrops {
		add("forward-policy", Warn, "base chain "+d+" drops forwarded packets by default (Docker sets its FORWARD policy to drop): every base chain on the forward hook must accept, so it drops the sandboxes' NATed traffic",
			"accept the sandboxes' interfaces first in that chain: iptables -I DOCKER-USER -i 'al+' -j ACCEPT && iptables -I DOCKER-USER -o 'al+' -j ACCEPT (or nft insert rule "+d+" iifname \"al*\" accept, and the same with oifname)")
	}
	if f.ForwardErr != nil && f.NFTables == nil {
		add("forward-policy", Info, "cannot list the host's nftables chains: "+f.ForwardErr.Error(), "")
	}
	if f.Sysctls["net.ipv4.ip_forward"] == "1" {
		add("ip_forward", OK, "net.ipv4.ip_forward = 1", "")
	} else {
		add("ip_forward", Info, "net.ipv4.ip_forward = "+f.Sysctls["net.ipv4.ip_forward"]+": serve turns it on (host-wide) when it sets up sandbox networking", "")
	}
}

func checkTools(f Facts, add addFunc) {
	if p := f.Tools["runsc"]; p != "" {
		add("runsc", Info, "gVisor's runsc at "+p+" (for the gVisor runtime, not yet offered)", "")
	} else {
		add("runsc", Info, "no runsc (gVisor): only the native runtime is offered, which is all there is for now", "")
	}
	if !f.Exists["/usr/bin/python3"] {
		add("python", Warn, "no /usr/bin/python3: the default image binds the host's /usr, so python runs, sessions and REPLs fail",
			"apt-get install -y python3")
		return
	}
	var missing []string
	for _, m := range seedStack {
		if !f.Exists[path.Join(distPackages, m)] {
			missing = append(missing, "python3-"+m)
		}
	}
	if len(missing) > 0 {
		add("python", Warn, "python3 is there, but the default image's seed stack lacks "+strings.Join(missing, ", ")+": code importing them fails in sandboxes",
			"apt-get install -y "+strings.Join(missing, " "))
		return
	}
	add("python", OK, "/usr/bin/python3 with the seed stack ("+strings.Join(seedStack, ", ")+")", "")
}

// errNotProbed is the error of a probe Gather did not run (off Linux, or not applicable).
var errNotProbed = errors.New("not probed on this platform")
