package server

import (
	"context"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
)

// Cluster is what the server needs of cluster mode (internal/cluster's Node): where an id
// lives, and which node has room for a sandbox this one cannot take. Nil is single-node mode,
// where nothing below runs.
type Cluster interface {
	// ID is this node's id, sent on proxied requests (ClusterHopHeader).
	ID() string
	// Locate says where sandbox or session id lives. An error (the registry unreachable)
	// serves the request locally: this node's own sandboxes keep working without NATS.
	Locate(ctx context.Context, id string) (ClusterLocation, error)
	// Place returns the live node, other than this one, with the most room for one more
	// long-lived sandbox; ok is false when none has room.
	Place(ctx context.Context) (loc ClusterLocation, ok bool)
}

// ClusterLocation is where an id lives.
type ClusterLocation struct {
	Known bool   // the registry has the id; false serves the request locally
	Local bool   // this node holds it
	Node  string // the node that holds it
	Owner string // the owner it was created by (the engine's hash of the API key)
	// API is the holding node's base URL while it is alive; nil when it is not, and Gone says
	// why (or why the sandbox itself has ended), for a 410.
	API  *url.URL
	Gone string
}

// ClusterHopHeader marks a request proxied from another node (its value is that node's id):
// it is served here, never proxied again, so that stale registry views cannot make a loop.
const ClusterHopHeader = "Airlock-Cluster-Hop"

// clusterProxyTransport carries requests between nodes. No overall timeout: streams and
// WebSocket execs live as long as their sandbox; the holding node bounds them.
var clusterProxyTransport = &http.Transport{
	Proxy:                 nil,
	MaxIdleConnsPerHost:   64,
	IdleConnTimeout:       90 * time.Second,
	ResponseHeaderTimeout: 0, // a long exec answers only when it ends
	ForceAttemptHTTP2:     false,
}

// clusterRoute sends a request for a sandbox or session this node does not hold to the node
// that does, answers 410 for one whose node is gone, and forwards a create this node has no
// room for to a node that has. Everything else goes to next unchanged.
func (s *Server) clusterRoute(next http.Handler) http.Handler {
	c := s.cfg.Cluster
	if c == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(ClusterHopHeader) != "" {
			next.ServeHTTP(w, r)
			return
		}
		if r.Method == http.MethodPost && (r.URL.Path == "/v1/sandboxes" || r.URL.Path == "/v1/sessions") {
			if s.cfg.Engine.SandboxRoom() > 0 {
				next.ServeHTTP(w, r)
				return
			}
			// Full here: the answer of a node with room, unchanged; none has room, this
			// node's own 429.
			if loc, ok := c.Place(r.Context()); ok {
				s.proxyTo(w, r, loc)
				return
			}
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
		if _, ok := s.authorize(r); keyed && !ok {
			next.ServeHTTP(w, r)
			return
		}
		loc, err := c.Locate(r.Context(), id)
		if err != nil {
			s.cfg.Logger.WarnContext(r.Context(), "cluster registry lookup: serving locally", "sandbox", id, "err", err)
		}
		if err != nil || !loc.Known || loc.Local {
			next.ServeHTTP(w, r)
			return
		}
		if loc.API != nil {
			s.proxyTo(w, r, loc)
			return
		}
		// Gone: only its owner learns that it existed, as GetSandbox answers.
		owner, ok := s.authorize(r)
		if !ok || owner != loc.Owner {
			s.writeError(w, r, api.Errorf(api.ErrNotFound, "no sandbox %s", id))
			return
		}
		s.writeError(w, r, api.Errorf(api.ErrGone, "sandbox %s is unreachable: %s", id, loc.Gone))
	})
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

// proxyTo hands r to the node at loc.API and copies its answer back unchanged, WebSocket
// upgrades included; the caller's Authorization passes through (keys are the same on every
// node). A node that cannot be reached answers 503.
func (s *Server) proxyTo(w http.ResponseWriter, r *http.Request, loc ClusterLocation) {
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(loc.API)
			pr.SetXForwarded()
			pr.Out.Header.Set(ClusterHopHeader, s.cfg.Cluster.ID())
			// One request id on both nodes' log lines and in the answer.
			pr.Out.Header.Set(api.RequestIDHeader, audit.RequestID(r.Context()))
		},
		Transport:     clusterProxyTransport,
		FlushInterval: -1, // NDJSON streams flow as they are written
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			s.cfg.Logger.WarnContext(r.Context(), "cluster proxy", "node", loc.Node, "err", err)
			s.writeError(w, r, api.Errorf(api.ErrUnavailable, "node %s, which holds this, cannot be reached; retry", loc.Node))
		},
	}
	rp.ServeHTTP(w, r)
}
