package e2e

import (
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/airlockhq/airlock/api"
)

const carolKey = "carol-key-e2e-0123456789"

// TestPerKeyLimits: against a daemon started with a JSON key file, a key past its rate gets
// 429 with Retry-After while another key is served; a key at its concurrent-run cap gets 429
// for another run while its run is in flight and another key's run goes through; a key at its
// live-sandbox cap gets 429 and another key still creates.
func TestPerKeyLimits(t *testing.T) {
	kd := startKeysDaemon(t, "keys", `"rate":0.05,"burst":3`, "",
		`{"id":"carol","key":"`+carolKey+`","max_runs":1,"max_sandboxes":2}`)
	hc := kd.hc
	refused := func(t *testing.T, key, method, path, body, want string) {
		t.Helper()
		req, _ := httpRequest(t, kd.url+path, key, body, "refused-1")
		req.Method = method
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var eb api.ErrorBody
		json.NewDecoder(resp.Body).Decode(&eb)
		after, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		if resp.StatusCode != 429 || after < 1 || !strings.Contains(eb.Error.Message, want) || eb.Error.RequestID != "refused-1" {
			t.Fatalf("%s %s: got %d Retry-After %q %+v, want 429 with Retry-After, a message about %q and the request id",
				method, path, resp.StatusCode, resp.Header.Get("Retry-After"), eb.Error, want)
		}
	}
	t.Run("rate", func(t *testing.T) {
		for i := range 3 {
			if st := kd.call(t, aliceKey, "GET", "/v1/info", "", nil); st != 200 {
				t.Fatalf("alice's request %d: %d", i, st)
			}
		}
		refused(t, aliceKey, "GET", "/v1/info", "", "rate")
		for i := range 10 {
			if st := kd.call(t, bobKey, "GET", "/v1/info", "", nil); st != 200 {
				t.Fatalf("bob's request %d: %d, want 200 whatever alice does", i, st)
			}
		}
	})
	t.Run("runs", func(t *testing.T) {
		var wg sync.WaitGroup
		defer wg.Wait()
		var long api.ExecuteResponse
		wg.Go(func() { kd.call(t, carolKey, "POST", "/v1/execute", `{"language":"bash","code":"sleep 20"}`, &long) })
		var list api.ExecutionList
		waitFor(t, "carol's run in flight", func() bool {
			kd.call(t, carolKey, "GET", "/v1/executions", "", &list)
			return len(list.Executions) == 1
		})
		refused(t, carolKey, "POST", "/v1/execute", `{"language":"bash","code":"true"}`, "one-shot runs")
		var r api.ExecuteResponse
		if st := kd.call(t, bobKey, "POST", "/v1/execute", `{"language":"bash","code":"echo bob"}`, &r); st != 200 || r.Stdout != "bob\n" {
			t.Fatalf("bob's run while carol is at her cap: %d %+v", st, r)
		}
		kd.call(t, carolKey, "DELETE", "/v1/executions/"+list.Executions[0].ID, "", nil)
		wg.Wait()
		if st := kd.call(t, carolKey, "POST", "/v1/execute", `{"language":"bash","code":"true"}`, nil); st != 200 {
			t.Fatalf("carol's run after hers ended: %d", st)
		}
	})
	t.Run("sandboxes", func(t *testing.T) {
		for i := range 2 {
			if st := kd.call(t, carolKey, "POST", "/v1/sandboxes", `{}`, nil); st != 201 {
				t.Fatalf("carol's sandbox %d: %d", i, st)
			}
		}
		refused(t, carolKey, "POST", "/v1/sandboxes", `{}`, "live sandboxes")
		if st := kd.call(t, bobKey, "POST", "/v1/sandboxes", `{}`, nil); st != 201 {
			t.Fatalf("bob's sandbox while carol is at her cap: %d", st)
		}
	})
	var metrics string
	if st, b := keyed(t, t.Context(), hc, "GET", kd.url+"/metrics", bobKey, ""); st == 200 {
		metrics = string(b)
	}
	for _, want := range []string{`airlock_key_refusals_total{key="alice",reason="rate"} 1`, `airlock_key_refusals_total{key="carol",reason="runs"} 1`,
		`airlock_key_refusals_total{key="carol",reason="sandboxes"} 1`, `airlock_sandboxes{kind="sandbox",state="running"} 3`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
