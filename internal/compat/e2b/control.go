package e2b

import (
	"cmp"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// Templates. E2B's default template is the daemon's default image (the host's tree); the code
// interpreter's runs the same image as an Airlock session (a sandbox with a long-lived Python
// interpreter). Any other template id names an image in the daemon's store.
const (
	templateBase        = "base"
	templateInterpreter = "code-interpreter-v1"
)

// defaultTimeout is E2B's sandbox life when create gives none, for code-interpreter
// sandboxes; others get the engine's default sandbox timeout (also 5 minutes unless the
// operator changed it).
const defaultTimeout = 5 * time.Minute

func (s *Server) controlRoutes() {
	for _, p := range []string{"POST /sandboxes", "POST /v2/sandboxes"} {
		s.handle(p, s.handleCreate)
	}
	for _, p := range []string{"GET /sandboxes", "GET /v2/sandboxes"} {
		s.handle(p, s.handleList)
	}
	for _, p := range []string{"POST /sandboxes/{id}/connect", "POST /v2/sandboxes/{id}/connect"} {
		s.handle(p, s.handleConnect)
	}
	s.handle("GET /sandboxes/{id}", s.handleGet)
	s.handle("DELETE /sandboxes/{id}", s.handleKill)
	s.handle("POST /sandboxes/{id}/timeout", s.handleTimeout)
	s.handle("GET /sandboxes/{id}/metrics", s.handleMetrics)
	s.handle("POST /sandboxes/{id}/pause", func(w http.ResponseWriter, r *http.Request) error {
		return api.Errorf(api.ErrUnimplemented, "Airlock does not pause sandboxes: a sandbox runs until it is killed or its timeout expires")
	})
	s.handle("/", func(w http.ResponseWriter, r *http.Request) error {
		return api.Errorf(api.ErrNotFound, "the E2B API has no route %s %s here", r.Method, r.URL.Path)
	})
}

// handle registers an error-returning control-plane handler.
func (s *Server) handle(pattern string, h func(w http.ResponseWriter, r *http.Request) error) {
	s.control.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			if statusOf(err) >= 500 {
				s.cfg.Logger.ErrorContext(r.Context(), "e2b control plane", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			writeError(w, err)
		}
	})
}

// decode reads a JSON body of at most 1 MiB into v; an empty body leaves v as it is.
func decode(r *http.Request, v any) error {
	err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(v)
	if err != nil && !errors.Is(err, io.EOF) {
		return api.Errorf(api.ErrInvalidArgument, "request body: %v", err)
	}
	return nil
}

// createRequest is POST /v2/sandboxes. The fields Airlock cannot honour are refused, never
// ignored.
type createRequest struct {
	TemplateID          string            `json:"templateID"`
	Timeout             *int64            `json:"timeout"` // seconds
	Metadata            map[string]string `json:"metadata"`
	EnvVars             map[string]string `json:"envVars"`
	AllowInternetAccess *bool             `json:"allow_internet_access"`
	Network             *networkConfig    `json:"network"`
	AutoPause           *bool             `json:"autoPause"`
	VolumeMounts        []json.RawMessage `json:"volumeMounts"`
	MCP                 json.RawMessage   `json:"mcp"`
}

// networkConfig is E2B's egress configuration; allowOut maps to an Airlock allowlist.
type networkConfig struct {
	AllowOut []string `json:"allowOut"`
	DenyOut  []string `json:"denyOut"`
}

// sandboxJSON is a sandbox as E2B's list and get answer it.
type sandboxJSON struct {
	SandboxID   string            `json:"sandboxID"`
	TemplateID  string            `json:"templateID"`
	ClientID    string            `json:"clientID"`
	StartedAt   time.Time         `json:"startedAt"`
	EndAt       time.Time         `json:"endAt"`
	CPUCount    int               `json:"cpuCount"`
	MemoryMB    int64             `json:"memoryMB"`
	DiskSizeMB  int64             `json:"diskSizeMB"`
	EnvdVersion string            `json:"envdVersion"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	State       string            `json:"state"`
	// AllowInternetAccess is whether the sandbox's network reaches beyond loopback.
	AllowInternetAccess bool `json:"allowInternetAccess"`
}

// createdJSON is the answer to create and connect.
type createdJSON struct {
	SandboxID          string `json:"sandboxID"`
	TemplateID         string `json:"templateID"`
	ClientID           string `json:"clientID"`
	EnvdVersion        string `json:"envdVersion"`
	EnvdAccessToken    string `json:"envdAccessToken"`
	TrafficAccessToken string `json:"trafficAccessToken"`
}

// templateOf is the E2B template id of a sandbox: how it was made, derived from the sandbox
// itself so that one created through /v1 has one too.
func templateOf(sb *engine.Sandbox) string {
	switch spec := sb.Spec(); {
	case sb.Kind().IsSession():
		return templateInterpreter
	case spec.Image == "" || spec.Image == "host":
		return templateBase
	default:
		return spec.Image
	}
}

func (s *Server) view(sb *engine.Sandbox) sandboxJSON {
	info := sb.Info()
	spec := info.Spec
	return sandboxJSON{SandboxID: info.ID, TemplateID: templateOf(sb), ClientID: clientID,
		StartedAt: info.Created.UTC(), EndAt: info.Expires.UTC(), CPUCount: int(math.Ceil(spec.CPU)),
		MemoryMB: spec.MemoryBytes >> 20, DiskSizeMB: s.cfg.Engine.Limits().ScratchBytes >> 20,
		EnvdVersion: envdVersion, Metadata: spec.Tags, State: "running",
		AllowInternetAccess: spec.Network.Enabled()}
}

func (s *Server) created(r *http.Request, sb *engine.Sandbox) createdJSON {
	tok := s.grantFor(r.Context(), sb)
	return createdJSON{SandboxID: sb.ID(), TemplateID: templateOf(sb), ClientID: clientID,
		EnvdVersion: envdVersion, EnvdAccessToken: tok, TrafficAccessToken: tok}
}

func (s *Server) handleCreate(w http.ResponseWriter, r *http.Request) error {
	var req createRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	switch {
	case req.AutoPause != nil && *req.AutoPause:
		return api.Errorf(api.ErrInvalidArgument, "autoPause: Airlock does not pause sandboxes; a sandbox is killed when its timeout expires")
	case len(req.VolumeMounts) > 0:
		return api.Errorf(api.ErrInvalidArgument, "volumeMounts: Airlock has no E2B volumes")
	case len(req.MCP) > 0 && string(req.MCP) != "null":
		return api.Errorf(api.ErrInvalidArgument, "mcp: Airlock does not run MCP gateways in sandboxes")
	}
	timeout, err := seconds(req.Timeout)
	if err != nil {
		return err
	}
	network, err := networkOf(req.AllowInternetAccess, req.Network)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if s.cfg.HoldCreate != nil {
		session := req.TemplateID == templateInterpreter || req.TemplateID == "code-interpreter"
		release, err := s.cfg.HoldCreate(ctx, engine.Owner(ctx), session)
		if err != nil {
			return err
		}
		defer release()
	}
	var sb *engine.Sandbox
	switch req.TemplateID {
	case templateInterpreter, "code-interpreter":
		// E2B's sandboxes have no idle timeout, and an Airlock session always has one: it is
		// made the session's whole first life (E2B's 5 minutes when none is given, not a
		// session's hour).
		if timeout == 0 {
			timeout = defaultTimeout
		}
		sb, err = s.cfg.Engine.CreateSession(ctx, engine.SessionSpec{Timeout: timeout, IdleTimeout: timeout,
			Env: req.EnvVars, Tags: req.Metadata, Network: network})
	default:
		image := req.TemplateID
		if image == templateBase || image == "" {
			image = "" // the default image
		}
		sb, err = s.cfg.Engine.CreateSandbox(ctx, engine.SandboxSpec{Timeout: timeout, Image: image,
			Env: req.EnvVars, Tags: req.Metadata, Network: network})
		if errors.Is(err, api.ErrNotFound) {
			return api.Errorf(api.ErrNotFound, "template '%s' not found: it is neither %q, %q nor an image in the daemon's store (airlock image pull/tag)", req.TemplateID, templateBase, templateInterpreter)
		}
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, s.created(r, sb))
	return nil
}

// networkOf maps E2B's network options onto an Airlock policy; the zero policy is the
// daemon's default network.
func networkOf(allowInternet *bool, n *networkConfig) (netpolicy.Policy, error) {
	var p netpolicy.Policy
	if allowInternet != nil {
		p.Mode = netpolicy.Block
		if *allowInternet {
			p.Mode = netpolicy.Internet
		}
	}
	if n != nil {
		if len(n.DenyOut) > 0 {
			return p, api.Errorf(api.ErrInvalidArgument, "network.denyOut: Airlock's network policy is an allowlist; give allowOut instead")
		}
		if len(n.AllowOut) > 0 {
			if p.Mode == netpolicy.Internet {
				return p, api.Errorf(api.ErrInvalidArgument, "network.allowOut and allow_internet_access: true contradict each other")
			}
			p = netpolicy.Policy{Mode: netpolicy.Allowlist, Allow: n.AllowOut}
		}
	}
	return p, nil
}

// sandbox is the sandbox named by the request's {id}, as the caller's.
func (s *Server) sandbox(r *http.Request) (*engine.Sandbox, error) {
	id := r.PathValue("id")
	sb, err := s.cfg.Engine.GetSandbox(r.Context(), id)
	if errors.Is(err, api.ErrNotFound) || errors.Is(err, api.ErrGone) {
		return nil, api.Errorf(api.ErrNotFound, "sandbox %s not found", id)
	}
	return sb, err
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) error {
	sb, err := s.sandbox(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.view(sb))
	return nil
}

func (s *Server) handleKill(w http.ResponseWriter, r *http.Request) error {
	sb, err := s.sandbox(r)
	if err != nil {
		return err
	}
	if _, err := s.cfg.Engine.TerminateSandbox(r.Context(), sb.ID()); err != nil && !errors.Is(err, api.ErrGone) {
		return err
	}
	s.forget(sb.ID())
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// timeoutRequest is the body of set-timeout and connect.
type timeoutRequest struct {
	Timeout *int64 `json:"timeout"` // seconds
}

// seconds turns an E2B timeout in seconds into a duration; nil is 0 (none given).
func seconds(t *int64) (time.Duration, error) {
	if t == nil {
		return 0, nil
	}
	if *t <= 0 || *t > math.MaxInt32 {
		return 0, api.Errorf(api.ErrInvalidArgument, "timeout %d s is out of range", *t)
	}
	return time.Duration(*t) * time.Second, nil
}

// requestTimeout is the timeout of a set-timeout or connect body and the sandbox it is for.
func (s *Server) requestTimeout(r *http.Request) (time.Duration, *engine.Sandbox, error) {
	var req timeoutRequest
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	d, err := seconds(req.Timeout)
	if err != nil {
		return 0, nil, err
	}
	sb, err := s.sandbox(r)
	return d, sb, err
}

func (s *Server) handleTimeout(w http.ResponseWriter, r *http.Request) error {
	d, sb, err := s.requestTimeout(r)
	if err != nil {
		return err
	}
	if d == 0 {
		return api.Errorf(api.ErrInvalidArgument, "timeout is required")
	}
	if _, err := sb.SetTimeout(r.Context(), d); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// handleConnect gives a running sandbox's access token to its owner (a second process, or a
// sandbox made through /v1), extending its life to timeout from now if that is later.
func (s *Server) handleConnect(w http.ResponseWriter, r *http.Request) error {
	d, sb, err := s.requestTimeout(r)
	if err != nil {
		return err
	}
	if d > 0 && time.Now().Add(d).After(sb.Info().Expires) {
		if _, err := sb.SetTimeout(r.Context(), d); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, s.created(r, sb))
	return nil
}

// handleList lists the caller's sandboxes, oldest first (order=desc: newest first), filtered
// by metadata, template and startedAfter, in pages of limit with E2B's X-Next-Token cursor
// (the last sandbox's start and id, so a sandbox ended between pages moves nothing).
func (s *Server) handleList(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	var want url.Values
	if m := q.Get("metadata"); m != "" {
		var err error
		if want, err = url.ParseQuery(m); err != nil {
			return api.Errorf(api.ErrInvalidArgument, "metadata: %v", err)
		}
	}
	if st := q.Get("state"); st != "" && !slices.Contains(strings.Split(st, ","), "running") {
		// Airlock's sandboxes are never paused.
		writeJSON(w, http.StatusOK, []sandboxJSON{})
		return nil
	}
	limit := 0
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 {
			return api.Errorf(api.ErrInvalidArgument, "limit %q must be a positive integer", l)
		}
		limit = n
	}
	var after time.Time
	if a := q.Get("startedAfter"); a != "" {
		var err error
		if after, err = time.Parse(time.RFC3339, a); err != nil {
			return api.Errorf(api.ErrInvalidArgument, "startedAfter %q is not an RFC 3339 time", a)
		}
	}
	order := q.Get("order")
	if order != "" && order != "asc" && order != "desc" {
		return api.Errorf(api.ErrInvalidArgument, "order %q must be asc or desc", order)
	}
	var cur cursor
	if tok := q.Get("nextToken"); tok != "" {
		var ok bool
		if cur, ok = parseCursor(tok); !ok {
			return api.Errorf(api.ErrInvalidArgument, "nextToken %q is not one this server gave", tok)
		}
	}
	list := s.cfg.Engine.ListSandboxes(r.Context())
	if order == "desc" {
		slices.Reverse(list)
	}
	out := []sandboxJSON{}
	for _, sb := range list {
		v := s.view(sb)
		c := cursor{v.StartedAt.UnixNano(), v.SandboxID}
		switch {
		case cur.id != "" && order == "desc" && c.compare(cur) >= 0,
			cur.id != "" && order != "desc" && c.compare(cur) <= 0,
			!v.StartedAt.After(after), !matches(v.Metadata, want),
			q.Get("template") != "" && q.Get("template") != v.TemplateID:
			continue
		}
		out = append(out, v)
	}
	// In a cluster, every other node's page for the same query (each filtered by the same
	// cursor, so the first limit of the union, in the same order, is the cluster's page).
	if s.cfg.Peers != nil {
		for node, body := range s.cfg.Peers(w, r) {
			var page []sandboxJSON
			if err := json.Unmarshal(body, &page); err != nil {
				s.cfg.Logger.WarnContext(r.Context(), "e2b list: a node's answer", "node", node, "err", err)
				continue
			}
			out = append(out, page...)
		}
		slices.SortStableFunc(out, func(a, b sandboxJSON) int {
			c := cursor{a.StartedAt.UnixNano(), a.SandboxID}.compare(cursor{b.StartedAt.UnixNano(), b.SandboxID})
			if order == "desc" {
				return -c
			}
			return c
		})
	}
	if limit > 0 && len(out) > limit {
		out = out[:limit]
		last := out[len(out)-1]
		w.Header().Set("X-Next-Token", cursor{last.StartedAt.UnixNano(), last.SandboxID}.String())
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// cursor is a place in the list: a sandbox's start and id.
type cursor struct {
	started int64 // Unix ns
	id      string
}

func (c cursor) String() string { return strconv.FormatInt(c.started, 10) + "_" + c.id }

func (c cursor) compare(o cursor) int {
	if c.started != o.started {
		return cmp.Compare(c.started, o.started)
	}
	return strings.Compare(c.id, o.id)
}

func parseCursor(tok string) (cursor, bool) {
	ns, id, ok := strings.Cut(tok, "_")
	n, err := strconv.ParseInt(ns, 10, 64)
	return cursor{n, id}, ok && err == nil && id != ""
}

// matches reports whether tags has every key of want with one of its values.
func matches(tags map[string]string, want url.Values) bool {
	for k, vs := range want {
		v, ok := tags[k]
		if !ok || !slices.Contains(vs, v) {
			return false
		}
	}
	return true
}

// metricJSON is one sample of getMetrics.
type metricJSON struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	// CPUUsedPct is the average since the sandbox started, of its CPU limit: the engine keeps
	// no samples.
	CPUUsedPct float64 `json:"cpuUsedPct"`
	CPUCount   int     `json:"cpuCount"`
	MemUsed    int64   `json:"memUsed"`
	MemTotal   int64   `json:"memTotal"`
	DiskUsed   int64   `json:"diskUsed"`
	DiskTotal  int64   `json:"diskTotal"`
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) error {
	sb, err := s.sandbox(r)
	if err != nil {
		return err
	}
	info := sb.Info()
	now := time.Now().UTC()
	m := metricJSON{Timestamp: now, TimestampUnix: now.Unix(), CPUCount: int(math.Ceil(info.Spec.CPU)),
		MemTotal: info.Spec.MemoryBytes, DiskTotal: s.cfg.Engine.Limits().ScratchBytes}
	if u := info.Usage; u != nil {
		m.MemUsed = u.Memory
		if life := now.Sub(info.Created); life > 0 && info.Spec.CPU > 0 {
			m.CPUUsedPct = math.Round(1000*u.CPUTime.Seconds()/(life.Seconds()*info.Spec.CPU)) / 10
		}
	}
	writeJSON(w, http.StatusOK, []metricJSON{m})
	return nil
}
