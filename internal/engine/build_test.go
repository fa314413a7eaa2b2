package engine

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// TestRunBuildStep: a step runs in a build sandbox of its image made through the create
// funnel (Build, the image's root, the engine's limits), its output reaches the log, its layer
// is written only on exit 0, and the sandbox, its lease and its slot are gone afterwards; the
// network it asks for is bounded by the operator's modes.
func TestRunBuildStep(t *testing.T) {
	t.Parallel()
	internet := netpolicy.Policy{Mode: netpolicy.Internet}
	for _, tt := range []struct {
		name     string
		modes    []netpolicy.Mode
		step     BuildStep
		wantCode int
		wantErr  string // a substring; "" for none
		wantNet  netpolicy.Mode
		wantLog  string
	}{
		{name: "exit 0 writes the layer", modes: []netpolicy.Mode{netpolicy.Internet},
			step: BuildStep{Cmd: []string{"echo", "built"}, Network: internet}, wantNet: netpolicy.Internet, wantLog: "built\n"},
		{name: "a failing command is an exit code", step: BuildStep{Cmd: []string{"false"}}, wantCode: 1, wantNet: netpolicy.Block},
		{name: "narrowed to block", modes: []netpolicy.Mode{netpolicy.Block},
			step: BuildStep{Cmd: []string{"true"}, Network: internet}, wantNet: netpolicy.Block},
		{name: "needs a network the daemon lacks", modes: []netpolicy.Mode{netpolicy.Block},
			step:    BuildStep{Cmd: []string{"true"}, Network: internet, NeedsNetwork: true},
			wantErr: "this step needs network mode internet, which this server does not offer (it offers block)"},
		{name: "host image refused", step: BuildStep{ImageID: "host", Cmd: []string{"true"}}, wantErr: "needs an image"},
		{name: "unknown image", step: BuildStep{ImageID: "nope:1", Cmd: []string{"true"}}, wantErr: "not in the daemon's image store"},
		{name: "no command", step: BuildStep{}, wantErr: "needs a command"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rt, imgs := &snapRuntime{}, newFakeImages(map[string]string{"py:1": "sha256:aaa"})
			e, err := New(Config{Runtime: rt, Images: imgs, NetworkModes: tt.modes, MaxConcurrent: 1})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { e.Close(context.Background()) })
			if tt.step.ImageID == "" {
				tt.step.ImageID = "py:1"
			}
			var log, layer bytes.Buffer
			code, err := e.RunBuildStep(t.Context(), tt.step, &log, &layer)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, api.ErrInvalidArgument) && !errors.Is(err, api.ErrNotFound) {
					t.Fatalf("got %v, want a 4xx error about %q", err, tt.wantErr)
				}
				if len(rt.created) != 0 {
					t.Errorf("a refused step made %d sandboxes", len(rt.created))
				}
				return
			}
			if err != nil || code != tt.wantCode {
				t.Fatalf("got code %d, err %v; want %d", code, err, tt.wantCode)
			}
			if len(rt.created) != 1 {
				t.Fatalf("made %d sandboxes, want 1", len(rt.created))
			}
			s := rt.created[0]
			if !s.Build || s.ImageRoot == nil || s.ImageRoot.ID != "sha256:aaa" || s.Network.Mode != tt.wantNet || s.ScratchBytes != e.cfg.ScratchBytes || s.MemoryBytes < e.cfg.DefaultMemory {
				t.Errorf("spec %+v: want a build sandbox of sha256:aaa, network %s, the engine's limits", s, tt.wantNet)
			}
			if got := log.String(); got != tt.wantLog {
				t.Errorf("log %q, want %q", got, tt.wantLog)
			}
			wantLayer := ""
			if tt.wantCode == 0 {
				wantLayer = "layer of " + s.ID
			}
			if got := layer.String(); got != wantLayer {
				t.Errorf("layer %q, want %q", got, wantLayer)
			}
			if !rt.destroyed[s.ID] || imgs.leased("sha256:aaa") != 0 || e.Live() != 0 {
				t.Errorf("after the step: destroyed %v, leases %d, live %d; want destroyed, 0, 0", rt.destroyed[s.ID], imgs.leased("sha256:aaa"), e.Live())
			}
			// The one-shot slot is back: another step gets it at once.
			if _, err := e.RunBuildStep(t.Context(), BuildStep{ImageID: "py:1", Cmd: []string{"true"}}, &log, &layer); err != nil {
				t.Errorf("a second step: %v", err)
			}
		})
	}
}
