package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
)

// metaRuntime is a fakeRuntime whose instances keep their record and let SetMeta replace it,
// as native's do.
type metaRuntime struct {
	fakeRuntime
	createErr error // when set, Create fails with it
}

type metaInstance struct {
	*fakeInstance
	mu   sync.Mutex
	meta []byte
}

func (m *metaInstance) SetMeta(b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.meta = b
	return nil
}

func (m *metaInstance) record(t *testing.T) record {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	r, err := decodeRecord(m.meta)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *metaRuntime) Create(ctx context.Context, s Spec) (Instance, error) {
	if r.createErr != nil {
		return nil, r.createErr
	}
	inst, err := r.fakeRuntime.Create(ctx, s)
	if err != nil {
		return nil, err
	}
	return &metaInstance{fakeInstance: inst.(*fakeInstance), meta: s.Meta}, nil
}

// TestShutdownKeepsOrDrains: KeepSandboxes leaves long-lived sandboxes running with their last
// activity in the record, and destroys unregistered instances (a pool's); the next engine adopts
// them with that idle clock and clears it from the record. DrainSandboxes destroys them all.
func TestShutdownKeepsOrDrains(t *testing.T) {
	t.Parallel()
	rt := &metaRuntime{}
	e, err := New(Config{Runtime: rt})
	if err != nil {
		t.Fatal(err)
	}
	ctx := WithOwner(t.Context(), "k")
	sb, err := e.CreateSandbox(ctx, SandboxSpec{IdleTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	_, done, err := e.Use(ctx, sb.ID())
	if err != nil {
		t.Fatal(err)
	}
	done()
	last := sb.Info().LastActive
	pooled := &fakeInstance{rt: &rt.fakeRuntime, id: "pool-1", done: make(chan struct{})}
	e.mu.Lock()
	e.live[pooled.id] = pooled // as a warm pool's sandbox: live, not registered
	e.mu.Unlock()

	kept, err := e.Shutdown(t.Context(), KeepSandboxes)
	if err != nil || kept != 1 {
		t.Fatalf("Shutdown(KeepSandboxes) = %d, %v; want 1 kept", kept, err)
	}
	if rt.destroyed[sb.ID()] || !rt.destroyed["pool-1"] {
		t.Fatalf("destroyed %v; want the pooled instance only", rt.destroyed)
	}
	if _, err := e.CreateSandbox(ctx, SandboxSpec{}); api.CodeOf(err) != api.CodeUnavailable {
		t.Fatalf("create after Shutdown: %v, want unavailable", err)
	}
	if err := e.Close(t.Context()); err != nil || rt.destroyed[sb.ID()] {
		t.Fatalf("Close after Shutdown(KeepSandboxes): %v, destroyed %v; want the kept sandbox left be", err, rt.destroyed)
	}
	inst := sb.inst.(*metaInstance)
	if got := inst.record(t).LastActive; !got.Equal(last) {
		t.Fatalf("kept record's last activity %v, want %v", got, last)
	}

	// The next engine adopts it with the same idle clock, and forgets it in the record.
	rt2 := &metaRuntime{}
	rt2.recovered = []Recovered{{ID: sb.ID(), Inst: inst, Meta: inst.meta}}
	e2, err := New(Config{Runtime: rt2})
	if err != nil {
		t.Fatal(err)
	}
	if adopted, _, err := e2.Recover(t.Context()); err != nil || adopted != 1 {
		t.Fatalf("recover: %d %v", adopted, err)
	}
	sb2, err := e2.GetSandbox(ctx, sb.ID())
	if err != nil {
		t.Fatal(err)
	}
	if got := sb2.Info().LastActive; !got.Equal(last) {
		t.Fatalf("adopted sandbox last active %v, want %v (the idle clock carries over)", got, last)
	}
	if got := inst.record(t).LastActive; !got.IsZero() {
		t.Fatalf("adopted record still carries last activity %v; a later crash would find it idle at once", got)
	}
	if kept, err := e2.Shutdown(t.Context(), DrainSandboxes); err != nil || kept != 0 {
		t.Fatalf("Shutdown(DrainSandboxes) = %d, %v; want 0 kept", kept, err)
	}
	if !rt.destroyed[sb.ID()] {
		t.Fatal("DrainSandboxes left the sandbox running")
	}
}

// TestFullStateDirIs503: a runtime failing with ENOSPC or EDQUOT (the state directory's file
// system full) makes creations answer 503 naming the cause, not 500; other errors stay as
// they are.
func TestFullStateDirIs503(t *testing.T) {
	t.Parallel()
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT} {
		t.Run(errno.Error(), func(t *testing.T) {
			t.Parallel()
			rt := &metaRuntime{createErr: fmt.Errorf("persist state: write sandbox state: %w", errno)}
			e, err := New(Config{Runtime: rt})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close(context.Background())
			_, err = e.CreateSandbox(t.Context(), SandboxSpec{})
			d := api.PublicDetail(err)
			if d.Code != api.CodeUnavailable || !strings.Contains(d.Message, "no space left on the daemon's state directory") || !errors.Is(err, errno) {
				t.Fatalf("create on a full state directory: %+v (%v), want unavailable naming the state directory", d, err)
			}
		})
	}
	if err := noSpace(syscall.EIO); !errors.Is(err, syscall.EIO) || api.CodeOf(err) != api.CodeInternal {
		t.Fatalf("noSpace(EIO) = %v, want it unchanged", err)
	}
}
