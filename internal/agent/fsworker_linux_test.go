package agent

import (
	"context"
	"errors"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/testutil"
)

func TestFSPool(t *testing.T) {
	testutil.MustHaveRoot(t) // setfsuid needs CAP_SETUID
	const uid, gid = 65534, 65533
	p := newFSPool(uid, gid)
	defer p.close()

	t.Run("many calls share the fixed threads, all as the user", func(t *testing.T) {
		var mu sync.Mutex
		tids := map[int]bool{}
		var wg sync.WaitGroup
		for range 300 {
			wg.Go(func() {
				err := p.run(t.Context(), func() error {
					u, _ := unix.SetfsuidRetUid(-1)
					g, _ := unix.SetfsgidRetGid(-1)
					if u != uid || g != gid {
						return errors.New("worker is not the sandbox user")
					}
					mu.Lock()
					tids[unix.Gettid()] = true
					mu.Unlock()
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if got := len(tids); got > fsWorkerCount {
			t.Fatalf("300 calls ran on %d threads, want at most %d", got, fsWorkerCount)
		}
	})

	t.Run("a panic is an error and the pool keeps serving", func(t *testing.T) {
		if err := p.run(t.Context(), func() error { panic("boom") }); err == nil {
			t.Fatal("got nil error from a panicking job, want an error")
		}
		if err := p.run(t.Context(), func() error { return nil }); err != nil {
			t.Fatalf("after a panic: got %v, want nil", err)
		}
	})

	t.Run("callers wait on ctx when every worker is busy", func(t *testing.T) {
		release := make(chan struct{})
		started := make(chan struct{}, fsWorkerCount)
		var wg sync.WaitGroup
		for range fsWorkerCount {
			wg.Go(func() {
				p.run(t.Context(), func() error { started <- struct{}{}; <-release; return nil })
			})
		}
		for range fsWorkerCount {
			<-started
		}
		ctx, cancel := context.WithCancelCause(t.Context())
		errBusy := errors.New("gave up")
		cancel(errBusy)
		err := p.run(ctx, func() error { t.Error("ran a job with every worker busy"); return nil })
		close(release)
		wg.Wait()
		if !errors.Is(err, errBusy) {
			t.Fatalf("got %v, want the ctx's cause", err)
		}
	})
}

// TestFSPoolStartsThreadsOnDemand: an idle sandbox holds no file-system thread; calls one
// after another share the first; only calls that find every worker busy start more, up to the cap;
// and a pool for uid 0 (whose thread count user code shares) starts them all at once.
func TestFSPoolStartsThreadsOnDemand(t *testing.T) {
	testutil.MustHaveRoot(t)
	started := func(p *fsPool) int {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.started
	}
	p := newFSPool(65534, 65534)
	defer p.close()
	if got := started(p); got != 0 {
		t.Fatalf("a new pool started %d workers, want 0", got)
	}
	for range 50 {
		if err := p.run(t.Context(), func() error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if got := started(p); got != 1 {
		t.Fatalf("after 50 calls one after another: %d workers, want 1", got)
	}
	release := make(chan struct{})
	running := make(chan struct{}, fsWorkerCount)
	var wg sync.WaitGroup
	for range fsWorkerCount {
		wg.Go(func() { p.run(t.Context(), func() error { running <- struct{}{}; <-release; return nil }) })
	}
	for range fsWorkerCount {
		<-running
	}
	close(release)
	wg.Wait()
	if got := started(p); got != fsWorkerCount {
		t.Fatalf("%d calls at once: %d workers, want %d", fsWorkerCount, got, fsWorkerCount)
	}
	root := newFSPool(0, 0)
	defer root.close()
	if got := started(root); got != fsWorkerCount {
		t.Fatalf("a pool for uid 0 started %d workers, want all %d", got, fsWorkerCount)
	}
}

func TestFSPoolClosed(t *testing.T) {
	testutil.MustHaveRoot(t)
	p := newFSPool(65534, 65534)
	p.close()
	if err := p.run(t.Context(), func() error { return nil }); !errors.Is(err, errFSPoolClosed) {
		t.Fatalf("run after close: got %v, want %v", err, errFSPoolClosed)
	}
}
