package native

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/testutil"
)

// TestCreateFailureUndoes: an init that reads its config and exits fails Create at its last
// steps but one (await ready), after every resource was acquired; Create must name the step and
// leave no uid claim, state directory, cgroup or process behind.
func TestCreateFailureUndoes(t *testing.T) {
	testutil.MustHaveRoot(t)
	state, err := os.MkdirTemp("", "airlock-native-create-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	if err := os.Chmod(state, 0o755); err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Logger: slog.New(slog.DiscardHandler), StateDir: state,
		CgroupRoot: "airlock-test-create-" + filepath.Base(state),
		Exe:        "/bin/sh", Args: []string{"sh", "-c", "read x <&3"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sb, err := r.Create(ctx, Spec{ID: "undo", MemoryBytes: 64 << 20, Pids: 16})
	if err == nil {
		sb.Destroy(ctx)
		t.Fatal("Create with an init that never serves succeeded")
	}
	if got, want := err.Error(), "await ready: sandbox init exited during setup"; got != want {
		t.Errorf("got error %q, want %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(state, "sandboxes", "undo")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory left behind: %v", err)
	}
	groups, err := r.cg.List()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(groups, "undo") {
		t.Errorf("cgroup left behind: %v", groups)
	}
	r.slotMu.Lock()
	slots := len(r.slots)
	r.slotMu.Unlock()
	if got, want := slots, 0; got != want {
		t.Errorf("uid slots held: got %d, want %d", got, want)
	}
	claims, _ := filepath.Glob(filepath.Join(r.cfg.HostDir, "uid-*"))
	for _, c := range claims {
		if b, _ := os.ReadFile(c); strings.Contains(string(b), "undo") {
			t.Errorf("uid claim left behind: %s", c)
		}
	}
}
