package doctor

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// healthy is a fake /proc, /sys, /dev and /usr of a cgroup v2 host that can run everything.
func healthy() map[string]string {
	files := map[string]string{
		"proc/sys/kernel/osrelease":                   "6.1.0-27-amd64\n",
		"proc/sys/user/max_user_namespaces":           "63000\n",
		"proc/sys/user/max_pid_namespaces":            "63000\n",
		"proc/sys/user/max_mnt_namespaces":            "63000\n",
		"proc/sys/user/max_net_namespaces":            "63000\n",
		"proc/sys/kernel/pty/max":                     "16384\n",
		"proc/sys/kernel/pty/reserve":                 "1024\n",
		"proc/sys/kernel/pty/nr":                      "3\n",
		"proc/sys/kernel/seccomp/actions_avail":       "kill_process kill_thread trap errno user_notif trace log allow\n",
		"proc/sys/net/ipv4/ip_forward":                "0\n",
		"proc/sys/net/netfilter/nf_conntrack_max":     "262144\n",
		"proc/filesystems":                            "nodev\tsysfs\nnodev\ttmpfs\nnodev\tcgroup2\n\text4\nnodev\toverlay\n",
		"proc/self/cgroup":                            "0::/\n",
		"proc/1/environ":                              "HOME=/\x00TERM=linux\x00",
		"sys/fs/cgroup/cgroup.controllers":            "cpuset cpu io memory hugetlb pids rdma misc\n",
		"sys/fs/cgroup/cgroup.subtree_control":        "cpu memory pids\n",
		"dev/loop-control":                            "",
		"dev/ptmx":                                    "",
		"usr/lib/python3/dist-packages/numpy/x.py":    "",
		"usr/lib/python3/dist-packages/pandas/x.py":   "",
		"usr/lib/python3/dist-packages/matplotlib/x":  "",
		"usr/lib/python3/dist-packages/scipy/x.py":    "",
		"usr/lib/python3/dist-packages/sympy/x.py":    "",
		"usr/lib/python3/dist-packages/requests/x.py": "",
		"proc/self/mounts": "sysfs /sys sysfs rw 0 0\n" +
			"cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n" +
			"devpts /dev/pts devpts rw,gid=5,mode=620,ptmxmode=000 0 0\n",
	}
	for _, ns := range []string{"cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time", "user", "uts"} {
		files["proc/self/ns/"+ns] = ""
	}
	return files
}

// executables are the fixture's programs, written with mode 0755.
var executables = []string{"usr/bin/python3", "usr/sbin/mkfs.ext4", "bin/sh"}

// fixture writes files below a new directory and returns it, with the executables unless
// files has "-" + their path.
func fixture(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		if strings.HasPrefix(p, "-") {
			continue
		}
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range executables {
		if _, ok := files["-"+p]; ok {
			continue
		}
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// facts reads the fixture as Gather would, with every probe of the real host succeeding and an
// ext4 state directory with room.
func facts(t *testing.T, files map[string]string) Facts {
	t.Helper()
	f := gatherFiles(fixture(t, files))
	f.LandlockABI = 4
	f.State = StateFS{Path: "/var/lib/airlock", Type: "ext4", Free: 50 << 30, Total: 100 << 30, FreeInodes: 5e6, TotalInodes: 6e6}
	return f
}

func find(r Report, check string) (Finding, bool) {
	for _, f := range r.Findings {
		if f.Check == check {
			return f, true
		}
	}
	return Finding{}, false
}

var testConfig = Config{StateDir: "/var/lib/airlock", Sandboxes: 1000, PTYsPerSandbox: 8}

func TestHealthyHost(t *testing.T) {
	t.Parallel()
	r := Check(facts(t, healthy()), testConfig)
	if w := r.Worst(); w > Info {
		var buf bytes.Buffer
		r.WriteText(&buf)
		t.Fatalf("worst status of a healthy host = %v, want at most info:\n%s", w, buf.String())
	}
	for _, c := range []string{"root", "kernel", "namespaces", "userns", "cgroup", "seccomp", "landlock", "close_range",
		"pidfd", "clone-into-cgroup", "overlayfs", "loop-ext4", "idmap", "state-dir", "pty", "nftables", "conntrack", "ip_forward", "runsc", "python"} {
		if _, ok := find(r, c); !ok {
			t.Errorf("no %q finding", c)
		}
	}
}

// TestFindings feeds Check one broken host at a time: each must give its finding with the
// status and the fix that mends it.
func TestFindings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		files  map[string]string // overrides of healthy()
		del    []string          // paths of healthy() to leave out; "-" + an executable's path leaves it out
		facts  func(*Facts)
		check  string
		status Status
		want   string // in Detail or Fix
	}{
		{name: "not root", facts: func(f *Facts) { f.EUID = 1000 }, check: "root", status: Fail, want: "uid 1000"},
		{name: "old kernel", files: map[string]string{"proc/sys/kernel/osrelease": "5.10.0-28-amd64"}, check: "kernel", status: Fail, want: "5.12"},
		{name: "kernel 5.15", files: map[string]string{"proc/sys/kernel/osrelease": "5.15.0-1-generic"}, check: "kernel", status: Warn, want: "6.1"},
		{name: "no cgroup namespace", del: []string{"proc/self/ns/cgroup"}, check: "namespaces", status: Fail, want: "cgroup namespace"},
		{name: "clone refused", facts: func(f *Facts) { f.CloneNamespaces = errors.New("operation not permitted") }, check: "namespaces", status: Fail, want: "RestrictNamespaces"},
		{name: "clone refused in a container", facts: func(f *Facts) { f.CloneNamespaces, f.Container = errors.New("operation not permitted"), "docker" }, check: "namespaces", status: Fail, want: "--privileged"},
		{name: "user namespaces off", files: map[string]string{"proc/sys/user/max_user_namespaces": "0"}, check: "userns", status: Fail, want: "sysctl -w user.max_user_namespaces=15000"},
		{name: "net namespaces off", files: map[string]string{"proc/sys/user/max_net_namespaces": "0"}, check: "userns", status: Fail, want: "user.max_net_namespaces"},
		{name: "few user namespaces are enough", files: map[string]string{"proc/sys/user/max_user_namespaces": "3"}, check: "userns", status: OK, want: "its own host uid"},
		{name: "debian unprivileged_userns_clone", files: map[string]string{"proc/sys/kernel/unprivileged_userns_clone": "0"}, check: "userns-debian", status: Info, want: "runs as root"},
		{name: "ubuntu apparmor restriction", files: map[string]string{"proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1"}, check: "userns-apparmor", status: Info, want: "CAP_SYS_ADMIN"},
		{name: "confined by apparmor", files: map[string]string{"sys/kernel/security/apparmor/profiles": "", "proc/self/attr/current": "airlockd (enforce)\n"}, check: "apparmor", status: Warn, want: "userns,"},
		{name: "nothing at /sys/fs/cgroup", files: map[string]string{"proc/self/mounts": "sysfs /sys sysfs rw 0 0\n"}, check: "cgroup", status: Fail, want: "mount -t cgroup2"},
		{name: "v2 without memory", files: map[string]string{"sys/fs/cgroup/cgroup.controllers": "cpu io pids\n"}, check: "cgroup", status: Fail, want: "without memory"},
		{name: "v2 in a container's root", facts: func(f *Facts) { f.Container = "docker" }, check: "cgroup-delegation", status: Warn, want: "no internal processes"},
		{name: "v2 in an undelegated unit", files: map[string]string{"proc/self/cgroup": "0::/system.slice/airlock.service\n"}, check: "cgroup-delegation", status: Info, want: "Delegate=yes"},
		{name: "v2 delegated", facts: func(f *Facts) {
			f.Delegated, f.DelegatedProcs, f.PID = "system.slice/airlock.service", []int{99}, 99
		}, check: "cgroup-delegation", status: OK, want: "/system.slice/airlock.service/daemon"},
		{name: "v2 delegated with a wrapper shell", facts: func(f *Facts) {
			f.Delegated, f.DelegatedProcs, f.PID = "system.slice/airlock.service", []int{98, 99}, 99
		}, check: "cgroup-delegation", status: Warn, want: "ExecStart="},
		{name: "v1 without pids", files: map[string]string{"proc/self/mounts": "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n" +
			"cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\ncgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n" +
			"cgroup /sys/fs/cgroup/freezer cgroup rw,freezer 0 0\ndevpts /dev/pts devpts rw 0 0\n"}, check: "cgroup", status: Fail, want: "pids"},
		{name: "hybrid", files: map[string]string{"proc/self/mounts": "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n" +
			"cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\ncgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n" +
			"cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\ncgroup /sys/fs/cgroup/freezer cgroup rw,freezer 0 0\n" +
			"cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\ndevpts /dev/pts devpts rw 0 0\n"}, check: "cgroup", status: OK, want: "hybrid"},
		{name: "no seccomp filters", del: []string{"proc/sys/kernel/seccomp/actions_avail"}, check: "seccomp", status: Fail, want: "CONFIG_SECCOMP_FILTER"},
		{name: "no landlock", facts: func(f *Facts) { f.LandlockABI, f.LandlockErr = 0, errors.New("operation not supported") }, check: "landlock", status: Warn, want: "lsm="},
		{name: "no close_range", facts: func(f *Facts) { f.CloseRange = errors.New("function not implemented") }, check: "close_range", status: Fail, want: "5.11"},
		{name: "no pidfd", facts: func(f *Facts) { f.Pidfd = errors.New("function not implemented") }, check: "pidfd", status: Warn, want: "recycled pid"},
		{name: "no clone3 into cgroup", facts: func(f *Facts) { f.CloneIntoCgroup = errors.New("function not implemented") }, check: "clone-into-cgroup", status: Fail, want: "5.7"},
		{name: "no overlay", files: map[string]string{"proc/filesystems": "nodev\ttmpfs\n\text4\n"}, check: "overlayfs", status: Warn, want: "modprobe overlay"},
		{name: "no loop devices", del: []string{"dev/loop-control"}, check: "loop-ext4", status: Warn, want: "modprobe loop"},
		{name: "no mkfs.ext4", del: []string{"-usr/sbin/mkfs.ext4"}, check: "loop-ext4", status: Warn, want: "e2fsprogs"},
		{name: "state on tmpfs before 6.3", facts: func(f *Facts) { f.State.Type = "tmpfs" }, check: "idmap", status: Warn, want: "6.3"},
		{name: "state on tmpfs on 6.3", files: map[string]string{"proc/sys/kernel/osrelease": "6.3.0"}, facts: func(f *Facts) { f.State.Type = "tmpfs" }, check: "idmap", status: OK, want: "tmpfs"},
		{name: "state on nfs", facts: func(f *Facts) { f.State.Type = "nfs" }, check: "idmap", status: Warn, want: "ext4, xfs or btrfs"},
		{name: "state dir full", facts: func(f *Facts) { f.State.Free = 100 << 20 }, check: "state-dir", status: Warn, want: "0.1 GiB free"},
		{name: "state dir out of inodes", facts: func(f *Facts) { f.State.FreeInodes = 10 }, check: "state-dir", status: Warn, want: "inodes"},
		{name: "small pty pool", files: map[string]string{"proc/sys/kernel/pty/max": "4096"}, check: "pty", status: Warn, want: "sysctl -w kernel.pty.max=9024"},
		{name: "no devpts", files: map[string]string{"proc/self/mounts": "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"}, check: "pty", status: Warn, want: "mount -t devpts"},
		{name: "no nftables", facts: func(f *Facts) { f.NFTables = errors.New("protocol not supported") }, check: "nftables", status: Warn, want: "block only"},
		{name: "docker forward drop", facts: func(f *Facts) { f.ForwardDrops = []string{"ip filter FORWARD"} }, check: "forward-policy", status: Warn, want: "iptables -I DOCKER-USER -i 'al+' -j ACCEPT"},
		{name: "ip_forward off", check: "ip_forward", status: Info, want: "serve turns it on"},
		{name: "no python3", del: []string{"-usr/bin/python3"}, check: "python", status: Warn, want: "apt-get install -y python3"},
		{name: "no numpy", del: []string{"usr/lib/python3/dist-packages/numpy/x.py"}, check: "python", status: Warn, want: "apt-get install -y python3-numpy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			files := healthy()
			for p, c := range tt.files {
				files[p] = c
			}
			for _, p := range tt.del {
				if strings.HasPrefix(p, "-") {
					files[p] = "" // an executable left out
					continue
				}
				delete(files, p)
			}
			f := facts(t, files)
			if tt.facts != nil {
				tt.facts(&f)
			}
			r := Check(f, testConfig)
			got, ok := find(r, tt.check)
			if !ok {
				t.Fatalf("no %q finding in %+v", tt.check, r.Findings)
			}
			if got.Status != tt.status {
				t.Errorf("%s status = %v (%s), want %v", tt.check, got.Status, got.Detail, tt.status)
			}
			if !strings.Contains(got.Detail+" "+got.Fix, tt.want) {
				t.Errorf("%s = %q, fix %q; want it to mention %q", tt.check, got.Detail, got.Fix, tt.want)
			}
		})
	}
}

func TestParseRelease(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want version
		ok   bool
	}{
		{"6.1.0-27-amd64", version{6, 1}, true},
		{"6.18.44-fc-v769", version{6, 18}, true},
		{"5.15.0-1034-azure", version{5, 15}, true},
		{"6.3", version{6, 3}, true},
		{"6.10-rc1", version{6, 10}, true},
		{"", version{}, false},
		{"linux", version{}, false},
	}
	for _, tt := range tests {
		got, ok := parseRelease(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseRelease(%q) = %v, %v, want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseMounts(t *testing.T) {
	t.Parallel()
	got := parseMounts("/dev/sda1 /mnt/with\\040space ext4 rw 0 0\nshort line\n")
	want := []Mount{{Source: "/dev/sda1", Target: "/mnt/with space", Type: "ext4", Options: "rw"}}
	if len(got) != 1 || got[0] != want[0] {
		t.Fatalf("parseMounts = %+v, want %+v", got, want)
	}
}

// TestOutput checks the JSON shape (statuses as words) and the text report's fix lines.
func TestOutput(t *testing.T) {
	t.Parallel()
	r := Report{Findings: []Finding{
		{Check: "root", Status: OK, Detail: "running as root"},
		{Check: "userns", Status: Fail, Detail: "user.max_user_namespaces = 0", Fix: "sysctl -w user.max_user_namespaces=15000"},
	}}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back struct {
		Findings []struct{ Check, Status, Detail, Fix string }
	}
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Findings) != 2 || back.Findings[1].Status != "fail" || back.Findings[0].Status != "ok" || back.Findings[1].Fix == "" {
		t.Errorf("JSON = %s", js.String())
	}
	var txt bytes.Buffer
	if err := r.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	want := "ok    root    running as root\n" +
		"FAIL  userns  user.max_user_namespaces = 0\n" +
		"              fix: sysctl -w user.max_user_namespaces=15000\n" +
		"2 checks: 1 FAIL, 0 warn\n"
	if txt.String() != want {
		t.Errorf("text:\n%s\nwant:\n%s", txt.String(), want)
	}
	if r.Worst() != Fail || len(r.Failures()) != 1 {
		t.Errorf("Worst = %v, Failures = %v", r.Worst(), r.Failures())
	}
}

// TestGatherHere runs every check on this machine: nothing may panic, every check reports, and
// the file-based facts of the real / are read.
func TestGatherHere(t *testing.T) {
	t.Parallel()
	r := Run(Config{StateDir: t.TempDir(), Sandboxes: 10, PTYsPerSandbox: 8})
	var buf bytes.Buffer
	r.WriteText(&buf)
	t.Logf("airlock doctor here:\n%s", buf.String())
	if _, ok := find(r, "kernel"); !ok || len(r.Findings) < 15 {
		t.Fatalf("too few findings:\n%s", buf.String())
	}
	if f, _ := find(r, "kernel"); f.Status != OK && f.Status != Warn {
		t.Errorf("kernel finding %+v", f)
	}
}

// TestReadDelegated: once Gather knows the delegated subtree, the controllers and processes are
// read from it rather than from the mount root.
func TestReadDelegated(t *testing.T) {
	t.Parallel()
	files := healthy()
	files["sys/fs/cgroup/system.slice/a.service/cgroup.controllers"] = "memory pids\n"
	files["sys/fs/cgroup/system.slice/a.service/cgroup.procs"] = "12\n34\n"
	root := fixture(t, files)
	f := gatherFiles(root)
	f.Delegated = "system.slice/a.service"
	readControllers(root, &f)
	if f.CgroupControllers != "memory pids\n" || len(f.DelegatedProcs) != 2 || f.DelegatedProcs[1] != 34 {
		t.Fatalf("controllers %q, procs %v; want the delegated group's", f.CgroupControllers, f.DelegatedProcs)
	}
	if got, _ := find(Check(f, testConfig), "cgroup"); got.Status != Fail || !strings.Contains(got.Fix, "Delegate=") {
		t.Errorf("cgroup finding %+v, want a FAIL (no cpu) with the systemd fix", got)
	}
}
