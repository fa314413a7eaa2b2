package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/server"
)

var _ server.Cluster = (*Node)(nil)

// validKey is what a registry key may be (NATS KV keys); any other id was never registered.
var validKey = regexp.MustCompile(`^[-_=.A-Za-z0-9]{1,128}$`)

// lookupTimeout bounds one registry lookup; past it the request is served locally.
const lookupTimeout = 2 * time.Second

// Locate says where sandbox or session id lives, from the registry and the heartbeats.
func (n *Node) Locate(ctx context.Context, id string) (server.ClusterLocation, error) {
	if !validKey.MatchString(id) || strings.HasPrefix(id, "own.") || strings.HasPrefix(id, "seed.") {
		return server.ClusterLocation{}, nil // not a sandbox's key (ownerKey, Claim)
	}
	if n.nc.Status() != nats.CONNECTED {
		return server.ClusterLocation{}, errDisconnected // served locally: never a hang
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	ent, err := n.sandboxes.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return server.ClusterLocation{}, nil
	}
	if err != nil {
		return server.ClusterLocation{}, fmt.Errorf("registry get %s: %w", id, err)
	}
	var e Entry
	if err := json.Unmarshal(ent.Value(), &e); err != nil {
		return server.ClusterLocation{}, fmt.Errorf("registry entry %s: %w", id, err)
	}
	loc := server.ClusterLocation{Known: true, Node: e.Node, Owner: e.Owner, Local: e.Node == n.cfg.NodeID}
	if loc.Local {
		return loc, nil
	}
	if e.Ended != "" {
		loc.Gone = fmt.Sprintf("it has ended (%s) on node %s", e.Ended, e.Node)
		return loc, nil
	}
	hb, alive, why := n.peer(e.Node)
	if !alive {
		loc.Gone = why
		return loc, nil
	}
	u, err := url.Parse(hb.API)
	if err != nil || u.Host == "" {
		loc.Gone = fmt.Sprintf("node %s publishes no usable API address (%q)", e.Node, hb.API)
		return loc, nil
	}
	loc.API = u
	return loc, nil
}

// Offers reports whether this node offers need's image and runtime (from its own
// configuration, as its heartbeat publishes them).
func (n *Node) Offers(need server.ClusterNeed) bool {
	var images []string
	if n.cfg.Images != nil && needsImage(need.Image) {
		images = n.cfg.Images()
	}
	return offers(n.cfg.Runtimes, images, need)
}

// Candidates returns the live nodes other than this one that offer need's image and runtime,
// the most room first (ties: the lowest id, so that the choice is stable).
func (n *Node) Candidates(need server.ClusterNeed) []server.ClusterLocation {
	n.mu.Lock()
	ids := make([]string, 0, len(n.seen))
	for id := range n.seen {
		ids = append(ids, id)
	}
	n.mu.Unlock()
	var out []server.ClusterLocation
	for _, id := range ids {
		if id == n.cfg.NodeID {
			continue
		}
		hb, alive, _ := n.peer(id)
		if !alive || !offers(hb.Runtimes, hb.Images, need) {
			continue
		}
		u, err := url.Parse(hb.API)
		if err != nil || u.Host == "" {
			continue
		}
		free := hb.Room
		if need.OneShot {
			free = hb.MaxConcurrent - hb.Running - hb.Waiting
		}
		n.mu.Lock()
		at := n.seen[id].at // this node's clock: the server compares its own times with it
		n.mu.Unlock()
		out = append(out, server.ClusterLocation{Known: true, Node: id, API: u, Free: free, At: at})
	}
	slices.SortFunc(out, func(a, b server.ClusterLocation) int {
		if a.Free != b.Free {
			return b.Free - a.Free
		}
		return strings.Compare(a.Node, b.Node)
	})
	return out
}

// needsImage reports whether ref names an image of a store ("" and "host" are every node's;
// an image id is left to the entry node, as heartbeats publish names only).
func needsImage(ref string) bool {
	return ref != "" && ref != "host" && !strings.HasPrefix(ref, "sha256:")
}

// offers reports whether a node with runtimes and images (names, name:tag) serves need.
func offers(runtimes, images []string, need server.ClusterNeed) bool {
	if need.Runtime != "" && !slices.Contains(runtimes, need.Runtime) {
		return false
	}
	if !needsImage(need.Image) {
		return true
	}
	ref := need.Image
	if last := ref[strings.LastIndex(ref, "/")+1:]; !strings.Contains(last, ":") && !strings.Contains(last, "@") {
		if slices.Contains(images, ref+":latest") {
			return true
		}
	}
	return slices.Contains(images, ref)
}

// LiveOf counts owner's live sandboxes (with session, sessions of either kind) on every live
// node: one filtered read of the owner's index keys (ownerKey). Those of a gone node do not
// count: they come back only if it restarts, and are then counted again.
func (n *Node) LiveOf(ctx context.Context, owner string, session bool) (int, error) {
	if !validKey.MatchString(owner) {
		return 0, nil
	}
	if n.nc.Status() != nats.CONNECTED {
		return 0, errDisconnected
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	kl, err := n.sandboxes.ListKeysFiltered(ctx, ownerKeys(owner)+".>")
	if err != nil {
		return 0, fmt.Errorf("registry: list the owner's sandboxes: %w", err)
	}
	defer kl.Stop()
	count := 0
	alive := map[string]bool{}
	for k := range kl.Keys() {
		parts := strings.SplitN(strings.TrimPrefix(k, ownerKeys(owner)+"."), ".", 3)
		if len(parts) != 3 || engine.Kind(parts[1]).IsSession() != session {
			continue
		}
		node := parts[0]
		up, seen := alive[node]
		if !seen {
			_, up, _ = n.peer(node)
			up = up || node == n.cfg.NodeID
			alive[node] = up
		}
		if up {
			count++
		}
	}
	return count, ctx.Err()
}

// Claim binds name (a seed-route session's, server.seedClaim) to this node unless a live node
// holds it: that node, or Local once this node holds it (created, or taken over from a node
// that is gone). Compare-and-set on the registry, so two nodes never both take a name.
func (n *Node) Claim(ctx context.Context, name string) (server.ClusterLocation, error) {
	if !validKey.MatchString(name) {
		return server.ClusterLocation{}, fmt.Errorf("claim %q: not a registry key", name)
	}
	if n.nc.Status() != nats.CONNECTED {
		return server.ClusterLocation{}, errDisconnected
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	self := server.ClusterLocation{Known: true, Local: true, Node: n.cfg.NodeID}
	for range 3 { // each pass loses at most one race to another node
		ent, err := n.sandboxes.Get(ctx, name)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			if _, err = n.sandboxes.Create(ctx, name, []byte(n.cfg.NodeID)); err == nil {
				return self, nil
			}
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue
			}
		}
		if err != nil {
			return server.ClusterLocation{}, fmt.Errorf("claim %s: %w", name, err)
		}
		holder := string(ent.Value())
		if holder == n.cfg.NodeID {
			return self, nil
		}
		if hb, alive, _ := n.peer(holder); alive {
			if u, err := url.Parse(hb.API); err == nil && u.Host != "" {
				return server.ClusterLocation{Known: true, Node: holder, API: u}, nil
			}
		}
		if _, err = n.sandboxes.Update(ctx, name, []byte(n.cfg.NodeID), ent.Revision()); err == nil {
			return self, nil
		}
	}
	return server.ClusterLocation{}, fmt.Errorf("claim %s: lost every race for it", name)
}

// View is the cluster from the heartbeats this node has seen, with sums over the nodes up.
func (n *Node) View() server.ClusterView {
	n.mu.Lock()
	ids := make([]string, 0, len(n.seen))
	for id := range n.seen {
		ids = append(ids, id)
	}
	v := server.ClusterView{Node: n.cfg.NodeID, Registered: len(n.live), Sandboxes: map[string]int{}}
	n.mu.Unlock()
	slices.Sort(ids)
	for _, id := range ids {
		hb, alive, _ := n.peer(id)
		n.mu.Lock()
		at := n.seen[id].at
		n.mu.Unlock()
		st := "up"
		switch {
		case hb.Leaving:
			st = "left"
		case !alive:
			st = "gone"
		}
		v.Nodes = append(v.Nodes, server.ClusterNodeView{Node: id, State: st, API: hb.API, Version: hb.Version,
			Runtimes: hb.Runtimes, Images: hb.Images, MaxSandboxes: hb.MaxSandboxes, Room: hb.Room,
			MaxConcurrent: hb.MaxConcurrent, Running: hb.Running, Waiting: hb.Waiting, Sandboxes: hb.Sandboxes, Seen: at})
		if !alive {
			v.Gone++
			continue
		}
		v.Up++
		v.MaxSandboxes += hb.MaxSandboxes
		v.Room += hb.Room
		v.MaxConcurrent += hb.MaxConcurrent
		v.Running += hb.Running
		v.Waiting += hb.Waiting
		for k, c := range hb.Sandboxes {
			v.Sandboxes[k] += c
		}
	}
	return v
}

// CPUElsewhere sums the CPU seconds the other live nodes' last heartbeats say they charged
// owner's key in the period that started at window. A charge is as old as its heartbeat: a key
// may overshoot its bound by what it used elsewhere within one heartbeat interval.
func (n *Node) CPUElsewhere(owner string, window time.Time) float64 {
	n.mu.Lock()
	ids := make([]string, 0, len(n.seen))
	for id := range n.seen {
		ids = append(ids, id)
	}
	n.mu.Unlock()
	sum := 0.0
	for _, id := range ids {
		if id == n.cfg.NodeID {
			continue
		}
		if hb, alive, _ := n.peer(id); alive {
			if c, ok := hb.CPU[owner]; ok && c.Window.Equal(window) {
				sum += c.Seconds
			}
		}
	}
	return sum
}

// RateElsewhere sums the requests per second the other live nodes' last heartbeats say they
// admitted for owner's key, and counts the nodes up (this one included).
func (n *Node) RateElsewhere(owner string) (float64, int) {
	n.mu.Lock()
	ids := make([]string, 0, len(n.seen))
	for id := range n.seen {
		ids = append(ids, id)
	}
	n.mu.Unlock()
	sum, up := 0.0, 0
	for _, id := range ids {
		hb, alive, _ := n.peer(id)
		if !alive {
			continue
		}
		up++
		if id != n.cfg.NodeID {
			sum += hb.Rates[owner]
		}
	}
	return sum, max(up, 1)
}
