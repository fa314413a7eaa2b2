package agentclient

import (
	"errors"
	"io"
	"testing"

	"connectrpc.com/connect"

	"github.com/airlockhq/airlock/api"
)

// TestAPIErrorOnlyMapsTheAgentsAnswers: an agent's own CodeUnavailable (one of its bounds) is
// a 429, but connect's CodeUnavailable for a connection that broke mid-answer — an agent
// SIGKILLed — passes through unmapped, so the engine can find the sandbox died (410); it was
// answered 429 "unexpected EOF".
func TestAPIErrorOnlyMapsTheAgentsAnswers(t *testing.T) {
	t.Parallel()
	wire := connect.NewWireError(connect.CodeUnavailable, errors.New("too many processes"))
	if got := api.CodeOf(apiError(wire)); got != api.CodeResourceExhausted {
		t.Errorf("the agent's own unavailable: code %q, want %q", got, api.CodeResourceExhausted)
	}
	broken := connect.NewError(connect.CodeUnavailable, io.ErrUnexpectedEOF)
	err := apiError(broken)
	var ae *api.Error
	if errors.As(err, &ae) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("a broken connection: %v (api error %v), want it unmapped", err, ae)
	}
}
