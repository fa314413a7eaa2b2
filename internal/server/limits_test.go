package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/secrets"
)

// syncBuffer is a bytes.Buffer safe for the concurrent writes of loggers and the audit log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// keyedServer is a server with the given keys over rt, its logs, audit log and (with a
// secrets store) secrets captured.
type keyedServer struct {
	srv         *Server
	ts          *httptest.Server
	logs, audit *syncBuffer
	secretsDir  string
}

func newKeyedServer(t *testing.T, rt engine.Runtime, withSecrets bool, keys ...Key) *keyedServer {
	t.Helper()
	ks := &keyedServer{logs: &syncBuffer{}, audit: &syncBuffer{}}
	logger := slog.New(audit.NewLogHandler(slog.NewJSONHandler(ks.logs, nil)))
	var fan audit.Fanout
	al := audit.New(ks.audit)
	fan.Add(al)
	ec := engine.Config{Runtime: rt, Logger: logger, Audit: &fan, MaxConcurrent: 8, MaxConcurrentPerOwner: 8}
	sc := Config{Logger: logger, Keys: keys, Audit: al}
	if withSecrets {
		ks.secretsDir = filepath.Join(t.TempDir(), "secrets")
		st, err := secrets.Open(ks.secretsDir, bytes.Repeat([]byte{7}, 32))
		if err != nil {
			t.Fatal(err)
		}
		ec.Secrets, sc.Secrets = st, st
	}
	e, err := engine.New(ec)
	if err != nil {
		t.Fatal(err)
	}
	sc.Engine = e
	s, err := New(sc)
	if err != nil {
		t.Fatal(err)
	}
	fan.Add(s.AuditSink())
	ks.srv = s
	ks.ts = httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		ks.ts.Close()
		e.Close(context.Background())
	})
	return ks
}

// call sends a request with key and returns the status, the Retry-After and the body.
func (ks *keyedServer) call(t *testing.T, key, method, path, body string, hdr ...string) (int, string, []byte, http.Header) {
	t.Helper()
	return ks.callCtx(t.Context(), t, key, method, path, body, hdr...)
}

// callCtx is call under ctx: a request that should be refused at once, but would block in the
// runtime if it were not, is bounded by ctx's deadline, so the test fails instead of hanging.
func (ks *keyedServer) callCtx(ctx context.Context, t *testing.T, key, method, path, body string, hdr ...string) (int, string, []byte, http.Header) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, method, ks.ts.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := ks.ts.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v (not refused at once?)", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), b, resp.Header
}

func limitedKey(id, key string, l KeyLimits) Key {
	k := PlainKey(key)
	k.ID, k.Limits = id, l
	return k
}

const (
	aliceKey = "alice-key-0123456789abcdef"
	bobKey   = "bob-key-0123456789abcdefgh"
)

// TestKeyRateLimit: a key past its rate gets 429 with a Retry-After of the bucket's wait,
// while another key's requests go through.
func TestKeyRateLimit(t *testing.T) {
	t.Parallel()
	ks := newKeyedServer(t, agentRuntime{}, false,
		limitedKey("alice", aliceKey, KeyLimits{Rate: 0.01, Burst: 2}), limitedKey("bob", bobKey, KeyLimits{}))
	for i := range 2 {
		if st, _, b, _ := ks.call(t, aliceKey, "GET", "/v1/info", ""); st != 200 {
			t.Fatalf("alice request %d: got %d %s, want 200 within the burst", i, st, b)
		}
	}
	st, after, b, _ := ks.call(t, aliceKey, "GET", "/v1/info", "")
	n, _ := strconv.Atoi(after)
	if st != http.StatusTooManyRequests || n < 90 || !strings.Contains(string(b), "rate") {
		t.Fatalf("alice past her burst: got %d Retry-After %q %s, want 429 with a Retry-After near 100 s naming the rate", st, after, b)
	}
	for i := range 5 {
		if st, _, b, _ := ks.call(t, bobKey, "GET", "/v1/info", ""); st != 200 {
			t.Fatalf("bob request %d: got %d %s, want 200: alice's rate is hers", i, st, b)
		}
	}
	if _, _, m, _ := ks.call(t, bobKey, "GET", "/metrics", ""); !strings.Contains(string(m), `airlock_key_refusals_total{key="alice",reason="rate"} 1`) {
		t.Errorf("metrics do not count alice's refusal:\n%s", grepLines(string(m), "refusals"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestKeyRunCap: a key at its max_runs gets 429 at once for another one-shot, and another
// key's run still starts.
func TestKeyRunCap(t *testing.T) {
	t.Parallel()
	rt := &blockingRuntime{release: make(chan struct{}), entered: make(chan struct{}, 4)}
	ks := newKeyedServer(t, rt, false,
		limitedKey("alice", aliceKey, KeyLimits{MaxRuns: 1}), limitedKey("bob", bobKey, KeyLimits{MaxRuns: 1}))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(rt.release) // before the wait: the runs block in the runtime until then
	wg.Go(func() { ks.call(t, aliceKey, "POST", "/v1/execute", `{"code":"1"}`) })
	<-rt.entered // alice's run holds her one slot
	// Refused at once; without the cap it would wait in the runtime, cut by this deadline.
	bounded, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, after, b, _ := ks.callCtx(bounded, t, aliceKey, "POST", "/v1/execute", `{"code":"1"}`)
	if st != http.StatusTooManyRequests || after == "" || !strings.Contains(string(b), "one-shot runs") {
		t.Fatalf("alice's second run: got %d Retry-After %q %s, want 429 naming her run limit", st, after, b)
	}
	st, _, b, _ = ks.callCtx(bounded, t, aliceKey, "POST", "/v1/execute/batch", `{"snippets":[{"code":"1"},{"code":"2"}]}`)
	if st != http.StatusTooManyRequests {
		t.Fatalf("alice's batch with no run free: got %d %s, want 429", st, b)
	}
	wg.Go(func() { ks.call(t, bobKey, "POST", "/v1/execute", `{"code":"1"}`) })
	<-rt.entered // bob's run reached the runtime: alice's cap is not his
}

// TestKeySandboxCaps: max_sandboxes and max_sessions refuse the next creation with 429 and
// count only the key's own; ending one frees its place.
func TestKeySandboxCaps(t *testing.T) {
	t.Parallel()
	ks := newKeyedServer(t, agentRuntime{}, false,
		limitedKey("alice", aliceKey, KeyLimits{MaxSandboxes: 2, MaxSessions: 1}), limitedKey("bob", bobKey, KeyLimits{MaxSandboxes: 1}))
	var ids []string
	for i := range 2 {
		st, _, b, _ := ks.call(t, aliceKey, "POST", "/v1/sandboxes", `{}`)
		var info api.SandboxInfo
		json.Unmarshal(b, &info)
		if st != 201 {
			t.Fatalf("alice's sandbox %d: got %d %s, want 201", i, st, b)
		}
		ids = append(ids, info.ID)
	}
	if st, after, b, _ := ks.call(t, aliceKey, "POST", "/v1/sandboxes", `{}`); st != 429 || after == "" || !strings.Contains(string(b), "live sandboxes") {
		t.Fatalf("alice's third sandbox: got %d Retry-After %q %s, want 429", st, after, b)
	}
	if st, _, b, _ := ks.call(t, aliceKey, "POST", "/v1/sessions", `{}`); st != 201 {
		t.Fatalf("alice's session: got %d %s, want 201 (sessions have their own cap)", st, b)
	}
	if st, _, b, _ := ks.call(t, aliceKey, "POST", "/v1/sessions", `{}`); st != 429 {
		t.Fatalf("alice's second session: got %d %s, want 429", st, b)
	}
	if st, _, b, _ := ks.call(t, bobKey, "POST", "/v1/sandboxes", `{}`); st != 201 {
		t.Fatalf("bob's sandbox: got %d %s, want 201", st, b)
	}
	if st, _, b, _ := ks.call(t, aliceKey, "DELETE", "/v1/sandboxes/"+ids[0], ""); st != 200 {
		t.Fatalf("delete: got %d %s", st, b)
	}
	if st, _, b, _ := ks.call(t, aliceKey, "POST", "/v1/sandboxes", `{}`); st != 201 {
		t.Fatalf("alice's sandbox after ending one: got %d %s, want 201", st, b)
	}
}

// TestKeySandboxCapConcurrent: creations racing at the cap make exactly the cap's number.
func TestKeySandboxCapConcurrent(t *testing.T) {
	t.Parallel()
	ks := newKeyedServer(t, agentRuntime{}, false, limitedKey("alice", aliceKey, KeyLimits{MaxSandboxes: 3}))
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			st, _, _, _ := ks.call(t, aliceKey, "POST", "/v1/sandboxes", `{}`)
			mu.Lock()
			codes[st]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if codes[201] != 3 || codes[429] != 7 {
		t.Fatalf("10 racing creations at a cap of 3: got %v, want 3 × 201 and 7 × 429", codes)
	}
}

// TestRequestID: a client's id is kept, a malformed one replaced; either is in the header,
// the error body and the log lines of the request.
func TestRequestID(t *testing.T) {
	t.Parallel()
	ks := newKeyedServer(t, agentRuntime{}, false, limitedKey("alice", aliceKey, KeyLimits{}))
	cases := []struct{ name, sent, want string }{
		{"kept", "client-id:42.a_b", "client-id:42.a_b"},
		{"malformed", "bad id\" with spaces", ""},
		{"too long", strings.Repeat("a", 129), ""},
		{"none", "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, _, b, h := ks.call(t, aliceKey, "POST", "/v1/execute", `{"code":""}`, api.RequestIDHeader, c.sent)
			var eb api.ErrorBody
			json.Unmarshal(b, &eb)
			got := h.Get(api.RequestIDHeader)
			if c.want != "" && got != c.want || c.want == "" && (!strings.HasPrefix(got, "req-") || len(got) != 28) {
				t.Fatalf("header %q, want %q (or a new req- id)", got, c.want)
			}
			if st != 400 || eb.Error.RequestID != got {
				t.Fatalf("error body %s (status %d): request_id is not %q", b, st, got)
			}
		})
	}
	st, _, b, h := ks.call(t, aliceKey, "POST", "/v1/sandboxes", `{}`, api.RequestIDHeader, "create-1")
	if st != 201 || h.Get(api.RequestIDHeader) != "create-1" {
		t.Fatalf("create: %d %s", st, b)
	}
	var line map[string]any
	for _, l := range strings.Split(ks.logs.String(), "\n") {
		if strings.Contains(l, `"sandbox created"`) {
			json.Unmarshal([]byte(l), &line)
		}
	}
	if line["request_id"] != "create-1" || line["key_id"] != "alice" {
		t.Fatalf("the engine's log line of the create has request_id %v and key_id %v, want create-1 and alice:\n%s", line["request_id"], line["key_id"], ks.logs.String())
	}
	if !strings.Contains(ks.audit.String(), `"request_id":"create-1","key_id":"alice","event":"sandbox.create"`) {
		t.Fatalf("no audit record of the create with its ids:\n%s", ks.audit.String())
	}
}

// TestAuditRecords: one line per run with its hash, size, limits, network and outcome, and
// neither the code, its output, an env value nor the key.
func TestAuditRecords(t *testing.T) {
	t.Parallel()
	ks := newKeyedServer(t, agentRuntime{}, false, limitedKey("alice", aliceKey, KeyLimits{}))
	code := "print('CODE-MARKER-77')"
	if st, _, b, _ := ks.call(t, aliceKey, "POST", "/v1/execute", `{"code":"`+strings.ReplaceAll(code, "'", `\u0027`)+`","env":{"TOKEN":"ENV-MARKER-88"},"memory_mb":128}`); st != 200 {
		t.Fatalf("execute: %d %s", st, b)
	}
	if st, _, b, _ := ks.call(t, aliceKey, "POST", "/v1/execute/batch", `{"snippets":[{"code":"1"},{"code":"2"}]}`); st != 200 {
		t.Fatalf("batch: %d %s", st, b)
	}
	log := ks.audit.String()
	for _, leak := range []string{"CODE-MARKER-77", "ENV-MARKER-88", aliceKey} {
		if strings.Contains(log, leak) {
			t.Errorf("the audit log holds %q:\n%s", leak, log)
		}
	}
	var runs, items int
	for _, l := range strings.Split(strings.TrimSpace(log), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("audit line %q is not JSON: %v", l, err)
		}
		switch r["event"] {
		case "run":
			runs++
			sum, size := audit.Sum([]byte(code))
			lim, _ := r["limits"].(map[string]any)
			net, _ := r["network"].(map[string]any)
			if r["code_sha256"] != sum || r["code_bytes"] != float64(size) || r["key_id"] != "alice" || r["exit_code"] != float64(0) ||
				r["outcome"] != "ok" || lim["memory_bytes"] != float64(128<<20) || net["mode"] != "block" || r["sandbox_id"] == "" ||
				r["output_bytes"] == nil || r["request_id"] == "" {
				t.Errorf("run record %s lacks a field or has a wrong one", l)
			}
		case "batch_item":
			items++
		}
	}
	if runs != 1 || items != 2 {
		t.Fatalf("got %d run and %d batch_item records, want 1 and 2:\n%s", runs, items, log)
	}
}

// TestSecretsAPI: values go in and never come out (answers, the audit log, the file on disk),
// a key sees only its own secrets, and a daemon without a secrets key answers 501.
func TestSecretsAPI(t *testing.T) {
	t.Parallel()
	ks := newKeyedServer(t, agentRuntime{}, true, limitedKey("alice", aliceKey, KeyLimits{}), limitedKey("bob", bobKey, KeyLimits{}))
	const value = "sk-VALUE-MARKER-4242"
	var answers []byte
	add := func(st int, _ string, b []byte, _ http.Header) int { answers = append(answers, b...); return st }
	if st := add(ks.call(t, aliceKey, "POST", "/v1/secrets", `{"name":"openai","values":{"OPENAI_API_KEY":"`+value+`"}}`)); st != 201 {
		t.Fatalf("create: %d %s", st, answers)
	}
	st, _, list, _ := ks.call(t, aliceKey, "GET", "/v1/secrets", "")
	answers = append(answers, list...)
	if st != 200 || !strings.Contains(string(list), `"name":"openai","keys":["OPENAI_API_KEY"]`) {
		t.Fatalf("list: %d %s", st, list)
	}
	if _, _, b, _ := ks.call(t, bobKey, "GET", "/v1/secrets", ""); string(bytes.TrimSpace(b)) != `{"secrets":[]}` {
		t.Fatalf("bob lists %s, want none of alice's", b)
	}
	if st := add(ks.call(t, bobKey, "POST", "/v1/execute", `{"code":"1","secrets":["openai"]}`)); st != 404 {
		t.Fatalf("bob naming alice's secret: got %d, want 404", st)
	}
	if st := add(ks.call(t, aliceKey, "POST", "/v1/execute", `{"code":"1","secrets":["openai"]}`)); st != 200 {
		t.Fatalf("alice's run with her secret: got %d %s", st, answers)
	}
	for _, bad := range []string{`{"name":"../x","values":{"A":"b"}}`, `{"name":"ok","values":{}}`, `{"name":"ok","values":{"A=B":"c"}}`} {
		if st := add(ks.call(t, aliceKey, "POST", "/v1/secrets", bad)); st != 400 {
			t.Errorf("create %s: got %d, want 400", bad, st)
		}
	}
	var files []byte
	filepath.WalkDir(ks.secretsDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			files = append(files, b...)
		}
		return nil
	})
	if len(files) == 0 {
		t.Fatal("no secret file on disk")
	}
	for what, b := range map[string][]byte{"an answer": answers, "the audit log": []byte(ks.audit.String()), "the logs": []byte(ks.logs.String()),
		"the file on disk": files} {
		if bytes.Contains(b, []byte(value)) || bytes.Contains(b, []byte("OPENAI_API_KEY")) && what == "the file on disk" {
			t.Errorf("%s holds the secret", what)
		}
	}
	if st, _, b, _ := ks.call(t, aliceKey, "DELETE", "/v1/secrets/openai", ""); st != 204 {
		t.Fatalf("delete: %d %s", st, b)
	}
	if st, _, _, _ := ks.call(t, aliceKey, "POST", "/v1/execute", `{"code":"1","secrets":["openai"]}`); st != 404 {
		t.Fatalf("a run naming a deleted secret: got %d, want 404", st)
	}
	off := newKeyedServer(t, agentRuntime{}, false, limitedKey("alice", aliceKey, KeyLimits{}))
	for _, c := range [][2]string{{"GET", "/v1/secrets"}, {"POST", "/v1/execute"}} {
		body := `{"code":"1","secrets":["x"]}`
		if st, _, b, _ := off.call(t, aliceKey, c[0], c[1], body); st != 501 || !strings.Contains(string(b), "--secrets-key-file") {
			t.Errorf("%s %s without a secrets key: got %d %s, want 501 naming --secrets-key-file", c[0], c[1], st, b)
		}
	}
}

func TestParseKeyFile(t *testing.T) {
	t.Parallel()
	good := `{"defaults":{"rate":10,"max_runs":2},"keys":[{"id":"alice","key":"` + aliceKey + `","rate":1,"cpu_seconds":60,"cpu_period":"10m"},{"sha256":"` + strings.Repeat("ab", 32) + `"}]}`
	keys, err := ParseKeyFile([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0].ID != "alice" || keys[0].Limits != (KeyLimits{Rate: 1, MaxRuns: 2, CPUSeconds: 60, CPUPeriod: 10 * 60e9}) ||
		keys[1].ID != "key-abababab" || keys[1].Limits.Rate != 10 || keys[0].Hash != PlainKey(aliceKey).Hash {
		t.Fatalf("got %+v", keys)
	}
	yml := "# keys\ndefaults:\n  rate: 10\n  max_runs: 2\nkeys:\n  - id: alice\n    key: " + aliceKey + "\n    rate: 1\n    cpu_seconds: 60\n    cpu_period: 10m\n  - sha256: " + strings.Repeat("ab", 32) + "\n"
	if !StructuredKeys([]byte(yml)) || !StructuredKeys([]byte(good)) || StructuredKeys([]byte("# plain\n"+aliceKey+"\n")) {
		t.Fatal("StructuredKeys does not tell the forms apart")
	}
	fromYAML, err := ParseKeyFile([]byte(yml))
	if err != nil || len(fromYAML) != 2 || fromYAML[0] != keys[0] || fromYAML[1] != keys[1] {
		t.Fatalf("the YAML form: got %+v, %v; want %+v", fromYAML, err, keys)
	}
	for _, bad := range []string{`{}`, `{"keys":[{"id":"x"}]}`, `{"keys":[{"key":"short"}]}`, `{"keys":[{"key":"` + aliceKey + `","rate":-1}]}`,
		`{"keys":[{"key":"` + aliceKey + `"},{"key":"` + aliceKey + `"}]}`, `{"keys":[{"key":"` + aliceKey + `","evil":1}]}`,
		`{"keys":[{"key":"` + aliceKey + `","cpu_period":"1ms"}]}`, `{"keys":[{"id":"a b","key":"` + aliceKey + `"}]}`} {
		if _, err := ParseKeyFile([]byte(bad)); err == nil {
			t.Errorf("ParseKeyFile(%s) accepted it", bad)
		}
	}
}

// cpuRuntime's sandboxes report 2 s of CPU time each.
type cpuRuntime struct{ agentRuntime }

type cpuInstance struct{ *agentInstance }

func (r cpuRuntime) Create(ctx context.Context, s engine.Spec) (engine.Instance, error) {
	inst, _ := r.agentRuntime.Create(ctx, s)
	return cpuInstance{inst.(*agentInstance)}, nil
}

func (cpuInstance) Usage() (engine.Usage, error) { return engine.Usage{CPUTime: 2e9}, nil }

// TestKeyCPUBudget: once a key's runs have used its CPU seconds, work-starting requests get
// 429 with the rest of the period as Retry-After; other requests and other keys go on.
func TestKeyCPUBudget(t *testing.T) {
	t.Parallel()
	ks := newKeyedServer(t, cpuRuntime{}, false,
		limitedKey("alice", aliceKey, KeyLimits{CPUSeconds: 3, CPUPeriod: time.Hour}), limitedKey("bob", bobKey, KeyLimits{}))
	for i := range 2 { // 2 s, then 4 s: the second run starts within the budget and ends past it
		if st, _, b, _ := ks.call(t, aliceKey, "POST", "/v1/execute", `{"code":"1"}`); st != 200 {
			t.Fatalf("run %d: %d %s", i, st, b)
		}
	}
	st, after, b, _ := ks.call(t, aliceKey, "POST", "/v1/sandboxes", `{}`)
	if n, _ := strconv.Atoi(after); st != 429 || n < 3500 || !strings.Contains(string(b), "CPU seconds") {
		t.Fatalf("alice past her CPU budget: got %d Retry-After %q %s, want 429 with the period's rest", st, after, b)
	}
	if st, _, _, _ := ks.call(t, aliceKey, "GET", "/v1/sandboxes", ""); st != 200 {
		t.Fatalf("a listing past the budget: %d, want 200 (it starts no work)", st)
	}
	var info api.Info
	_, _, b, _ = ks.call(t, aliceKey, "GET", "/v1/info", "")
	if json.Unmarshal(b, &info); info.Key == nil || *info.Key != (api.KeyInfo{ID: "alice", CPUSeconds: 3, CPUPeriod: 3600, CPUUsed: 4}) {
		t.Fatalf("GET /v1/info shows the key as %+v, want its id, budget and use", info.Key)
	}
	if st, _, _, _ := ks.call(t, bobKey, "POST", "/v1/execute", `{"code":"1"}`); st != 200 {
		t.Fatalf("bob's run: %d", st)
	}
}

// TestKeyRateCoversFrontEnds: the judge APIs authenticate on their own (X-Auth-Token here), and
// a key's rate binds them as it binds /v1 (AdmitOwner; Modal and E2B call the same).
func TestKeyRateCoversFrontEnds(t *testing.T) {
	t.Parallel()
	ks := newKeyedServer(t, agentRuntime{}, false,
		limitedKey("alice", aliceKey, KeyLimits{Rate: 0.01, Burst: 2}), limitedKey("bob", bobKey, KeyLimits{}))
	get := func(key string) int {
		req, _ := http.NewRequest("GET", ks.ts.URL+"/judge0/languages", nil)
		req.Header.Set("X-Auth-Token", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := range 2 {
		if st := get(aliceKey); st != 200 {
			t.Fatalf("alice's Judge0 request %d: %d, want 200 within her burst", i, st)
		}
	}
	if st := get(aliceKey); st != http.StatusTooManyRequests {
		t.Fatalf("alice past her burst through Judge0: %d, want 429", st)
	}
	if st := get(bobKey); st != 200 {
		t.Fatalf("bob through Judge0: %d, want 200: alice's rate is hers", st)
	}
}

// TestHoldCreateAppliesKeyQuotas: the quotas front ends apply through HoldCreate (Modal's and
// E2B's creates) are the key's: its live-sandbox cap counts what /v1 made too, and another key
// is not bound by it.
func TestHoldCreateAppliesKeyQuotas(t *testing.T) {
	t.Parallel()
	ks := newKeyedServer(t, agentRuntime{}, false,
		limitedKey("alice", aliceKey, KeyLimits{MaxSandboxes: 1}), limitedKey("bob", bobKey, KeyLimits{}))
	if st, _, b, _ := ks.call(t, aliceKey, "POST", "/v1/sandboxes", `{}`); st != http.StatusCreated {
		t.Fatalf("alice's first sandbox: %d %s", st, b)
	}
	alice, bob := ks.srv.keys[0].owner, ks.srv.keys[1].owner
	if _, err := ks.srv.HoldCreate(engine.WithOwner(t.Context(), alice), alice, false); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("a front end's create for alice at her cap: %v, want a refusal naming the limit", err)
	} else if retryAfter(err) < 1 {
		t.Errorf("the refusal carries no Retry-After: %v", err)
	}
	release, err := ks.srv.HoldCreate(engine.WithOwner(t.Context(), bob), bob, false)
	if err != nil {
		t.Fatalf("bob's create: %v, want held: alice's cap is hers", err)
	}
	release()
	if release, err := ks.srv.HoldCreate(engine.WithOwner(t.Context(), alice), alice, true); err != nil {
		t.Errorf("alice's session (no session cap): %v, want held", err)
	} else {
		release()
	}
}
