package e2e

import (
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/engine"
)

// TestWireExitCodeSpelling is the review's wire-name finding through the real daemon: every
// answer with an exit status spells it exit_code (the v1 name), and the one-shot answers (v1,
// the seed route and batch results) also carry the deprecated returncode with the same value,
// so clients of the seed and of the first contract keep working.
func TestWireExitCodeSpelling(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	const code = `{"code":"raise SystemExit(3)"}`
	tests := []struct {
		name, path, body string
		result           func(map[string]any) map[string]any // the object holding the exit status
	}{
		{"v1 execute", "/v1/execute", code, func(m map[string]any) map[string]any { return m }},
		{"seed execute", "/execute", code, func(m map[string]any) map[string]any { return m }},
		{"batch", "/v1/execute/batch", `{"snippets":[` + code + `]}`, func(m map[string]any) map[string]any {
			results, _ := m["results"].([]any)
			if len(results) != 1 {
				return nil
			}
			r, _ := results[0].(map[string]any)
			return r
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m map[string]any
			if st := a.call("POST", tt.path, strings.NewReader(tt.body), &m); st != 200 {
				t.Fatalf("status: got %d, want 200 (%v)", st, m)
			}
			r := tt.result(m)
			if got := r["exit_code"]; got != 3.0 {
				t.Errorf("exit_code: got %v, want 3 (in %v)", got, r)
			}
			if got := r["returncode"]; got != 3.0 {
				t.Errorf("returncode (deprecated alias): got %v, want 3 (in %v)", got, r)
			}
		})
	}
	t.Run("exec", func(t *testing.T) {
		var sb map[string]any
		if st := a.call("POST", "/v1/sandboxes", strings.NewReader(`{}`), &sb); st != 201 {
			t.Fatalf("create: got %d, want 201 (%v)", st, sb)
		}
		id, _ := sb["id"].(string)
		t.Cleanup(func() { a.call("DELETE", "/v1/sandboxes/"+id, nil, nil) })
		var r map[string]any
		if st := a.call("POST", "/v1/sandboxes/"+id+"/exec", strings.NewReader(`{"cmd":["sh","-c","exit 3"]}`), &r); st != 200 {
			t.Fatalf("exec: got %d, want 200 (%v)", st, r)
		}
		if got := r["exit_code"]; got != 3.0 {
			t.Errorf("exit_code: got %v, want 3 (in %v)", got, r)
		}
		if _, ok := r["returncode"]; ok {
			t.Errorf("exec answer carries returncode, an alias only the one-shot answers keep: %v", r)
		}
	})
}
