package engine

import (
	"context"
	"sync"
	"testing"
	"time"
)

// slowRuntime creates sessions that answer; while blocked is set, Create waits for release.
type slowRuntime struct {
	mu      sync.Mutex
	blocked bool
	creates map[string]int // Create calls per owner
	entered chan string
	release chan struct{}
}

func (r *slowRuntime) Create(ctx context.Context, s Spec) (Instance, error) {
	r.mu.Lock()
	r.creates[Owner(ctx)]++
	blocked := r.blocked
	r.mu.Unlock()
	if blocked {
		r.entered <- Owner(ctx)
		select {
		case <-r.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &fakeInstance{rt: &fakeRuntime{}, id: s.ID, done: make(chan struct{})}, nil
}

// TestSeedCreationDoesNotBlockOtherKeys is M3 of the December review: while key 1's seed
// session is being created (its sandbox start blocked), key 2's lookup of its existing seed
// session returns, and a second call for key 1's name waits for the one creation instead of
// starting another.
func TestSeedCreationDoesNotBlockOtherKeys(t *testing.T) {
	t.Parallel()
	rt := &slowRuntime{creates: map[string]int{}, entered: make(chan string, 4), release: make(chan struct{})}
	e, err := New(Config{Runtime: rt})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(context.Background()) })
	k1, k2 := WithOwner(t.Context(), "key1"), WithOwner(t.Context(), "key2")
	sb2, done, err := e.SeedSession(k2, "default")
	if err != nil {
		t.Fatal(err)
	}
	done()

	rt.mu.Lock()
	rt.blocked = true
	rt.mu.Unlock()
	type result struct {
		id  string
		err error
	}
	first, second := make(chan result, 1), make(chan result, 1)
	seed := func(ctx context.Context, name string, out chan<- result) {
		sb, done, err := e.SeedSession(ctx, name)
		if err != nil {
			out <- result{err: err}
			return
		}
		done()
		out <- result{id: sb.ID()}
	}
	go seed(k1, "new", first)
	if got := <-rt.entered; got != "key1" {
		t.Fatalf("blocked create is %q's, want key1's", got)
	}
	go seed(k1, "new", second) // the same name: must not start a second creation

	lookup := make(chan result, 1)
	go seed(k2, "default", lookup)
	select {
	case r := <-lookup:
		if r.err != nil || r.id != sb2.ID() {
			t.Fatalf("key 2's lookup: got %q %v, want its session %q", r.id, r.err, sb2.ID())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("key 2's lookup of its existing session is still waiting for key 1's session creation")
	}

	close(rt.release)
	r1, r2 := <-first, <-second
	if r1.err != nil || r2.err != nil || r1.id != r2.id {
		t.Fatalf("two calls for one name: got %q %v and %q %v, want one session", r1.id, r1.err, r2.id, r2.err)
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.creates["key1"] != 1 {
		t.Fatalf("got %d creations for key 1's one name, want 1", rt.creates["key1"])
	}
}
