package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/airlockhq/airlock/internal/server"
)

var _ server.Cluster = (*Node)(nil)

// validKey is what a registry key may be (NATS KV keys); any other id was never registered.
var validKey = regexp.MustCompile(`^[-_=.A-Za-z0-9]{1,128}$`)

// lookupTimeout bounds one registry lookup; past it the request is served locally.
const lookupTimeout = 2 * time.Second

// Locate says where sandbox or session id lives, from the registry and the heartbeats.
func (n *Node) Locate(ctx context.Context, id string) (server.ClusterLocation, error) {
	if !validKey.MatchString(id) {
		return server.ClusterLocation{}, nil
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

// Place returns the live node, other than this one, with the most room for one more
// long-lived sandbox (ties: the lowest id, so that the choice is stable).
func (n *Node) Place(ctx context.Context) (server.ClusterLocation, bool) {
	n.mu.Lock()
	ids := make([]string, 0, len(n.seen))
	for id := range n.seen {
		ids = append(ids, id)
	}
	n.mu.Unlock()
	var best server.ClusterLocation
	bestRoom := 0
	for _, id := range ids {
		if id == n.cfg.NodeID {
			continue
		}
		hb, alive, _ := n.peer(id)
		if !alive || hb.Room <= 0 {
			continue
		}
		u, err := url.Parse(hb.API)
		if err != nil || u.Host == "" {
			continue
		}
		if hb.Room > bestRoom || (hb.Room == bestRoom && id < best.Node) {
			best, bestRoom = server.ClusterLocation{Known: true, Node: id, API: u}, hb.Room
		}
	}
	return best, bestRoom > 0
}
