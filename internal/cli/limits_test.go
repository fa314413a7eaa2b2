package cli

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/engine/fakeagent"
)

// agentRuntime's sandboxes are fake agents: an engine without root.
type agentRuntime struct{}

type agentInstance struct {
	agent fakeagent.Agent
	done  chan struct{}
}

func (agentRuntime) Create(context.Context, engine.Spec) (engine.Instance, error) {
	return &agentInstance{done: make(chan struct{})}, nil
}
func (i *agentInstance) Agent() engine.Agent           { return &i.agent }
func (i *agentInstance) Usage() (engine.Usage, error)  { return engine.Usage{}, nil }
func (i *agentInstance) Done() <-chan struct{}         { return i.done }
func (i *agentInstance) Destroy(context.Context) error { return nil }

// TestOperatorBounds: the operator raises every limit by serve's flags (and their variables);
// /v1/info's limits show them, a timeout past the old 300 s ceiling is accepted, and one past
// the new ceiling is refused as the caller's error.
func TestOperatorBounds(t *testing.T) {
	t.Setenv("AIRLOCK_SCRATCH_SIZE", "3GiB")
	var ec engine.Config
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	bindEngineFlags(fs, &ec)
	if err := fs.Parse([]string{"--max-timeout=10m", "--max-cpu=64", "--default-cpu=2", "--output-limit=4MiB"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(fs); err != nil {
		t.Fatal(err)
	}
	ec.Runtime = agentRuntime{}
	e, err := engine.New(ec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(context.Background()) })

	lim := e.Limits()
	want := api.Limits{MaxTimeout: 600, MaxCPU: 64, DefaultCPU: 2, OutputBytes: 4 << 20, ScratchBytes: 3 << 30}
	got := api.Limits{MaxTimeout: lim.MaxTimeout, MaxCPU: lim.MaxCPU, DefaultCPU: lim.DefaultCPU, OutputBytes: lim.OutputBytes, ScratchBytes: lim.ScratchBytes}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("limits: got %+v, want %+v", got, want)
	}
	for _, tc := range []struct {
		timeout time.Duration
		code    string // "" = accepted
	}{
		{400 * time.Second, ""},
		{600 * time.Second, ""},
		{601 * time.Second, api.CodeInvalidArgument},
	} {
		t.Run(tc.timeout.String(), func(t *testing.T) {
			_, err := e.Execute(t.Context(), engine.OneShot{Code: "print(1)", Timeout: tc.timeout, CPU: 32})
			if got := api.CodeOf(err); (err == nil) != (tc.code == "") || (err != nil && got != tc.code) {
				t.Fatalf("timeout %s: got %v (%q), want code %q", tc.timeout, err, got, tc.code)
			}
		})
	}
}
