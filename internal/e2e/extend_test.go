package e2e

import (
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/testutil"
)

// A client extends a running sandbox's life through the API; the new expiry is bounded, and a
// daemon killed and restarted keeps it rather than the one the sandbox was created with.
func TestSandboxSetTimeoutSurvivesRestart(t *testing.T) {
	testutil.MustHaveRoot(t)
	state, err := os.MkdirTemp("", "airlock-extend-") // t.TempDir's parent is 0700: not traversable
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	cg := fmt.Sprintf("airlock-extend-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	addr := freeAddr(t)
	d := startDaemon(t, state, cg, addr)
	t.Cleanup(func() { d.stop() })

	var sb api.SandboxInfo
	if code := postJSON(t, d.url+"/v1/sandboxes", `{"timeout":60}`, &sb); code != 201 {
		t.Fatalf("create: %d", code)
	}
	for _, body := range []string{`{"timeout":0}`, `{"timeout":-5}`, `{"timeout":1e12}`, `{"timeout":"x"}`} {
		t.Run(body, func(t *testing.T) {
			if code := postJSON(t, d.url+"/v1/sandboxes/"+sb.ID+"/timeout", body, nil); code != 400 {
				t.Errorf("got %d, want 400", code)
			}
		})
	}
	if code := postJSON(t, d.url+"/v1/sandboxes/sb-nonexistent/timeout", `{"timeout":10}`, nil); code != 404 {
		t.Errorf("unknown sandbox: got %d, want 404", code)
	}
	before := time.Now()
	var ext api.SandboxInfo
	if code := postJSON(t, d.url+"/v1/sandboxes/"+sb.ID+"/timeout", `{"timeout":3600}`, &ext); code != 200 {
		t.Fatalf("set timeout: %d", code)
	}
	if ext.ExpiresAt.Before(before.Add(3600*time.Second)) || ext.ExpiresAt.After(time.Now().Add(3600*time.Second)) {
		t.Fatalf("expires_at %v, want now + 3600 s (created expiring %v)", ext.ExpiresAt, sb.ExpiresAt)
	}

	d.kill()
	d = startDaemon(t, state, cg, addr)
	var info api.SandboxInfo
	resp, err := http.Get(d.url + "/v1/sandboxes/" + sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	decodeJSON(t, resp, &info)
	if !info.ExpiresAt.Equal(ext.ExpiresAt) {
		t.Fatalf("after restart expires_at %v, want the extended %v", info.ExpiresAt, ext.ExpiresAt)
	}
}
