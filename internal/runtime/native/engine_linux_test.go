package native

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/netpolicy"
	"github.com/airlockhq/airlock/internal/testutil"
)

// TestEngineRuntimeRefusesWhatItCannotBuild asks the engine adapter for sandboxes the native
// runtime cannot build as specified (review P4: the adapter used to drop Spec.Image and build a
// host-image sandbox anyway). Each must be refused with its API error before anything is built;
// the init here never serves, so a spec that got through would fail later with another error.
func TestEngineRuntimeRefusesWhatItCannotBuild(t *testing.T) {
	testutil.MustHaveRoot(t)
	state := t.TempDir()
	// The sandbox user must reach the state directory, as under /var/lib/airlock.
	for _, dir := range []string{filepath.Dir(state), state} {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r, err := New(Config{Logger: slog.New(slog.DiscardHandler), StateDir: state,
		CgroupRoot: "airlock-test-engine-" + strconv.Itoa(os.Getpid()),
		Exe:        "/bin/sh", Args: []string{"sh", "-c", "read x <&3"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	rt := EngineRuntime(r)
	for _, tt := range []struct {
		name string
		spec engine.Spec
		want error
	}{
		{"an unresolved OCI image", engine.Spec{ID: "img", Image: "docker.io/library/alpine:3.20"}, api.ErrInvalidArgument},
		{"outbound network", engine.Spec{ID: "net", Image: "host", Network: netpolicy.Policy{Mode: netpolicy.Internet}}, api.ErrUnimplemented},
		{"another runtime", engine.Spec{ID: "gv", Runtime: "gvisor"}, api.ErrInvalidArgument},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			tt.spec.MemoryBytes, tt.spec.Pids = 64<<20, 16
			inst, err := rt.Create(ctx, tt.spec)
			if err == nil {
				inst.Destroy(ctx)
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got error %v, want %v", err, tt.want)
			}
			if _, err := os.Stat(filepath.Join(state, "sandboxes", tt.spec.ID)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("state directory of a refused sandbox: %v", err)
			}
		})
	}
}

// TestHonours: what the native runtime builds passes; what it cannot is named.
func TestHonours(t *testing.T) {
	for _, tt := range []struct {
		name string
		spec engine.Spec
		want error
	}{
		{"defaults", engine.Spec{}, nil},
		{"host image, named runtime", engine.Spec{Image: "host", Runtime: Name}, nil},
		{"unresolved image", engine.Spec{Image: "python:3.12"}, api.ErrInvalidArgument},
		{"resolved image", engine.Spec{Image: "python:3.12", ImageRoot: &engine.ImageRoot{ID: "sha256:a", Layers: []string{"/l"}}}, nil},
		{"network: honoured here, refused by Create when the runtime has no network config", engine.Spec{Network: netpolicy.Policy{Mode: netpolicy.Internet}}, nil},
		{"runtime", engine.Spec{Runtime: "gvisor"}, api.ErrInvalidArgument},
		{"build sandbox of the host", engine.Spec{Build: true}, api.ErrInvalidArgument},
		{"build sandbox of an image", engine.Spec{Build: true, Image: "sha256:a", ImageRoot: &engine.ImageRoot{ID: "sha256:a", Layers: []string{"/l"}}}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := honours(tt.spec)
			if !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
}
