package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/airlockhq/airlock/internal/cluster/natstest"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/server"
)

// noRuntime is a Runtime these tests never reach: they create no sandbox.
type noRuntime struct{}

func (noRuntime) Create(context.Context, engine.Spec) (engine.Instance, error) {
	return nil, errors.New("no sandboxes in this test")
}

// poll waits for cond, failing the test with what after 15 s.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// joinTest joins a node "self" over an engine without sandboxes and runs it until the test
// ends.
func joinTest(t *testing.T, url string) *Node {
	t.Helper()
	e, err := engine.New(engine.Config{Runtime: noRuntime{}})
	if err != nil {
		t.Fatal(err)
	}
	n, err := Join(t.Context(), Config{URL: url, NodeID: "self", APIURL: "http://127.0.0.1:1", Engine: e,
		Heartbeat: 100 * time.Millisecond, GoneAfter: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan error, 1)
	go func() { ran <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-ran
		n.Close()
		e.Close(context.WithoutCancel(t.Context()))
	})
	return n
}

// entry reads id's registry entry.
func entry(t *testing.T, n *Node, id string) (Entry, error) {
	t.Helper()
	ent, err := n.sandboxes.Get(t.Context(), id)
	if err != nil {
		return Entry{}, err
	}
	var e Entry
	err = json.Unmarshal(ent.Value(), &e)
	return e, err
}

func TestValidate(t *testing.T) {
	t.Parallel()
	ok := Config{URL: "nats://127.0.0.1:4222", NodeID: "a"}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // in the error; "" for none
	}{
		{"defaults", func(*Config) {}, ""},
		{"no URL", func(c *Config) { c.URL = "" }, "no NATS URL"},
		{"bad node id", func(c *Config) { c.NodeID = "a.b" }, "node id"},
		{"cert without key", func(c *Config) { c.TLSCert = "c.pem" }, "TLS client certificate"},
		{"heartbeat too fast", func(c *Config) { c.Heartbeat = time.Millisecond }, "at least 100ms"},
		{"gone before one missed beat", func(c *Config) { c.Heartbeat, c.GoneAfter = time.Second, time.Second }, "more than one heartbeat"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			c.setDefaults()
			err := c.Validate()
			if got := ""; err != nil {
				got = err.Error()
				if tc.want == "" || !strings.Contains(got, tc.want) {
					t.Errorf("Validate: %q, want %q", got, tc.want)
				}
			} else if tc.want != "" {
				t.Errorf("Validate: nil, want %q", tc.want)
			}
		})
	}
}

// TestLocateAndPlace: a node routes by the registry and the heartbeats it follows: its own ids
// locally, a live peer's to that peer's API, a silent or departed peer's and an ended
// sandbox's as gone with the reason, unknown and malformed ids locally; placement picks the
// live peer with the most room.
func TestLocateAndPlace(t *testing.T) {
	n := joinTest(t, natstest.Start(t))

	put := func(bucket interface {
		Put(context.Context, string, []byte) (uint64, error)
	}, key string, v any) {
		b, _ := json.Marshal(v)
		if _, err := bucket.Put(t.Context(), key, b); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	put(n.nodes, "live", Heartbeat{Node: "live", API: "http://127.0.0.1:2", Room: 3, Time: now})
	put(n.nodes, "roomy", Heartbeat{Node: "roomy", API: "http://127.0.0.1:3", Room: 9, Time: now})
	put(n.nodes, "left", Heartbeat{Node: "left", API: "http://127.0.0.1:4", Room: 50, Leaving: true, Time: now})
	for id, node := range map[string]string{"sb-mine": "self", "sb-live": "live", "sb-left": "left", "sb-never": "silent"} {
		put(n.sandboxes, id, Entry{Node: node, Owner: "o1", Kind: "sandbox"})
	}
	put(n.sandboxes, "sb-ended", Entry{Node: "live", Owner: "o1", Kind: "sandbox", Ended: "terminated"})
	// The peers' heartbeats reach the watcher asynchronously.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, alive, _ := n.peer("roomy"); alive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the node never saw its peers' heartbeats")
		}
	}

	for _, tc := range []struct {
		id        string
		known     bool
		local     bool
		api, gone string
	}{
		{"sb-mine", true, true, "", ""},
		{"sb-live", true, false, "http://127.0.0.1:2", ""},
		{"sb-left", true, false, "", "node left has shut down"},
		{"sb-never", true, false, "", "node silent is not in the cluster"},
		{"sb-ended", true, false, "", "it has ended (terminated) on node live"},
		{"sb-unknown", false, false, "", ""},
		{"../etc", false, false, "", ""},
	} {
		t.Run(tc.id, func(t *testing.T) {
			loc, err := n.Locate(t.Context(), tc.id)
			if err != nil {
				t.Fatal(err)
			}
			api := ""
			if loc.API != nil {
				api = loc.API.String()
			}
			if loc.Known != tc.known || loc.Local != tc.local || api != tc.api || loc.Gone != tc.gone {
				t.Errorf("Locate: known %v local %v api %q gone %q, want %v %v %q %q", loc.Known, loc.Local, api, loc.Gone,
					tc.known, tc.local, tc.api, tc.gone)
			}
			if tc.known && loc.Owner != "o1" {
				t.Errorf("owner %q, want o1", loc.Owner)
			}
		})
	}
	if c := n.Candidates(server.ClusterNeed{}); len(c) != 2 || c[0].Node != "roomy" || c[1].Node != "live" {
		t.Errorf("Candidates: %+v, want roomy then live (most room first; left has shut down)", c)
	}

	// A peer that stops heartbeating is gone once GoneAfter has passed.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		loc, _ := n.Locate(t.Context(), "sb-live")
		if strings.HasPrefix(loc.Gone, "node live is gone: no heartbeat for") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a silent peer's sandbox is still routed: %+v", loc)
		}
	}
	nodes, err := Status(t.Context(), Config{URL: n.cfg.URL, GoneAfter: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, s := range nodes {
		states[s.Node] = s.State
	}
	if want := map[string]string{"self": "up", "live": "gone", "roomy": "gone", "left": "left"}; len(states) != 4 ||
		states["self"] != want["self"] || states["live"] != want["live"] || states["left"] != want["left"] {
		t.Errorf("Status: %v, want %v", states, want)
	}
}

// TestReconcile: after a restart, the registry's live entries of this node that its engine did
// not adopt are marked ended, so that other nodes answer them 410; other nodes' entries and
// entries already ended are left alone.
func TestReconcile(t *testing.T) {
	n := joinTest(t, natstest.Start(t))
	for id, e := range map[string]Entry{
		"sb-lost":  {Node: "self", Owner: "o1", Kind: "sandbox"},
		"sb-other": {Node: "peer", Owner: "o1", Kind: "sandbox"},
		"sb-done":  {Node: "self", Owner: "o1", Kind: "session", Ended: "terminated"},
	} {
		b, _ := json.Marshal(e)
		if _, err := n.sandboxes.Put(t.Context(), id, b); err != nil {
			t.Fatal(err)
		}
	}
	lost, err := n.Reconcile(t.Context())
	if err != nil || lost != 1 {
		t.Fatalf("Reconcile: %d, %v; want 1, nil", lost, err)
	}
	for id, want := range map[string]string{"sb-lost": "lost: not recovered when node self restarted", "sb-other": "", "sb-done": "terminated"} {
		if e, err := entry(t, n, id); err != nil || e.Ended != want {
			t.Errorf("%s: ended %q (%v), want %q", id, e.Ended, err, want)
		}
	}
}

// TestNATSOutage: with NATS away, a lookup fails at once (the server then serves locally,
// never hangs) and a registry write is kept; once NATS is back, the write lands.
func TestNATSOutage(t *testing.T) {
	dir := t.TempDir()
	ns := natstest.Run(t, -1, dir)
	port := ns.Addr().(*net.TCPAddr).Port
	n := joinTest(t, ns.ClientURL())
	ns.Shutdown()
	ns.WaitForShutdown()
	poll(t, "the node to notice NATS is gone", func() bool { return n.nc.Status() != nats.CONNECTED })

	if _, err := n.Locate(t.Context(), "sb-x"); !errors.Is(err, errDisconnected) {
		t.Errorf("Locate with NATS down: %v, want %v", err, errDisconnected)
	}
	n.put(t.Context(), engine.SandboxEvent{ID: "sb-x", Kind: engine.KindSandbox, Owner: "o1"})
	if n.mu.Lock(); len(n.pending) != 1 {
		t.Errorf("pending writes: %d, want 1", len(n.pending))
	}
	n.mu.Unlock()

	natstest.Run(t, port, dir)
	poll(t, "the kept write to land", func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return len(n.pending) == 0
	})
	if e, err := entry(t, n, "sb-x"); err != nil || e.Node != "self" {
		t.Errorf("entry after the outage: %+v, %v; want node self", e, err)
	}
}

// TestJoinKeepsBuckets: a bucket the operator made beforehand (with replicas, say; here a TTL
// and a size bound) is bound as it is, never reconfigured to the defaults.
func TestJoinKeepsBuckets(t *testing.T) {
	url := natstest.Start(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	want := jetstream.KeyValueConfig{Bucket: SandboxesBucket, TTL: time.Hour, MaxBytes: 1 << 20}
	if _, err := js.CreateKeyValue(t.Context(), want); err != nil {
		t.Fatal(err)
	}
	if _, err := Status(t.Context(), Config{URL: url}); !errors.Is(err, ErrNoCluster) {
		t.Errorf("Status before any node joined: %v, want %v", err, ErrNoCluster)
	}
	joinTest(t, url)
	kv, err := js.KeyValue(t.Context(), SandboxesBucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config; got.MaxAge != want.TTL || got.MaxBytes != want.MaxBytes {
		t.Errorf("after Join: TTL %v, max bytes %d; want the operator's %v, %d", got.MaxAge, got.MaxBytes, want.TTL, want.MaxBytes)
	}
}

// putHeartbeats stores hbs in the nodes bucket and waits until n follows every one of them.
func putHeartbeats(t *testing.T, n *Node, hbs ...Heartbeat) {
	t.Helper()
	for _, hb := range hbs {
		hb.Time = time.Now()
		b, _ := json.Marshal(hb)
		if _, err := n.nodes.Put(t.Context(), hb.Node, b); err != nil {
			t.Fatal(err)
		}
	}
	poll(t, "the node to see the heartbeats", func() bool {
		for _, hb := range hbs {
			if got, _, _ := n.peer(hb.Node); got.Time.IsZero() || got.Room != hb.Room || got.Running != hb.Running {
				return false
			}
		}
		return true
	})
}

// TestCandidates: placement offers only live nodes that have the need's runtime and image
// (by name, name:tag, or name with the implied :latest), the most room first: one-shot slots
// free less the queue for a run, room for a create.
func TestCandidates(t *testing.T) {
	n := joinTest(t, natstest.Start(t))
	n.cfg.Runtimes = []string{"native"}
	n.cfg.Images = func() []string { return []string{"local/py:3"} }
	putHeartbeats(t, n,
		Heartbeat{Node: "a", API: "http://127.0.0.1:2", Runtimes: []string{"native"}, Room: 5, MaxConcurrent: 4, Running: 4},
		Heartbeat{Node: "b", API: "http://127.0.0.1:3", Runtimes: []string{"native", "gvisor"}, Images: []string{"only-b:latest", "local/py:3"},
			Room: 1, MaxConcurrent: 4, Running: 1, Waiting: 1},
		Heartbeat{Node: "left", API: "http://127.0.0.1:4", Runtimes: []string{"native", "gvisor"}, Images: []string{"only-b:latest"},
			Room: 50, MaxConcurrent: 50, Leaving: true},
	)
	for _, tc := range []struct {
		name   string
		need   server.ClusterNeed
		want   string // nodes:free, best first
		offers bool   // this node offers it
	}{
		{"a create: most room first", server.ClusterNeed{}, "a:5 b:1", true},
		{"a run: most slots free first", server.ClusterNeed{OneShot: true}, "b:2 a:0", true},
		{"the host image is everyone's", server.ClusterNeed{Image: "host"}, "a:5 b:1", true},
		{"an image only b has, :latest implied", server.ClusterNeed{Image: "only-b"}, "b:1", false},
		{"an image by name:tag", server.ClusterNeed{Image: "local/py:3"}, "b:1", true},
		{"an image nobody has", server.ClusterNeed{Image: "nope:1"}, "", false},
		{"an image id is left to the entry node", server.ClusterNeed{Image: "sha256:0123"}, "a:5 b:1", true},
		{"a runtime only b offers", server.ClusterNeed{Runtime: "gvisor"}, "b:1", false},
		{"both", server.ClusterNeed{Runtime: "gvisor", Image: "only-b:latest"}, "b:1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, c := range n.Candidates(tc.need) {
				got = append(got, fmt.Sprintf("%s:%d", c.Node, c.Free))
			}
			if strings.Join(got, " ") != tc.want {
				t.Errorf("Candidates(%+v): %q, want %q", tc.need, strings.Join(got, " "), tc.want)
			}
			if got := n.Offers(tc.need); got != tc.offers {
				t.Errorf("Offers(%+v): %v, want %v", tc.need, got, tc.offers)
			}
		})
	}
	v, self := n.View(), n.cfg.Engine.Limits()
	if v.Up != 3 || v.Gone != 1 || v.Room != 6+self.MaxSandboxes || v.MaxConcurrent != 8+self.MaxConcurrent || v.Running != 5 {
		t.Errorf("View: %d up %d gone, room %d, slots %d, running %d; want 3 (self, a, b), 1 (left), %d, %d, 5",
			v.Up, v.Gone, v.Room, v.MaxConcurrent, v.Running, 6+self.MaxSandboxes, 8+self.MaxConcurrent)
	}
}

// TestLiveOf: an owner's live sandboxes and sessions are counted from the registry over every
// live node; ended ones, other owners' and those of a node that is gone are not.
func TestLiveOf(t *testing.T) {
	n := joinTest(t, natstest.Start(t))
	putHeartbeats(t, n, Heartbeat{Node: "peer", API: "http://127.0.0.1:2", Room: 1})
	ev := func(id string, kind engine.Kind, owner string) engine.SandboxEvent {
		return engine.SandboxEvent{ID: id, Kind: kind, Owner: owner, Expires: time.Now().Add(time.Hour)}
	}
	n.registerLive(t.Context(), ev("sb-1", engine.KindSandbox, "0123abcd"))
	n.registerLive(t.Context(), ev("sb-2", engine.KindSandbox, "0123abcd"))
	n.registerLive(t.Context(), ev("sb-3", engine.KindSession, "0123abcd"))
	n.registerLive(t.Context(), ev("sb-4", engine.KindSeedSession, "0123abcd"))
	n.registerLive(t.Context(), ev("sb-5", engine.KindSandbox, "ffff0000"))
	n.registerEnded(t.Context(), ev("sb-2", engine.KindSandbox, "0123abcd"))
	// Another node's, written as that node would.
	peer := &Node{cfg: Config{NodeID: "peer"}, nc: n.nc, sandboxes: n.sandboxes, pending: map[string]Entry{}, live: map[string]bool{}}
	peer.registerLive(t.Context(), ev("sb-6", engine.KindSandbox, "0123abcd"))
	peer.registerLive(t.Context(), ev("sb-7", engine.KindSession, "0123abcd"))

	count := func(session bool) int {
		t.Helper()
		c, err := n.LiveOf(t.Context(), "0123abcd", session)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if got, want := count(false), 2; got != want {
		t.Errorf("sandboxes: %d, want %d (sb-1 here, sb-6 on peer; sb-2 ended)", got, want)
	}
	if got, want := count(true), 3; got != want {
		t.Errorf("sessions: %d, want %d (sb-3 and the seed session sb-4 here, sb-7 on peer)", got, want)
	}
	if got := n.View().Registered; got != 4 {
		t.Errorf("registered here: %d, want 4 (sb-1, sb-3, sb-4, sb-5)", got)
	}
	// The peer stops heartbeating: its sandboxes no longer count once it is gone.
	poll(t, "peer to be gone", func() bool { _, alive, _ := n.peer("peer"); return !alive })
	if got, want := count(false), 1; got != want {
		t.Errorf("sandboxes with peer gone: %d, want %d", got, want)
	}
}

// TestClaim: a seed-session name is claimed by the first node to ask; a live holder is
// routed to; a gone holder's name is taken over.
func TestClaim(t *testing.T) {
	n := joinTest(t, natstest.Start(t))
	putHeartbeats(t, n, Heartbeat{Node: "peer", API: "http://127.0.0.1:2", Room: 1})
	if loc, err := n.Claim(t.Context(), "seed.aa"); err != nil || !loc.Local {
		t.Fatalf("first claim: %+v, %v; want local", loc, err)
	}
	if loc, err := n.Claim(t.Context(), "seed.aa"); err != nil || !loc.Local {
		t.Fatalf("claim again: %+v, %v; want local", loc, err)
	}
	if _, err := n.sandboxes.Put(t.Context(), "seed.bb", []byte("peer")); err != nil {
		t.Fatal(err)
	}
	if loc, err := n.Claim(t.Context(), "seed.bb"); err != nil || loc.Local || loc.API == nil || loc.API.Host != "127.0.0.1:2" {
		t.Fatalf("claim of a live peer's name: %+v, %v; want the peer's API", loc, err)
	}
	poll(t, "peer to be gone", func() bool { _, alive, _ := n.peer("peer"); return !alive })
	if loc, err := n.Claim(t.Context(), "seed.bb"); err != nil || !loc.Local {
		t.Fatalf("claim of a gone peer's name: %+v, %v; want it taken over", loc, err)
	}
	if loc, err := n.Locate(t.Context(), "seed.bb"); err != nil || loc.Known {
		t.Errorf("Locate of a claim key: %+v, %v; want unknown (it is no sandbox)", loc, err)
	}
}

// BenchmarkRegistryOps measures what cluster-wide per-key limits cost on the embedded NATS
// server (file store, same process, 127.0.0.1): LiveOf (one filtered read of an owner's index,
// 5 live sandboxes) as every create pays it, and a compare-and-set increment of one shared
// counter, what an exact cluster-wide request rate would pay per request (not built: the rate
// is shared through the heartbeats; see docs/cluster.md):
//
//	go test -run '^$' -bench BenchmarkRegistryOps -benchtime 2000x ./internal/cluster/
func BenchmarkRegistryOps(b *testing.B) {
	e, err := engine.New(engine.Config{Runtime: noRuntime{}})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close(context.Background())
	n, err := Join(b.Context(), Config{URL: natstest.Start(b), NodeID: "self", APIURL: "http://127.0.0.1:1", Engine: e})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	for i := range 5 {
		n.registerLive(b.Context(), engine.SandboxEvent{ID: fmt.Sprintf("sb-%d", i), Kind: engine.KindSandbox, Owner: "0123abcd"})
	}
	n.beat(b.Context(), false)
	b.Run("LiveOf", func(b *testing.B) {
		for b.Loop() {
			if _, err := n.LiveOf(b.Context(), "0123abcd", false); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("CASIncrement", func(b *testing.B) {
		rev, err := n.sandboxes.Create(b.Context(), "rate.0123abcd", []byte("0"))
		if err != nil {
			b.Fatal(err)
		}
		v := 0
		for b.Loop() {
			v++
			if rev, err = n.sandboxes.Update(b.Context(), "rate.0123abcd", []byte(strconv.Itoa(v)), rev); err != nil {
				b.Fatal(err)
			}
		}
	})
}
