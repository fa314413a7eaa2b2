package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/runtime/native"
)

// TestAgentMemoryNotUnderUserLimit: on cgroup v1 a process's memory is charged to the memory
// group of its main thread, so the agent's main thread must never be the thread that joins the
// user's group to fork user processes (startSpawner). Over many sandboxes, each agent's main
// thread is in the runtime's root memory group, never the user's (whose limit would then hold
// and could OOM the agent). It failed about once in twelve sandboxes when the spawner could be
// given the main thread.
func TestAgentMemoryNotUnderUserLimit(t *testing.T) {
	mustEngine(t)
	state := tempStateDir(t, "airlock-e2e-spawner-")
	root := "airlock-e2e-spawner-" + filepath.Base(state)
	r, err := native.New(native.Config{StateDir: state, CgroupRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); removeCgroupRoot(root) })
	if r.CgroupVersion() != 1 {
		t.Skip("v2 has one process per group: the agent's leaf")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for i := range 24 {
		sb, err := r.Create(ctx, native.Spec{ID: fmt.Sprintf("spawn-%d", i), MemoryBytes: 64 << 20, Pids: 32, ScratchBytes: 8 << 20})
		if err != nil {
			t.Fatal(err)
		}
		got := memoryCgroupOf(sb.Pid())
		if err := sb.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
		if want := "/" + root; got != want {
			t.Fatalf("sandbox %d: the agent's main thread is in memory group %s, want the root's %s", i, got, want)
		}
	}
}
