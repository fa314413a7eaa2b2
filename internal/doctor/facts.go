package doctor

import (
	"bufio"
	"bytes"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// Facts is what Gather found on a host: the input of Check. A probe's error is nil when the
// system call worked; a nil map or empty string means the file was not there.
type Facts struct {
	EUID    int
	Release string // kernel.osrelease, e.g. "6.1.0-27-amd64"
	// Sysctls holds the knobs the checks read, by sysctl name ("user.max_user_namespaces");
	// a knob the kernel lacks is absent.
	Sysctls map[string]string
	// Namespaces are the entries of /proc/self/ns (user, pid, mnt, net, ipc, uts, cgroup …).
	Namespaces  []string
	Filesystems []string // the names in /proc/filesystems
	Mounts      []Mount  // /proc/self/mounts
	// ProcCgroup is /proc/self/cgroup; CgroupControllers and CgroupSubtree are, on v2,
	// cgroup.controllers and cgroup.subtree_control of the group the sandboxes' root would be
	// made in (the mount root, or the delegated subtree).
	ProcCgroup                       string
	CgroupControllers, CgroupSubtree string
	// Delegated is the subtree systemd delegated to us (Delegate=yes), relative to the cgroup2
	// mount; "" when there is none. DelegatedProcs are the pids in its own cgroup.procs.
	Delegated      string
	DelegatedProcs []int
	// PID is this process's pid (the daemon's, when serve runs the checks).
	PID int
	// Container names the container manager we run in ("docker", "podman", or the value of
	// PID 1's container= variable); "" on a plain host.
	Container string
	// AppArmor is this process's AppArmor confinement ("unconfined", or a profile name with its
	// mode); "" without AppArmor.
	AppArmor string
	// Exists records which of the paths the checks look for exist below Root.
	Exists map[string]bool
	// Tools maps a program the daemon or its images run to its path, "" if not found.
	Tools map[string]string
	// State is the state directory's file system.
	State StateFS

	// Probes of the real host (system calls tried for real).
	CloneNamespaces error // clone with CLONE_NEWUSER|NEWPID|NEWNS|NEWNET|NEWIPC|NEWUTS|NEWCGROUP
	LandlockABI     int   // 0: no Landlock
	LandlockErr     error
	CloseRange      error
	Pidfd           error
	CloneIntoCgroup error // clone3 CLONE_INTO_CGROUP; only probed on v2
	NFTables        error // an inet table with filter and NAT chains in a throwaway netns
	// ForwardDrops lists the base chains hooked on forward whose policy is drop, outside our
	// tables (Docker's "ip filter FORWARD", say): "family table chain".
	ForwardDrops []string
	ForwardErr   error
}

// Mount is one line of /proc/self/mounts.
type Mount struct {
	Source, Target, Type, Options string
}

// StateFS describes the file system of the state directory (or of its nearest existing parent).
type StateFS struct {
	Path                    string // the directory measured
	Type                    string // "ext4", "tmpfs" …, "" if unknown
	Free, Total             uint64 // bytes available to root and in all
	FreeInodes, TotalInodes uint64 // 0 total: the file system has no inode limit (btrfs)
	Err                     error
}

// sysctlNames are the knobs Gather reads.
var sysctlNames = []string{
	"user.max_user_namespaces", "user.max_pid_namespaces", "user.max_mnt_namespaces",
	"user.max_net_namespaces", "user.max_ipc_namespaces", "user.max_uts_namespaces",
	"user.max_cgroup_namespaces",
	"kernel.unprivileged_userns_clone",             // Debian's patch
	"kernel.apparmor_restrict_unprivileged_userns", // Ubuntu 23.10+
	"kernel.pty.max", "kernel.pty.reserve", "kernel.pty.nr",
	"kernel.seccomp.actions_avail",
	"net.ipv4.ip_forward",
	"net.netfilter.nf_conntrack_max",
	"kernel.osrelease",
}

// seedStack are the Python packages of the default image's seed stack, found in the host's
// /usr (which the default image binds) as Debian installs them.
var seedStack = []string{"numpy", "pandas", "matplotlib", "scipy", "sympy", "requests"}

// distPackages is where Debian's python3-* packages put their modules.
const distPackages = "/usr/lib/python3/dist-packages"

// existPaths are the paths whose existence the checks test.
func existPaths() []string {
	p := []string{"/dev/loop-control", "/dev/ptmx", "/dev/pts/ptmx", "/.dockerenv", "/run/.containerenv",
		"/usr/bin/python3", "/usr/bin/bash", "/bin/sh", "/sys/kernel/security/apparmor"}
	for _, m := range seedStack {
		p = append(p, path.Join(distPackages, m))
	}
	return p
}

// tools are the programs looked up (in the host's PATH directories below Root).
var tools = []string{"mkfs.ext4", "runsc", "python3", "nft"}

// gatherFiles fills the file-based facts from below root.
func gatherFiles(root string) Facts {
	f := Facts{Sysctls: map[string]string{}, Exists: map[string]bool{}, Tools: map[string]string{}}
	read := func(p string) (string, bool) {
		b, err := os.ReadFile(filepath.Join(root, p))
		return string(b), err == nil
	}
	for _, name := range sysctlNames {
		if v, ok := read("/proc/sys/" + strings.ReplaceAll(name, ".", "/")); ok {
			f.Sysctls[name] = strings.TrimSpace(v)
		}
	}
	f.Release = f.Sysctls["kernel.osrelease"]
	if ents, err := os.ReadDir(filepath.Join(root, "/proc/self/ns")); err == nil {
		for _, e := range ents {
			f.Namespaces = append(f.Namespaces, e.Name())
		}
	}
	if v, ok := read("/proc/filesystems"); ok {
		for line := range strings.Lines(v) {
			if fs := strings.Fields(line); len(fs) > 0 {
				f.Filesystems = append(f.Filesystems, fs[len(fs)-1])
			}
		}
	}
	if v, ok := read("/proc/self/mounts"); ok {
		f.Mounts = parseMounts(v)
	}
	f.ProcCgroup, _ = read("/proc/self/cgroup")
	readControllers(root, &f)
	for _, p := range existPaths() {
		_, err := os.Stat(filepath.Join(root, p))
		f.Exists[p] = err == nil
	}
	f.Container = container(root, f.Exists)
	if v, ok := read("/proc/self/attr/apparmor/current"); ok {
		f.AppArmor = strings.TrimSpace(strings.TrimRight(v, "\x00\n"))
	} else if v, ok := read("/proc/self/attr/current"); ok && f.Exists["/sys/kernel/security/apparmor"] {
		f.AppArmor = strings.TrimSpace(strings.TrimRight(v, "\x00\n"))
	}
	for _, t := range tools {
		f.Tools[t] = lookPath(root, t)
	}
	return f
}

// lookPath finds program in the usual directories below root. The daemon's own PATH is not
// used: a pyenv shim in it is not what sandboxes, which bind the host's /usr, would run.
func lookPath(root, program string) string {
	for _, dir := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		p := path.Join(dir, program)
		if fi, err := os.Stat(filepath.Join(root, p)); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// container names the container manager this process runs under, or "".
func container(root string, exists map[string]bool) string {
	if env, err := os.ReadFile(filepath.Join(root, "/proc/1/environ")); err == nil {
		for kv := range bytes.SplitSeq(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte("container=")); ok && len(v) > 0 {
				return string(v)
			}
		}
	}
	switch {
	case exists["/.dockerenv"]:
		return "docker"
	case exists["/run/.containerenv"]:
		return "podman"
	}
	return ""
}

// parseMounts parses /proc/self/mounts (octal escapes in paths are undone).
func parseMounts(s string) []Mount {
	var ms []Mount
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			continue
		}
		ms = append(ms, Mount{Source: unescape(f[0]), Target: unescape(f[1]), Type: f[2], Options: f[3]})
	}
	return ms
}

// unescape undoes the kernel's \ooo escapes of space, tab, newline and backslash in mount paths.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			o := s[i+1 : i+4]
			if o[0] >= '0' && o[0] <= '3' && o[1] >= '0' && o[1] <= '7' && o[2] >= '0' && o[2] <= '7' {
				b.WriteByte((o[0]-'0')<<6 | (o[1]-'0')<<3 | (o[2] - '0'))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountAt returns the last mount at target (the one on top), if any.
func mountAt(ms []Mount, target string) (Mount, bool) {
	var found Mount
	ok := false
	for _, m := range ms {
		if m.Target == target {
			found, ok = m, true
		}
	}
	return found, ok
}

// readControllers reads, on v2, cgroup.controllers and cgroup.subtree_control of the group the
// sandboxes' root would be made in: the mount root, or f.Delegated below it.
func readControllers(root string, f *Facts) {
	if top, ok := mountAt(f.Mounts, "/sys/fs/cgroup"); !ok || top.Type != "cgroup2" {
		return
	}
	dir := filepath.Join(root, "/sys/fs/cgroup", f.Delegated)
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	f.CgroupControllers = string(b)
	b, _ = os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	f.CgroupSubtree = string(b)
	if f.Delegated == "" {
		return
	}
	b, _ = os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	f.DelegatedProcs = nil
	for _, l := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(l); err == nil {
			f.DelegatedProcs = append(f.DelegatedProcs, pid)
		}
	}
}
