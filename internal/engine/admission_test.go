package engine

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
)

// gateRuntime reports the owner of every Create it enters and holds it until a token arrives
// on gate; then it fails, so the one-shot gives its slot back without a sandbox to run.
type gateRuntime struct {
	entered chan string
	gate    chan struct{}
}

func (g *gateRuntime) Create(ctx context.Context, s Spec) (Instance, error) {
	g.entered <- Owner(ctx)
	select {
	case <-g.gate:
	case <-ctx.Done():
	}
	return nil, errors.New("gate runtime creates nothing")
}

// flood starts n one-shots of owner on e and returns a channel of their errors.
func flood(ctx context.Context, wg *sync.WaitGroup, e *Engine, owner string, n int) chan error {
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			_, err := e.Execute(WithOwner(ctx, owner), OneShot{Code: "1"})
			errs <- err
		})
	}
	return errs
}

// settle waits until every request of a flood is running in Create, queued or refused.
func settle(t *testing.T, e *Engine, entered *int, g *gateRuntime, refused func() int, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for *entered+e.Waiting()+refused() != want {
		select {
		case <-g.entered:
			*entered++
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("flood did not settle: %d in create, %d waiting, %d refused; want %d in all", *entered, e.Waiting(), refused(), want)
		}
	}
}

// TestOneKeyCannotStarveAnother is H6 of the December review: key A floods the one-shot slots
// and the queue; key B's one-shot must still be admitted before any more of A's.
func TestOneKeyCannotStarveAnother(t *testing.T) {
	t.Parallel()
	g := &gateRuntime{entered: make(chan string, 256), gate: make(chan struct{})}
	e, err := New(Config{Runtime: g, MaxConcurrent: 4, MaxQueue: 32})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	const n = 40
	errsA := flood(ctx, &wg, e, "A", n)
	refusedA := 0
	countRefused := func() int {
		for {
			select {
			case err := <-errsA:
				if !errors.Is(err, api.ErrResourceExhausted) {
					t.Fatalf("A's flood: got %v, want resource_exhausted", err)
				}
				refusedA++
			default:
				return refusedA
			}
		}
	}
	enteredA := 0
	settle(t, e, &enteredA, g, countRefused, n)
	if enteredA >= 4 {
		t.Errorf("key A alone holds %d of 4 one-shot slots, want fewer", enteredA)
	}
	waitingA := e.Waiting()
	if waitingA >= 32 {
		t.Errorf("key A alone fills the queue: %d of 32 waiting", waitingA)
	}

	errsB := flood(ctx, &wg, e, "B", 1)
	// B is admitted at once, or queued; either way, the next Create to start must be B's.
	var next string
	for next == "" {
		select {
		case next = <-g.entered:
		case err := <-errsB:
			t.Fatalf("key B: got %v while key A floods, want admission", err)
		default:
			if e.Waiting() == waitingA+1 {
				g.gate <- struct{}{} // free one of A's slots
				next = <-g.entered
			}
		}
	}
	if next != "B" {
		t.Fatalf("next sandbox started for key %q, want B (A has %d running and %d queued)", next, enteredA, waitingA)
	}
}

// TestFreedSlotGoesToTheKeyWithFewestRunning: with three keys waiting, a freed slot goes to the
// key running fewest one-shots, not to whichever request queued first.
func TestFreedSlotGoesToTheKeyWithFewestRunning(t *testing.T) {
	t.Parallel()
	g := &gateRuntime{entered: make(chan string, 256), gate: make(chan struct{})}
	e, err := New(Config{Runtime: g, MaxConcurrent: 4, MaxQueue: 32})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	none := func() int { return 0 }
	running := map[string]int{}
	entered := 0
	for i, owner := range []string{"A", "B"} {
		flood(ctx, &wg, e, owner, 4)
		before := entered
		settle(t, e, &entered, g, none, 4*(i+1))
		running[owner] = entered - before
	}
	flood(ctx, &wg, e, "C", 1)
	for e.Waiting() != 8-running["A"]-running["B"]+1 {
		time.Sleep(time.Millisecond)
	}
	g.gate <- struct{}{} // one of A's or B's ends
	if got := <-g.entered; got != "C" {
		t.Fatalf("freed slot went to %q (running A=%d B=%d C=0), want C", got, running["A"], running["B"])
	}
}
