package e2e

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/cluster"
	"github.com/airlockhq/airlock/internal/cluster/natstest"
)

// webhookSink is a webhook receiver on 127.0.0.1: it checks every delivery's signature and
// de-duplicates by delivery id, counting the duplicates.
type webhookSink struct {
	secret string
	srv    *httptest.Server

	mu       sync.Mutex
	items    map[int]api.BatchItem // the snippet events, by index
	done     *api.WebhookEvent     // the batch.done event
	seen     map[string]bool       // delivery ids
	dups     int                   // deliveries of an id already seen
	badSig   int                   // deliveries whose signature did not verify
	failNext int                   // answer this many deliveries 503 first (the retries)
}

func newWebhookSink(t *testing.T, secret string) *webhookSink {
	s := &webhookSink{secret: secret, items: map[int]api.BatchItem{}, seen: map[string]bool{}}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

// verify checks an X-Airlock-Signature header against body, as a receiver would.
func verify(secret, header string, body []byte) bool {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	want := hex.EncodeToString(mac.Sum(nil))
	return ts != "" && hmac.Equal([]byte(sig), []byte(want))
}

func (s *webhookSink) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failNext > 0 {
		s.failNext--
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	if !verify(s.secret, r.Header.Get(api.WebhookSignatureHeader), body) {
		s.badSig++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	id := r.Header.Get(api.WebhookDeliveryHeader)
	if s.seen[id] {
		s.dups++
		return
	}
	s.seen[id] = true
	var ev api.WebhookEvent
	if json.Unmarshal(body, &ev) != nil {
		return
	}
	switch {
	case ev.Type == api.WebhookBatchDone:
		s.done = &ev
	case ev.Item != nil:
		s.items[ev.Item.Index] = *ev.Item
	}
}

// snapshot returns the sink's counts.
func (s *webhookSink) snapshot() (items int, done bool, dups, badSig int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.items), s.done != nil, s.dups, s.badSig
}

// batchNodes starts n cluster nodes (A, B, C…; fleets name+a, name+b…) on one embedded NATS server, with webhooks to
// 127.0.0.1 allowed and a short ack wait, so that a killed node's snippets come back quickly.
func batchNodes(t *testing.T, name, natsURL string, n int, keys ...string) []*daemon {
	var ds []*daemon
	for i := range n {
		id := string(rune('A' + i))
		f := newFleet(t, name+strings.ToLower(id))
		d := f.start(freeAddr(t), withKeys(keys...), withArgs(fmt.Sprintf(
			"--cluster %s --cluster-node-id %s --cluster-heartbeat 200ms --webhook-allow-private --batch-ack-wait 2s --zygote=true",
			natsURL, id)))
		t.Cleanup(func() {
			if d.cmd.ProcessState == nil {
				d.stop()
			}
		})
		ds = append(ds, d)
	}
	return ds
}

// printBatch is a batch of n snippets, snippet i printing i (after sleeping, if sleep).
func printBatch(n int, sleep string, webhook string) string {
	var b strings.Builder
	b.WriteString(`{"snippets":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		code := fmt.Sprintf("print(%d)", i)
		if sleep != "" {
			code = fmt.Sprintf("import time; time.sleep(%s); print(%d)", sleep, i)
		}
		fmt.Fprintf(&b, `{"language":"python","code":%q}`, code)
	}
	b.WriteString(`]`)
	if webhook != "" {
		b.WriteString(`,"webhook":` + webhook)
	}
	b.WriteString(`}`)
	return b.String()
}

// streamResults reads GET /v1/batches/{id}/results?stream=1 through c to its end and returns
// the items in the order they came.
func streamResults(t *testing.T, c tenant, id string) []api.BatchItem {
	t.Helper()
	// Bounded: a batch that never completes fails the test rather than hanging it.
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", c.url+"/v1/batches/"+id+"/results?stream=1", nil)
	req.Header.Set("Authorization", "Bearer "+c.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("results stream: %d %s", resp.StatusCode, b)
	}
	var out []api.BatchItem
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var it api.BatchItem
		if err := json.Unmarshal(sc.Bytes(), &it); err != nil {
			t.Fatalf("results stream line %q: %v", sc.Bytes(), err)
		}
		out = append(out, it)
	}
	if ctx.Err() != nil {
		t.Fatalf("results stream of %s: not complete after 3 minutes (%d results)", id, len(out))
	}
	return out
}

// allPages reads every result of the batch through c, page by page, in the batch's order.
func allPages(t *testing.T, c tenant, id string, limit int) []api.BatchItem {
	t.Helper()
	var out []api.BatchItem
	after := -1
	for {
		var st api.BatchStatus
		if code := c.call("GET", fmt.Sprintf("/v1/batches/%s?after=%d&limit=%d", id, after, limit), "", &st); code != 200 {
			t.Fatalf("GET batch page after %d: %d", after, code)
		}
		out = append(out, st.Results...)
		if st.Next == nil {
			return out
		}
		after = *st.Next
	}
}

// checkExactlyOnce fails unless items hold index 0…n-1 once each, snippet i having printed i.
func checkExactlyOnce(t *testing.T, what string, items []api.BatchItem, n int, ordered bool) {
	t.Helper()
	if len(items) != n {
		t.Errorf("%s: %d results, want %d", what, len(items), n)
	}
	seen := map[int]int{}
	for pos, it := range items {
		seen[it.Index]++
		if ordered && it.Index != pos {
			t.Errorf("%s: result %d has index %d, want the batch's order", what, pos, it.Index)
			break
		}
		r := it.Result.ExecuteResponse
		if r == nil || strings.TrimSpace(r.Stdout) != strconv.Itoa(it.Index) {
			t.Errorf("%s: snippet %d: %+v %+v, want it to print %d", what, it.Index, r, it.Result.Error, it.Index)
		}
	}
	for i := range n {
		if seen[i] != 1 {
			t.Errorf("%s: snippet %d reported %d times, want once", what, i, seen[i])
		}
	}
}

// byNode counts items by the node that ran them.
func byNode(items []api.BatchItem) map[string]int {
	m := map[string]int{}
	for _, it := range items {
		m[it.Node]++
	}
	return m
}

// batchSize is the big batch's size: issue 17's 2,000 (about a minute on a shared 2-core
// machine), or AIRLOCK_TEST_BATCH_SNIPPETS when set (fewer while working on the queue).
func batchSize(t *testing.T) int {
	if v := os.Getenv("AIRLOCK_TEST_BATCH_SNIPPETS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("AIRLOCK_TEST_BATCH_SNIPPETS=%q: %v", v, err)
		}
		return n
	}
	return 2000
}

// TestClusterBatch: three nodes on one embedded NATS. A batch submitted through A runs on all
// three; its results, streamed through C and paged through B, hold every snippet exactly once
// in the batch's order; the webhook receiver on 127.0.0.1 gets each completion signed, and the
// batch-done event. Bad input is a clear 4xx; another key sees nothing; a cancel stops what
// has not started. Then B is SIGKILLed mid-batch: what it had started is redelivered and
// completed by A and C, still exactly once.
func TestClusterBatch(t *testing.T) {
	natsURL := natstest.Start(t)
	owner, other := "batch-key-owner-0123456789", "batch-key-other-0123456789"
	ds := batchNodes(t, "clb", natsURL, 3, owner, other)
	clusterUp(t, natsURL, "A", "B", "C")
	viaA, viaB, viaC := tenant{t, ds[0].url, owner}, tenant{t, ds[1].url, owner}, tenant{t, ds[2].url, owner}

	sink := newWebhookSink(t, "webhook-secret-1")
	sink.failNext = 3 // the first deliveries are retried
	n := batchSize(t)
	start := time.Now()
	var st api.BatchStatus
	if code := viaA.call("POST", "/v1/batches", printBatch(n, "", fmt.Sprintf(`{"url":%q,"secret":"webhook-secret-1"}`, sink.srv.URL)), &st); code != 202 {
		t.Fatalf("submit: %d %+v", code, st)
	}
	if st.ID == "" || st.Total != n || st.Status != api.BatchRunning || st.WebhookSecret != "" {
		t.Fatalf("submit answered %+v, want an id, total %d, running, no made-up secret", st, n)
	}
	streamed := streamResults(t, viaC, st.ID)
	elapsed := time.Since(start)
	checkExactlyOnce(t, "streamed through C", streamed, n, false)
	paged := allPages(t, viaB, st.ID, 250)
	checkExactlyOnce(t, "paged through B", paged, n, true)
	nodes := byNode(paged)
	t.Logf("%d snippets on 3 nodes in %v (%.0f snippets/s); by node %v", n, elapsed, float64(n)/elapsed.Seconds(), nodes)
	if len(nodes) < 2 {
		t.Errorf("the batch ran on nodes %v, want several", nodes)
	}
	waitFor(t, "every webhook event", func() bool {
		items, done, _, _ := sink.snapshot()
		return items == n && done
	})
	_, _, dups, badSig := sink.snapshot()
	t.Logf("webhook: %d snippet events and batch.done, %d duplicate deliveries (de-duplicated by %s)", n, dups, api.WebhookDeliveryHeader)
	if badSig != 0 {
		t.Errorf("%d webhook deliveries did not verify", badSig)
	}
	if sink.done.Counts == nil || sink.done.Counts.Done != n {
		t.Errorf("batch.done event %+v, want counts done %d", sink.done, n)
	}
	if code := viaA.call("GET", "/v1/batches/"+st.ID+"?limit=0", "", &st); code != 200 || st.Status != api.BatchComplete ||
		st.Counts != (api.BatchCounts{Done: n}) {
		t.Errorf("status after the end: %d %+v, want complete with %d done", code, st, n)
	}
	waitFor(t, "the delivery records", func() bool {
		viaA.call("GET", "/v1/batches/"+st.ID+"?limit=0", "", &st)
		return st.WebhooksDelivered == n+1
	})

	t.Run("bad input", func(t *testing.T) {
		via := tenant{t, ds[1].url, owner}
		for _, tt := range []struct {
			name, body string
			want       int
		}{
			{"empty batch", `{"snippets":[]}`, 400},
			{"too many snippets", printBatch(api.MaxQueuedBatch+1, "", ""), 400},
			{"webhook not http", printBatch(1, "", `{"url":"ftp://127.0.0.1/x"}`), 400},
			{"webhook without host", printBatch(1, "", `{"url":"http:///x"}`), 400},
			{"bad retention", `{"snippets":[{"code":"print(1)"}],"retention":"forever"}`, 400},
			{"retention too long", `{"snippets":[{"code":"print(1)"}],"retention":"1000h"}`, 400},
			{"unknown field", `{"snippets":[{"code":"print(1)"}],"priority":1}`, 400},
		} {
			var e api.ErrorBody
			if code := via.call("POST", "/v1/batches", tt.body, &e); code != tt.want || e.Error.Message == "" {
				t.Errorf("%s: %d %+v, want %d with a reason", tt.name, code, e, tt.want)
			}
		}
		stranger := tenant{t, ds[2].url, other}
		for _, r := range []struct {
			who          tenant
			method, path string
			want         int
		}{
			{stranger, "GET", "/v1/batches/" + st.ID, 404},
			{stranger, "GET", "/v1/batches/" + st.ID + "/results", 404},
			{stranger, "DELETE", "/v1/batches/" + st.ID, 404},
			{via, "GET", "/v1/batches/batch_nosuchbatch", 404},
			{via, "GET", "/v1/batches/" + st.ID + "?limit=5000", 400},
			{via, "GET", "/v1/batches/" + st.ID + "/results?stream=yes", 400},
		} {
			if code, body := r.who.raw(r.method, r.path, ""); code != r.want {
				t.Errorf("%s %s as %s: %d %s, want %d", r.method, r.path, r.who.key[:10], code, body, r.want)
			}
		}
		if code, _ := (tenant{t, ds[0].url, ""}).raw("GET", "/v1/batches/"+st.ID, ""); code != 401 {
			t.Errorf("no key: %d, want 401", code)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		via := tenant{t, ds[0].url, owner}
		var cs api.BatchStatus
		if code := via.call("POST", "/v1/batches", printBatch(200, "0.5", ""), &cs); code != 202 {
			t.Fatalf("submit: %d", code)
		}
		if code := via.call("DELETE", "/v1/batches/"+cs.ID, "", &cs); code != 200 || cs.Counts.Canceled == 0 {
			t.Fatalf("cancel: %d %+v, want some canceled", code, cs)
		}
		items := streamResults(t, via, cs.ID)
		c := api.BatchCounts{}
		for _, it := range items {
			if e := it.Result.Error; e != nil && e.Code == api.CodeCanceled {
				c.Canceled++
			} else {
				c.Done++
			}
		}
		via.call("GET", "/v1/batches/"+cs.ID+"?limit=0", "", &cs)
		t.Logf("canceled batch: %+v", cs.Counts)
		if len(items) != 200 || cs.Status != api.BatchComplete || cs.Counts.Canceled != c.Canceled || cs.Counts.Done != c.Done {
			t.Errorf("canceled batch: %d results, status %+v; streamed %+v", len(items), cs, c)
		}
	})

	t.Run("node killed mid-batch", func(t *testing.T) {
		via := tenant{t, ds[0].url, owner}
		const m = 48
		var ks api.BatchStatus
		if code := via.call("POST", "/v1/batches", printBatch(m, "1", ""), &ks); code != 202 {
			t.Fatalf("submit: %d", code)
		}
		// Kill B once it holds snippets it has started and not finished.
		waitFor(t, "node B to start snippets", func() bool { return len(startedBy(t, natsURL, ks.ID, "B")) > len(resultsBy(via, ks.ID, "B")) })
		ds[1].kill()
		items := streamResults(t, via, ks.ID)
		checkExactlyOnce(t, "after killing B", items, m, false)
		redelivered := 0
		for _, it := range items {
			if startedBy(t, natsURL, ks.ID, "B")[it.Index] && it.Node != "B" {
				redelivered++
			}
		}
		t.Logf("B killed mid-batch: %d snippets it had started were completed by other nodes; by node %v", redelivered, byNode(items))
		if redelivered == 0 {
			t.Errorf("no snippet B started was completed elsewhere")
		}
	})
	for _, d := range ds {
		if d.cmd.ProcessState == nil {
			d.stop()
		}
	}
}

// startedBy reads from the batch bucket which snippets of batch id node has started.
func startedBy(t *testing.T, natsURL, id, node string) map[int]bool {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(t.Context(), cluster.BatchesBucket)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(t.Context(), id+".run.*")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	out := map[int]bool{}
	for ent := range w.Updates() {
		if ent == nil {
			break
		}
		if string(ent.Value()) == node {
			i, _ := strconv.Atoi(ent.Key()[strings.LastIndexByte(ent.Key(), '.')+1:])
			out[i] = true
		}
	}
	return out
}

// resultsBy lists the batch's results stored by node.
func resultsBy(c tenant, id, node string) []api.BatchItem {
	var st api.BatchStatus
	c.call("GET", "/v1/batches/"+id+"?limit=1000", "", &st)
	var out []api.BatchItem
	for _, it := range st.Results {
		if it.Node == node {
			out = append(out, it)
		}
	}
	return out
}

// TestBatchSingleNode: without --cluster, /v1/batches is the same queue over a NATS server
// embedded in the daemon, stored in its state directory. A batch completes exactly once in
// order with its webhook events; a daemon SIGKILLed mid-batch and restarted on its state
// directory completes the rest.
func TestBatchSingleNode(t *testing.T) {
	key := "batch-key-single-0123456789"
	f := newFleet(t, "batchsingle")
	addr := freeAddr(t)
	args := withArgs("--webhook-allow-private --batch-ack-wait 2s --zygote=true")
	d := f.start(addr, withKeys(key), args)
	via := tenant{t, d.url, key}
	sink := newWebhookSink(t, "")

	var st api.BatchStatus
	if code := via.call("POST", "/v1/batches", printBatch(20, "", fmt.Sprintf(`{"url":%q}`, sink.srv.URL)), &st); code != 202 {
		t.Fatalf("submit: %d %+v", code, st)
	}
	if st.WebhookSecret == "" {
		t.Fatalf("submit without a webhook secret answered %+v, want the secret it made", st)
	}
	sink.mu.Lock()
	sink.secret = st.WebhookSecret
	sink.mu.Unlock()
	checkExactlyOnce(t, "streamed", streamResults(t, via, st.ID), 20, false)
	checkExactlyOnce(t, "paged", allPages(t, via, st.ID, 7), 20, true)
	waitFor(t, "every webhook event", func() bool {
		items, done, _, _ := sink.snapshot()
		return items == 20 && done
	})
	if _, _, _, bad := sink.snapshot(); bad != 0 {
		t.Errorf("%d webhook deliveries did not verify with the secret the submission returned", bad)
	}

	// The CLI: submit from stdin, wait for the results (through the SDK's BatchResults).
	out, errOut, code := runCLI(t, `[{"language":"bash","code":"echo cli"},{"code":"print(2)"}]`,
		"batch submit - --server "+d.url+" --api-key "+key)
	var cst api.BatchStatus
	if code != 0 || json.Unmarshal([]byte(out), &cst) != nil || cst.Total != 2 {
		t.Fatalf("airlock batch submit: %d %q %q", code, out, errOut)
	}
	out, errOut, code = runCLI(t, "", "batch wait "+cst.ID+" --server "+d.url+" --api-key "+key)
	if code != 0 || strings.Count(out, "\n") != 2 || !strings.Contains(out, `"stdout":"cli\n"`) || !strings.Contains(errOut, "2 done") {
		t.Errorf("airlock batch wait: %d %q %q, want two NDJSON results and 2 done", code, out, errOut)
	}
	sdk := airlock.New(d.url, key)
	page, err := sdk.Batch(t.Context(), cst.ID, 0, 10)
	if err != nil || len(page.Results) != 1 || page.Results[0].Index != 1 || strings.TrimSpace(page.Results[0].Result.Stdout) != "2" {
		t.Errorf("SDK Batch(after 0): %+v %v, want snippet 1's result", page, err)
	}
	if _, err := sdk.Batch(t.Context(), "batch_nosuch", -1, 0); !airlock.IsNotFound(err) {
		t.Errorf("SDK Batch of an unknown id: %v, want not found", err)
	}
	if cs, err := sdk.CancelBatch(t.Context(), cst.ID); err != nil || cs.Status != api.BatchComplete || cs.Counts.Canceled != 0 {
		t.Errorf("SDK CancelBatch of a complete batch: %+v %v, want it complete with nothing canceled", cs, err)
	}

	const m = 12
	if code := via.call("POST", "/v1/batches", printBatch(m, "1", ""), &st); code != 202 {
		t.Fatalf("submit: %d", code)
	}
	waitFor(t, "a first result", func() bool {
		var s api.BatchStatus
		via.call("GET", "/v1/batches/"+st.ID+"?limit=0", "", &s)
		return s.Counts.Done > 0
	})
	d.kill()
	d = f.start(addr, withKeys(key), args)
	via = tenant{t, d.url, key}
	checkExactlyOnce(t, "after a SIGKILL and a restart", streamResults(t, via, st.ID), m, false)
	d.stop()
}

// TestClusterBatchThroughput measures snippets/s of one batch on clusters of 1, 2 and 3 nodes
// (each its own embedded NATS server; all six daemons up throughout), rounds alternating the
// order; a measurement for BENCHMARKS.md, run only with AIRLOCK_BENCH_BATCH=N (snippets per
// batch), never in the suite.
func TestClusterBatchThroughput(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("AIRLOCK_BENCH_BATCH"))
	if n <= 0 {
		t.Skip("a measurement: set AIRLOCK_BENCH_BATCH=N snippets per batch")
	}
	const rounds = 3
	key := "batch-key-bench-0123456789"
	var entry [3]tenant // a node of the cluster of 1, 2 and 3 nodes
	for size := 1; size <= 3; size++ {
		natsURL := natstest.Start(t)
		ds := batchNodes(t, fmt.Sprintf("clt%d", size), natsURL, size, key)
		entry[size-1] = tenant{t, ds[0].url, key}
		// Warm up every node (its zygote for the key) with a first batch.
		var st api.BatchStatus
		if code := entry[size-1].call("POST", "/v1/batches", printBatch(16*size, "", ""), &st); code != 202 {
			t.Fatalf("warm-up: %d", code)
		}
		streamResults(t, entry[size-1], st.ID)
	}
	rates := map[int][]float64{}
	for r := range rounds {
		for k := range 3 {
			size := (r+k)%3 + 1
			via := entry[size-1]
			start := time.Now()
			var st api.BatchStatus
			if code := via.call("POST", "/v1/batches", printBatch(n, "", ""), &st); code != 202 {
				t.Fatalf("submit: %d", code)
			}
			items := streamResults(t, via, st.ID)
			el := time.Since(start)
			checkExactlyOnce(t, "bench", items, n, false)
			rates[size] = append(rates[size], float64(n)/el.Seconds())
			t.Logf("round %d: %d nodes: %d snippets in %v (%.1f/s), by node %v", r, size, n, el.Round(time.Millisecond), float64(n)/el.Seconds(), byNode(items))
		}
		// The same snippets through the synchronous POST /v1/execute/batch of the 1-node
		// cluster's node, for the queue's own cost.
		start := time.Now()
		var br api.BatchResponse
		if code := entry[0].call("POST", "/v1/execute/batch", printBatch(min(n, 1000), "", ""), &br); code != 200 {
			t.Fatalf("sync batch: %d", code)
		}
		el := time.Since(start)
		rates[0] = append(rates[0], float64(len(br.Results))/el.Seconds())
		t.Logf("round %d: POST /v1/execute/batch on one node: %d snippets in %v (%.1f/s)", r, len(br.Results), el.Round(time.Millisecond), float64(len(br.Results))/el.Seconds())
	}
	for size := 0; size <= 3; size++ {
		rs := rates[size]
		slices.Sort(rs)
		t.Logf("%d node(s) (0: the synchronous batch): median %.1f snippets/s (min %.1f, max %.1f) over %d rounds", size, rs[len(rs)/2], rs[0], rs[len(rs)-1], len(rs))
	}
}
