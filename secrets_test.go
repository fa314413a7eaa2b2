package airlock_test

import (
	"bytes"
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/secrets"
	"github.com/airlockhq/airlock/internal/server"
)

// TestSDKSecrets: the secret methods round-trip through the real server (values in, names
// out), and a decoded error keeps the request id the daemon answered with.
func TestSDKSecrets(t *testing.T) {
	t.Parallel()
	st, err := secrets.Open(t.TempDir(), bytes.Repeat([]byte{4}, 32))
	if err != nil {
		t.Fatal(err)
	}
	e, err := engine.New(engine.Config{Runtime: &agentRuntime{insts: map[string]*agentInstance{}}, Secrets: st})
	if err != nil {
		t.Fatal(err)
	}
	s, err := server.New(server.Config{Engine: e, Secrets: st})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() { ts.Close(); e.Close(context.Background()) })
	c, ctx := airlock.New(ts.URL, ""), t.Context()

	info, err := c.CreateSecret(ctx, "db", map[string]string{"DB_PASSWORD": "hunter2", "DB_USER": "app"})
	if err != nil || info.Name != "db" || strings.Join(info.Keys, ",") != "DB_PASSWORD,DB_USER" {
		t.Fatalf("CreateSecret: %+v, %v", info, err)
	}
	list, err := c.Secrets(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "db" {
		t.Fatalf("Secrets: %+v, %v", list, err)
	}
	if err := c.DeleteSecret(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	err = c.DeleteSecret(ctx, "db")
	var ae *api.Error
	if !errors.Is(err, api.ErrNotFound) || !errors.As(err, &ae) || !strings.HasPrefix(ae.RequestID, "req-") {
		t.Fatalf("deleting it again: %#v, want not found with the request id", err)
	}
}
