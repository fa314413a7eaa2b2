package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"sigs.k8s.io/yaml"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
)

// Key is one API key with its id and its limits. The server keeps only the key's SHA-256.
type Key struct {
	ID     string   // the operator's name for the key: what logs, metrics and the audit log show
	Hash   [32]byte // SHA-256 of the key
	Limits KeyLimits
}

// KeyLimits bound one API key, on top of the daemon-wide limits (and the engine's per-key
// shares, which still apply). A zero field means no such bound.
type KeyLimits struct {
	Rate  float64 // requests per second, sustained (golang.org/x/time/rate)
	Burst int     // requests at once above the rate; default max(1, ceil(Rate))
	// MaxRuns bounds one-shot runs in flight at once (a batch holds as many as it runs side
	// by side; its concurrency is lowered to fit).
	MaxRuns      int
	MaxSandboxes int // live sandboxes (without an interpreter)
	MaxSessions  int // live sessions; seed-route sessions count, but are not refused
	// CPUSeconds bounds the CPU time the key's sandboxes use per CPUPeriod (default 1 h):
	// one-shot runs are charged when they end, long-lived sandboxes and sessions when they end.
	// Past it, work-starting requests are refused until the period ends.
	CPUSeconds float64
	CPUPeriod  time.Duration
}

// keyFile is the structured key file: JSON, with per-key limits and defaults for every key.
type keyFile struct {
	Defaults keyEntry   `json:"defaults"`
	Keys     []keyEntry `json:"keys"`
}

type keyEntry struct {
	ID           string   `json:"id"`
	Key          string   `json:"key"`    // the key itself, or
	SHA256       string   `json:"sha256"` // its SHA-256 in hex, so the file need not hold it
	Rate         *float64 `json:"rate"`
	Burst        *int     `json:"burst"`
	MaxRuns      *int     `json:"max_runs"`
	MaxSandboxes *int     `json:"max_sandboxes"`
	MaxSessions  *int     `json:"max_sessions"`
	CPUSeconds   *float64 `json:"cpu_seconds"`
	CPUPeriod    string   `json:"cpu_period"`
}

var keyIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// StructuredKeys reports whether a key file's content is the structured form ParseKeyFile
// reads (JSON, starting with '{', or YAML, whose first line that is not a comment starts with
// "keys:" or "defaults:"), rather than the plain one key per line.
func StructuredKeys(b []byte) bool {
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		return strings.HasPrefix(line, "{") || strings.HasPrefix(line, "keys:") || strings.HasPrefix(line, "defaults:")
	}
	return false
}

// ParseKeyFile reads a structured API key file (StructuredKeys; the plain form, one key per
// line, is the CLI's to read), JSON or the same in YAML:
//
//	{"defaults": {"rate": 10, "burst": 20},
//	 "keys": [{"id": "alice", "key": "…", "max_runs": 4, "max_sandboxes": 8, "max_sessions": 4,
//	           "cpu_seconds": 3600, "cpu_period": "1h"},
//	          {"id": "bob", "sha256": "<hex of the key's SHA-256>", "rate": 2}]}
//
// A key's own settings win over the defaults.
func ParseKeyFile(b []byte) ([]Key, error) {
	s := strings.TrimSpace(string(b))
	if !strings.HasPrefix(s, "{") {
		j, err := yaml.YAMLToJSON(b)
		if err != nil {
			return nil, fmt.Errorf("key file: %w", err)
		}
		s = string(j)
	}
	var f keyFile
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if len(f.Keys) == 0 {
		return nil, errors.New("key file: no keys")
	}
	seen := map[string]bool{}
	var keys []Key
	for i, e := range f.Keys {
		k, err := e.key(f.Defaults)
		if err != nil {
			return nil, fmt.Errorf("key file: keys[%d]: %w", i, err)
		}
		if seen[k.ID] || seen["#"+string(k.Hash[:])] {
			return nil, fmt.Errorf("key file: keys[%d]: id %q or its key appears twice", i, k.ID)
		}
		seen[k.ID], seen["#"+string(k.Hash[:])] = true, true
		keys = append(keys, k)
	}
	return keys, nil
}

// PlainKey is a key without limits; its id is "key-" and the start of its hash.
func PlainKey(k string) Key {
	h := sha256.Sum256([]byte(k))
	return Key{ID: "key-" + hex.EncodeToString(h[:4]), Hash: h}
}

func (e keyEntry) key(def keyEntry) (Key, error) {
	var k Key
	switch {
	case e.Key != "" && e.SHA256 != "":
		return k, errors.New("give key or sha256, not both")
	case e.Key != "":
		if len(e.Key) < 16 {
			return k, errors.New("API keys must be at least 16 characters")
		}
		k.Hash = sha256.Sum256([]byte(e.Key))
	case e.SHA256 != "":
		h, err := hex.DecodeString(e.SHA256)
		if err != nil || len(h) != 32 {
			return k, errors.New("sha256 must be 64 hex digits")
		}
		copy(k.Hash[:], h)
	default:
		return k, errors.New("no key or sha256")
	}
	k.ID = e.ID
	if k.ID == "" {
		k.ID = "key-" + hex.EncodeToString(k.Hash[:4])
	} else if !keyIDRE.MatchString(k.ID) {
		return k, fmt.Errorf("id %q must be 1…64 characters of [A-Za-z0-9._-]", k.ID)
	}
	l := KeyLimits{Rate: either(e.Rate, def.Rate), Burst: either(e.Burst, def.Burst), MaxRuns: either(e.MaxRuns, def.MaxRuns),
		MaxSandboxes: either(e.MaxSandboxes, def.MaxSandboxes), MaxSessions: either(e.MaxSessions, def.MaxSessions),
		CPUSeconds: either(e.CPUSeconds, def.CPUSeconds)}
	period := e.CPUPeriod
	if period == "" {
		period = def.CPUPeriod
	}
	if period != "" {
		d, err := time.ParseDuration(period)
		if err != nil || d < time.Second {
			return k, fmt.Errorf("cpu_period %q must be a duration of at least 1s, such as 1h", period)
		}
		l.CPUPeriod = d
	}
	if l.Rate < 0 || l.Burst < 0 || l.MaxRuns < 0 || l.MaxSandboxes < 0 || l.MaxSessions < 0 || l.CPUSeconds < 0 ||
		math.IsInf(l.Rate, 0) || math.IsNaN(l.Rate) {
		return k, errors.New("limits must not be negative")
	}
	k.Limits = l
	return k, nil
}

// either is the key's own setting p, else the default d, else zero.
func either[T any](p, d *T) T {
	switch {
	case p != nil:
		return *p
	case d != nil:
		return *d
	}
	var zero T
	return zero
}

// keyState is one key's limits and what it uses of them.
type keyState struct {
	Key
	owner string        // the engine's owner: the first 8 bytes of the hash, in hex
	limit *rate.Limiter // nil without a rate

	mu       sync.Mutex     // guards the fields below
	runs     int            // one-shot runs held (MaxRuns)
	pending  map[string]int // creations in flight by capped kind ("sandbox", "session")
	changed  chan struct{}  // closed (and replaced) whenever pending drops
	cpuUsed  float64        // CPU seconds charged in the current period
	cpuStart time.Time      // start of the current period
	// aligned starts periods at multiples of the period (UTC), in cluster mode: every node's
	// period of a key is then the same window, and their charges add up (ClusterCPU).
	aligned bool
	// admitted counts the requests the key's rate let through here; rateSeen and rateAt are
	// the count and time of the last KeyUsage (guarded by mu).
	admitted atomic.Int64
	rateSeen int64
	rateAt   time.Time
}

func newKeyState(k Key) *keyState {
	st := &keyState{Key: k, owner: hex.EncodeToString(k.Hash[:8]), pending: map[string]int{}, changed: make(chan struct{})}
	if l := k.Limits; l.Rate > 0 {
		burst := l.Burst
		if burst == 0 {
			burst = max(1, int(math.Ceil(l.Rate)))
		}
		st.limit = rate.NewLimiter(rate.Limit(l.Rate), burst)
	}
	return st
}

// refusal is a 429 with its own Retry-After and a reason for the metrics.
type refusal struct {
	err    error
	after  time.Duration
	reason string
}

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

// retryAfter is the Retry-After of err in whole seconds (at least 1); 0 when err is no refusal.
func retryAfter(err error) int {
	var r *refusal
	if !errors.As(err, &r) {
		return 0
	}
	return max(1, int(math.Ceil(r.after.Seconds())))
}

// RetryAfter is how long the refusal says to wait (the batch queue reads it to back off).
func (r *refusal) RetryAfter() time.Duration { return r.after }

func (s *Server) refuse(k *keyState, reason string, after time.Duration, format string, args ...any) error {
	s.metrics.refusal(k.ID, reason)
	return &refusal{err: api.Errorf(api.ErrResourceExhausted, format, args...), after: after, reason: reason}
}

// allowRate takes one request from the key's rate, or refuses with the wait until the next.
func (s *Server) allowRate(k *keyState) error {
	if k.limit == nil {
		return nil
	}
	if s.cfg.Cluster != nil {
		s.clusterRate(k) // the share of the key's rate the other nodes leave
	}
	now := time.Now()
	r := k.limit.ReserveN(now, 1)
	if !r.OK() {
		return s.refuse(k, "rate", time.Second, "this API key may not make requests (its burst is 0)")
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return s.refuse(k, "rate", d, "this API key is over its rate of %g requests per second; retry after %.1f s", k.Limits.Rate, d.Seconds())
	}
	k.admitted.Add(1)
	return nil
}

// holdRuns takes n one-shot runs of the key's MaxRuns, or, with fit, as many as are free (at
// least 1); it returns how many it took and their release.
func (s *Server) holdRuns(k *keyState, n int, fit bool) (int, func(), error) {
	if k == nil || k.Limits.MaxRuns == 0 {
		return n, func() {}, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	free := k.Limits.MaxRuns - k.runs
	if fit {
		n = min(n, free)
	}
	if n <= 0 || n > free {
		return 0, nil, s.refuse(k, "runs", time.Second, "this API key has %d one-shot runs in flight, its limit of %d", k.runs, k.Limits.MaxRuns)
	}
	k.runs += n
	return n, func() {
		k.mu.Lock()
		k.runs -= n
		k.mu.Unlock()
	}, nil
}

// capped is the kind of live sandbox a create route makes, for the key's caps: "" for routes
// that create none.
func capped(pattern string) string {
	switch pattern {
	case "POST /v1/sandboxes":
		return "sandbox"
	case "POST /v1/sessions":
		return "session"
	}
	return ""
}

// liveOf counts the owner's (ctx's, k's) live sandboxes of the capped kind: in cluster mode on
// every live node, from the registry (cluster.go); here only when the registry cannot answer.
func (s *Server) liveOf(ctx context.Context, k *keyState, kind string) int {
	if c := s.cfg.Cluster; c != nil {
		n, err := c.LiveOf(ctx, k.owner, kind == "session")
		if err == nil {
			return n
		}
		s.cfg.Logger.WarnContext(ctx, "cluster registry: counting this node's sandboxes only", "err", err)
	}
	n := 0
	for _, sb := range s.cfg.Engine.ListSandboxes(ctx) {
		if (kind == "session") == sb.Kind().IsSession() {
			n++
		}
	}
	return n
}

// holdLive reserves one more live sandbox of kind for the key, or refuses at its cap. A
// creation in flight counts until it returns, when the engine lists what it made; so the
// count may briefly hold one twice, and a refusal is decided only with no creation in flight
// (waiting for them), never on such a count.
func (s *Server) holdLive(ctx context.Context, k *keyState, kind string) (func(), error) {
	limit := k.Limits.MaxSandboxes
	if kind == "session" {
		limit = k.Limits.MaxSessions
	}
	if limit == 0 {
		return func() {}, nil
	}
	for {
		k.mu.Lock()
		n := s.liveOf(ctx, k, kind) + k.pending[kind]
		if n < limit {
			k.pending[kind]++
			k.mu.Unlock()
			return func() {
				k.mu.Lock()
				k.pending[kind]--
				close(k.changed)
				k.changed = make(chan struct{})
				k.mu.Unlock()
			}, nil
		}
		if k.pending[kind] == 0 {
			k.mu.Unlock()
			plural := map[string]string{"sandbox": "sandboxes", "session": "sessions"}[kind]
			return nil, s.refuse(k, plural, time.Second, "this API key has %d live %s, its limit; end some first", limit, plural)
		}
		ch := k.changed
		k.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// startsWork names the routes that start programs, refused once a key's CPU time is spent.
func startsWork(pattern string) bool {
	switch pattern {
	case "POST /v1/execute", "POST /execute", "POST /v1/execute/batch", "POST /v1/sandboxes", "POST /v1/sessions",
		"POST /v1/sandboxes/{id}/exec", "GET /v1/sandboxes/{id}/exec/ws", "POST /v1/sessions/{id}/run",
		"POST /v1/sessions/{id}/install", "POST /repl/execute", "POST /repl/install":
		return true
	}
	return false
}

func (k *keyState) period() time.Duration {
	if k.Limits.CPUPeriod > 0 {
		return k.Limits.CPUPeriod
	}
	return time.Hour
}

// checkCPU refuses once the key has used its CPU seconds in the current period.
func (s *Server) checkCPU(k *keyState) error {
	if k.Limits.CPUSeconds == 0 {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.rollPeriod(time.Now())
	used := k.cpuUsed
	if c := s.cfg.Cluster; c != nil {
		used += c.CPUElsewhere(k.owner, k.cpuStart) // the other nodes' charges, per their heartbeats
	}
	if used < k.Limits.CPUSeconds {
		return nil
	}
	left := time.Until(k.cpuStart.Add(k.period()))
	return s.refuse(k, "cpu", left, "this API key has used %.1f of its %g CPU seconds per %s; retry after %.0f s",
		used, k.Limits.CPUSeconds, k.period(), math.Ceil(left.Seconds()))
}

// rollPeriod starts a new CPU period once the current one is over. k.mu must be held.
func (k *keyState) rollPeriod(now time.Time) {
	if p := k.period(); k.cpuStart.IsZero() || now.Sub(k.cpuStart) >= p {
		k.cpuStart, k.cpuUsed = now, 0
		if k.aligned {
			k.cpuStart = now.Truncate(p)
		}
	}
}

// keySink charges the CPU time the engine's audit records report to their owner's key.
type keySink struct{ s *Server }

func (ks keySink) Record(ctx context.Context, r audit.Record) {
	if r.CPUSeconds <= 0 || (r.Event != "run" && r.Event != "batch_item" && !strings.HasSuffix(r.Event, ".destroy")) {
		return
	}
	k := ks.s.byOwner[r.Owner]
	if k == nil || k.Limits.CPUSeconds == 0 {
		return
	}
	k.mu.Lock()
	k.rollPeriod(time.Now())
	k.cpuUsed += r.CPUSeconds
	k.mu.Unlock()
}

// limited applies the key's per-route limits around h: its CPU time for routes that start
// work, its live sandbox and session caps for the routes that create them.
func (s *Server) limited(pattern string, h handlerFunc) handlerFunc {
	kind, work := capped(pattern), startsWork(pattern)
	if kind == "" && !work {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) error {
		k := keyOf(r.Context())
		if k == nil {
			return h(w, r)
		}
		if work {
			if err := s.checkCPU(k); err != nil {
				return err
			}
		}
		if kind != "" {
			release, err := s.holdLive(r.Context(), k, kind)
			if err != nil {
				return err
			}
			defer release()
		}
		return h(w, r)
	}
}

// keyCtx carries the caller's key state in a request's context.
type keyCtx struct{}

func withKey(ctx context.Context, k *keyState) context.Context {
	return context.WithValue(ctx, keyCtx{}, k)
}

// keyOf is the caller's key; nil without keys.
func keyOf(ctx context.Context) *keyState {
	k, _ := ctx.Value(keyCtx{}).(*keyState)
	return k
}

// setRetryAfter writes the Retry-After of a refusal, or 1 s for another 429 or 503.
func setRetryAfter(w http.ResponseWriter, status int, err error) {
	if n := retryAfter(err); n > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(n))
	} else if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
}

// keyInfo is k as GET /v1/info shows it to its caller; nil without keys.
func keyInfo(k *keyState) *api.KeyInfo {
	if k == nil {
		return nil
	}
	l := k.Limits
	out := &api.KeyInfo{ID: k.ID, Rate: l.Rate, MaxRuns: l.MaxRuns, MaxSandboxes: l.MaxSandboxes,
		MaxSessions: l.MaxSessions, CPUSeconds: l.CPUSeconds, CPUPeriod: k.period().Seconds()}
	if k.limit != nil {
		out.Burst = k.limit.Burst()
	}
	k.mu.Lock()
	k.rollPeriod(time.Now())
	out.CPUUsed, out.Runs = k.cpuUsed, k.runs
	k.mu.Unlock()
	return out
}

// AdmitOwner applies the rate of the key whose owner is owner to one call of a front end that
// authenticates on its own (Modal's gRPC, E2B's planes, the judge APIs): nil, or a
// resource-exhausted error saying when to retry (RetryAfter). An owner of no key (no keys
// configured) is always admitted.
func (s *Server) AdmitOwner(owner string) error {
	for _, k := range s.keys {
		if k.owner == owner {
			return s.allowRate(k)
		}
	}
	return nil
}

// HoldCreate applies the owner's key's quotas to a sandbox (or, with session, a session) that a
// front end authenticating on its own (Modal, E2B) is about to create, as POST /v1/sandboxes
// and POST /v1/sessions have them: its CPU seconds per period and its live sandboxes or
// sessions. It returns the release to call once the creation has returned, or the refusal
// (resource exhausted, with RetryAfterOf). ctx carries the owner (engine.WithOwner).
func (s *Server) HoldCreate(ctx context.Context, owner string, session bool) (release func(), err error) {
	for _, k := range s.keys {
		if k.owner != owner {
			continue
		}
		if err := s.checkCPU(k); err != nil {
			return nil, err
		}
		kind := "sandbox"
		if session {
			kind = "session"
		}
		return s.holdLive(ctx, k, kind)
	}
	return func() {}, nil
}
