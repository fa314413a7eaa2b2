package cluster

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/server"
)

// The async batch queue (issue 17) lives in JetStream, beside the registry:
//
//	AIRLOCK_BATCH_WORK   work-queue stream, one message per snippet (workMsg) on
//	                     airlock.batch.work.<batch>; every node pulls from the shared durable
//	                     consumer airlock_batch_workers only as it has free slots, and acks once
//	                     the result is stored. A node that dies never acks: after AckWait
//	                     JetStream hands the snippet to another node.
//	AIRLOCK_BATCH_HOOKS  work-queue stream of the webhook events (hookMsg) whose first attempt,
//	                     made by the node that completed the snippet before its ack, failed (and
//	                     of the batch-done events); any node pulls, POSTs with back-off and acks
//	                     once delivered or given up on, so the retries outlive any one node.
//	airlock_batches      key-value bucket, every key with the batch's retention as its TTL:
//	                     <batch>.meta      batchMeta: owner, total, expiry, webhook
//	                     <batch>.res.<i>   the result (api.BatchItem), written create-only: a
//	                                       snippet redelivered after its result was stored is
//	                                       acked without running, so it is reported once
//	                     <batch>.run.<i>   the node that started snippet i
//	                     <batch>.try.<i>.<n> start n of snippet i (1…maxAttempts)
//	                     <batch>.fail.<i>  snippet i could not run (its result is an error)
//	                     <batch>.cxl.<i>   snippet i was canceled before it started
//	                     <batch>.cancel    DELETE /v1/batches/{id} was called
//	                     <batch>.hook.<i>  webhook event i delivered or given up on (value
//	                                       "delivered" or "failed"; <i> "done" for batch.done)
//	                     <batch>.hookfail.<i> webhook event i given up on (for the counts)
const (
	WorkStream    = "AIRLOCK_BATCH_WORK"
	HookStream    = "AIRLOCK_BATCH_HOOKS"
	BatchesBucket = "airlock_batches"

	workSubject  = "airlock.batch.work"
	hookSubject  = "airlock.batch.hook"
	workConsumer = "airlock_batch_workers"
	hookConsumer = "airlock_batch_hooks"
)

// Retention bounds of a batch (api.SubmitBatchRequest.Retention).
const (
	DefaultRetention = 24 * time.Hour
	MaxRetention     = 7 * 24 * time.Hour
	minRetention     = time.Minute
)

// QueueConfig configures a node's part of the batch queue. Zero values mean defaults.
type QueueConfig struct {
	Logger *slog.Logger
	// Slots is how many snippets this node runs at once; default the engine's one-shot slots
	// (MaxConcurrent).
	Slots int
	// AckWait is how long a snippet pulled by a node may go without a sign of life from it
	// (the node sends one every AckWait/3 while the snippet runs) before JetStream gives it to
	// another node; default 30 s. It is the consumer's: the first node to create it sets it.
	AckWait time.Duration
	// WebhookAllowPrivate lets webhooks target loopback, private and link-local addresses.
	WebhookAllowPrivate bool
	// WebhookRetryFor bounds how long one webhook event is retried; default 10 minutes.
	WebhookRetryFor time.Duration
}

// Queue is this node's part of the batch queue: it answers /v1/batches (server.BatchQueue) and,
// in Run, pulls snippets and webhook events.
type Queue struct {
	cfg   QueueConfig
	node  string
	nc    *nats.Conn
	js    jetstream.JetStream
	kv    jetstream.KeyValue
	work  jetstream.Consumer
	hooks jetstream.Consumer
	hook  *hookSender
	busy  func() bool // the engine queues one-shots: no slot is free now
	close func()

	metaMu sync.Mutex
	metas  map[string]*batchMeta // batches seen by the workers; their metadata never changes

	refusedMu sync.Mutex
	refused   map[string]ownerRefusal // owner → its runs are refused here until then
}

// ownerRefusal is this node's back-off for an owner whose runs its limits refused: until
// then, the owner's snippets go back to the queue unrun, at the cost of one NAK each, so that
// a key over its limits cannot keep the queue's slots busy while other keys wait.
type ownerRefusal struct {
	until time.Time
	n     uint64 // refusals in a row
}

var _ server.BatchQueue = (*Queue)(nil)

// batchMeta is a batch's record, <batch>.meta.
type batchMeta struct {
	ID      string       `json:"id"`
	Owner   string       `json:"owner"`
	Total   int          `json:"total"`
	Created time.Time    `json:"created"`
	Expires time.Time    `json:"expires"`
	Webhook *api.Webhook `json:"webhook,omitempty"`
}

// workMsg is one snippet on the work stream.
type workMsg struct {
	Batch   string             `json:"batch"`
	Index   int                `json:"index"`
	Owner   string             `json:"owner"` // the engine's hash of the submitting key
	Request api.ExecuteRequest `json:"request"`
}

// Queue joins this node to the batch queue, creating its streams, consumers and bucket when
// they do not exist (an existing one is never reconfigured, as the registry's buckets).
func (n *Node) Queue(ctx context.Context, cfg QueueConfig) (*Queue, error) {
	if cfg.Logger == nil {
		cfg.Logger = n.cfg.Logger
	}
	return newQueue(ctx, n.nc, n.cfg.NodeID, n.cfg.Engine, cfg)
}

// newQueue is the queue over the JetStream of nc, for node id on engine e.
func newQueue(ctx context.Context, nc *nats.Conn, node string, e *engine.Engine, cfg QueueConfig) (*Queue, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Slots <= 0 {
		cfg.Slots = max(1, e.Limits().MaxConcurrent)
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.AckWait < time.Second {
		return nil, errors.New("cluster: the batch ack wait must be at least 1s")
	}
	if cfg.WebhookRetryFor == 0 {
		cfg.WebhookRetryFor = 10 * time.Minute
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("JetStream: %w", err)
	}
	q := &Queue{cfg: cfg, node: node, nc: nc, js: js, metas: map[string]*batchMeta{}, refused: map[string]ownerRefusal{},
		busy: func() bool { return e.Waiting() > 0 }, close: func() {}}
	q.hook = newHookSender(cfg.WebhookAllowPrivate)
	if q.kv, err = bucket(ctx, js, jetstream.KeyValueConfig{Bucket: BatchesBucket, History: 1,
		TTL: MaxRetention + time.Hour, LimitMarkerTTL: time.Minute,
		Description: "Airlock async batches: metadata and results"}, true); err != nil {
		return nil, err
	}
	if q.work, err = workQueue(ctx, js, WorkStream, workSubject, workConsumer, cfg.AckWait); err != nil {
		return nil, err
	}
	if q.hooks, err = workQueue(ctx, js, HookStream, hookSubject, hookConsumer, cfg.AckWait); err != nil {
		return nil, err
	}
	return q, nil
}

// Close releases what the queue holds of its own (LocalQueue's NATS server); a cluster node's
// queue shares the node's connection, which Node.Close closes. Call it after Run has returned.
func (q *Queue) Close() { q.close() }

// workQueue binds (or creates) the work-queue stream name on subject.> and its shared durable
// consumer.
func workQueue(ctx context.Context, js jetstream.JetStream, name, subject, consumer string, ackWait time.Duration) (jetstream.Consumer, error) {
	st, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		st, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subject + ".>"},
			Retention: jetstream.WorkQueuePolicy, MaxAge: MaxRetention, Duplicates: 10 * time.Minute})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			st, err = js.Stream(ctx, name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	c, err := st.Consumer(ctx, consumer)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		c, err = st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: consumer, AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: ackWait, MaxAckPending: 100000, MaxWaiting: 4096})
		if errors.Is(err, jetstream.ErrConsumerExists) {
			c, err = st.Consumer(ctx, consumer)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("consumer %s of %s: %w", consumer, name, err)
	}
	return c, nil
}

// validBatchID is what a batch id is (newBatchID); any other id names no batch.
func validBatchID(id string) bool {
	rest, ok := strings.CutPrefix(id, "batch_")
	if !ok || len(rest) != 26 {
		return false
	}
	for _, c := range rest {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

// newBatchID is a fresh random batch id: a KV key token and a NATS subject token.
func newBatchID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return "batch_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// opTimeout bounds one JetStream operation of a request.
const opTimeout = 5 * time.Second

// errQueueDown is the answer while NATS cannot be reached.
var errQueueDown = api.Errorf(api.ErrUnavailable, "the batch queue (NATS) cannot be reached; retry")

func (q *Queue) up() error {
	if q.nc.Status() != nats.CONNECTED {
		return errQueueDown
	}
	return nil
}

// ttl is the TTL of a key of a batch that expires at exp.
func ttl(exp time.Time) time.Duration {
	return max(time.Second, time.Until(exp).Round(time.Second))
}

// create writes key once with the batch's TTL; false when it exists already.
func (q *Queue) create(ctx context.Context, m *batchMeta, key string, v []byte) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	_, err := q.kv.Create(ctx, key, v, jetstream.KeyTTL(ttl(m.Expires)))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("batch store create %s: %w", key, err)
	}
	return true, nil
}

// get reads key; nil, nil when it does not exist.
func (q *Queue) get(ctx context.Context, key string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	ent, err := q.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("batch store get %s: %w", key, err)
	}
	return ent.Value(), nil
}

func resKey(id string, i int) string { return id + ".res." + strconv.Itoa(i) }

// Submit validates and queues a batch: its record first (so that a worker finds it), then one
// message per snippet, each with a de-duplication id.
func (q *Queue) Submit(ctx context.Context, owner string, req api.SubmitBatchRequest) (*api.BatchStatus, error) {
	if err := q.up(); err != nil {
		return nil, err
	}
	if len(req.Snippets) == 0 || len(req.Snippets) > api.MaxQueuedBatch {
		return nil, api.Errorf(api.ErrInvalidArgument, "a batch holds 1…%d snippets, not %d", api.MaxQueuedBatch, len(req.Snippets))
	}
	keep := DefaultRetention
	if req.Retention != "" {
		d, err := time.ParseDuration(req.Retention)
		if err != nil || d < minRetention || d > MaxRetention {
			return nil, api.Errorf(api.ErrInvalidArgument, "retention %q: use a duration from %s to %s, such as 24h", req.Retention, minRetention, MaxRetention)
		}
		keep = d
	}
	made := ""
	if req.Webhook != nil {
		if err := q.hook.check(req.Webhook.URL); err != nil {
			return nil, err
		}
		if len(req.Webhook.Secret) > 256 {
			return nil, api.Errorf(api.ErrInvalidArgument, "webhook secret: at most 256 bytes")
		}
		if req.Webhook.Secret == "" {
			b := make([]byte, 24)
			rand.Read(b)
			made = "whsec_" + hex.EncodeToString(b)
			req.Webhook.Secret = made
		}
	}
	now := time.Now().UTC()
	m := &batchMeta{ID: newBatchID(), Owner: owner, Total: len(req.Snippets), Created: now, Expires: now.Add(keep), Webhook: req.Webhook}
	msgs := make([][]byte, len(req.Snippets))
	for i, s := range req.Snippets {
		b, err := json.Marshal(workMsg{Batch: m.ID, Index: i, Owner: owner, Request: s})
		if err != nil {
			return nil, fmt.Errorf("encode snippet %d: %w", i, err)
		}
		if int64(len(b)) > q.nc.MaxPayload()-1024 {
			return nil, api.Errorf(api.ErrTooLarge, "snippet %d is %d bytes, more than the queue's %d per snippet", i, len(b), q.nc.MaxPayload()-1024)
		}
		msgs[i] = b
	}
	mb, _ := json.Marshal(m)
	if _, err := q.create(ctx, m, m.ID+".meta", mb); err != nil {
		return nil, err
	}
	if err := q.publishWork(ctx, m, msgs); err != nil {
		// Part of it may be queued: cancel the whole batch, so that it completes (canceled)
		// rather than waits forever for snippets that never were queued.
		q.cfg.Logger.WarnContext(ctx, "queueing a batch failed: canceling it", "batch", m.ID, "err", err)
		if _, cerr := q.Cancel(context.WithoutCancel(ctx), owner, m.ID); cerr != nil {
			q.cfg.Logger.WarnContext(ctx, "canceling a batch that could not be queued", "batch", m.ID, "err", cerr)
		}
		return nil, api.Errorf(api.ErrUnavailable, "the batch could not be queued (NATS); retry")
	}
	q.cfg.Logger.InfoContext(ctx, "batch queued", "batch", m.ID, "snippets", m.Total, "webhook", m.Webhook != nil)
	st := status(m)
	st.Counts.Queued = m.Total
	st.WebhookSecret = made
	return st, nil
}

// publishWork puts one message per snippet of m on the work stream and waits for JetStream
// to have stored them all.
func (q *Queue) publishWork(ctx context.Context, m *batchMeta, msgs [][]byte) error {
	futs := make([]jetstream.PubAckFuture, len(msgs))
	for i, b := range msgs {
		f, err := q.js.PublishMsgAsync(&nats.Msg{Subject: workSubject + "." + m.ID, Data: b,
			Header: nats.Header{jetstream.MsgIDHeader: []string{m.ID + "/" + strconv.Itoa(i)}}})
		if err != nil {
			return fmt.Errorf("queue snippet %d: %w", i, err)
		}
		futs[i] = f
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for i, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("queue snippet %d of %s: %w", i, m.ID, err)
		case <-pctx.Done():
			return fmt.Errorf("queue snippet %d of %s: %w", i, m.ID, pctx.Err())
		}
	}
	return nil
}

// status is m's status without counts.
func status(m *batchMeta) *api.BatchStatus {
	return &api.BatchStatus{ID: m.ID, Status: api.BatchRunning, Total: m.Total,
		Created: m.Created.Format(time.RFC3339), Expires: m.Expires.Format(time.RFC3339)}
}

// errNoBatch is the answer for an unknown batch, one past its retention and another key's.
func errNoBatch(id string) error { return api.Errorf(api.ErrNotFound, "no batch %s", id) }

// meta reads batch id's record for owner: not found for another owner's, and past its expiry.
func (q *Queue) meta(ctx context.Context, owner, id string) (*batchMeta, error) {
	if !validBatchID(id) {
		return nil, errNoBatch(id)
	}
	if err := q.up(); err != nil {
		return nil, err
	}
	m, err := q.loadMeta(ctx, id)
	if err != nil {
		return nil, err
	}
	if m == nil || m.Owner != owner {
		return nil, errNoBatch(id)
	}
	return m, nil
}

// loadMeta reads batch id's record, through the cache; nil, nil when there is none or it has
// expired.
func (q *Queue) loadMeta(ctx context.Context, id string) (*batchMeta, error) {
	q.metaMu.Lock()
	m := q.metas[id]
	q.metaMu.Unlock()
	if m == nil {
		b, err := q.get(ctx, id+".meta")
		if err != nil || b == nil {
			return nil, err
		}
		m = new(batchMeta)
		if err := json.Unmarshal(b, m); err != nil {
			return nil, fmt.Errorf("batch %s: bad record: %w", id, err)
		}
		q.metaMu.Lock()
		if len(q.metas) > 4096 { // a bounded cache: forget all, re-read as needed
			clear(q.metas)
		}
		q.metas[id] = m
		q.metaMu.Unlock()
	}
	if time.Now().After(m.Expires) {
		return nil, nil
	}
	return m, nil
}

// scan reads the batch's keys (and, with values, the results of indexes in (after,
// after+limit]) into its status.
func (q *Queue) scan(ctx context.Context, m *batchMeta, after, limit int) (*api.BatchStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var opts []jetstream.WatchOpt
	opts = append(opts, jetstream.IgnoreDeletes())
	if limit == 0 {
		opts = append(opts, jetstream.MetaOnly())
	}
	w, err := q.kv.Watch(ctx, m.ID+".>", opts...)
	if err != nil {
		return nil, fmt.Errorf("read batch %s: %w", m.ID, err)
	}
	defer w.Stop()
	run, res := map[int]bool{}, map[int]bool{}
	st := status(m)
	var page []api.BatchItem
	for ent := range w.Updates() {
		if ent == nil {
			break
		}
		// Kinds are told by key alone: the counts-only read (limit 0) has no values.
		kind, idx, _ := strings.Cut(strings.TrimPrefix(ent.Key(), m.ID+"."), ".")
		switch kind {
		case "hook": // <batch>.hook.<i> and <batch>.hook.done, delivered or given up on
			st.WebhooksDelivered++
			continue
		case "hookfail":
			st.WebhooksFailed++
			continue
		}
		i, err := strconv.Atoi(idx)
		if err != nil {
			continue
		}
		switch kind {
		case "run":
			run[i] = true
		case "res":
			res[i] = true
			if i > after && i <= after+limit {
				var it api.BatchItem
				if json.Unmarshal(ent.Value(), &it) == nil {
					page = append(page, it)
				}
			}
		case "fail":
			st.Counts.Failed++
		case "cxl":
			st.Counts.Canceled++
		}
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("read batch %s: %w", m.ID, ctx.Err())
	}
	st.WebhooksDelivered -= st.WebhooksFailed
	st.Counts.Done = len(res) - st.Counts.Failed - st.Counts.Canceled
	for i := range run {
		if !res[i] {
			st.Counts.Running++
		}
	}
	st.Counts.Queued = m.Total - len(res) - st.Counts.Running
	if len(res) >= m.Total {
		st.Status = api.BatchComplete
	}
	sortItems(page)
	st.Results = page
	if limit > 0 && after+limit < m.Total-1 {
		next := after + limit
		st.Next = &next
	}
	return st, nil
}

// Status answers GET /v1/batches/{id}.
func (q *Queue) Status(ctx context.Context, owner, id string, after, limit int) (*api.BatchStatus, error) {
	m, err := q.meta(ctx, owner, id)
	if err != nil {
		return nil, err
	}
	return q.scan(ctx, m, after, limit)
}

// Results streams the batch's results (server.BatchQueue).
func (q *Queue) Results(ctx context.Context, owner, id string, follow bool, emit func(api.BatchItem) error) error {
	m, err := q.meta(ctx, owner, id)
	if err != nil {
		return err
	}
	w, err := q.kv.Watch(ctx, id+".res.*", jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("watch batch %s: %w", id, err)
	}
	defer w.Stop()
	seen := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ent, ok := <-w.Updates():
			switch {
			case !ok:
				return fmt.Errorf("watch batch %s: ended", id)
			case ent == nil: // everything stored has been sent
				if !follow || len(seen) >= m.Total {
					return nil
				}
				continue
			case ent.Operation() != jetstream.KeyValuePut || seen[ent.Key()]:
				continue
			}
			var it api.BatchItem
			if err := json.Unmarshal(ent.Value(), &it); err != nil {
				continue
			}
			seen[ent.Key()] = true
			if err := emit(it); err != nil {
				return err
			}
			if follow && len(seen) >= m.Total {
				return nil
			}
		}
	}
}

// canceledResult is the result of a snippet canceled before it started.
func canceledResult(i int, node string) api.BatchItem {
	return api.BatchItem{Index: i, Node: node, Result: api.BatchResult{Error: &api.ErrorDetail{Code: api.CodeCanceled,
		Message: "the batch was canceled before this snippet started"}}}
}

// Cancel answers DELETE /v1/batches/{id}: the cancel mark first, then a canceled result for
// every snippet no node has started. A worker marks a snippet started before it looks for the
// cancel mark, so each snippet either is seen started here or sees the mark there.
func (q *Queue) Cancel(ctx context.Context, owner, id string) (*api.BatchStatus, error) {
	m, err := q.meta(ctx, owner, id)
	if err != nil {
		return nil, err
	}
	if _, err := q.create(ctx, m, id+".cancel", []byte(q.node)); err != nil {
		return nil, err
	}
	started, err := q.startedOrDone(ctx, m)
	if err != nil {
		return nil, err
	}
	for i := range m.Total {
		if started[i] {
			continue
		}
		if _, err := q.store(ctx, m, canceledResult(i, q.node)); err != nil {
			return nil, err
		}
	}
	if err := q.checkDone(ctx, m); err != nil {
		q.cfg.Logger.WarnContext(ctx, "batch done check", "batch", id, "err", err)
	}
	return q.scan(ctx, m, -1, 0)
}

// startedOrDone lists the indexes of m that have a start mark or a result.
func (q *Queue) startedOrDone(ctx context.Context, m *batchMeta) (map[int]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	keys, err := q.kv.ListKeysFiltered(ctx, m.ID+".run.*", m.ID+".res.*")
	if err != nil {
		return nil, fmt.Errorf("list batch %s: %w", m.ID, err)
	}
	out := map[int]bool{}
	for k := range keys.Keys() {
		if i, err := strconv.Atoi(k[strings.LastIndexByte(k, '.')+1:]); err == nil {
			out[i] = true
		}
	}
	return out, ctx.Err()
}

// store writes a snippet's result once and returns the one stored: it, or the one a node
// stored before (a redelivered snippet, or a cancel racing a worker).
func (q *Queue) store(ctx context.Context, m *batchMeta, it api.BatchItem) (api.BatchItem, error) {
	b, err := json.Marshal(it)
	if err != nil {
		return it, fmt.Errorf("encode result: %w", err)
	}
	created, err := q.create(ctx, m, resKey(m.ID, it.Index), b)
	if err != nil {
		return it, err
	}
	if !created {
		old, err := q.get(ctx, resKey(m.ID, it.Index))
		if err != nil || old == nil {
			return it, err
		}
		if err := json.Unmarshal(old, &it); err != nil {
			return it, fmt.Errorf("batch %s result %d: %w", m.ID, it.Index, err)
		}
	}
	// The marks the counts read, written again for a stored result: one lost to a crash
	// between the two writes is written by the redelivery.
	if e := it.Result.Error; e != nil {
		mark := ".fail."
		if e.Code == api.CodeCanceled {
			mark = ".cxl."
		}
		if _, err := q.create(ctx, m, m.ID+mark+strconv.Itoa(it.Index), nil); err != nil {
			return it, err
		}
	}
	return it, nil
}

// countResults is how many results batch id has: the pending count of a throwaway consumer of
// the bucket's stream that delivers the last message of each result key.
func (q *Queue) countResults(ctx context.Context, id string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	stream := "KV_" + BatchesBucket
	c, err := q.js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{
		FilterSubject: "$KV." + BatchesBucket + "." + id + ".res.*", DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
		AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: 30 * time.Second, MemoryStorage: true})
	if err != nil {
		return 0, fmt.Errorf("count results of %s: %w", id, err)
	}
	info := c.CachedInfo()
	if err := q.js.DeleteConsumer(ctx, stream, info.Name); err != nil {
		q.cfg.Logger.DebugContext(ctx, "delete counting consumer (it expires by itself)", "err", err)
	}
	return int(info.NumPending), nil
}

// checkDone sends the batch-done webhook event once every snippet has a result. Several nodes
// may see that at once, and a redelivered snippet sees it again: the event's de-duplication id
// makes it one message.
func (q *Queue) checkDone(ctx context.Context, m *batchMeta) error {
	if m.Webhook == nil {
		return nil
	}
	n, err := q.countResults(ctx, m.ID)
	if err != nil || n < m.Total {
		return err
	}
	st, err := q.scan(ctx, m, -1, 0)
	if err != nil {
		return err
	}
	return q.publishHook(ctx, hookMsg{Batch: m.ID, Index: -1, Event: api.WebhookEvent{Type: api.WebhookBatchDone, Batch: m.ID, Counts: &st.Counts}})
}

// sortItems orders results by their index in the batch.
func sortItems(items []api.BatchItem) {
	slices.SortFunc(items, func(a, b api.BatchItem) int { return a.Index - b.Index })
}
