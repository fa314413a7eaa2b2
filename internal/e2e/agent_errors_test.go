package e2e

import (
	"errors"
	"testing"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// TestExecuteAgentRefusalIs400 is point 4 of the December architecture review: a one-shot
// /v1/execute whose files the agent refuses (a file inside a file: ENOTDIR or EISDIR, whichever
// is written first) was answered with an opaque 500, because the one-shot path skipped the
// mapping of agent errors. It must be a 400 with the agent's reason, as on every other path.
func TestExecuteAgentRefusalIs400(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	c := airlock.New(a.url, "")
	_, err := c.Execute(t.Context(), api.ExecuteRequest{Code: "print(1)",
		Files: map[string]string{"data": "a file", "data/inner.txt": "beneath a file"}})
	var ae *api.Error
	if !errors.As(err, &ae) {
		t.Fatalf("execute with a file beneath a file: %v, want an API error", err)
	}
	if got, want := ae.Code, api.CodeInvalidArgument; got != want {
		t.Fatalf("execute with a file beneath a file: code %q (%q), want %q", got, ae.Message, want)
	}
	// The sandbox is still usable for an ordinary run after the refusal (nothing is wedged).
	r, err := c.Execute(t.Context(), api.ExecuteRequest{Code: "print(6*7)"})
	if err != nil || r.Stdout != "42\n" {
		t.Fatalf("ordinary execute after the refusal: %+v %v", r, err)
	}
}
