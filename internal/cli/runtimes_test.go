package cli

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/agent"
	"github.com/airlockhq/airlock/internal/engine"
)

// fakeRuntime records which runtime built each spec.
type fakeRuntime struct {
	name   string
	closed *[]string
}

type fakeInstance struct {
	engine.Instance // never called
	by              string
	spec            engine.Spec
}

func (f fakeRuntime) Create(_ context.Context, s engine.Spec) (engine.Instance, error) {
	return fakeInstance{by: f.name, spec: s}, nil
}

// fakeDefs are runtimes a, b and broken (which cannot be built), in that order.
func fakeDefs(closed *[]string) []runtimeDef {
	def := func(name string, openErr error) runtimeDef {
		return runtimeDef{name: name,
			open: func(*slog.Logger, *runtimeConfig) (openedRuntime, error) {
				if openErr != nil {
					return openedRuntime{}, openErr
				}
				return openedRuntime{rt: fakeRuntime{name: name}, cgroupVersion: len(name),
					close: func() error { *closed = append(*closed, name); return nil }}, nil
			},
			isInit: func() bool { return false },
		}
	}
	return []runtimeDef{def("a", nil), def("b", nil), def("broken", errors.New("no such binary"))}
}

// TestRuntimesDispatch: a spec is built by the runtime it names, or the default; a runtime
// that is unknown or could not be built is a 400, and only the runtimes built are listed.
func TestRuntimesDispatch(t *testing.T) {
	var closed []string
	rts, err := openRuntimes(slog.New(slog.DiscardHandler), &runtimeConfig{Default: "b"}, fakeDefs(&closed))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rts.Names(), []string{"a", "b"}; !slices.Equal(got, want) {
		t.Errorf("Names() = %v, want %v", got, want)
	}
	if got, want := rts.cgroupVersion(), 1; got != want { // the default runtime's ("b")
		t.Errorf("cgroupVersion() = %d, want %d", got, want)
	}
	for _, tt := range []struct {
		runtime string
		want    string // the runtime that builds it
		wantErr error
	}{
		{runtime: "", want: "b"},
		{runtime: "a", want: "a"},
		{runtime: "b", want: "b"},
		{runtime: "broken", wantErr: api.ErrInvalidArgument},
		{runtime: "gvisor", wantErr: api.ErrInvalidArgument},
	} {
		t.Run("runtime="+tt.runtime, func(t *testing.T) {
			inst, err := rts.Create(t.Context(), engine.Spec{ID: "x", Runtime: tt.runtime})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got error %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			got := inst.(fakeInstance)
			if got.by != tt.want || got.spec.Runtime != tt.want {
				t.Errorf("built by %q with Spec.Runtime %q, want %q", got.by, got.spec.Runtime, tt.want)
			}
		})
	}
	if err := rts.Close(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "b"}; !slices.Equal(closed, want) {
		t.Errorf("closed %v, want %v", closed, want)
	}
}

// TestOpenRuntimesDefault: the default runtime must exist and be built; the first is the default.
func TestOpenRuntimesDefault(t *testing.T) {
	for _, tt := range []struct {
		def, want  string
		wantErr    bool
		wantClosed []string // after a failed open: every runtime it had built
	}{
		{def: "", want: "a"},
		{def: "a", want: "a"},
		{def: "broken", wantErr: true, wantClosed: []string{"a", "b"}},
		{def: "gvisor", wantErr: true}, // unknown: nothing is built
	} {
		t.Run("default="+tt.def, func(t *testing.T) {
			var closed []string
			rts, err := openRuntimes(slog.New(slog.DiscardHandler), &runtimeConfig{Default: tt.def}, fakeDefs(&closed))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("opened with default %q, want an error", tt.def)
				}
				if !slices.Equal(closed, tt.wantClosed) {
					t.Errorf("after a failed open, closed %v, want %v", closed, tt.wantClosed)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer rts.Close()
			if rts.def != tt.want {
				t.Errorf("default %q, want %q", rts.def, tt.want)
			}
		})
	}
}

// TestRunInit: the runtime that started this process as a sandbox init builds it; a failed
// build exits 1; any other process is not an init.
func TestRunInit(t *testing.T) {
	var built []string
	def := func(name string, isInit bool) runtimeDef {
		return runtimeDef{name: name, isInit: func() bool { return isInit },
			init: func() (net.Listener, agent.Config, error) {
				built = append(built, name)
				return nil, agent.Config{}, errors.New("setup failed")
			}}
	}
	if code, ok := runInit([]runtimeDef{def("a", false), def("b", false)}); ok {
		t.Errorf("runInit = %d, true for a process no runtime started", code)
	}
	code, ok := runInit([]runtimeDef{def("a", false), def("b", true)})
	if !ok || code != 1 {
		t.Errorf("runInit = %d, %v, want 1, true", code, ok)
	}
	if want := []string{"b"}; !slices.Equal(built, want) {
		t.Errorf("built by %v, want %v", built, want)
	}
}
