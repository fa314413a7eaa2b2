package server

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
)

// Cluster is what the server needs of cluster mode (internal/cluster's Node): where an id
// lives, which nodes can take work this one cannot or should not, the cluster-wide counts
// behind per-key limits, and the cluster's view for GET /v1/cluster. Nil is single-node mode,
// where nothing below runs.
type Cluster interface {
	// ID is this node's id, sent on proxied requests (ClusterHopHeader).
	ID() string
	// Locate says where sandbox or session id lives. An error (the registry unreachable)
	// serves the request locally: this node's own sandboxes keep working without NATS.
	Locate(ctx context.Context, id string) (ClusterLocation, error)
	// Offers reports whether this node itself offers need's image and runtime.
	Offers(need ClusterNeed) bool
	// Candidates are the live nodes other than this one that offer need's image and runtime,
	// the most room first (Free, from their heartbeats); empty when none does.
	Candidates(need ClusterNeed) []ClusterLocation
	// LiveOf counts owner's live long-lived sandboxes (with session, sessions) on every live
	// node, from the registry.
	LiveOf(ctx context.Context, owner string, session bool) (int, error)
	// Claim binds a name (a seed-route session's, per key) to this node unless a live node
	// holds it already: that node's location, or Local when this node holds it now.
	Claim(ctx context.Context, name string) (ClusterLocation, error)
	// View is the cluster from the heartbeats, for the metrics.
	View() ClusterView
	// CPUElsewhere sums the CPU seconds the other live nodes have charged owner's key in the
	// period that started at window (KeyUsage.CPU, published in their heartbeats).
	CPUElsewhere(owner string, window time.Time) float64
	// RateElsewhere sums the requests per second the other live nodes admitted lately for
	// owner's key (KeyUsage.Rates), and says how many nodes are up, this one included.
	RateElsewhere(owner string) (perSecond float64, up int)
}

// KeyUsage is what this node publishes, in its heartbeats, of its use of the per-key limits
// that hold over the cluster: CPU seconds charged in the current period, and requests per
// second admitted since the last heartbeat, by owner.
type KeyUsage struct {
	CPU   map[string]CPUCharge `json:"cpu,omitempty"`
	Rates map[string]float64   `json:"rates,omitempty"`
}

// CPUCharge is what one node has charged a key's CPU seconds in one period.
type CPUCharge struct {
	Window  time.Time `json:"window"` // the period's start (a multiple of the period, UTC)
	Seconds float64   `json:"seconds"`
}

// KeyUsage reads this node's use of the keys' cluster-wide limits, for its heartbeat: the
// other nodes add it to their own when they check a key (CPUElsewhere, RateElsewhere). Each
// call measures the request rates since the previous one.
func (s *Server) KeyUsage() KeyUsage {
	u := KeyUsage{CPU: map[string]CPUCharge{}, Rates: map[string]float64{}}
	now := time.Now()
	for _, k := range s.keys {
		k.mu.Lock()
		if k.Limits.CPUSeconds > 0 {
			k.rollPeriod(now)
			if k.cpuUsed > 0 {
				u.CPU[k.owner] = CPUCharge{Window: k.cpuStart, Seconds: k.cpuUsed}
			}
		}
		if k.limit != nil {
			n := k.admitted.Load()
			if el := now.Sub(k.rateAt).Seconds(); !k.rateAt.IsZero() && el > 0 && n > k.rateSeen {
				u.Rates[k.owner] = float64(n-k.rateSeen) / el
			}
			k.rateSeen, k.rateAt = n, now
		}
		k.mu.Unlock()
	}
	return u
}

// clusterRate sets the key's rate on this node to what the other nodes leave of it: its rate
// less what they admitted lately, never less than an equal share of it.
func (s *Server) clusterRate(k *keyState) {
	elsewhere, up := s.cfg.Cluster.RateElsewhere(k.owner)
	l := max(k.Limits.Rate-elsewhere, k.Limits.Rate/float64(max(up, 1)))
	if rate.Limit(l) != k.limit.Limit() {
		k.limit.SetLimit(rate.Limit(l))
	}
}

// ClusterNeed is what a request asks of the node that serves it.
type ClusterNeed struct {
	OneShot bool   // a one-shot run (else a long-lived sandbox or session)
	Image   string // as the request names it; "" or "host" is every node's
	Runtime string // "" is every node's default
}

// ClusterLocation is where an id lives, or a node that could take a request.
type ClusterLocation struct {
	Known bool   // the registry has the id; false serves the request locally
	Local bool   // this node holds it
	Node  string // the node that holds it
	Owner string // the owner it was created by (the engine's hash of the API key)
	// API is the holding node's base URL while it is alive; nil when it is not, and Gone says
	// why (or why the sandbox itself has ended), for a 410.
	API  *url.URL
	Gone string
	// Free is, for Candidates, the room the node's last heartbeat advertised for the need's
	// kind: one-shot slots free (less its queue), or long-lived sandboxes it admits; At is
	// when that heartbeat was made.
	Free int
	At   time.Time
}

// ClusterView is the cluster from this node's side: every node's last heartbeat, and their
// sums over the nodes that are up.
type ClusterView struct {
	Node  string            `json:"node"`  // the node that answered
	Nodes []ClusterNodeView `json:"nodes"` // every node known, by id
	// Up and Gone count the nodes that heartbeat and those that stopped (or left).
	Up   int `json:"up"`
	Gone int `json:"gone"`
	// MaxSandboxes, Room, MaxConcurrent, Running and Waiting are the sums over the nodes that
	// are up: long-lived sandboxes admitted and admissible now, one-shot slots, one-shot runs
	// in progress and queued.
	MaxSandboxes  int `json:"max_sandboxes"`
	Room          int `json:"room"`
	MaxConcurrent int `json:"max_concurrent"`
	Running       int `json:"running"`
	Waiting       int `json:"waiting"`
	// Sandboxes sums the nodes' live sandboxes by kind (one-shot runs included).
	Sandboxes map[string]int `json:"sandboxes"`
	// Registered is how many live sandboxes and sessions the answering node has in the registry.
	Registered int `json:"registered"`
}

// ClusterNodeView is one node of ClusterView, from its last heartbeat.
type ClusterNodeView struct {
	Node          string         `json:"node"`
	State         string         `json:"state"` // up, gone (missed its heartbeats) or left (shut down)
	API           string         `json:"api"`   // base URL of its HTTP API
	Version       string         `json:"version"`
	Runtimes      []string       `json:"runtimes"`
	Images        []string       `json:"images"`         // image names of its store
	MaxSandboxes  int            `json:"max_sandboxes"`  // its bound on long-lived sandboxes and sessions
	Room          int            `json:"room"`           // how many more of those it admits
	MaxConcurrent int            `json:"max_concurrent"` // its one-shot slots
	Running       int            `json:"running"`        // one-shot runs holding a slot
	Waiting       int            `json:"waiting"`        // one-shot runs queued for a slot
	Sandboxes     map[string]int `json:"sandboxes"`      // live sandboxes by kind (one-shot runs included)
	Seen          time.Time      `json:"seen"`           // when its last heartbeat was seen
}

// ClusterHopHeader marks a request proxied from another node (its value is that node's id):
// it is served here, never proxied again, so that stale registry views cannot make a loop.
const ClusterHopHeader = "Airlock-Cluster-Hop"

// ClusterRefusedHeader marks a hop's 429 that means "this node has no room now, nothing was
// started": the entry node then tries the next node with room.
const ClusterRefusedHeader = "Airlock-Cluster-Refused"

// clusterProxyTransport carries requests between nodes. No overall timeout: streams and
// WebSocket execs live as long as their sandbox; the holding node bounds them.
var clusterProxyTransport = &http.Transport{
	Proxy:                 nil,
	DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	MaxIdleConnsPerHost:   64,
	IdleConnTimeout:       90 * time.Second,
	ResponseHeaderTimeout: 0, // a long exec answers only when it ends
	ForceAttemptHTTP2:     false,
}

// clusterState is the routing middleware's own: the one-shots this node runs, what it has
// forwarded to each node and not yet had answered (heartbeats lag a burst), and its metrics.
type clusterState struct {
	mu        sync.Mutex
	oneShots  int                             // one-shot requests served here now (entered here or hops)
	line      []*clusterWaiter                // one-shot runs waiting for room, in arrival order
	under     map[string]int                  // owner → its runs under way from this node (placeRun)
	changed   chan struct{}                   // closed (and replaced) when room may have come
	seq       uint64                          // ids of forwarded and of waiters
	forwarded map[string]map[uint64]time.Time // node → requests sent there, unanswered: when
	answered  map[string][]forward            // node → requests sent there and answered lately

	routed   *prometheus.CounterVec
	refusals *prometheus.CounterVec
}

func newClusterState(reg *prometheus.Registry, c Cluster) *clusterState {
	cs := &clusterState{forwarded: map[string]map[uint64]time.Time{}, answered: map[string][]forward{}, under: map[string]int{}, changed: make(chan struct{}),
		routed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_cluster_forwarded_total",
			Help: "Requests this node sent to another node, by reason (owner: the id lives there; full, image, runtime: placement) and outcome (served, refused, unreachable).",
		}, []string{"reason", "outcome"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_cluster_placement_refusals_total",
			Help: "Requests this node refused to place: as a hop with no room (full), or with no node anywhere able to take them (none).",
		}, []string{"reason"}),
	}
	view := func(f func(v ClusterView) float64) func() float64 {
		return func() float64 { return f(c.View()) }
	}
	reg.MustRegister(cs.routed, cs.refusals,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "airlock_cluster_nodes_up", Help: "Cluster nodes heartbeating, this one included."},
			view(func(v ClusterView) float64 { return float64(v.Up) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "airlock_cluster_nodes_gone", Help: "Cluster nodes known that stopped heartbeating or left."},
			view(func(v ClusterView) float64 { return float64(v.Gone) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "airlock_cluster_registered", Help: "Live sandboxes and sessions this node has in the cluster registry."},
			view(func(v ClusterView) float64 { return float64(v.Registered) })),
	)
	return cs
}

// clusterRoute sends a request for a sandbox or session this node does not hold to the node
// that does, answers 410 for one whose node is gone, and places a create or a one-shot run
// this node cannot or should not take on a node that can. Everything else goes to next
// unchanged.
func (s *Server) clusterRoute(next http.Handler) http.Handler {
	c := s.cfg.Cluster
	if c == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hop := r.Header.Get(ClusterHopHeader) != ""
		if r.Method == http.MethodPost {
			switch r.URL.Path {
			// The judge APIs whose runs keep nothing on the node (Judge0's tokens and go-judge's
			// cached files do: those stay where they were asked).
			case "/v1/execute", "/execute", "/piston/api/v2/execute", "/codapi/v1/exec":
				s.placeRun(w, r, next, hop, true)
				return
			case "/v1/sandboxes", "/v1/sessions":
				s.placeRun(w, r, next, hop, false)
				return
			case "/repl/execute", "/repl/install":
				if !hop {
					s.routeSeed(w, r, next)
					return
				}
			}
		}
		if hop {
			next.ServeHTTP(w, r)
			return
		}
		id, keyed := routedID(r.URL.Path)
		if id == "" {
			next.ServeHTTP(w, r)
			return
		}
		// A caller without a valid key costs no registry lookup and no hop: this node answers
		// its 401. Port and tunnel routes carry their own token, checked where the sandbox is.
		owner, ok := s.authorize(r)
		if keyed && !ok {
			next.ServeHTTP(w, r)
			return
		}
		s.routeID(w, r, next, id, func() (string, bool) { return owner, ok })
	})
}

// routeID serves a request for id where id lives: here, proxied to its node, or 410 when its
// node is gone (only to its owner, as owner says; 404 to anyone else, as GetSandbox answers).
func (s *Server) routeID(w http.ResponseWriter, r *http.Request, next http.Handler, id string, owner func() (string, bool)) {
	loc, err := s.cfg.Cluster.Locate(r.Context(), id)
	if err != nil {
		s.cfg.Logger.WarnContext(r.Context(), "cluster registry lookup: serving locally", "sandbox", id, "err", err)
	}
	if err != nil || !loc.Known || loc.Local {
		next.ServeHTTP(w, r)
		return
	}
	if loc.API != nil {
		s.proxyTo(w, r, loc, "owner")
		return
	}
	if o, ok := owner(); !ok || o != loc.Owner {
		s.writeError(w, r, api.Errorf(api.ErrNotFound, "no sandbox %s", id))
		return
	}
	s.writeError(w, r, api.Errorf(api.ErrGone, "sandbox %s is unreachable: %s", id, loc.Gone))
}

// routedID is the sandbox or session id of a path under /v1/sandboxes/{id} or
// /v1/sessions/{id} ("" for any other path), and whether its route needs an API key (all but
// a sandbox's ports and tunnels).
func routedID(p string) (id string, keyed bool) {
	for _, prefix := range []string{"/v1/sandboxes/", "/v1/sessions/"} {
		if rest, ok := strings.CutPrefix(p, prefix); ok {
			id, sub, _ := strings.Cut(rest, "/")
			return id, !strings.HasPrefix(sub, "ports/") && sub != "ports" && !strings.HasPrefix(sub, "tunnels/")
		}
	}
	return "", false
}

// placeRun serves a one-shot run (oneShot) or a create of a long-lived sandbox or session:
// here when this node offers what it asks (image, runtime) and has room; otherwise on the
// node with the most room that offers it, trying the next one when a node refuses (it filled
// up since its heartbeat); here again, queued or refused by this node's own limits, when no
// other node takes it. A hop is served here, or refused at once when this node has no room,
// so that the entry node can try another instead of waiting in this node's queue.
func (s *Server) placeRun(w http.ResponseWriter, r *http.Request, next http.Handler, hop, oneShot bool) {
	cs := s.cl
	if hop {
		release, ok := s.reserveHere(oneShot)
		if !ok {
			cs.refusals.WithLabelValues("full").Inc()
			w.Header().Set(ClusterRefusedHeader, "full")
			s.writeError(w, r, api.Errorf(api.ErrResourceExhausted, "node %s has no room now", s.cfg.Cluster.ID()))
			return
		}
		defer release()
		next.ServeHTTP(w, r)
		return
	}
	// A caller without a valid key is placed nowhere and waits for nothing: this node answers
	// its 401.
	owner, ok := s.callerOwner(r)
	if !ok {
		next.ServeHTTP(w, r)
		return
	}
	body, need, ok := s.peekNeed(r, oneShot)
	if !ok { // unreadable, too large or not JSON: this node answers why
		next.ServeHTTP(w, r)
		return
	}
	offered := s.cfg.Cluster.Offers(need)
	reason := "full"
	switch {
	case offered:
	case need.Runtime != "" && !s.cfg.Cluster.Offers(ClusterNeed{OneShot: oneShot, Runtime: need.Runtime}):
		reason = "runtime"
	default:
		reason = "image"
	}
	// A one-shot run waits for room anywhere (here, or a node that had none a moment ago),
	// rather than in this node's queue, from which no other node could take it; a create
	// does not wait (a sandbox lives for minutes: a full cluster is a 429 at once).
	// Runs take their turn as the engine's queue gives it: the waiting run of the key that has
	// fewest runs under way from this node first, the earliest among equals, so that a key
	// flooding this node cannot starve one that asks once.
	deadline := time.Now().Add(clusterWait)
	var me *clusterWaiter
	if oneShot {
		lim := s.cfg.Engine.Limits()
		if me = cs.join(owner, lim.MaxQueue, lim.MaxQueuePerKey); me == nil {
			s.serveQueued(w, r, next, body) // as many wait here as this node's queue holds
			return
		}
		defer cs.leave(me)
	}
	for {
		cs.mu.Lock()
		changed, turn := cs.changed, me == nil || cs.first() == me
		cs.mu.Unlock()
		if turn {
			if offered {
				if release, ok := s.reserveHere(oneShot); ok {
					defer cs.started(me)()
					defer release()
					cs.leave(me) // the next run's turn, while this one runs
					next.ServeHTTP(w, withBody(r, body))
					return
				}
			}
			cands := s.cfg.Cluster.Candidates(need)
			for _, loc := range cands {
				if s.roomOf(loc) <= 0 {
					continue
				}
				if s.tryForward(w, r, body, loc, reason, me) {
					return
				}
			}
			if !offered && len(cands) == 0 {
				break // no node offers it: this node's answer says why
			}
		}
		if !oneShot || !time.Now().Before(deadline) {
			cs.refusals.WithLabelValues("none").Inc()
			if !offered {
				s.writeError(w, r, api.Errorf(api.ErrResourceExhausted, "every node that offers image %q and runtime %q is full; retry", need.Image, need.Runtime))
				return
			}
			break // this node's own answer: its queue, or its 429
		}
		t := time.NewTimer(clusterPoll)
		select {
		case <-changed: // a slot here, an answer from a node this one sent work to, a turn
		case <-t.C: // newer heartbeats
		case <-r.Context().Done():
			t.Stop()
			s.writeError(w, r, api.Errorf(api.ErrUnavailable, "the caller went away while waiting for room"))
			return
		}
		t.Stop()
	}
	cs.leave(me)
	s.serveQueued(w, r, next, body)
}

// serveQueued serves a request here without room of its own: a one-shot queued for a slot,
// or this node's own answer — a 429 when full, or why no node offers what it asks.
func (s *Server) serveQueued(w http.ResponseWriter, r *http.Request, next http.Handler, body []byte) {
	cs := s.cl
	cs.mu.Lock()
	cs.oneShots++
	cs.mu.Unlock()
	defer cs.doneHere()
	next.ServeHTTP(w, withBody(r, body))
}

// clusterWaiter is a one-shot run waiting at its entry node for room in the cluster.
type clusterWaiter struct {
	owner string
	seq   uint64
	gone  bool // left the line
}

// join puts a run of owner in the line, unless max are waiting already, or perOwner of
// owner's (nil then; without keys, owner "" is the one tenant, bound by max only).
func (cs *clusterState) join(owner string, max, perOwner int) *clusterWaiter {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	mine := 0
	for _, w := range cs.line {
		if w.owner == owner {
			mine++
		}
	}
	if len(cs.line) >= max || (owner != "" && mine >= perOwner) {
		return nil
	}
	w := &clusterWaiter{owner: owner, seq: cs.seq}
	cs.seq++
	cs.line = append(cs.line, w)
	return w
}

// leave takes w out of the line (idempotent; nil is no waiter) and gives the next its turn.
func (cs *clusterState) leave(w *clusterWaiter) {
	if w == nil {
		return
	}
	cs.mu.Lock()
	left := w.gone
	w.gone = true
	cs.mu.Unlock()
	if !left {
		cs.aside(w)
	}
}

// aside takes w out of the line for now (rejoin puts it back in its place).
func (cs *clusterState) aside(w *clusterWaiter) {
	if w == nil {
		return
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.line = slices.DeleteFunc(cs.line, func(x *clusterWaiter) bool { return x == w })
	cs.wake()
}

// rejoin puts w back in the line in its place of arrival, unless it has left.
func (cs *clusterState) rejoin(w *clusterWaiter) {
	if w == nil {
		return
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if w.gone || slices.Contains(cs.line, w) {
		return
	}
	i, _ := slices.BinarySearchFunc(cs.line, w, func(a, b *clusterWaiter) int { return cmp.Compare(a.seq, b.seq) })
	cs.line = slices.Insert(cs.line, i, w)
}

// first is the waiter whose turn it is: of the owner with fewest runs under way from this
// node, the earliest. cs.mu must be held.
func (cs *clusterState) first() *clusterWaiter {
	var best *clusterWaiter
	for _, w := range cs.line {
		if best == nil || cs.under[w.owner] < cs.under[best.owner] {
			best = w // the line is in arrival order: the first of each count wins
		}
	}
	return best
}

// started counts a run of w's owner under way from this node (here or sent elsewhere) until
// the returned func is called.
func (cs *clusterState) started(w *clusterWaiter) func() {
	if w == nil {
		return func() {}
	}
	cs.mu.Lock()
	cs.under[w.owner]++
	cs.mu.Unlock()
	return func() {
		cs.mu.Lock()
		if cs.under[w.owner]--; cs.under[w.owner] <= 0 {
			delete(cs.under, w.owner)
		}
		cs.mu.Unlock()
	}
}

// clusterWait bounds how long a one-shot run waits for room in the cluster before this node's
// own queue takes it (the engine's queue timeout, 30 s by default, then applies there);
// clusterPoll is how often a waiting run looks at the heartbeats again.
const (
	clusterWait = 30 * time.Second
	clusterPoll = 50 * time.Millisecond
)

// callerOwner authenticates r as the route it is for does: a bearer key (the /v1 and seed
// routes, codapi, Piston), Piston's HTTP Basic password, or E2B's X-API-KEY.
func (s *Server) callerOwner(r *http.Request) (string, bool) {
	if owner, ok := s.authorize(r); ok {
		return owner, true
	}
	if strings.HasPrefix(r.URL.Path, e2bPrefix+"/") {
		return s.Authenticate(r.Header.Get("X-API-KEY"))
	}
	if _, pw, ok := r.BasicAuth(); ok && strings.HasPrefix(r.URL.Path, "/piston/") {
		return s.Authenticate(pw)
	}
	return "", false
}

// reserveHere takes room for one request of the kind on this node now, or reports that it has
// none: for one-shot runs, a slot free beyond those running, queued and admitted here; for
// creates, the engine's room for another long-lived sandbox.
func (s *Server) reserveHere(oneShot bool) (release func(), ok bool) {
	if !oneShot {
		return func() {}, s.cfg.Engine.SandboxRoom() > 0
	}
	e, cs := s.cfg.Engine, s.cl
	// The engine's count covers every route's runs (batches, the judge APIs); this node's own
	// covers runs admitted here that have not reached the engine yet.
	busy := e.Running() + e.Waiting()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if max(busy, cs.oneShots) >= e.Limits().MaxConcurrent {
		return nil, false
	}
	cs.oneShots++
	return sync.OnceFunc(cs.doneHere), true
}

// doneHere ends a one-shot served here and wakes the runs waiting for room.
func (cs *clusterState) doneHere() {
	cs.mu.Lock()
	cs.oneShots--
	cs.wake()
	cs.mu.Unlock()
}

// wake tells the runs waiting for room to look again. cs.mu must be held.
func (cs *clusterState) wake() {
	close(cs.changed)
	cs.changed = make(chan struct{})
}

// roomOf is loc's advertised room corrected by what this node knows better than that
// heartbeat: less the requests it sent there since (not in the heartbeat's counts), plus those
// sent before it that have been answered since (in its counts, but over).
func (s *Server) roomOf(loc ClusterLocation) int {
	cs := s.cl
	cs.mu.Lock()
	defer cs.mu.Unlock()
	room := loc.Free
	for _, start := range cs.forwarded[loc.Node] {
		if start.After(loc.At) {
			room--
		}
	}
	kept := cs.answered[loc.Node][:0]
	for _, f := range cs.answered[loc.Node] {
		if !f.end.After(loc.At) {
			continue // answered before this heartbeat (heartbeats only get newer): forgotten
		}
		kept = append(kept, f)
		if !f.start.After(loc.At) {
			room++
		}
	}
	cs.answered[loc.Node] = kept
	return room
}

// forward is one request sent to another node and answered.
type forward struct{ start, end time.Time }

// answeredKeep is how long this node remembers an answered forward for roomOf: longer than
// any heartbeat interval, after which the heartbeats say it all.
const answeredKeep = 30 * time.Second

// sent records a request sent to node now; the returned func records its answer.
func (cs *clusterState) sent(node string) func() {
	start := time.Now()
	cs.mu.Lock()
	id := cs.seq
	cs.seq++
	if cs.forwarded[node] == nil {
		cs.forwarded[node] = map[uint64]time.Time{}
	}
	cs.forwarded[node][id] = start
	cs.mu.Unlock()
	return func() {
		now := time.Now()
		cs.mu.Lock()
		defer cs.mu.Unlock()
		delete(cs.forwarded[node], id)
		if len(cs.forwarded[node]) == 0 {
			delete(cs.forwarded, node)
		}
		kept := cs.answered[node][:0]
		for _, f := range cs.answered[node] {
			if now.Sub(f.end) < answeredKeep {
				kept = append(kept, f)
			}
		}
		cs.answered[node] = append(kept, forward{start, now})
		cs.wake()
	}
}

// peekNeed reads r's body (up to the server's bound) and what it asks of a node.
func (s *Server) peekNeed(r *http.Request, oneShot bool) ([]byte, ClusterNeed, bool) {
	b, err := io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxBodyBytes+1))
	r.Body.Close()
	if err != nil || int64(len(b)) > s.cfg.MaxBodyBytes {
		// Unreadable or too large: served here from what was read, for this node's answer.
		r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(b), errReader{err}))
		return nil, ClusterNeed{}, false
	}
	var req struct {
		Image   string `json:"image"`
		Runtime string `json:"runtime"`
	}
	if len(bytes.TrimSpace(b)) > 0 && json.Unmarshal(b, &req) != nil {
		r.Body = io.NopCloser(bytes.NewReader(b))
		return nil, ClusterNeed{}, false
	}
	return b, ClusterNeed{OneShot: oneShot, Image: req.Image, Runtime: req.Runtime}, true
}

// errReader fails with err (nil: the body ended; a body over the bound reads on as sent).
type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) {
	if e.err == nil {
		return 0, io.EOF
	}
	return 0, e.err
}

// withBody is r with body as its body, replayable.
func withBody(r *http.Request, body []byte) *http.Request {
	r2 := r.Clone(r.Context())
	r2.Body = io.NopCloser(bytes.NewReader(body))
	r2.ContentLength = int64(len(body))
	r2.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	return r2
}

// errRefused is a hop's refusal (ClusterRefusedHeader) or a node that could not be dialled:
// nothing was started there, and the request may go to another node.
var errRefused = errors.New("refused")

// tryForward sends r, with body, to loc; false when loc refused it or could not be reached
// before anything was sent (w untouched: the caller tries elsewhere).
func (s *Server) tryForward(w http.ResponseWriter, r *http.Request, body []byte, loc ClusterLocation, reason string, me *clusterWaiter) bool {
	cs := s.cl
	defer cs.sent(loc.Node)()
	defer cs.started(me)()
	// The next run's turn while this one is on its way: a refusal comes at once, an
	// acceptance only with the run's answer.
	cs.aside(me)
	refused := false
	rp := s.proxy(loc, reason)
	served := rp.ModifyResponse
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get(ClusterRefusedHeader) != "" {
			return errRefused
		}
		return served(resp)
	}
	onError := rp.ErrorHandler
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		var op *net.OpError
		if errors.Is(err, errRefused) || (errors.As(err, &op) && op.Op == "dial") {
			refused = true
			outcome := "refused"
			if !errors.Is(err, errRefused) {
				outcome = "unreachable"
			}
			cs.routed.WithLabelValues(reason, outcome).Inc()
			return
		}
		onError(w, r, err)
	}
	rp.ServeHTTP(w, withBody(r, body))
	if refused {
		cs.rejoin(me)
	}
	return !refused
}

// proxyTo hands r to the node at loc.API and copies its answer back unchanged, WebSocket
// upgrades included; the caller's Authorization passes through (keys are the same on every
// node). A node that cannot be reached answers 503.
func (s *Server) proxyTo(w http.ResponseWriter, r *http.Request, loc ClusterLocation, reason string) {
	s.proxy(loc, reason).ServeHTTP(w, r)
}

// proxy is the reverse proxy to loc, counting under reason.
func (s *Server) proxy(loc ClusterLocation, reason string) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(loc.API)
			pr.SetXForwarded()
			pr.Out.Header.Set(ClusterHopHeader, s.cfg.Cluster.ID())
			// One request id on both nodes' log lines and in the answer (the front ends
			// routed by ClusterFront have none yet: the holding node makes one).
			if id := audit.RequestID(pr.In.Context()); id != "" {
				pr.Out.Header.Set(api.RequestIDHeader, id)
			}
		},
		Transport:     clusterProxyTransport,
		FlushInterval: -1, // NDJSON streams flow as they are written
		ModifyResponse: func(*http.Response) error {
			s.cl.routed.WithLabelValues(reason, "served").Inc()
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			s.cl.routed.WithLabelValues(reason, "unreachable").Inc()
			s.cfg.Logger.WarnContext(r.Context(), "cluster proxy", "node", loc.Node, "err", err)
			s.writeError(w, r, api.Errorf(api.ErrUnavailable, "node %s, which holds this, cannot be reached; retry", loc.Node))
		},
	}
}

// ClusterPartialHeader names, on a cluster-wide list, the live nodes that did not answer in
// time: the list holds every other node's sandboxes but theirs.
const ClusterPartialHeader = "Airlock-Cluster-Partial"

// listElsewhere adds to list the caller's sandboxes on every other live node (AskPeers) and
// sorts the whole by creation.
func (s *Server) listElsewhere(w http.ResponseWriter, r *http.Request, list *api.SandboxList) {
	for node, body := range s.AskPeers(w, r) {
		var l api.SandboxList
		if err := json.Unmarshal(body, &l); err != nil {
			s.cfg.Logger.WarnContext(r.Context(), "cluster list: a node's answer", "node", node, "err", err)
			continue
		}
		list.Sandboxes = append(list.Sandboxes, l.Sandboxes...)
	}
	slices.SortStableFunc(list.Sandboxes, func(a, b api.SandboxInfo) int { return a.CreatedAt.Compare(b.CreatedAt) })
}

// AskPeers sends r (a GET of a list: its path, query and the caller's key) to every other
// live node at once, as a hop, so that each answers with its own part only, and returns their
// 200 answers by node. A node that does not answer within 5 s, or answers otherwise, is left
// out and named in ClusterPartialHeader on w: one slow node must not fail every list. Nil in
// single-node mode and for a request that is itself a hop.
func (s *Server) AskPeers(w http.ResponseWriter, r *http.Request) map[string][]byte {
	if s.cfg.Cluster == nil || r.Header.Get(ClusterHopHeader) != "" {
		return nil
	}
	peers := s.cfg.Cluster.Candidates(ClusterNeed{})
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	type answer struct {
		node string
		body []byte
		err  error
	}
	answers := make(chan answer, len(peers))
	for _, loc := range peers {
		go func() {
			body, err := s.askPeer(ctx, r, loc)
			answers <- answer{loc.Node, body, err}
		}()
	}
	got := map[string][]byte{}
	var missing []string
	for range peers {
		a := <-answers
		if a.err != nil {
			s.cl.routed.WithLabelValues("list", "unreachable").Inc()
			s.cfg.Logger.WarnContext(r.Context(), "cluster list: a node did not answer", "node", a.node, "err", a.err)
			missing = append(missing, a.node)
			continue
		}
		s.cl.routed.WithLabelValues("list", "served").Inc()
		got[a.node] = a.body
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		w.Header().Set(ClusterPartialHeader, strings.Join(missing, ","))
	}
	return got
}

// askPeer sends r's method, path and query to the node at loc as a hop, with the caller's
// key (the REST API's bearer or E2B's X-API-KEY), and returns its 200 answer.
func (s *Server) askPeer(ctx context.Context, r *http.Request, loc ClusterLocation) ([]byte, error) {
	// RequestURI, not URL: a front end below a prefix (E2B's /e2b) sees its URL stripped.
	req, err := http.NewRequestWithContext(ctx, r.Method, strings.TrimSuffix(loc.API.String(), "/")+r.RequestURI, nil)
	if err != nil {
		return nil, err
	}
	for _, h := range []string{"Authorization", "X-API-KEY"} {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	req.Header.Set(ClusterHopHeader, s.cfg.Cluster.ID())
	if id := audit.RequestID(r.Context()); id != "" {
		req.Header.Set(api.RequestIDHeader, id)
	}
	resp, err := clusterProxyTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("node %s answered %s", loc.Node, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 64<<20))
}

// routeSeed sends a seed-route call (POST /repl/execute or /repl/install, a session by name
// per key) to the node that holds the key's session of that name, claiming the name for this
// node when no live node holds it.
func (s *Server) routeSeed(w http.ResponseWriter, r *http.Request, next http.Handler) {
	owner, ok := s.authorize(r)
	if !ok {
		next.ServeHTTP(w, r)
		return
	}
	name := r.URL.Query().Get("session_id")
	if r.URL.Path == "/repl/execute" {
		b, _, ok := s.peekNeed(r, false)
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		var req api.SeedREPLRequest
		if json.Unmarshal(b, &req) != nil {
			next.ServeHTTP(w, withBody(r, b))
			return
		}
		name = req.SessionID
		r = withBody(r, b)
	}
	loc, err := s.cfg.Cluster.Claim(r.Context(), seedClaim(owner, name))
	if err != nil {
		s.cfg.Logger.WarnContext(r.Context(), "cluster seed-session claim: serving locally", "err", err)
	}
	if err != nil || loc.Local || loc.API == nil {
		next.ServeHTTP(w, r)
		return
	}
	s.proxyTo(w, r, loc, "owner")
}

// seedClaim is the registry name of owner's seed session name (a hash: names are the
// caller's, keys of the registry are not).
func seedClaim(owner, name string) string {
	h := sha256.Sum256([]byte(owner + "\x00" + name))
	return "seed." + hex.EncodeToString(h[:16])
}

// E2B's mounts (internal/compat/e2b), routed by ClusterFront; the paths are E2B's, spelled here
// so that this package need not import the front end.
const (
	e2bPrefix        = "/e2b"
	e2bSandboxPrefix = e2bPrefix + "/sandbox"
	e2bSandboxHeader = "E2b-Sandbox-Id" // the data plane's sandbox id (E2B SDKs send it)
)

// ClusterFront routes the front ends mounted outside Handler — Modal's gRPC calls (by the
// sandbox or task id in the call's first message), E2B's control plane
// (/e2b/sandboxes/{id}…, /e2b/v2/sandboxes/{id}…) and its envd data plane (/e2b/sandbox, the
// id in the E2b-Sandbox-Id header) — to the node that holds the sandbox, and places an E2B
// create this node has no room for on a node that has, as clusterRoute does for /v1. In
// single-node mode it is next itself. The node holding a sandbox checks the caller's
// credentials (the API key, or the sandbox's access token), as it would without a hop.
func (s *Server) ClusterFront(next http.Handler) http.Handler {
	if s.cfg.Cluster == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hop := r.Header.Get(ClusterHopHeader) != ""
		if isGRPC(r) {
			if !hop {
				s.routeGRPC(w, r, next)
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		rest, ok := strings.CutPrefix(r.URL.Path, e2bPrefix+"/")
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		control, _ := strings.CutPrefix(rest, "v2/")
		if r.Method == http.MethodPost && control == "sandboxes" {
			s.placeRun(w, r, next, hop, false)
			return
		}
		if hop {
			next.ServeHTTP(w, r)
			return
		}
		var id string
		switch {
		case r.URL.Path == e2bSandboxPrefix || strings.HasPrefix(r.URL.Path, e2bSandboxPrefix+"/"):
			id = r.Header.Get(e2bSandboxHeader)
		case strings.HasPrefix(control, "sandboxes/"):
			// No lookup and no hop for a caller without a valid key: E2B's front end answers.
			if _, ok := s.Authenticate(r.Header.Get("X-API-KEY")); !ok {
				next.ServeHTTP(w, r)
				return
			}
			id, _, _ = strings.Cut(strings.TrimPrefix(control, "sandboxes/"), "/")
		}
		if id == "" {
			next.ServeHTTP(w, r)
			return
		}
		loc, err := s.cfg.Cluster.Locate(r.Context(), id)
		if err != nil {
			s.cfg.Logger.WarnContext(r.Context(), "cluster registry lookup: serving locally", "sandbox", id, "err", err)
		}
		// A gone node's sandbox is E2B's "not found" or "not running", which the front end
		// answers here as it would for any id it does not hold.
		if err != nil || !loc.Known || loc.Local || loc.API == nil {
			next.ServeHTTP(w, r)
			return
		}
		s.proxyTo(w, r, loc, "owner")
	})
}

// isGRPC reports whether r is a gRPC call (Modal's front end, internal/compat/modal).
func isGRPC(r *http.Request) bool {
	return r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// clusterGRPCTransport carries gRPC calls between nodes: HTTP/2 without TLS (h2c), as the
// nodes' listeners serve it, with trailers (a call's status) passed through.
var clusterGRPCTransport = func() *http.Transport {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Transport{Protocols: &p, DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		IdleConnTimeout: 90 * time.Second}
}()

// maxGRPCPeek bounds the first message of a gRPC call read for its sandbox id; a larger one
// (a file upload, say) is served here.
const maxGRPCPeek = 1 << 20

// grpcPeekTimeout bounds the wait for a gRPC call's first message when it is peeked.
const grpcPeekTimeout = 10 * time.Second

// routeGRPC sends a gRPC call naming a sandbox another live node holds (a Modal control call
// with its sandbox_id, a router call with its task_id: the same id) to that node, the whole
// HTTP/2 stream proxied; any other call is served here. The holding node checks the caller's
// key or router token.
func (s *Server) routeGRPC(w http.ResponseWriter, r *http.Request, next http.Handler) {
	// Only a call with credentials is peeked (an API key that checks, or a router token, which
	// the holding node verifies): anyone else's is refused by the front end here, at no cost
	// of a registry lookup. The peek has its own deadline, so a stream that declares a message
	// and sends nothing more is not held open by it.
	if secret := r.Header.Get("x-modal-token-secret"); secret != "" {
		if _, ok := s.Authenticate(secret); !ok {
			next.ServeHTTP(w, r)
			return
		}
	} else if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
		next.ServeHTTP(w, r)
		return
	}
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(grpcPeekTimeout)) // best effort: an HTTP/1 test server may not support it
	first, id := peekGRPC(r.Body)
	rc.SetReadDeadline(time.Time{})
	r.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(first), r.Body), r.Body}
	if id == "" {
		next.ServeHTTP(w, r)
		return
	}
	loc, err := s.cfg.Cluster.Locate(r.Context(), id)
	if err != nil || !loc.Known || loc.Local || loc.API == nil {
		next.ServeHTTP(w, r) // gone: the front end answers as for any id it does not hold
		return
	}
	rp := s.proxy(loc, "owner")
	rp.Transport = clusterGRPCTransport
	rp.ServeHTTP(w, r)
}

// sandboxIDRE is an engine sandbox id (engine.newID).
var sandboxIDRE = regexp.MustCompile(`^sb-[a-z2-7]{20}$`)

// peekGRPC reads the first message of a gRPC stream and returns the bytes read and the first
// sandbox id among its string fields (nested messages included); "" when there is none, the
// message is compressed or too large, or the stream ended first.
func peekGRPC(body io.Reader) ([]byte, string) {
	hdr := make([]byte, 5)
	if n, err := io.ReadFull(body, hdr); err != nil {
		return hdr[:n], ""
	}
	size := binary.BigEndian.Uint32(hdr[1:])
	if hdr[0] != 0 || size > maxGRPCPeek {
		return hdr, ""
	}
	// Read as the bytes arrive, never allocating what the header only declares: a caller
	// that announces a 1 MiB message costs 1 MiB only once it has sent it.
	var buf bytes.Buffer
	buf.Write(hdr)
	n, err := io.CopyN(&buf, body, int64(size))
	first := buf.Bytes()
	if err != nil || n != int64(size) {
		return first, ""
	}
	return first, protoSandboxID(first[5:], 0)
}

// protoSandboxID is the first string field of the protobuf message b (or of a message nested
// in it, to depth 3) that is a sandbox id; "" if none, or b is not a message.
func protoSandboxID(b []byte, depth int) string {
	for len(b) > 0 {
		tag, n := binary.Uvarint(b)
		if n <= 0 {
			return ""
		}
		b = b[n:]
		switch tag & 7 {
		case 0: // varint
			if _, n = binary.Uvarint(b); n <= 0 {
				return ""
			}
			b = b[n:]
		case 1: // 64-bit
			if len(b) < 8 {
				return ""
			}
			b = b[8:]
		case 5: // 32-bit
			if len(b) < 4 {
				return ""
			}
			b = b[4:]
		case 2: // bytes, string or message
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return ""
			}
			v := b[n : n+int(l)]
			b = b[n+int(l):]
			if sandboxIDRE.Match(v) {
				return string(v)
			}
			if depth < 3 {
				if id := protoSandboxID(v, depth+1); id != "" {
					return id
				}
			}
		default: // groups: not in Modal's messages
			return ""
		}
	}
	return ""
}
