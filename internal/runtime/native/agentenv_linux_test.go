package native

import (
	"runtime"
	"slices"
	"strconv"
	"testing"
)

// TestAgentRuntimeEnv: the agent's Go runtime gets as many Ps as its CPU limit lets it use,
// never more than the host's cores, and no heap profiling.
func TestAgentRuntimeEnv(t *testing.T) {
	n := runtime.NumCPU()
	for _, c := range []struct {
		cpu  float64
		want int
	}{
		{0, n}, // no limit
		{0.25, 1},
		{1, 1},
		{1.5, min(2, n)},
		{1000, n},
	} {
		t.Run(strconv.FormatFloat(c.cpu, 'g', -1, 64), func(t *testing.T) {
			got := agentRuntimeEnv(c.cpu)
			for _, kv := range []string{"GOMAXPROCS=" + strconv.Itoa(c.want), "GODEBUG=memprofilerate=0"} {
				if !slices.Contains(got, kv) {
					t.Errorf("agentRuntimeEnv(%v) = %q, want it to hold %s", c.cpu, got, kv)
				}
			}
		})
	}
}
