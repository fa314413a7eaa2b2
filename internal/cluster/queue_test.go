package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/cluster/natstest"
	"github.com/airlockhq/airlock/internal/engine"
)

// testQueue is a queue of node id on the NATS server at url, over an engine without
// sandboxes (the tests run snippets with their own RunFunc); it is closed when the test ends.
func testQueue(t *testing.T, url, id string, allowPrivate bool) (*Queue, *nats.Conn) {
	t.Helper()
	e, err := engine.New(engine.Config{Runtime: noRuntime{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(context.WithoutCancel(t.Context())) })
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	q, err := newQueue(t.Context(), nc, id, e, QueueConfig{Slots: 4, AckWait: time.Second, WebhookAllowPrivate: allowPrivate,
		WebhookRetryFor: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return q, nc
}

// runQueue runs q with run until the returned stop is called (or the test ends).
func runQueue(t *testing.T, q *Queue, run RunFunc) (stop func()) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { q.Run(ctx, run); close(done) }()
	stop = sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	return stop
}

// echoRun runs a snippet by answering its code as its stdout.
func echoRun(_ context.Context, _ string, req api.ExecuteRequest) (*api.ExecuteResponse, error) {
	return &api.ExecuteResponse{Success: true, Stdout: req.Code}, nil
}

func snippets(n int) []api.ExecuteRequest {
	s := make([]api.ExecuteRequest, n)
	for i := range s {
		s[i] = api.ExecuteRequest{Code: strconv.Itoa(i)}
	}
	return s
}

// TestQueueRefusesBadInput: bad batches and webhook URLs are a clear invalid_argument, and
// another owner's batch is not found.
func TestQueueRefusesBadInput(t *testing.T) {
	q, _ := testQueue(t, natstest.Start(t), "n1", false)
	hook := func(u string) *api.Webhook { return &api.Webhook{URL: u} }
	for _, tt := range []struct {
		name string
		req  api.SubmitBatchRequest
	}{
		{"no snippets", api.SubmitBatchRequest{}},
		{"too many snippets", api.SubmitBatchRequest{Snippets: snippets(api.MaxQueuedBatch + 1)}},
		{"bad retention", api.SubmitBatchRequest{Snippets: snippets(1), Retention: "a while"}},
		{"retention too short", api.SubmitBatchRequest{Snippets: snippets(1), Retention: "1s"}},
		{"ftp webhook", api.SubmitBatchRequest{Snippets: snippets(1), Webhook: hook("ftp://example.com/x")}},
		{"webhook without host", api.SubmitBatchRequest{Snippets: snippets(1), Webhook: hook("http:///x")}},
		{"webhook with credentials", api.SubmitBatchRequest{Snippets: snippets(1), Webhook: hook("https://u:p@example.com/")}},
		{"loopback webhook", api.SubmitBatchRequest{Snippets: snippets(1), Webhook: hook("http://127.0.0.1:8080/")}},
		{"localhost webhook", api.SubmitBatchRequest{Snippets: snippets(1), Webhook: hook("http://localhost/")}},
		{"private webhook", api.SubmitBatchRequest{Snippets: snippets(1), Webhook: hook("http://10.1.2.3/")}},
		{"metadata webhook", api.SubmitBatchRequest{Snippets: snippets(1), Webhook: hook("http://169.254.169.254/latest")}},
		{"IPv6 loopback webhook", api.SubmitBatchRequest{Snippets: snippets(1), Webhook: hook("http://[::1]/")}},
		{"IPv4-mapped loopback webhook", api.SubmitBatchRequest{Snippets: snippets(1), Webhook: hook("http://[::ffff:127.0.0.1]/")}},
		{"CGNAT webhook", api.SubmitBatchRequest{Snippets: snippets(1), Webhook: hook("http://100.64.0.1/")}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := q.Submit(t.Context(), "owner", tt.req)
			if got := api.CodeOf(err); got != api.CodeInvalidArgument {
				t.Errorf("got %s (%v), want invalid_argument", got, err)
			}
		})
	}
	st, err := q.Submit(t.Context(), "owner", api.SubmitBatchRequest{Snippets: snippets(2), Webhook: hook("https://example.com/hook")})
	if err != nil {
		t.Fatalf("a public webhook: %v", err)
	}
	if st.WebhookSecret == "" || st.Counts.Queued != 2 {
		t.Errorf("submit answered %+v, want a made secret and 2 queued", st)
	}
	for _, id := range []string{st.ID, "batch_nosuch", "../../etc", st.ID + ".meta"} {
		if _, err := q.Status(t.Context(), "another owner", id, -1, 10); api.CodeOf(err) != api.CodeNotFound {
			t.Errorf("another owner's Status(%q): %v, want not found", id, err)
		}
	}
	if _, err := q.Cancel(t.Context(), "another owner", st.ID); api.CodeOf(err) != api.CodeNotFound {
		t.Errorf("another owner's Cancel: %v, want not found", err)
	}
}

// TestQueueDialRefusesPrivate: a webhook name that resolves to a loopback address is refused
// when dialed, not only a literal one when submitted.
func TestQueueDialRefusesPrivate(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer srv.Close()
	u := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1) // a name, past the submission check
	h := newHookSender(false)
	if err := h.post(t.Context(), &api.Webhook{URL: u, Secret: "s"}, "b/0", []byte("{}")); err == nil ||
		!strings.Contains(err.Error(), "is not public") || hits.Load() != 0 {
		t.Errorf("posting to %s: %v, %d requests arrived; want refused at the dial", u, err, hits.Load())
	}
	if err := newHookSender(true).post(t.Context(), &api.Webhook{URL: srv.URL, Secret: "s"}, "b/0", []byte("{}")); err != nil {
		t.Errorf("allowed private: %v", err)
	}
}

// TestQueueExactlyOnceWhenANodeDies: two nodes share a batch; n1 dies (its connection cut, no
// ack, no nak) while it runs snippets. JetStream redelivers them to n2 after the ack wait, and
// every snippet has exactly one result and one webhook event, signed; then batch.done.
func TestQueueExactlyOnceWhenANodeDies(t *testing.T) {
	url := natstest.Start(t)
	q1, nc1 := testQueue(t, url, "n1", true)
	q2, _ := testQueue(t, url, "n2", true)

	var mu sync.Mutex
	events := map[string]int{}
	var done *api.WebhookEvent
	badSig := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var ev api.WebhookEvent
		json.Unmarshal(body, &ev)
		mu.Lock()
		defer mu.Unlock()
		sig := r.Header.Get(api.WebhookSignatureHeader)
		ts, _, _ := strings.Cut(strings.TrimPrefix(sig, "t="), ",")
		sec, _ := strconv.ParseInt(ts, 10, 64)
		if Sign("sekret", time.Unix(sec, 0), body) != sig {
			badSig++
		}
		events[r.Header.Get(api.WebhookDeliveryHeader)]++
		if ev.Type == api.WebhookBatchDone {
			done = &ev
		}
	}))
	defer srv.Close()

	const n = 40
	st, err := q1.Submit(t.Context(), "owner", api.SubmitBatchRequest{Snippets: snippets(n),
		Webhook: &api.Webhook{URL: srv.URL, Secret: "sekret"}})
	if err != nil {
		t.Fatal(err)
	}
	// n1 takes snippets and never finishes them; n2 is started only once n1 holds some.
	var held atomic.Int32
	stop1 := runQueue(t, q1, func(ctx context.Context, _ string, _ api.ExecuteRequest) (*api.ExecuteResponse, error) {
		held.Add(1)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	poll(t, "n1 to hold snippets", func() bool { return held.Load() == 4 })
	nc1.Close() // n1 dies: what it holds is never acked
	stop1()
	var runs atomic.Int32
	runQueue(t, q2, func(ctx context.Context, o string, req api.ExecuteRequest) (*api.ExecuteResponse, error) {
		runs.Add(1)
		return echoRun(ctx, o, req)
	})

	var items []api.BatchItem
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := q2.Results(ctx, "owner", st.ID, true, func(it api.BatchItem) error {
		items = append(items, it)
		return nil
	}); err != nil {
		t.Fatalf("results: %v (%d so far)", err, len(items))
	}
	seen := map[int]int{}
	for _, it := range items {
		seen[it.Index]++
		if it.Node != "n2" || it.Result.ExecuteResponse == nil || it.Result.Stdout != strconv.Itoa(it.Index) {
			t.Errorf("result %+v, want snippet %d's by n2", it, it.Index)
		}
	}
	for i := range n {
		if seen[i] != 1 {
			t.Errorf("snippet %d reported %d times, want once", i, seen[i])
		}
	}
	// Snippet 7 delivered again after its result was stored (as after a node that stored it
	// died before its ack): acked without running, and still one result.
	b, _ := json.Marshal(workMsg{Batch: st.ID, Index: 7, Owner: "owner", Request: api.ExecuteRequest{Code: "again"}})
	if _, err := q2.js.Publish(t.Context(), workSubject+"."+st.ID, b); err != nil {
		t.Fatal(err)
	}
	poll(t, "the copy to be consumed", func() bool {
		info, err := q2.work.Info(t.Context())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	if runs.Load() != n {
		t.Errorf("%d runs, want %d: a snippet whose result is stored ran again", runs.Load(), n)
	}
	page, err := q2.Status(t.Context(), "owner", st.ID, 9, 10)
	if err != nil {
		t.Fatal(err)
	}
	if page.Status != api.BatchComplete || page.Counts != (api.BatchCounts{Done: n}) || len(page.Results) != 10 ||
		page.Results[0].Index != 10 || page.Next == nil || *page.Next != 19 || page.Results[0].Result.Stdout != "10" {
		t.Errorf("page after 9, limit 10: %+v, want complete, %d done, indexes 10…19, next 19", page, n)
	}
	poll(t, "every webhook event", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(events) == n+1 && done != nil
	})
	mu.Lock()
	defer mu.Unlock()
	if badSig != 0 {
		t.Errorf("%d deliveries did not verify", badSig)
	}
	if done.Counts == nil || done.Counts.Done != n {
		t.Errorf("batch.done %+v, want %d done", done, n)
	}
	dups := 0
	for _, c := range events {
		dups += c - 1
	}
	t.Logf("%d webhook deliveries for %d events", n+1+dups, n+1)
}

// TestQueueCancel: a cancel gives the snippets not started a canceled result and leaves the
// running ones to finish; the batch completes.
func TestQueueCancel(t *testing.T) {
	q, _ := testQueue(t, natstest.Start(t), "n1", false)
	st, err := q.Submit(t.Context(), "owner", api.SubmitBatchRequest{Snippets: snippets(30)})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var started atomic.Int32
	runQueue(t, q, func(ctx context.Context, o string, req api.ExecuteRequest) (*api.ExecuteResponse, error) {
		started.Add(1)
		<-release
		return echoRun(ctx, o, req)
	})
	poll(t, "4 snippets to start", func() bool { return started.Load() == 4 })
	cs, err := q.Cancel(t.Context(), "owner", st.ID)
	if err != nil {
		t.Fatal(err)
	}
	if cs.Counts.Canceled != 26 || cs.Counts.Running != 4 {
		t.Errorf("after cancel: %+v, want 26 canceled and 4 running", cs.Counts)
	}
	close(release)
	poll(t, "the batch to complete", func() bool {
		s, err := q.Status(t.Context(), "owner", st.ID, -1, 0)
		return err == nil && s.Status == api.BatchComplete
	})
	s, _ := q.Status(t.Context(), "owner", st.ID, -1, 0)
	if s.Counts != (api.BatchCounts{Done: 4, Canceled: 26}) {
		t.Errorf("complete: %+v, want 4 done and 26 canceled", s.Counts)
	}
	if got := fmt.Sprint(started.Load()); got != "4" {
		t.Errorf("%s snippets ran, want 4 (the canceled never run)", got)
	}
}

// TestFitResult: a result too large for one NATS message loses its files, then has its
// output cut, and says so; one that fits is kept whole.
func TestFitResult(t *testing.T) {
	big := strings.Repeat("x\n\"", 400<<10)
	files := []api.OutputFile{{Name: "f", Data: make([]byte, 900<<10)}}
	for _, tt := range []struct {
		name                      string
		r                         api.ExecuteResponse
		wantTruncated, wantNoFile bool
	}{
		{"small", api.ExecuteResponse{Stdout: "hi", Files: []api.OutputFile{{Name: "f", Data: []byte("d")}}}, false, false},
		{"big files", api.ExecuteResponse{Stdout: "hi", Files: files}, false, true},
		{"big output", api.ExecuteResponse{Stdout: big, Stderr: big}, true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.r
			got := fitResult(api.BatchItem{Index: 1, Result: api.BatchResult{ExecuteResponse: &r}}, 1<<20-resultSlack)
			b, _ := json.Marshal(got)
			g := got.Result.ExecuteResponse
			if len(b) > 1<<20-resultSlack || g.Truncated != tt.wantTruncated || (len(g.Files) == 0) != tt.wantNoFile ||
				g.FilesTruncated != (tt.wantNoFile && len(tt.r.Files) > 0) {
				t.Errorf("%d bytes, truncated %v, %d files (files_truncated %v); want at most 1 MiB less the slack, truncated %v, no files %v",
					len(b), g.Truncated, len(g.Files), g.FilesTruncated, tt.wantTruncated, tt.wantNoFile)
			}
			if len(tt.r.Stdout) != len(r.Stdout) {
				t.Errorf("fitResult changed the caller's result")
			}
		})
	}
}

// TestQueueWebhookOutlivesItsSender: n1 runs a whole batch while the receiver answers 503, so
// its first attempts fail and its hook consumer is retrying when n1 dies. n2, started after,
// delivers every event (JetStream redelivers what n1 held): none is lost.
func TestQueueWebhookOutlivesItsSender(t *testing.T) {
	url := natstest.Start(t)
	q1, nc1 := testQueue(t, url, "n1", true)
	q2, _ := testQueue(t, url, "n2", true)
	var healthy atomic.Bool
	var mu sync.Mutex
	got := map[string]bool{}
	var refused atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			refused.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		mu.Lock()
		got[r.Header.Get(api.WebhookDeliveryHeader)] = true
		mu.Unlock()
	}))
	defer srv.Close()
	const n = 10
	st, err := q1.Submit(t.Context(), "owner", api.SubmitBatchRequest{Snippets: snippets(n), Webhook: &api.Webhook{URL: srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	stop1 := runQueue(t, q1, echoRun)
	poll(t, "the batch to complete and its retries to begin", func() bool {
		s, err := q1.Status(t.Context(), "owner", st.ID, -1, 0)
		return err == nil && s.Status == api.BatchComplete && refused.Load() > n+1
	})
	nc1.Close() // n1 dies mid-retry: the events it holds are never acked
	stop1()
	healthy.Store(true)
	runQueue(t, q2, echoRun)
	poll(t, "every event delivered by n2", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == n+1
	})
	s, err := q2.Status(t.Context(), "owner", st.ID, -1, 0)
	if err != nil || s.WebhooksDelivered != n+1 {
		t.Errorf("status %+v %v, want %d deliveries recorded", s, err, n+1)
	}
}

// TestQueueGivesUpOnASnippetThatKillsItsNode: a snippet whose every start ends with its node
// gone is given an error result after maxAttempts starts, and the batch completes; refusals
// (no room) are not counted as starts.
func TestQueueGivesUpOnASnippetThatKillsItsNode(t *testing.T) {
	url := natstest.Start(t)
	q0, _ := testQueue(t, url, "submitter", true)
	st, err := q0.Submit(t.Context(), "owner", api.SubmitBatchRequest{Snippets: snippets(1)})
	if err != nil {
		t.Fatal(err)
	}
	var refusals atomic.Int32
	for i := range maxAttempts {
		q, nc := testQueue(t, url, fmt.Sprintf("n%d", i), true)
		var started atomic.Bool
		stop := runQueue(t, q, func(ctx context.Context, _ string, _ api.ExecuteRequest) (*api.ExecuteResponse, error) {
			if refusals.Add(1) <= 1 {
				return nil, api.Errorf(api.ErrResourceExhausted, "busy")
			}
			started.Store(true)
			<-ctx.Done()
			return nil, ctx.Err()
		})
		poll(t, "the snippet to start", started.Load)
		nc.Close() // the node dies with it
		stop()
	}
	q, _ := testQueue(t, url, "last", true)
	runQueue(t, q, echoRun)
	var items []api.BatchItem
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := q.Results(ctx, "owner", st.ID, true, func(it api.BatchItem) error { items = append(items, it); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(items) != 1 || items[0].Result.Error == nil || items[0].Result.Error.Code != api.CodeInternal {
		t.Errorf("results %+v, want one internal error after %d starts", items, maxAttempts)
	}
}

// TestQueueWebhookGivesUp: a receiver that never accepts is retried for WebhookRetryFor, then
// each event is recorded failed, and the counts say so.
func TestQueueWebhookGivesUp(t *testing.T) {
	q, _ := testQueue(t, natstest.Start(t), "n1", true)
	q.cfg.WebhookRetryFor = 1500 * time.Millisecond
	var attempts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		attempts.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer srv.Close()
	st, err := q.Submit(t.Context(), "owner", api.SubmitBatchRequest{Snippets: snippets(2), Webhook: &api.Webhook{URL: srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	runQueue(t, q, echoRun)
	var s *api.BatchStatus
	poll(t, "every event given up on", func() bool {
		s, err = q.Status(t.Context(), "owner", st.ID, -1, 0)
		return err == nil && s.WebhooksFailed == 3
	})
	if s.WebhooksDelivered != 0 || attempts.Load() < 6 {
		t.Errorf("status %+v after %d attempts; want 0 delivered and retries (2 at least per event)", s, attempts.Load())
	}
}

// longRefusal is a per-key refusal saying to wait an hour (the server's CPU-seconds quota).
type longRefusal struct{ error }

func (longRefusal) RetryAfter() time.Duration { return time.Hour }
func (l longRefusal) Unwrap() error           { return l.error }

// TestQueueRefusedKeyDoesNotStarveOthers is the review's starvation: a key whose every run is
// refused (over its runs in flight) submits a big batch; another key's small batch submitted
// after it still completes, since refused snippets back off instead of coming back every
// second; and a refusal that says to wait an hour (a spent CPU quota) is the snippet's result
// at once, not a retry.
func TestQueueRefusedKeyDoesNotStarveOthers(t *testing.T) {
	q, _ := testQueue(t, natstest.Start(t), "n1", true)
	var hogRuns atomic.Int32
	runQueue(t, q, func(ctx context.Context, owner string, req api.ExecuteRequest) (*api.ExecuteResponse, error) {
		switch owner {
		case "hog":
			hogRuns.Add(1)
			return nil, api.Errorf(api.ErrResourceExhausted, "too many runs in flight for this key")
		case "spent":
			return nil, longRefusal{api.Errorf(api.ErrResourceExhausted, "CPU seconds of this period spent")}
		}
		return echoRun(ctx, owner, req)
	})
	if _, err := q.Submit(t.Context(), "hog", api.SubmitBatchRequest{Snippets: snippets(api.MaxQueuedBatch)}); err != nil {
		t.Fatal(err)
	}
	poll(t, "the hog's snippets to be refused", func() bool { return hogRuns.Load() >= 1 })
	// Every later snippet of the hog's goes back unrun while its back-off lasts, one NAK each.
	for _, owner := range []string{"ok", "spent"} {
		st, err := q.Submit(t.Context(), owner, api.SubmitBatchRequest{Snippets: snippets(5)})
		if err != nil {
			t.Fatal(err)
		}
		var items []api.BatchItem
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		err = q.Results(ctx, owner, st.ID, true, func(it api.BatchItem) error { items = append(items, it); return nil })
		cancel()
		if err != nil || len(items) != 5 {
			t.Fatalf("%s's batch behind the refused one: %d results, %v; want all 5", owner, len(items), err)
		}
		for _, it := range items {
			switch failed := it.Result.Error != nil; {
			case owner == "ok" && failed:
				t.Errorf("ok's snippet %d: %+v", it.Index, it.Result.Error)
			case owner == "spent" && (!failed || it.Result.Error.Code != api.CodeResourceExhausted):
				t.Errorf("spent's snippet %d: %+v %+v, want its refusal as the result", it.Index, it.Result, it.Result.Error)
			}
		}
	}
}
