package engine

import (
	"strings"
	"testing"
	"time"
)

// TestBoundMessages: the shared bound keeps the messages each check had when it was written
// out by hand.
func TestBoundMessages(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"memory", boundMemory("memory_mb", 1000000<<20, 64<<20, 8<<30), "memory_mb 1000000 is outside 64…8192"},
		{"timeout", boundDuration("timeout", 1e9*time.Second, time.Second, 300*time.Second), "timeout 1e+09 s is outside 1…300 s"},
		{"cell timeout", boundDuration("timeout", 50*time.Millisecond, 100*time.Millisecond, 300*time.Second), "timeout 0.05 s is outside 0.1…300 s"},
		{"cpu", bound("cpu", 1e6, minCPU, 2, ""), "cpu 1e+06 is outside 0.05…2"},
		{"depth", bound("depth", int64(17), 1, 16, ""), "depth 17 is outside 1…16"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.err == nil || !strings.Contains(tt.err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", tt.err, tt.want)
			}
		})
	}
	if err := bound("cpu", 1.0, minCPU, 2, ""); err != nil {
		t.Fatalf("in bounds: %v", err)
	}
}

func TestExitStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		code          int
		timedOut, oom bool
		want          int
	}{
		{"own", 3, false, false, 3},
		{"timeout", -1, true, false, exitTimeout},
		{"oom", 0, false, true, exitOOM},
		{"timeout wins", 0, true, true, exitTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := exitStatus(tt.code, tt.timedOut, tt.oom); got != tt.want {
				t.Fatalf("got %d, want %d", got, tt.want)
			}
		})
	}
}
