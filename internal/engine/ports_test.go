package engine

import (
	"context"
	"errors"
	"testing"

	"github.com/airlockhq/airlock/api"
)

// TestPortTokensSurviveRecovery: a sandbox's port tokens are in its record, so the daemon that
// adopts it after a restart accepts them (and nothing else) as before.
func TestPortTokensSurviveRecovery(t *testing.T) {
	t.Parallel()
	e, rt := newTestEngine(t, Config{PublicPorts: true})
	ctx := WithOwner(t.Context(), "k")
	sb, err := e.CreateSandbox(ctx, SandboxSpec{Ports: []Port{{Port: 8080, Token: "chosen-by-the-caller"}, {Port: 9090, Public: true}}})
	if err != nil {
		t.Fatal(err)
	}
	ports := sb.Spec().Ports
	if len(ports) != 2 || len(ports[0].Token) != 43 || ports[0].Token == "chosen-by-the-caller" || ports[1].Token != "" {
		t.Fatalf("got ports %+v; want a fresh token for 8080 and none for the public 9090", ports)
	}
	created := rt.created[len(rt.created)-1]

	rt2 := &fakeRuntime{}
	rt2.recovered = []Recovered{{ID: sb.ID(), Inst: &fakeInstance{rt: rt2, id: sb.ID(), done: make(chan struct{})}, Meta: created.Meta}}
	e2, err := New(Config{Runtime: rt2})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close(context.Background())
	if _, _, err := e2.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		port  int
		token string
		ok    bool
	}{
		{"its token", 8080, ports[0].Token, true},
		{"a wrong token", 8080, ports[0].Token[:42] + "x", false},
		{"no token for a tokened port", 8080, "", false},
		{"the token on another port", 9090, ports[0].Token, false},
		{"the public port", 9090, "", true},
		{"a port not exposed", 7000, "", false},
	} {
		owner, err := e2.PortAccess(sb.ID(), tt.port, tt.token)
		if got := err == nil && owner == "k"; got != tt.ok {
			t.Errorf("%s: got owner %q, %v; want allowed %v", tt.name, owner, err, tt.ok)
		}
		if err != nil && !errors.Is(err, api.ErrUnauthenticated) {
			t.Errorf("%s: got %v, want unauthenticated", tt.name, err)
		}
	}
	if _, err := e2.PortAccess("sb-unknown", 8080, ports[0].Token); !errors.Is(err, api.ErrUnauthenticated) {
		t.Errorf("an unknown sandbox: got %v, want unauthenticated (not not-found)", err)
	}
}
