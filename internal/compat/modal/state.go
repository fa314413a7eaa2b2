package modal

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"sync/atomic"
	"time"

	"github.com/airlockhq/airlock/internal/engine"
)

// state is what Modal's objects add to Airlock's: apps, ephemeral secrets, sandbox names and
// each sandbox's executions. It lives in memory: after a daemon restart sandboxes are
// adopted by the engine, while apps are made again by the next AppGetOrCreate and old router
// tokens are refused (clients fetch new ones).
type state struct {
	mu      sync.Mutex            // guards everything below
	apps    map[string]string     // owner, environment and name → app id
	secrets map[string]secret     // ephemeral secret id → its variables
	boxes   map[string]*box       // sandbox id → what Modal keeps of it
	names   map[string]string     // owner, app and sandbox name → sandbox id
	ended   map[string]endedEntry // sandbox id → how it ended, for SandboxWait after the end
}

type secret struct {
	owner string
	env   map[string]string
	at    time.Time
}

type endedEntry struct {
	owner  string
	result waitResult
	at     time.Time
}

// waitResult is how a sandbox ended, as SandboxWait reports it.
type waitResult struct {
	status   int32 // GenericResult status
	exitcode int32
	reason   string
}

func newState() *state {
	return &state{apps: map[string]string{}, secrets: map[string]secret{}, boxes: map[string]*box{},
		names: map[string]string{}, ended: map[string]endedEntry{}}
}

// maxRemembered bounds the ephemeral secrets and ended sandboxes remembered; past it the
// oldest is forgotten.
const maxRemembered = 10000

// newObjectID returns a Modal-style object id: prefix and 24 hex digits.
func newObjectID(prefix string) string {
	var b [12]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// box is one sandbox as Modal sees it: the engine's sandbox plus its executions.
type box struct {
	id      string
	owner   string
	appID   string
	nameKey string // its key in state.names; "" without a name; guarded by state.mu
	sb      *engine.Sandbox
	// ctx carries the owner and ends when the sandbox does (or the server closes): the
	// sandbox's executions run under it, so none outlives the sandbox waiting on a client.
	ctx      context.Context
	cancel   context.CancelFunc
	retained atomic.Int64 // output bytes its executions hold, bounded by maxRetained

	mu    sync.Mutex            // guards execs, order and entry
	execs map[string]*execution // by the client's exec id
	order []string              // exec ids, oldest first, for the bound below
	entry *execution            // the entrypoint command; nil without one
}

// maxExecs bounds the executions a sandbox remembers (their output stays readable after they
// exit, as Modal's clients read it lazily), and maxRetained the output they hold together:
// past either, the oldest finished ones are forgotten; output past maxRetained while every
// execution still runs is dropped, as the engine's output limit drops it.
const (
	maxExecs    = 64
	maxRetained = 16 << 20
)

// track returns the box of sb, making it (and the goroutine that forgets it when sb ends) on
// first use: sandboxes made through Airlock's own API are reachable here too.
func (s *Server) track(sb *engine.Sandbox, owner, appID string) *box {
	st := s.state
	st.mu.Lock()
	defer st.mu.Unlock()
	if b, ok := st.boxes[sb.ID()]; ok {
		return b
	}
	b := &box{id: sb.ID(), owner: owner, appID: appID, sb: sb, execs: map[string]*execution{}}
	b.ctx, b.cancel = context.WithCancel(engine.WithOwner(s.ctx, owner))
	st.boxes[b.id] = b
	s.wg.Go(func() {
		defer b.cancel()
		select {
		case <-sb.Done():
		case <-s.ctx.Done():
			return
		}
		s.forget(b)
	})
	return b
}

// forget records how b's sandbox ended and drops what Modal kept of it.
func (s *Server) forget(b *box) {
	res := endResult(b)
	st := s.state
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.boxes, b.id)
	if b.nameKey != "" && st.names[b.nameKey] == b.id {
		delete(st.names, b.nameKey)
	}
	if len(st.ended) >= maxRemembered {
		evictOldest(st.ended, func(e endedEntry) time.Time { return e.at })
	}
	st.ended[b.id] = endedEntry{owner: b.owner, result: res, at: time.Now()}
}

// evictOldest deletes the entry of m with the oldest time.
func evictOldest[V any](m map[string]V, at func(V) time.Time) {
	oldest, oldestAt := "", time.Now()
	for k, v := range m {
		if at(v).Before(oldestAt) {
			oldest, oldestAt = k, at(v)
		}
	}
	delete(m, oldest)
}

// box returns the tracked box of a live sandbox of ctx's owner, tracking it if need be.
func (s *Server) box(ctx context.Context, id string) (*box, error) {
	sb, err := s.cfg.Engine.GetSandbox(ctx, id)
	if err != nil {
		return nil, err
	}
	return s.track(sb, engine.Owner(ctx), ""), nil
}

// endedResult is how the sandbox id of owner ended, if it is remembered.
func (st *state) endedResult(owner, id string) (waitResult, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.ended[id]
	if !ok || e.owner != owner {
		return waitResult{}, false
	}
	return e.result, true
}
