package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
)

// RunFunc runs one snippet for owner as a one-shot (server.Server.RunQueued). An
// api.ErrResourceExhausted error is a refusal that passes: the snippet is retried later.
type RunFunc func(ctx context.Context, owner string, req api.ExecuteRequest) (*api.ExecuteResponse, error)

// hookSlots is how many webhook events a node delivers at once.
const hookSlots = 32

// Run pulls snippets and runs them with run, and pulls webhook events and delivers them,
// until ctx ends; then it waits for what it started (a snippet cut short by ctx is handed
// back to the queue at once, for another node). The caller waits for Run before closing the
// node.
func (q *Queue) Run(ctx context.Context, run RunFunc) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		q.pull(ctx, q.work, q.cfg.Slots, q.busy, func(msg jetstream.Msg) { q.runSnippet(ctx, msg, run) })
	})
	q.pull(ctx, q.hooks, hookSlots, nil, func(msg jetstream.Msg) { q.deliver(ctx, msg) })
}

// pull fetches from c only as many messages as it has free slots, and handles each in its own
// goroutine, until ctx ends. While busy says so (sandbox slots taken by synchronous runs) it
// fetches nothing.
func (q *Queue) pull(ctx context.Context, c jetstream.Consumer, slots int, busy func() bool, handle func(jetstream.Msg)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, slots)
	pause := func(d time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	for ctx.Err() == nil {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		free := 1
	more:
		for free < slots {
			select {
			case sem <- struct{}{}:
				free++
			default:
				break more
			}
		}
		giveBack := func(n int) {
			for range n {
				<-sem
			}
		}
		if (busy != nil && busy()) || q.nc.Status() != nats.CONNECTED {
			giveBack(free)
			pause(100 * time.Millisecond)
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, time.Second)
		batch, err := c.Fetch(free, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			giveBack(free)
			if ctx.Err() == nil {
				q.cfg.Logger.WarnContext(ctx, "batch queue: fetch", "err", err)
				pause(time.Second)
			}
			continue
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			wg.Go(func() {
				defer func() { <-sem }()
				handle(msg)
			})
		}
		cancel()
		giveBack(free - got)
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.Canceled) &&
			!errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			q.cfg.Logger.WarnContext(ctx, "batch queue: fetch", "err", err)
			pause(time.Second)
		}
	}
}

// keepAlive tells JetStream every AckWait/3 that msg is still being worked on, until the
// returned stop is called: a long snippet is not redelivered while its node lives.
func (q *Queue) keepAlive(ctx context.Context, msg jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(q.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				msg.InProgress()
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// runSnippet runs one snippet of the work stream and stores its result, acking only then.
func (q *Queue) runSnippet(ctx context.Context, msg jetstream.Msg, run RunFunc) {
	var w workMsg
	if err := json.Unmarshal(msg.Data(), &w); err != nil || !validBatchID(w.Batch) {
		q.cfg.Logger.WarnContext(ctx, "batch queue: dropping a message that is no snippet", "subject", msg.Subject())
		msg.Term()
		return
	}
	if wait := q.refusedFor(w.Owner); wait > 0 {
		msg.NakWithDelay(wait)
		return
	}
	log := q.cfg.Logger.With("batch", w.Batch, "index", w.Index)
	retry := func(why string, err error) {
		if ctx.Err() != nil {
			msg.Nak() // shutting down: another node takes it now
			return
		}
		log.WarnContext(ctx, "batch snippet: retrying later", "why", why, "err", err)
		msg.NakWithDelay(time.Second)
	}
	m, err := q.loadMeta(ctx, w.Batch)
	if err != nil {
		retry("read the batch", err)
		return
	}
	if m == nil || w.Index < 0 || w.Index >= m.Total {
		msg.Ack() // expired (or never was): nobody can ask for its result
		return
	}
	if old, err := q.get(ctx, resKey(m.ID, w.Index)); err != nil {
		retry("read the result", err)
		return
	} else if old != nil { // redelivered after its result was stored: never run twice
		var it api.BatchItem
		if json.Unmarshal(old, &it) == nil {
			q.finish(ctx, m, it, msg)
			return
		}
	}
	if _, err := q.create(ctx, m, m.ID+".run."+strconv.Itoa(w.Index), []byte(q.node)); err != nil {
		retry("mark started", err)
		return
	}
	if c, err := q.get(ctx, m.ID+".cancel"); err != nil {
		retry("read the cancel mark", err)
		return
	} else if c != nil {
		q.finish(ctx, m, canceledResult(w.Index, q.node), msg)
		return
	}
	try, err := q.attempt(ctx, m, w.Index)
	if err != nil {
		retry("count the attempt", err)
		return
	}
	if try == 0 {
		// Started maxAttempts times and never stored: a snippet that takes its node down with
		// it would otherwise take down every node in turn.
		log.WarnContext(ctx, "batch snippet: giving up", "attempts", maxAttempts)
		q.finish(ctx, m, api.BatchItem{Index: w.Index, Node: q.node, Result: api.BatchResult{Error: &api.ErrorDetail{
			Code: api.CodeInternal, Message: fmt.Sprintf("started %d times, and each time its node stopped or died before the result was stored", maxAttempts)}}}, msg)
		return
	}
	stop := q.keepAlive(ctx, msg)
	// The run's log lines and audit record carry the snippet as their request id.
	resp, err := run(audit.WithRequestID(ctx, w.Batch+":"+strconv.Itoa(w.Index)), w.Owner, w.Request)
	stop()
	if ctx.Err() != nil {
		msg.Nak()
		return
	}
	if api.CodeOf(err) == api.CodeResourceExhausted {
		var after time.Duration
		var ra interface{ RetryAfter() time.Duration } // a per-key refusal of the server's limits
		if errors.As(err, &ra) {
			after = ra.RetryAfter()
		}
		if after <= maxRefusalWait {
			// A refusal is no attempt: it must not count towards giving up. It goes back for
			// later, backing off with each refusal, so that a key over its limits does not
			// keep every node's slots busy with its refused snippets while other keys wait.
			q.kv.Delete(context.WithoutCancel(ctx), tryKey(m.ID, w.Index, try))
			if ctx.Err() != nil {
				msg.Nak()
				return
			}
			wait := q.refuse(w.Owner, after)
			log.DebugContext(ctx, "batch snippet: refused, retrying later", "err", err, "wait", wait)
			msg.NakWithDelay(wait)
			return
		}
		// The key's quota is spent for longer (its CPU seconds for the period): the snippet is
		// answered with the refusal, as a synchronous run would be, instead of waiting for hours.
	}
	q.refusedMu.Lock()
	delete(q.refused, w.Owner) // admitted: the owner is within its limits again
	q.refusedMu.Unlock()
	it := api.BatchItem{Index: w.Index, Node: q.node}
	if err != nil {
		d := api.PublicDetail(err)
		it.Result.Error = &d
	} else {
		it.Result.ExecuteResponse = resp
	}
	q.finish(ctx, m, it, msg)
}

// maxRefusalWait is the longest per-key refusal a snippet waits out in the queue; a refusal
// saying to wait longer is its result.
const maxRefusalWait = time.Minute

// refusedFor is how long owner's snippets are still held back here (0: run them).
func (q *Queue) refusedFor(owner string) time.Duration {
	q.refusedMu.Lock()
	defer q.refusedMu.Unlock()
	r, ok := q.refused[owner]
	if !ok {
		return 0
	}
	wait := time.Until(r.until)
	if wait <= 0 {
		return 0 // the next run tries again; its refusal, if any, extends the back-off
	}
	return wait/2 + rand.N(wait) // spread the owner's snippets over the back-off and after it
}

// refuse records a refusal of owner's run, saying to wait after (0: the limits gave no time),
// and returns how long the refused snippet waits: the back-off of the owner's refusals in a row.
func (q *Queue) refuse(owner string, after time.Duration) time.Duration {
	q.refusedMu.Lock()
	defer q.refusedMu.Unlock()
	r := q.refused[owner]
	r.n++
	wait := max(after, refusalBackoff(r.n))
	r.until = time.Now().Add(wait)
	q.refused[owner] = r
	return wait
}

// refusalBackoff is the delay before a snippet refused n times (n ≥ 1) is tried again: 1 s,
// doubling up to a minute, with ±25 % jitter so that a refused batch's snippets spread out.
func refusalBackoff(n uint64) time.Duration {
	d := min(time.Second<<min(n-1, 6), time.Minute)
	return d - d/4 + rand.N(d/2+1)
}

// maxAttempts bounds how often one snippet is started without its result being stored.
const maxAttempts = 5

func tryKey(id string, i, n int) string {
	return id + ".try." + strconv.Itoa(i) + "." + strconv.Itoa(n)
}

// attempt numbers this start of snippet i from 1, create-only so that two nodes never share a
// number; 0 once maxAttempts are taken.
func (q *Queue) attempt(ctx context.Context, m *batchMeta, i int) (int, error) {
	for n := 1; n <= maxAttempts; n++ {
		ok, err := q.create(ctx, m, tryKey(m.ID, i, n), []byte(q.node))
		if err != nil || ok {
			return n, err
		}
	}
	return 0, nil
}

// finish stores it (once), queues its webhook event and acks msg; a failure to store leaves
// msg to be redelivered.
func (q *Queue) finish(ctx context.Context, m *batchMeta, it api.BatchItem, msg jetstream.Msg) {
	// The result is stored even while the node shuts down: the run is done.
	sctx := context.WithoutCancel(ctx)
	it = fitResult(it, int(q.nc.MaxPayload())-resultSlack)
	it, err := q.store(sctx, m, it)
	if err == nil {
		err = q.completed(sctx, m, it)
	}
	if err != nil {
		q.cfg.Logger.WarnContext(ctx, "batch snippet: storing its result, retrying later", "batch", m.ID, "index", it.Index, "err", err)
		msg.NakWithDelay(time.Second)
		return
	}
	ackCtx, cancel := context.WithTimeout(sctx, opTimeout)
	defer cancel()
	if err := msg.DoubleAck(ackCtx); err != nil {
		// The result is stored: a redelivery finds it and acks without running.
		q.cfg.Logger.WarnContext(ctx, "batch snippet: ack", "batch", m.ID, "index", it.Index, "err", err)
	}
}

// resultSlack is the room a result leaves in a NATS message for the webhook event around it.
const resultSlack = 8 << 10

// fitResult cuts a result whose JSON would not fit in limit bytes (one NATS message: the
// server's max_payload, 1 MiB by default, less resultSlack), rather than fail to store it and
// run the snippet again forever: output files go first (files_truncated), then stdout and
// stderr are cut (truncated).
func fitResult(it api.BatchItem, limit int) api.BatchItem {
	size := func() int { b, _ := json.Marshal(it); return len(b) }
	r := it.Result.ExecuteResponse
	if r == nil || size() <= limit {
		return it
	}
	c := *r
	it.Result.ExecuteResponse = &c
	if len(c.Files) > 0 {
		c.Files, c.FilesTruncated = nil, true
		if size() <= limit {
			return it
		}
	}
	// JSON escaping can grow text up to 6×: cut each stream to a sixth of half the room.
	keep := max(0, limit/12-1024)
	for _, s := range []*string{&c.Stdout, &c.Stderr} {
		if len(*s) > keep {
			*s = strings.ToValidUTF8((*s)[:keep], "")
			c.Truncated = true
		}
	}
	return it
}

// completed sends the webhook event of a stored result (none for a canceled snippet) and the
// batch-done event if it was the last. This node sends the event itself, once, before the
// snippet is acked: delivered, it records so in the bucket; not, it queues the event on the
// hook stream, where any node retries it with back-off. A node that dies before the ack
// leaves the snippet to be redelivered, and the node that gets it finds the stored result,
// and sends the event unless the record says it was delivered.
func (q *Queue) completed(ctx context.Context, m *batchMeta, it api.BatchItem) error {
	if m.Webhook == nil {
		return nil
	}
	if e := it.Result.Error; e == nil || e.Code != api.CodeCanceled {
		h := hookMsg{Batch: m.ID, Index: it.Index, Event: api.WebhookEvent{Type: api.WebhookSnippet, Batch: m.ID, Item: &it}}
		rec, err := q.get(ctx, h.hookKey())
		if err != nil {
			return err
		}
		if rec == nil && !q.sendOnce(ctx, m, h) {
			if err := q.publishHook(ctx, h); err != nil {
				return err
			}
		}
	}
	return q.checkDone(ctx, m)
}

// sendOnce makes one delivery attempt of h, bounded by hookDirectTimeout, and records it
// delivered; false when it failed (or the record could not be written).
func (q *Queue) sendOnce(ctx context.Context, m *batchMeta, h hookMsg) bool {
	body, err := json.Marshal(h.Event)
	if err != nil {
		return false
	}
	actx, cancel := context.WithTimeout(ctx, hookDirectTimeout)
	defer cancel()
	if err := q.hook.post(actx, m.Webhook, h.deliveryID(), body); err != nil {
		q.cfg.Logger.DebugContext(ctx, "webhook: first attempt failed, queued for retries", "delivery", h.deliveryID(), "err", err)
		return false
	}
	_, err = q.create(ctx, m, h.hookKey(), []byte("delivered"))
	return err == nil
}

// hookDirectTimeout bounds the completing node's own attempt, which holds the snippet's slot.
const hookDirectTimeout = 5 * time.Second

// hookMsg is one webhook event on the hook stream; Index -1 is the batch-done event.
type hookMsg struct {
	Batch string           `json:"batch"`
	Index int              `json:"index"`
	Event api.WebhookEvent `json:"event"`
}

// deliveryID is the event's idempotency id (api.WebhookDeliveryHeader).
func (h hookMsg) deliveryID() string {
	if h.Index < 0 {
		return h.Batch + "/done"
	}
	return h.Batch + "/" + strconv.Itoa(h.Index)
}

// hookKey is the event's delivery record in the bucket.
func (h hookMsg) hookKey() string {
	if h.Index < 0 {
		return h.Batch + ".hook.done"
	}
	return h.Batch + ".hook." + strconv.Itoa(h.Index)
}

// publishHook queues a webhook event, de-duplicated by its delivery id (a redelivered snippet
// queues its event again).
func (q *Queue) publishHook(ctx context.Context, h hookMsg) error {
	b, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("encode webhook event: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if _, err := q.js.PublishMsg(ctx, &nats.Msg{Subject: hookSubject + "." + h.Batch, Data: b,
		Header: nats.Header{jetstream.MsgIDHeader: []string{h.deliveryID()}}}); err != nil {
		return fmt.Errorf("queue webhook event %s: %w", h.deliveryID(), err)
	}
	return nil
}
