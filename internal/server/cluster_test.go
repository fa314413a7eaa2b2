package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/modal-labs/modal-client/go/proto/modal_proto"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/airlockhq/airlock/internal/engine"
)

// fakeCluster answers Locate from a table and Candidates with place, for every need.
type fakeCluster struct {
	locs   map[string]ClusterLocation
	place  *ClusterLocation
	cands  []ClusterLocation      // when set, Candidates' answer instead of place
	offers func(ClusterNeed) bool // nil offers everything
	// rateElsewhere and up are RateElsewhere's answer.
	rateElsewhere float64
	up            int
}

func (f *fakeCluster) ID() string { return "self" }

func (f *fakeCluster) Locate(_ context.Context, id string) (ClusterLocation, error) {
	return f.locs[id], nil
}

func (f *fakeCluster) Offers(need ClusterNeed) bool { return f.offers == nil || f.offers(need) }

func (f *fakeCluster) Candidates(ClusterNeed) []ClusterLocation {
	if f.cands != nil {
		return f.cands
	}
	if f.place == nil {
		return nil
	}
	return []ClusterLocation{*f.place}
}

func (f *fakeCluster) LiveOf(context.Context, string, bool) (int, error) {
	return 0, errors.New("no registry")
}

func (f *fakeCluster) Claim(context.Context, string) (ClusterLocation, error) {
	return ClusterLocation{}, errors.New("no registry")
}

func (f *fakeCluster) View() ClusterView { return ClusterView{Node: "self"} }

func (f *fakeCluster) CPUElsewhere(string, time.Time) float64 { return 0 }

func (f *fakeCluster) RateElsewhere(string) (float64, int) { return f.rateElsewhere, max(f.up, 1) }

// seen is what the peer node of TestClusterRouting was asked.
type seen struct {
	Method, Path, Query, Auth, Hop, Body string
}

// TestClusterRouting: the routing middleware proxies an id another live node holds (path,
// query, body and the caller's key unchanged, marked as a hop), serves a hop and unknown ids
// locally, answers a gone node's id 410 to its owner only (404 to another key, 401 without
// one), 503 when the holder cannot be reached, and forwards a create only when this node is
// full.
func TestClusterRouting(t *testing.T) {
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		json.NewEncoder(w).Encode(seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Authorization"),
			r.Header.Get(ClusterHopHeader), string(b)})
	}))
	defer peer.Close()
	peerURL, _ := url.Parse(peer.URL)
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL, _ := url.Parse(closed.URL)
	closed.Close()

	const otherKey = "other-key-0123456789abcdef"
	owner := newKeyState(PlainKey(testKey)).owner
	fc := &fakeCluster{locs: map[string]ClusterLocation{
		"sb-peer":  {Known: true, Node: "peer", Owner: owner, API: peerURL},
		"sb-gone":  {Known: true, Node: "b", Owner: owner, Gone: "node b is gone: no heartbeat for 9s"},
		"sb-dead":  {Known: true, Node: "c", Owner: owner, API: closedURL},
		"sb-local": {Known: true, Local: true, Node: "self", Owner: owner},
	}, place: &ClusterLocation{Known: true, Node: "peer", API: peerURL, Free: 1}}
	rt := &blockingRuntime{release: make(chan struct{}), entered: make(chan struct{}, 1)}
	e, err := engine.New(engine.Config{Runtime: rt, MaxSandboxes: 1, MaxSandboxesPerOwner: 1})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Engine: e, APIKeys: []string{testKey, otherKey}, Cluster: fc})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	bearer := func(k string) map[string]string { return map[string]string{"Authorization": "Bearer " + k} }

	for _, tc := range []struct {
		name, method, path, key string
		hop                     bool
		status                  int
		proxied                 bool   // the peer answered
		msg                     string // in the error message
	}{
		{"proxied", "POST", "/v1/sandboxes/sb-peer/exec?x=1", testKey, false, 200, true, ""},
		{"session proxied", "POST", "/v1/sessions/sb-peer/run", testKey, false, 200, true, ""},
		{"port route proxied without a key", "GET", "/v1/sandboxes/sb-peer/ports/8000/", "", false, 200, true, ""},
		{"a hop is served here", "GET", "/v1/sandboxes/sb-peer", testKey, true, 404, false, "no sandbox"},
		{"unknown id is served here", "GET", "/v1/sandboxes/sb-unknown", testKey, false, 404, false, "no sandbox"},
		{"own id is served here", "GET", "/v1/sandboxes/sb-local", testKey, false, 404, false, "no sandbox"},
		{"gone node: 410 to its owner", "GET", "/v1/sandboxes/sb-gone/files?path=/x", testKey, false, 410, false, "node b is gone"},
		{"gone node: 404 to another key", "GET", "/v1/sandboxes/sb-gone", otherKey, false, 404, false, "no sandbox"},
		{"gone node: 401 without a key", "GET", "/v1/sandboxes/sb-gone", "", false, 401, false, ""},
		{"no key: 401 here, never proxied", "POST", "/v1/sandboxes/sb-peer/exec", "", false, 401, false, ""},
		{"holder unreachable: 503", "GET", "/v1/sandboxes/sb-dead", testKey, false, 503, false, "node c"},
		{"the list is local", "GET", "/v1/sandboxes", testKey, false, 200, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tc.key != "" {
				hdr = bearer(tc.key)
			}
			if tc.hop {
				hdr[ClusterHopHeader] = "other"
			}
			resp, eb := do(t, ts, tc.method, tc.path, `{"cmd":["true"]}`, hdr)
			if resp.StatusCode != tc.status || !strings.Contains(eb.Error.Message, tc.msg) {
				t.Fatalf("%s %s: %d %q, want %d %q", tc.method, tc.path, resp.StatusCode, eb.Error.Message, tc.status, tc.msg)
			}
		})
	}

	// What the peer got, through a request of our own (do discards 200 bodies).
	req, _ := http.NewRequestWithContext(t.Context(), "POST", ts.URL+"/v1/sandboxes/sb-peer/exec?x=1", strings.NewReader(`{"cmd":["true"]}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	got := doSeen(t, req)
	if want := (seen{"POST", "/v1/sandboxes/sb-peer/exec", "x=1", "Bearer " + testKey, "self", `{"cmd":["true"]}`}); got != want {
		t.Errorf("the peer got %+v, want %+v", got, want)
	}

	// Full (one slot, held by a create in flight): a create goes to the node Place names.
	filled := make(chan struct{})
	go func() {
		defer close(filled)
		req, _ := http.NewRequestWithContext(t.Context(), "POST", ts.URL+"/v1/sandboxes", strings.NewReader(`{}`))
		req.Header.Set("Authorization", "Bearer "+otherKey)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-rt.entered
	defer func() { close(rt.release); <-filled }()
	req, _ = http.NewRequestWithContext(t.Context(), "POST", ts.URL+"/v1/sandboxes", strings.NewReader(`{"timeout":60}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	if got := doSeen(t, req); got.Path != "/v1/sandboxes" || got.Body != `{"timeout":60}` || got.Hop != "self" {
		t.Errorf("create on a full node: the peer got %+v, want the create forwarded whole", got)
	}
}

// doSeen does req and decodes what the peer saw.
func doSeen(t *testing.T, req *http.Request) seen {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got seen
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%s %s: %d %v, want the peer's 200", req.Method, req.URL.Path, resp.StatusCode, err)
	}
	return got
}

func TestRoutedID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		path, id string
		keyed    bool
	}{
		{"/v1/sandboxes/sb-1", "sb-1", true},
		{"/v1/sandboxes/sb-1/exec/ws", "sb-1", true},
		{"/v1/sessions/sb-2/run", "sb-2", true},
		{"/v1/sandboxes/sb-1/ports/80/x", "sb-1", false},
		{"/v1/sandboxes/sb-1/tunnels/80", "sb-1", false},
		{"/v1/sandboxes", "", false},
		{"/v1/sandboxes/", "", true},
		{"/v1/execute", "", false},
	} {
		if id, keyed := routedID(tc.path); id != tc.id || (id != "" && keyed != tc.keyed) {
			t.Errorf("routedID(%q) = %q, %v; want %q, %v", tc.path, id, keyed, tc.id, tc.keyed)
		}
	}
}

// TestClusterPlacement: a node with no free one-shot slot refuses a hop at once (429 marked
// refused, nothing started) and, as the entry node, tries the next candidate after a refusal
// and skips one with no room; a run naming an image this node lacks goes to a node that has
// it, or is a 429 when every such node refuses.
func TestClusterPlacement(t *testing.T) {
	var asked []string
	var mu sync.Mutex
	peer := func(name string, refuse bool) ClusterLocation {
		ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			asked = append(asked, name)
			mu.Unlock()
			if refuse {
				w.Header().Set(ClusterRefusedHeader, "full")
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			json.NewEncoder(w).Encode(seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Authorization"), r.Header.Get(ClusterHopHeader), string(b)})
		}))
		t.Cleanup(ts.Close)
		u, _ := url.Parse(ts.URL)
		return ClusterLocation{Known: true, Node: name, API: u, Free: 1}
	}
	full, roomy, busy := peer("full", true), peer("roomy", false), peer("busy", false)
	busy.Free = 0
	fc := &fakeCluster{cands: []ClusterLocation{busy, full, roomy}}
	rt := &blockingRuntime{release: make(chan struct{}), entered: make(chan struct{}, 1)}
	e, err := engine.New(engine.Config{Runtime: rt, MaxConcurrent: 1, MaxConcurrentPerOwner: 1, MaxSandboxes: 1, MaxSandboxesPerOwner: 1})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Engine: e, APIKeys: []string{testKey}, Cluster: fc})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	request := func(path, body string, hop bool) *http.Request {
		req, _ := http.NewRequestWithContext(t.Context(), "POST", ts.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testKey)
		if hop {
			req.Header.Set(ClusterHopHeader, "other")
		}
		return req
	}
	post := func(path, body string, hop bool) *http.Response {
		resp, err := http.DefaultClient.Do(request(path, body, hop))
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	// A run in flight holds the one slot (a hop: served here, never forwarded).
	held := make(chan struct{})
	go func() {
		defer close(held)
		resp := post("/v1/execute", `{"code":"print(1)"}`, true)
		resp.Body.Close()
	}()
	<-rt.entered
	defer func() { close(rt.release); <-held }()

	for _, tc := range []struct {
		name, path, body string
		hop              bool
		status           int
		refused          bool
		asked            string // the peers asked, in order
	}{
		{"hop run on a full node: refused at once", "/v1/execute", `{"code":"print(1)"}`, true, 429, true, ""},
		{"run on a full node: the next node with room after a refusal", "/v1/execute", `{"code":"print(2)"}`, false, 200, false, "full roomy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			asked = nil
			resp := post(tc.path, tc.body, tc.hop)
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || (resp.Header.Get(ClusterRefusedHeader) != "") != tc.refused {
				t.Errorf("%d (refused %q) %s, want %d (refused %v)", resp.StatusCode, resp.Header.Get(ClusterRefusedHeader), b, tc.status, tc.refused)
			}
			mu.Lock()
			defer mu.Unlock()
			if got := strings.Join(asked, " "); got != tc.asked {
				t.Errorf("peers asked: %q, want %q", got, tc.asked)
			}
		})
	}
	// No valid key: this node's 401, never a hop nor a wait.
	asked = nil
	req := request("/v1/execute", `{"code":"print(3)"}`, false)
	req.Header.Del("Authorization")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if mu.Lock(); resp.StatusCode != 401 || len(asked) != 0 {
		t.Errorf("a run without a key on a full node: %d, peers asked %q; want 401 and none", resp.StatusCode, asked)
	}
	mu.Unlock()
	// This node lacks the image: a node that has it takes the run even though this one has
	// room; when all of those refuse, 429 rather than this node's "no such image".
	fc.offers = func(n ClusterNeed) bool { return n.Image == "" }
	fc.cands = []ClusterLocation{roomy}
	if got := doSeen(t, request("/v1/sandboxes", `{"image":"elsewhere:1"}`, false)); got.Path != "/v1/sandboxes" || got.Hop != "self" || got.Body != `{"image":"elsewhere:1"}` {
		t.Errorf("a create of an image only a peer has: the peer got %+v", got)
	}
	fc.cands = []ClusterLocation{full}
	resp = post("/v1/sandboxes", `{"image":"elsewhere:1"}`, false)
	resp.Body.Close()
	if resp.StatusCode != 429 {
		t.Errorf("every node with the image refused: %d, want 429", resp.StatusCode)
	}
}

// TestPeekGRPC: the sandbox id of a gRPC call's first message is found in a top-level field
// and in a nested message; the bytes read are given back whole; a compressed or id-less
// message has none.
func TestPeekGRPC(t *testing.T) {
	t.Parallel()
	const id = "sb-abcdefghij234567klmn"
	frame := func(m proto.Message, flag byte) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return append(binary.BigEndian.AppendUint32([]byte{flag}, uint32(len(b))), b...)
	}
	for _, tc := range []struct {
		name  string
		frame []byte
		want  string
	}{
		{"top level", frame(pb.SandboxGetTaskIdRequest_builder{SandboxId: id}.Build(), 0), id},
		{"after other fields", frame(pb.TaskExecStartRequest_builder{ExecId: "x", CommandArgs: []string{"echo"}, TaskId: id}.Build(), 0), id},
		{"nested", frame(pb.TaskExecStdinWriteStreamRequest_builder{Start: pb.TaskExecStdinWriteStreamStart_builder{TaskId: id, ExecId: "e"}.Build()}.Build(), 0), id},
		{"no id", frame(pb.AppGetOrCreateRequest_builder{AppName: "sb-notanid"}.Build(), 0), ""},
		{"compressed", frame(pb.SandboxGetTaskIdRequest_builder{SandboxId: id}.Build(), 1), ""},
		{"truncated", frame(pb.SandboxGetTaskIdRequest_builder{SandboxId: id}.Build(), 0)[:9], ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rest := []byte("more frames")
			body := io.MultiReader(bytes.NewReader(tc.frame), bytes.NewReader(rest))
			read, got := peekGRPC(body)
			if got != tc.want {
				t.Errorf("id %q, want %q", got, tc.want)
			}
			if after, _ := io.ReadAll(body); !bytes.Equal(append(read, after...), append(tc.frame, rest...)) {
				t.Errorf("the bytes read and the rest are not the stream")
			}
		})
	}
}

// TestClusterLine: runs waiting for room take their turn as the engine's queue gives it — the
// key with fewest runs under way from this node first, the earliest among equals — so a key
// that floods the line cannot starve one that asks once; a run sent to another node steps
// aside, and back into its place when refused.
func TestClusterLine(t *testing.T) {
	t.Parallel()
	cs := newClusterState(prometheus.NewRegistry(), &fakeCluster{})
	x1, x2, _ := cs.join("x", 10, 10), cs.join("x", 10, 10), cs.join("x", 10, 10)
	first := func() *clusterWaiter { cs.mu.Lock(); defer cs.mu.Unlock(); return cs.first() }
	if first() != x1 {
		t.Fatal("the first in line is not the earliest")
	}
	done := cs.started(x1) // x1 runs
	cs.leave(x1)
	y := cs.join("y", 10, 10)
	if first() != y {
		t.Errorf("with a run of x under way, the turn is x's, not y's (who has none)")
	}
	cs.aside(y)
	if first() != x2 {
		t.Errorf("y sent elsewhere: the turn is not x2's")
	}
	cs.rejoin(y)
	if first() != y {
		t.Errorf("y refused and back in line: the turn is not y's")
	}
	cs.leave(y)
	done()
	if first() != x2 {
		t.Errorf("the turn after y is not x2's")
	}
	if cs.join("z", 2, 10) != nil {
		t.Errorf("a third waiter joined a line bounded at 2 (x2 and x3 wait)")
	}
	if cs.join("x", 10, 2) != nil {
		t.Errorf("a third waiter of x joined with x bound to 2 waiting")
	}
	if cs.join("z", 10, 2) == nil {
		t.Errorf("z could not join: x's bound is not z's")
	}
}

// TestClusterRate: a key's rate on a node is what the other nodes leave of it — its rate less
// what they admitted lately — and never less than an equal share; KeyUsage reports what this
// node admitted since its last call.
func TestClusterRate(t *testing.T) {
	t.Parallel()
	fc := &fakeCluster{}
	e, err := engine.New(engine.Config{Runtime: &blockingRuntime{release: make(chan struct{}), entered: make(chan struct{}, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	k := PlainKey(testKey)
	k.Limits.Rate = 10
	s, err := New(Config{Engine: e, Keys: []Key{k}, Cluster: fc})
	if err != nil {
		t.Fatal(err)
	}
	ks := s.keys[0]
	for _, tc := range []struct {
		elsewhere float64
		up        int
		want      float64
	}{
		{0, 3, 10},        // nobody else uses it: the whole rate here
		{6, 3, 4},         // the rest of what the others use
		{9.5, 3, 10. / 3}, // at least an equal share
		{0, 1, 10},
	} {
		fc.rateElsewhere, fc.up = tc.elsewhere, tc.up
		if err := s.allowRate(ks); err != nil {
			t.Fatal(err)
		}
		if got := float64(ks.limit.Limit()); got != tc.want {
			t.Errorf("others admit %g/s, %d nodes up: rate here %g, want %g", tc.elsewhere, tc.up, got, tc.want)
		}
	}
	s.KeyUsage() // the start of a measurement
	for range 3 {
		s.allowRate(ks)
	}
	if got := s.KeyUsage().Rates[ks.owner]; got <= 0 {
		t.Errorf("KeyUsage after 3 requests: rate %g, want > 0", got)
	}
}

// TestPeekGRPCAllocatesWhatArrives is the review's amplification: a stream that declares a
// 1 MiB first message and sends 5 bytes must not cost the node 1 MiB (250 such streams per
// connection, before any key is checked, took 250 MiB).
func TestPeekGRPCAllocatesWhatArrives(t *testing.T) {
	declared := binary.BigEndian.AppendUint32([]byte{0}, maxGRPCPeek)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const calls = 100
	for range calls {
		if read, id := peekGRPC(bytes.NewReader(declared)); id != "" || !bytes.Equal(read, declared) {
			t.Fatalf("peek of a bare header: %q %q", read, id)
		}
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > calls*64<<10 {
		t.Errorf("%d peeks of a 5-byte stream declaring %d bytes allocated %d bytes, want at most 64 KiB each", calls, maxGRPCPeek, got)
	}
}
