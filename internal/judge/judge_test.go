package judge

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// noRuntime refuses every sandbox: these tests stop before anything runs.
type noRuntime struct{}

func (noRuntime) Create(context.Context, engine.Spec) (engine.Instance, error) {
	return nil, errors.New("no sandboxes in unit tests")
}

const testKey = "unit-key-0123456789abcdef"

// newTestJudge serves the four APIs with one key, checked as the server checks it.
func newTestJudge(t *testing.T) (*Judge, *httptest.Server) {
	t.Helper()
	e, err := engine.New(engine.Config{Runtime: noRuntime{}})
	if err != nil {
		t.Fatal(err)
	}
	j, err := New(Config{Engine: e, Authorize: func(r *http.Request, key string) (context.Context, func(), error) {
		if key != testKey {
			return nil, nil, api.ErrUnauthenticated
		}
		return engine.WithOwner(r.Context(), "owner"), func() {}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for prefix, h := range j.Handlers() {
		mux.Handle(prefix+"/", http.StripPrefix(prefix, h))
	}
	ts := httptest.NewServer(mux)
	t.Cleanup(func() { ts.Close(); j.Close() })
	return j, ts
}

func send(t *testing.T, ts *httptest.Server, method, path, body string, headers map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, ts.URL+path, strings.NewReader(body))
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// TestRefusals checks each API's own shape for requests refused before anything runs: a
// missing or wrong key, and bad input, are clear 4xx answers its stock client can read.
func TestRefusals(t *testing.T) {
	t.Parallel()
	_, ts := newTestJudge(t)
	bearer := map[string]string{"Authorization": "Bearer " + testKey}
	for _, tc := range []struct {
		name, method, path, body string
		headers                  map[string]string
		status                   int
		want                     string // the whole body
	}{
		{"judge0 no key", "GET", "/judge0/languages", "", nil, 401, ""},
		{"judge0 wrong key", "GET", "/judge0/statuses", "", map[string]string{"X-Auth-Token": "nope"}, 401, ""},
		{"judge0 no language", "POST", "/judge0/submissions?wait=true", `{"source_code":"x"}`, bearer, 422, `{"language_id":["can't be blank"]}`},
		{"judge0 language as a string", "POST", "/judge0/submissions", `{"language_id":"150000","source_code":"x"}`, bearer, 422,
			`{"language_id":["language with id 150000 doesn't exist"]}`},
		{"judge0 wall too short", "POST", "/judge0/submissions", `{"language_id":71,"source_code":"x","wall_time_limit":0.5}`, bearer, 422,
			`{"wall_time_limit":["must be greater than or equal to 1"]}`},
		{"judge0 unterminated quote", "POST", "/judge0/submissions", `{"language_id":71,"source_code":"x","command_line_arguments":"'a"}`, bearer, 422,
			`{"command_line_arguments":["has an unterminated quote"]}`},
		{"judge0 bad base64", "POST", "/judge0/submissions?base64_encoded=true", `{"language_id":71,"source_code":"!!"}`, bearer, 422,
			`{"source_code":["is not valid base64"]}`},
		{"judge0 malformed", "POST", "/judge0/submissions", `{`, bearer, 400, `{"error":"malformed JSON: unexpected end of JSON input"}`},
		{"judge0 big batch", "POST", "/judge0/submissions/batch", `{"submissions":[` + strings.Repeat(`{},`, 20) + `{}]}`, bearer, 422,
			`{"error":"number of submissions in a batch should be less than or equal to 20"}`},
		{"judge0 unknown token", "GET", "/judge0/submissions/abc", "", bearer, 404, `{"error":"Not Found"}`},
		{"piston no key", "GET", "/piston/api/v2/runtimes", "", nil, 401, `{"message":"missing or invalid API key","success":false}`},
		{"piston no language", "POST", "/piston/api/v2/execute", `{"version":"*","files":[]}`, bearer, 400,
			`{"message":"language is required as a string","success":false}`},
		{"piston unknown runtime", "POST", "/piston/api/v2/execute", `{"language":"python","version":"1.0","files":[{"content":"x"}]}`, bearer, 400,
			`{"message":"python-1.0 runtime is unknown","success":false}`},
		{"piston timeout too long", "POST", "/piston/api/v2/execute", `{"language":"python","version":"*","files":[{"content":"x"}],"run_timeout":999999999}`, bearer, 400,
			`{"message":"run_timeout cannot exceed the configured limit of 300000","success":false}`},
		{"piston bad encoding", "POST", "/piston/api/v2/execute", `{"language":"python","version":"*","files":[{"content":"x","encoding":"rot13"}]}`, bearer, 400,
			`{"message":"files[0]: encoding \"rot13\" is not one of utf8, base64, hex","success":false}`},
		{"gojudge no key", "POST", "/gojudge/run", `{"cmd":[{"args":["true"]}]}`, nil, 401, `"missing or invalid API key"`},
		{"gojudge no cmd", "POST", "/gojudge/run", `{"cmd":[]}`, bearer, 400, `"no cmd provided"`},
		{"gojudge pipes", "POST", "/gojudge/run", `{"cmd":[{"args":["a"]},{"args":["b"]}],"pipeMapping":[{}]}`, bearer, 400,
			`"pipeMapping is not supported: each cmd runs in its own sandbox"`},
		{"gojudge host file", "POST", "/gojudge/run", `{"cmd":[{"args":["cat"],"files":[{"src":"/etc/shadow"}]}]}`, bearer, 400,
			`"cmd[0]: files[0]: only content, fileId and {name, max} collectors are supported"`},
		{"gojudge escape", "POST", "/gojudge/run", `{"cmd":[{"args":["cat"],"copyIn":{"/etc/x":{"content":"y"}}}]}`, bearer, 400,
			`"cmd[0]: copyIn: \"/etc/x\" must be a path inside the working directory"`},
		{"codapi no key", "POST", "/codapi/v1/exec", `{}`, nil, 401, `{"id":"-","ok":false,"duration":0,"stdout":"","stderr":"missing or invalid API key"}`},
		{"codapi method", "GET", "/codapi/v1/exec", "", bearer, 405, `{"id":"-","ok":false,"duration":0,"stdout":"","stderr":"method not allowed"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			status, body := send(t, ts, tc.method, tc.path, tc.body, tc.headers)
			if status != tc.status || body != tc.want {
				t.Fatalf("got %d %s, want %d %s", status, body, tc.status, tc.want)
			}
		})
	}
}

func TestShellWords(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"a b", []string{"a", "b"}},
		{`  a   "b c" 'd e'f g\ h `, []string{"a", "b c", "d ef", "g h"}},
		{`"" x`, []string{"", "x"}},
	} {
		got, err := shellWords(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("shellWords(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestVersionMatches(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		v, sel string
		want   bool
	}{
		{"3.11.2", "3.11.2", true}, {"3.11.2", "*", true}, {"3.11.2", "3.x", true}, {"3.11.2", "3", true},
		{"3.11.2", "3.11.*", true}, {"3.11.2", "3.12.x", false}, {"3.11.2", "2", false}, {"3.11.2", "3.11.2.1", false},
	} {
		if got := versionMatches(tc.v, tc.sel); got != tc.want {
			t.Errorf("versionMatches(%q, %q) = %v, want %v", tc.v, tc.sel, got, tc.want)
		}
	}
}

func TestJudge0Compare(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		out, expected string
		equal         bool
	}{
		{"42\n", "42", true}, {"42  \n\n", "42", true}, {"a \nb\n", "a\nb", true}, {"42", "43", false}, {" 42", "42", false},
	} {
		if got := j0Strip(tc.out) == j0Strip(tc.expected); got != tc.equal {
			t.Errorf("%q vs %q: got equal=%v, want %v", tc.out, tc.expected, got, tc.equal)
		}
	}
}

// TestJudge0Bounds checks the submission store: a key's oldest finished submissions make
// room, expired ones go, and pending ones are never dropped (the queue is full instead).
func TestJudge0Bounds(t *testing.T) {
	t.Parallel()
	j, _ := newTestJudge(t)
	z := newJudge0(j, Judge0Limits{PerKey: 3, Pending: 2, Retention: time.Hour})
	finished := func() *submission { return &submission{status: j0Accepted, finished: time.Now()} }
	var first *submission
	for i := range 3 {
		s := finished()
		if i == 0 {
			first = s
		}
		if err := z.store("a", s, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := z.store("a", finished(), false); err != nil {
		t.Fatalf("a fourth finished submission: %v", err)
	}
	if z.lookup("a", first.token) != nil {
		t.Error("the oldest finished submission was kept past the bound")
	}
	for range 2 {
		if err := z.storeLocked("b", []*submission{{status: j0InQueue}}, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := z.storeLocked("b", []*submission{{status: j0InQueue}}, true); !errors.Is(err, errQueueFull) {
		t.Errorf("a third pending submission: got %v, want queue full", err)
	}
	// Another key has its own bound, and cannot read a's submissions.
	if z.lookup("b", z.owners["a"].tokens[0]) != nil {
		t.Error("key b reads key a's submission")
	}
	old := finished()
	old.finished = time.Now().Add(-2 * time.Hour)
	z.store("c", old, false)
	z.store("c", finished(), false)
	if z.lookup("c", old.token) != nil {
		t.Error("an expired submission is still readable")
	}
}

func TestFileCache(t *testing.T) {
	t.Parallel()
	c := newFileCache()
	var ids []string
	for range cacheFiles + 1 {
		id, err := c.put("a", []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if _, ok := c.get("a", ids[0]); ok {
		t.Error("the oldest file outlived the count bound")
	}
	if b, ok := c.get("a", ids[len(ids)-1]); !ok || string(b) != "x" {
		t.Error("the newest file is gone")
	}
	if _, ok := c.get("b", ids[len(ids)-1]); ok {
		t.Error("another key reads a's file")
	}
	if !c.remove("a", ids[1]) || c.remove("a", ids[1]) {
		t.Error("remove is not once")
	}
}

// TestJudge0InternalError queues a submission the engine cannot run (no sandboxes here): it
// ends as Judge0's Internal Error, polled by its token, with no internal detail.
func TestJudge0InternalError(t *testing.T) {
	t.Parallel()
	_, ts := newTestJudge(t)
	auth := map[string]string{"X-Auth-Token": testKey}
	status, body := send(t, ts, "POST", "/judge0/submissions?wait=false", `{"language_id":71,"source_code":"print(1)"}`, auth)
	token, ok := strings.CutPrefix(body, `{"token":"`)
	if status != 201 || !ok {
		t.Fatalf("got %d %s, want 201 with a token", status, body)
	}
	token = strings.TrimSuffix(token, `"}`)
	for {
		_, body = send(t, ts, "GET", "/judge0/submissions/"+token+"?fields=status,message", "", auth)
		// Still In Queue (1) or Processing (2): poll again.
		if !strings.Contains(body, `"description":"In Queue"`) && !strings.Contains(body, `"description":"Processing"`) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if want := `{"message":"internal error","status":{"description":"Internal Error","id":13}}`; body != want {
		t.Fatalf("got %s, want %s", body, want)
	}
}
