package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
)

// TestAuditLogOfRealRuns: one audit line per run and lifecycle event, with the outcome the
// sandbox really had (exit code, timeout, OOM kill), the request id the client sent, the key
// id, the code's hash and size, limits and network; never the code, the env or the key.
func TestAuditLogOfRealRuns(t *testing.T) {
	kd := startKeysDaemon(t, "audit", "", "")
	const marker = "CODE-MARKER-e2e-5150"
	runs := []struct {
		name, body, outcome string
		exit                float64
	}{
		{"ok", `{"code":"print('` + marker + `')","env":{"TOKEN":"ENV-MARKER-e2e"}}`, "ok", 0},
		{"exit", `{"language":"bash","code":"exit 3"}`, "exit", 3},
		{"timeout", `{"language":"bash","code":"sleep 30","timeout":1}`, "timeout", 124},
		{"oom", `{"code":"b = bytearray(200 << 20)","memory_mb":64}`, "oom", 137},
	}
	for _, r := range runs {
		req, _ := httpRequest(t, kd.url+"/v1/execute", aliceKey, r.body, "audit-"+r.name)
		resp, err := kd.hc.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", r.name, resp, err)
		}
		resp.Body.Close()
	}
	if st := kd.call(t, aliceKey, "POST", "/v1/sandboxes", `{"network":{"mode":"block"}}`, nil); st != 201 {
		t.Fatalf("create sandbox: %d", st)
	}
	kd.stop() // the sandbox is destroyed at shutdown, and audited
	b, err := os.ReadFile(kd.auditLog)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(kd.auditLog); st.Mode().Perm() != 0o600 {
		t.Errorf("audit log mode %v, want 0600", st.Mode().Perm())
	}
	for _, leak := range []string{marker, "ENV-MARKER-e2e", aliceKey, "bytearray"} {
		if bytes.Contains(b, []byte(leak)) {
			t.Errorf("the audit log holds %q", leak)
		}
	}
	byReq := map[string]map[string]any{}
	events := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("audit line %q: %v", l, err)
		}
		events[r["event"].(string)]++
		if id, _ := r["request_id"].(string); r["event"] == "run" {
			byReq[id] = r
		}
	}
	for _, r := range runs {
		rec := byReq["audit-"+r.name]
		if rec == nil {
			t.Errorf("%s: no run record with request id audit-%s:\n%s", r.name, r.name, b)
			continue
		}
		if rec["outcome"] != r.outcome || rec["exit_code"] != r.exit || rec["key_id"] != "alice" || rec["sandbox_id"] == "" ||
			rec["code_sha256"] == "" || rec["limits"] == nil || rec["network"] == nil || rec["duration_ms"] == nil {
			t.Errorf("%s: record %v, want outcome %s, exit %v and every field", r.name, rec, r.outcome, r.exit)
		}
	}
	if sum, n := audit.Sum([]byte("print('" + marker + "')")); byReq["audit-ok"]["code_sha256"] != sum || byReq["audit-ok"]["code_bytes"] != float64(n) {
		t.Errorf("the ok run's code hash or size is wrong: %v", byReq["audit-ok"])
	}
	if byReq["audit-oom"]["oom_killed"] != true || byReq["audit-timeout"]["timed_out"] != true {
		t.Errorf("oom or timeout not flagged: %v / %v", byReq["audit-oom"], byReq["audit-timeout"])
	}
	if events["sandbox.create"] != 1 || events["sandbox.destroy"] != 1 {
		t.Errorf("lifecycle records %v, want one sandbox.create and one sandbox.destroy", events)
	}
}

func httpRequest(t *testing.T, url, key, body, requestID string) (*http.Request, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set(api.RequestIDHeader, requestID)
	return req, nil
}
