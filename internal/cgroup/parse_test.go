//go:build linux

package cgroup

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ok   bool
	}{
		{"sb-1", true},
		{"A.b_C-9", true},
		{".hidden", true},
		{strings.Repeat("a", 255), true},
		{"", false},
		{".", false},
		{"..", false},
		{"a..b", false},
		{"../x", false},
		{"a/b", false},
		{"/abs", false},
		{"sp ace", false},
		{"tab\t", false},
		{"nul\x00", false},
		{"ünï", false},
		{strings.Repeat("a", 256), false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.name), func(t *testing.T) {
			err := validateName(tt.name)
			if got := err == nil; got != tt.ok {
				t.Fatalf("validateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidName) {
				t.Fatalf("validateName(%q) = %v, want ErrInvalidName", tt.name, err)
			}
		})
	}
}

func TestLimits(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		l     Limits
		valid bool
		quota int64
	}{
		{"zero is unlimited", Limits{}, true, 0},
		{"one core", Limits{CPU: 1}, true, 100000},
		{"quarter core", Limits{CPU: 0.25}, true, 25000},
		{"two and a half cores", Limits{CPU: 2.5}, true, 250000},
		{"tiny rounds up to 1ms", Limits{CPU: 0.001}, true, 1000},
		{"negative memory", Limits{MemoryBytes: -1}, false, 0},
		{"negative pids", Limits{Pids: -1}, false, 0},
		{"negative cpu", Limits{CPU: -0.5}, false, 0},
		{"NaN cpu", Limits{CPU: math.NaN()}, false, 0},
		{"infinite cpu", Limits{CPU: math.Inf(1)}, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.l.validate()
			if got := err == nil; got != tt.valid {
				t.Fatalf("validate() = %v, want valid=%v", err, tt.valid)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalidLimits) {
					t.Fatalf("validate() = %v, want ErrInvalidLimits", err)
				}
				return
			}
			if got := tt.l.cpuQuotaUS(); got != tt.quota {
				t.Fatalf("cpuQuotaUS() = %d, want %d", got, tt.quota)
			}
		})
	}
}

func TestParseV1Mounts(t *testing.T) {
	t.Parallel()
	const mountinfo = `25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
40 35 0:35 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 master:3 - cgroup cgroup rw,cpu,cpuacct
41 35 0:36 / /sys/fs/cgroup/memory rw,nosuid shared:16 - cgroup cgroup rw,memory
42 35 0:37 /docker/abc /sys/fs/cgroup/my\040pids rw shared:17 - cgroup cgroup rw,pids
43 35 0:36 / /mnt/memory-again rw shared:18 - cgroup cgroup rw,memory
bad line`
	got := parseV1Mounts([]byte(mountinfo))
	want := map[string]string{
		"memory":       "/sys/fs/cgroup/memory",
		"cpu":          "/sys/fs/cgroup/cpu,cpuacct",
		"cpuacct":      "/sys/fs/cgroup/cpu,cpuacct",
		"pids":         "/sys/fs/cgroup/my pids",
		"name=systemd": "/sys/fs/cgroup/systemd",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("mount of %s = %q, want %q", k, got[k], v)
		}
	}
	if _, ok := got["nsdelegate"]; ok {
		t.Errorf("cgroup2 mount parsed as v1: %v", got)
	}
}

func TestFlatKeyed(t *testing.T) {
	t.Parallel()
	const events = "low 0\nhigh 0\nmax 17\noom 2\noom_kill 3\noom_group_kill 0\n"
	tests := []struct {
		name, data, key string
		want            uint64
		found, wantErr  bool
	}{
		{"v2 memory.events oom_kill", events, "oom_kill", 3, true, false},
		{"v2 memory.events max", events, "max", 17, true, false},
		{"prefix is not a match", events, "oom_group", 0, false, false},
		{"v1 oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n", "oom_kill", 1, true, false},
		{"cpu.stat", "usage_usec 123456\nuser_usec 100000\n", "usage_usec", 123456, true, false},
		{"cgroup.events", "populated 0\nfrozen 1\n", "frozen", 1, true, false},
		{"missing", "populated 1\n", "frozen", 0, false, false},
		{"garbage value", "populated x\n", "populated", 0, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, found, err := flatKeyed([]byte(tt.data), tt.key)
			if (err != nil) != tt.wantErr {
				t.Fatalf("flatKeyed(%q) error = %v, want error %v", tt.key, err, tt.wantErr)
			}
			if got != tt.want || found != tt.found {
				t.Fatalf("flatKeyed(%q) = %d, %v, want %d, %v", tt.key, got, found, tt.want, tt.found)
			}
		})
	}
}
