package engine

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/agentclient"
)

// answerCost is how many bytes of daemon memory one byte of an agent answer takes at worst while
// the daemon holds it: the read buffer and the decoded message at once, then the decoded message
// and the API form (base64 adds a third) at once. The answer is written out as a stream, so the
// JSON encoding adds only a small buffer.
const answerCost = 3

// budget bounds the daemon memory that agent answers (REPL cells) take together: a weighted
// semaphore of bytes, shared by every answer in flight. An answer reserves the most it can take
// before its first byte is read, gives back what it did not use once read, and the rest when its
// HTTP answer has been written. When the budget is taken, answers wait up to wait, then fail
// with api.ErrResourceExhausted (429), so N concurrent big cells cannot grow the daemon without
// bound. Go's heap may exceed the budget by the garbage not yet collected (GOGC).
type budget struct {
	sem  *semaphore.Weighted
	size int64
	wait time.Duration
}

func newBudget(size int64, wait time.Duration) *budget {
	return &budget{sem: semaphore.NewWeighted(size), size: size, wait: wait}
}

// ticket is the charge of one answer; release gives all of it back (idempotent).
type ticket struct {
	b *budget

	mu   sync.Mutex // guards held and err
	held int64
	err  error // why a reservation failed, for the caller to report instead of the read error
}

var _ agentclient.AnswerBudget = (*ticket)(nil)

func (b *budget) ticket() *ticket { return &ticket{b: b} }

// Reserve charges n wire bytes (answerCost each), at most the whole budget, so that one answer
// larger than a small budget runs alone rather than never.
func (t *ticket) Reserve(ctx context.Context, n int64) error {
	w := min(n*answerCost, t.b.size)
	wctx, cancel := context.WithTimeout(ctx, t.b.wait)
	defer cancel()
	if err := t.b.sem.Acquire(wctx, w); err != nil {
		t.mu.Lock()
		defer t.mu.Unlock()
		if cause := context.Cause(ctx); cause != nil {
			t.err = cause // the caller went away
		} else {
			t.err = api.Errorf(api.ErrResourceExhausted, "the daemon's memory budget for answers (%d MiB) stayed full for %s", t.b.size>>20, t.b.wait)
		}
		return t.err
	}
	t.mu.Lock()
	t.held += w
	t.mu.Unlock()
	return nil
}

// Settle keeps the charge of an answer of n wire bytes and gives back the rest.
func (t *ticket) Settle(n int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	keep := min(n*answerCost, t.held)
	t.b.sem.Release(t.held - keep)
	t.held = keep
}

// failed returns why a reservation failed, if one did.
func (t *ticket) failed() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

func (t *ticket) release() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b.sem.Release(t.held)
	t.held = 0
}
