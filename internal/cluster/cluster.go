package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/server"
)

// The buckets every node shares (doc.go).
const (
	NodesBucket     = "airlock_nodes"
	SandboxesBucket = "airlock_sandboxes"
)

// registryTTL bounds how long an entry outlives its last write: the longest sandbox life
// (engine.Config.MaxSandboxTimeout's default, 24 h) plus the hour an ended id answers 410.
const registryTTL = 25 * time.Hour

// Config configures one node. Zero values mean defaults.
//
// Adding an option: the field here with its check in Validate, its `airlock serve` flag and
// AIRLOCK_* variable in internal/cli (serve.go, clusterFlags), and its line in README's
// "Cluster mode".
type Config struct {
	Logger *slog.Logger
	// URL is the NATS server or servers (comma-separated nats:// or tls:// URLs).
	URL string
	// CredsFile is a NATS credentials file (JWT and nkey seed); empty connects without one
	// (or with credentials in URL).
	CredsFile string
	// TLSCA is a PEM file of the CAs that sign the NATS servers' certificates; TLSCert and
	// TLSKey are this node's client certificate and key, for servers that verify clients.
	TLSCA, TLSCert, TLSKey string
	// NodeID names this node in the cluster; default the host name. Letters, digits, '-' and
	// '_' only.
	NodeID string
	// APIURL is the base URL at which the other nodes reach this node's HTTP API.
	APIURL string
	// Version, Runtimes and Images (names from the image store; nil for none) are published in
	// every heartbeat.
	Version  string
	Runtimes []string
	Images   func() []string
	Engine   *engine.Engine
	// Heartbeat is how often the node publishes its heartbeat; default 2 s. GoneAfter is how old
	// another node's last heartbeat may be before that node is gone; default 3 × Heartbeat.
	Heartbeat time.Duration
	GoneAfter time.Duration
}

// validID is what a node id may be: a key of the nodes bucket, readable in logs.
var validID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.NodeID == "" {
		h, _ := os.Hostname()
		c.NodeID = strings.Map(func(r rune) rune {
			if r == '.' {
				return '-'
			}
			return r
		}, h)
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 2 * time.Second
	}
	if c.GoneAfter == 0 {
		c.GoneAfter = 3 * c.Heartbeat
	}
}

// Validate reports a configuration that cannot work.
func (c *Config) Validate() error {
	switch {
	case c.URL == "":
		return errors.New("cluster: no NATS URL")
	case !validID.MatchString(c.NodeID):
		return fmt.Errorf("cluster: node id %q: use 1 to 64 letters, digits, '-' or '_'", c.NodeID)
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return errors.New("cluster: a TLS client certificate needs its key, and the key its certificate")
	case c.Heartbeat < 100*time.Millisecond:
		return errors.New("cluster: the heartbeat interval must be at least 100ms")
	case c.GoneAfter <= c.Heartbeat:
		return errors.New("cluster: a node must miss more than one heartbeat to be gone")
	}
	if c.Engine != nil {
		u, err := url.Parse(c.APIURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("cluster: the advertised API URL %q is not an http(s) URL", c.APIURL)
		}
	}
	return nil
}

// options are the NATS connection's options of c.
func (c *Config) options(name string) []nats.Option {
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(false)}
	if c.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	return opts
}

// Heartbeat is what a node publishes about itself, the value of its key in NodesBucket.
type Heartbeat struct {
	Node     string   `json:"node"`
	API      string   `json:"api"` // base URL of its HTTP API
	Version  string   `json:"version"`
	Runtimes []string `json:"runtimes"`
	Images   []string `json:"images"`
	// MaxSandboxes and Room are its bound on long-lived sandboxes and sessions and how many
	// more it admits now; Sandboxes counts what runs, by kind (one-shot runs included).
	MaxSandboxes int            `json:"max_sandboxes"`
	Room         int            `json:"room"`
	Sandboxes    map[string]int `json:"sandboxes"`
	// MaxConcurrent is its bound on one-shot runs at once; Running the runs holding a slot
	// (every route's), Waiting those queued for one.
	MaxConcurrent int `json:"max_concurrent"`
	Running       int `json:"running"`
	Waiting       int `json:"waiting"`
	// GPUs is how many GPUs it offers sandboxes: none yet (the API has no GPU field), published
	// so that placement by GPU needs no new heartbeat format.
	GPUs int `json:"gpus"`
	// KeyUsage is what it has used of the per-key limits that hold over the cluster: CPU
	// seconds in the current period and requests per second lately, by owner.
	server.KeyUsage
	Leaving bool      `json:"leaving,omitempty"` // its last heartbeat: it shut down
	Time    time.Time `json:"time"`
}

// Entry is the registry's record of one sandbox or session, its value in SandboxesBucket.
type Entry struct {
	Node    string    `json:"node"`
	Owner   string    `json:"owner"` // the engine's owner: a hash of the API key, "" without keys
	Kind    string    `json:"kind"`
	Expires time.Time `json:"expires"`
	Ended   string    `json:"ended,omitempty"` // why it ended; empty while live
}

// Node is this daemon's membership of the cluster.
type Node struct {
	cfg       Config
	nc        *nats.Conn
	nodes     jetstream.KeyValue
	sandboxes jetstream.KeyValue

	// writeMu serializes registry writes, so that a retried old entry never overwrites a
	// newer one of the same id.
	writeMu sync.Mutex

	mu      sync.Mutex // guards seen, pending and live
	seen    map[string]peer
	pending map[string]Entry // registry writes that failed (NATS away), retried by Run
	live    map[string]bool  // ids this node registered live and has not yet ended

	keyUsage atomic.Pointer[func() server.KeyUsage] // SetKeyUsage
}

// SetKeyUsage names what the heartbeats publish of this node's use of the per-key limits (the
// server's KeyUsage: the server is made after the node joins).
func (n *Node) SetKeyUsage(f func() server.KeyUsage) { n.keyUsage.Store(&f) }

// peer is the last heartbeat of a node and when it was seen.
type peer struct {
	hb Heartbeat
	at time.Time
}

// dial connects to NATS as name.
func dial(cfg *Config, name string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(cfg.URL, cfg.options(name)...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS at %s: %w", cfg.URL, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("JetStream: %w", err)
	}
	return nc, js, nil
}

// connect dials NATS and binds both buckets, creating those that do not exist yet.
func connect(ctx context.Context, cfg *Config, name string) (*nats.Conn, jetstream.KeyValue, jetstream.KeyValue, error) {
	nc, js, err := dial(cfg, name)
	if err != nil {
		return nil, nil, nil, err
	}
	var kvs [2]jetstream.KeyValue
	for i, kc := range []jetstream.KeyValueConfig{
		{Bucket: NodesBucket, History: 1, Description: "Airlock nodes: heartbeats"},
		{Bucket: SandboxesBucket, History: 1, TTL: registryTTL, Description: "Airlock registry: sandbox and session id to node"},
	} {
		if kvs[i], err = bucket(ctx, js, kc, true); err != nil {
			nc.Close()
			return nil, nil, nil, err
		}
	}
	return nc, kvs[0], kvs[1], nil
}

// ErrNoCluster is Status on a NATS server where no node has ever joined.
var ErrNoCluster = errors.New("no Airlock node has joined this NATS server (its buckets do not exist)")

// bucket binds the bucket of kc, creating it when it does not exist and create is set. An
// existing bucket is never reconfigured: an operator may have made it with replicas (see
// docs/cluster.md), which a default configuration would undo.
func bucket(ctx context.Context, js jetstream.JetStream, kc jetstream.KeyValueConfig, create bool) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, kc.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		if !create {
			return nil, ErrNoCluster
		}
		kv, err = js.CreateKeyValue(ctx, kc)
		if errors.Is(err, jetstream.ErrBucketExists) { // another node made it meanwhile
			kv, err = js.KeyValue(ctx, kc.Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", kc.Bucket, err)
	}
	return kv, nil
}

// Join connects cfg's node to the cluster and installs the engine hooks that keep the
// registry; the heartbeats start with Run. Call it before the engine's Recover. Close
// disconnects.
func Join(ctx context.Context, cfg Config) (*Node, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Engine == nil {
		return nil, errors.New("cluster: no engine")
	}
	nc, nodes, sbs, err := connect(ctx, &cfg, "airlock node "+cfg.NodeID)
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, nc: nc, nodes: nodes, sandboxes: sbs, seen: map[string]peer{}, pending: map[string]Entry{},
		live: map[string]bool{}}
	cfg.Engine.SetHooks(engine.Hooks{Live: n.registerLive, Ended: n.registerEnded})
	return n, nil
}

// ID is this node's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// registryTimeout bounds one registry write: a create is not held up long by a slow NATS.
const registryTimeout = 2 * time.Second

// errDisconnected is a registry operation attempted while the connection to NATS is down; it
// fails at once rather than waiting for a reconnection.
var errDisconnected = errors.New("not connected to NATS")

// write puts e under id in the registry.
func (n *Node) write(ctx context.Context, id string, e Entry) error {
	if n.nc.Status() != nats.CONNECTED {
		return errDisconnected
	}
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode registry entry: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), registryTimeout)
	defer cancel()
	if _, err := n.sandboxes.Put(ctx, id, b); err != nil {
		return fmt.Errorf("registry put %s: %w", id, err)
	}
	// The owner's index (ownerKey): what LiveOf counts, written after the entry so that a
	// create is counted once it is reachable, and removed once it has ended.
	if e.Owner == "" || !validKey.MatchString(e.Owner) {
		return nil // no API keys: no per-key limits to count for
	}
	k := ownerKey(e.Owner, e.Node, e.Kind, id)
	if e.Ended == "" {
		_, err = n.sandboxes.Put(ctx, k, nil)
	} else if err = n.sandboxes.Purge(ctx, k); errors.Is(err, jetstream.ErrKeyNotFound) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("registry owner index %s: %w", id, err)
	}
	return nil
}

// ownerKey is the registry key that indexes id, live on node, under its owner; LiveOf lists
// an owner's with one filtered read (ownerKeys) rather than reading the whole registry.
func ownerKey(owner, node, kind, id string) string {
	return ownerKeys(owner) + "." + node + "." + kind + "." + id
}

// ownerKeys is the prefix of owner's index keys.
func ownerKeys(owner string) string { return "own." + owner }

// put records ev in the registry; a write that fails is kept and retried with every
// heartbeat (retryPending), as the sandbox works locally meanwhile and only other nodes cannot
// find it.
func (n *Node) put(ctx context.Context, ev engine.SandboxEvent) {
	e := Entry{Node: n.cfg.NodeID, Owner: ev.Owner, Kind: string(ev.Kind), Expires: ev.Expires, Ended: ev.Reason}
	n.writeMu.Lock()
	defer n.writeMu.Unlock()
	err := n.write(ctx, ev.ID, e)
	n.mu.Lock()
	if e.Ended == "" {
		n.live[ev.ID] = true
	} else {
		delete(n.live, ev.ID)
	}
	if err != nil {
		n.pending[ev.ID] = e
	} else {
		delete(n.pending, ev.ID)
	}
	n.mu.Unlock()
	if err != nil {
		n.cfg.Logger.WarnContext(ctx, "cluster registry write: retrying with the next heartbeat", "sandbox", ev.ID, "err", err)
	}
}

// retryPending writes again what put could not; it returns how many are still pending.
func (n *Node) retryPending(ctx context.Context) int {
	n.writeMu.Lock()
	defer n.writeMu.Unlock()
	n.mu.Lock()
	todo := maps.Clone(n.pending)
	n.mu.Unlock()
	left := 0
	for id, e := range todo {
		if err := n.write(ctx, id, e); err != nil {
			left++
			continue
		}
		n.mu.Lock()
		delete(n.pending, id) // writeMu held: no newer entry of id came meanwhile
		n.mu.Unlock()
	}
	return left
}

// registerLive is the engine's Live hook.
func (n *Node) registerLive(ctx context.Context, ev engine.SandboxEvent) {
	ev.Reason = ""
	n.put(ctx, ev)
}

// registerEnded is the engine's Ended hook: the entry stays (until registryTTL) so that every
// node answers the id with 410 and the reason.
func (n *Node) registerEnded(ctx context.Context, ev engine.SandboxEvent) {
	if ev.Reason == "" {
		ev.Reason = "ended"
	}
	n.put(ctx, ev)
}

// heartbeat is this node's heartbeat now.
func (n *Node) heartbeat(leaving bool) Heartbeat {
	e := n.cfg.Engine
	lim := e.Limits()
	counts := map[string]int{}
	for k, v := range e.SandboxCounts() {
		counts[string(k)] = v
	}
	var images []string
	if n.cfg.Images != nil {
		images = n.cfg.Images()
	}
	var usage server.KeyUsage
	if f := n.keyUsage.Load(); f != nil {
		usage = (*f)()
	}
	return Heartbeat{KeyUsage: usage, Node: n.cfg.NodeID, API: n.cfg.APIURL, Version: n.cfg.Version, Runtimes: n.cfg.Runtimes,
		Images: images, MaxSandboxes: lim.MaxSandboxes, Room: e.SandboxRoom(), Sandboxes: counts,
		MaxConcurrent: lim.MaxConcurrent, Running: e.Running(), Waiting: e.Waiting(), Leaving: leaving, Time: time.Now().UTC()}
}

func (n *Node) beat(ctx context.Context, leaving bool) error {
	if n.nc.Status() != nats.CONNECTED {
		return errDisconnected
	}
	b, err := json.Marshal(n.heartbeat(leaving))
	if err != nil {
		return fmt.Errorf("encode heartbeat: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Heartbeat)
	defer cancel()
	if _, err := n.nodes.Put(ctx, n.cfg.NodeID, b); err != nil {
		return fmt.Errorf("publish heartbeat: %w", err)
	}
	return nil
}

// Run publishes heartbeats and follows the other nodes' until ctx ends. NATS going away stops
// neither: heartbeats and registry writes resume, and the watch is made again, once it is
// back. The caller waits for it before Close.
func (n *Node) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	// Its own goroutine: making a watch can wait for JetStream for seconds after a reconnect,
	// and the heartbeats must not wait with it.
	wg.Go(func() { n.follow(ctx) })
	if err := n.beat(ctx, false); err != nil {
		n.cfg.Logger.WarnContext(ctx, "cluster heartbeat", "err", err)
	}
	t := time.NewTicker(n.cfg.Heartbeat)
	defer t.Stop()
	failing := false // logged once when the heartbeats stop, once when they resume
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := n.beat(ctx, false); err != nil {
			if !failing && ctx.Err() == nil {
				n.cfg.Logger.WarnContext(ctx, "cluster heartbeats failing: the other nodes will mark this one gone", "err", err)
			}
			failing = true
			continue
		}
		if failing {
			n.cfg.Logger.InfoContext(ctx, "cluster heartbeats resumed")
			failing = false
		}
		n.retryPending(ctx)
	}
}

// follow watches the nodes bucket until ctx ends, making the watch again whenever it ends with
// the connection.
func (n *Node) follow(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := n.nodes.WatchAll(ctx)
		if err != nil {
			if ctx.Err() == nil {
				n.cfg.Logger.WarnContext(ctx, "cluster: watch the heartbeats: retrying", "err", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(n.cfg.Heartbeat):
			}
			continue
		}
		replayed := false // the watch sends what is stored, then nil, then updates
	updates:
		for {
			select {
			case <-ctx.Done():
				break updates
			case ent, ok := <-w.Updates():
				switch {
				case !ok:
					break updates
				case ent == nil:
					replayed = true
				default:
					n.observe(ent, replayed)
				}
			}
		}
		w.Stop()
	}
}

// observe records a heartbeat from the nodes bucket. One replayed from the store was seen when
// the server stored it; a live update is seen now (this node's clock, not the sender's).
func (n *Node) observe(ent jetstream.KeyValueEntry, live bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ent.Operation() != jetstream.KeyValuePut {
		delete(n.seen, ent.Key())
		return
	}
	var hb Heartbeat
	if err := json.Unmarshal(ent.Value(), &hb); err != nil {
		return // not a heartbeat of ours; the node stays unknown
	}
	at := ent.Created()
	if live {
		at = time.Now()
	}
	n.seen[ent.Key()] = peer{hb: hb, at: at}
}

// peer returns node id's last heartbeat, and whether it is alive; why not when it is not.
func (n *Node) peer(id string) (Heartbeat, bool, string) {
	n.mu.Lock()
	p, ok := n.seen[id]
	n.mu.Unlock()
	switch {
	case !ok:
		return Heartbeat{}, false, "node " + id + " is not in the cluster"
	case p.hb.Leaving:
		return p.hb, false, "node " + id + " has shut down"
	case time.Since(p.at) > n.cfg.GoneAfter:
		return p.hb, false, fmt.Sprintf("node %s is gone: no heartbeat for %s", id, time.Since(p.at).Round(time.Second))
	}
	return p.hb, true, ""
}

// Reconcile marks ended the registry's live entries of this node that its engine does not
// hold: sandboxes of a previous daemon on this state directory that Recover could not adopt
// (or that died while no daemon ran), so that every node answers them 410 rather than
// proxying to a node that answers 404. Call it after Recover; it returns how many it marked.
// It reads the whole registry: O(sandboxes in the cluster), once per start.
func (n *Node) Reconcile(ctx context.Context) (int, error) {
	w, err := n.sandboxes.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return 0, fmt.Errorf("read the registry: %w", err)
	}
	defer w.Stop()
	lost := map[string]Entry{}
	for ent := range w.Updates() {
		if ent == nil {
			break // every stored entry has been seen
		}
		var e Entry
		if json.Unmarshal(ent.Value(), &e) != nil || e.Node != n.cfg.NodeID || e.Ended != "" {
			continue
		}
		if _, err := n.cfg.Engine.GetSandbox(engine.WithOwner(ctx, e.Owner), ent.Key()); err != nil {
			lost[ent.Key()] = e
		}
	}
	for id, e := range lost {
		n.put(ctx, engine.SandboxEvent{ID: id, Kind: engine.Kind(e.Kind), Owner: e.Owner, Expires: e.Expires,
			Reason: "lost: not recovered when node " + n.cfg.NodeID + " restarted"})
	}
	return len(lost), ctx.Err()
}

// Leave publishes a last heartbeat saying this node is leaving, so that the others answer its
// sandboxes 410 at once rather than after GoneAfter. Stop Run first; the registry stays
// writable until Close.
func (n *Node) Leave(ctx context.Context) error {
	return n.beat(context.WithoutCancel(ctx), true)
}

// Close disconnects from NATS; idempotent.
func (n *Node) Close() { n.nc.Close() }

// Status reads every node's last heartbeat, for `airlock cluster status`: no node of its own,
// and nothing created (ErrNoCluster where no node ever joined).
func Status(ctx context.Context, cfg Config) ([]NodeStatus, error) {
	cfg.setDefaults()
	if cfg.URL == "" {
		return nil, errors.New("cluster: no NATS URL")
	}
	nc, js, err := dial(&cfg, "airlock cluster status")
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	nodes, err := bucket(ctx, js, jetstream.KeyValueConfig{Bucket: NodesBucket}, false)
	if err != nil {
		return nil, err
	}
	keys, err := nodes.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", NodesBucket, err)
	}
	var out []NodeStatus
	for k := range keys.Keys() {
		ent, err := nodes.Get(ctx, k)
		if err != nil {
			continue // removed meanwhile
		}
		var hb Heartbeat
		if json.Unmarshal(ent.Value(), &hb) != nil {
			continue
		}
		st := NodeStatus{Heartbeat: hb, Seen: ent.Created(), State: "up"}
		switch {
		case hb.Leaving:
			st.State = "left"
		case time.Since(st.Seen) > cfg.GoneAfter:
			st.State = "gone"
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b NodeStatus) int { return strings.Compare(a.Node, b.Node) })
	return out, nil
}

// NodeStatus is one node as `airlock cluster status` shows it.
type NodeStatus struct {
	Heartbeat
	Seen  time.Time `json:"seen"`  // when its last heartbeat was stored
	State string    `json:"state"` // up, gone (missed its heartbeats) or left (shut down)
}

// Totals sums a cluster's nodes for `airlock cluster status`: how many are up and gone (or
// left), and the capacity and load of those up.
type Totals struct {
	Up   int `json:"up"`
	Gone int `json:"gone"` // gone or left
	// MaxSandboxes, Sandboxes and Room: long-lived sandboxes and sessions admitted, alive and
	// admissible now; MaxConcurrent, Running and Waiting: one-shot slots, runs holding one and
	// runs queued.
	MaxSandboxes  int `json:"max_sandboxes"`
	Sandboxes     int `json:"sandboxes"`
	Room          int `json:"room"`
	MaxConcurrent int `json:"max_concurrent"`
	Running       int `json:"running"`
	Waiting       int `json:"waiting"`
}

// Sum is the totals of nodes.
func Sum(nodes []NodeStatus) Totals {
	var t Totals
	for _, n := range nodes {
		if n.State != "up" {
			t.Gone++
			continue
		}
		t.Up++
		t.MaxSandboxes += n.MaxSandboxes
		t.Sandboxes += n.LongLived()
		t.Room += n.Room
		t.MaxConcurrent += n.MaxConcurrent
		t.Running += n.Running
		t.Waiting += n.Waiting
	}
	return t
}

// LongLived is how many long-lived sandboxes and sessions the heartbeat counts.
func (hb Heartbeat) LongLived() int {
	n := 0
	for k, v := range hb.Sandboxes {
		if k != string(engine.KindOneShot) {
			n += v
		}
	}
	return n
}
