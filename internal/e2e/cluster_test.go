package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	pb "github.com/modal-labs/modal-client/go/proto/modal_proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/cluster"
	"github.com/airlockhq/airlock/internal/cluster/natstest"
	"github.com/airlockhq/airlock/internal/server"
	"github.com/airlockhq/airlock/internal/testutil"
)

// registryNode reads which node the cluster registry says holds id.
func registryNode(t *testing.T, natsURL, id string) string {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(t.Context(), cluster.SandboxesBucket)
	if err != nil {
		t.Fatal(err)
	}
	ent, err := kv.Get(t.Context(), id)
	if err != nil {
		t.Fatalf("registry entry of %s: %v", id, err)
	}
	var e cluster.Entry
	json.Unmarshal(ent.Value(), &e)
	return e.Node
}

// clusterUp waits until `cluster status` shows exactly the nodes want up.
func clusterUp(t *testing.T, natsURL string, want ...string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("nodes %v up", want), func() bool {
		nodes, err := cluster.Status(t.Context(), cluster.Config{URL: natsURL, GoneAfter: time.Second})
		if err != nil {
			return false
		}
		var up []string
		for _, n := range nodes {
			if n.State == "up" {
				up = append(up, n.Node)
			}
		}
		return strings.Join(up, ",") == strings.Join(want, ",")
	})
}

// TestClusterThreeNodes: three daemons on one embedded NATS. Node A, full, forwards a sandbox
// and a session to B; both are usable through A, B and C (exec, files, a session cell, a
// WebSocket exec). B killed, its sandbox answers 410 with the reason through A (404 to another
// key); B restarted on its state directory re-registers what it adopted, usable through A again;
// B stopped with --drain-on-stop, its sandbox answers 410 "ended (shutdown)" through A at once.
func TestClusterThreeNodes(t *testing.T) {
	natsURL := natstest.Start(t)
	owner, other := "cluster-key-owner-0123456789", "cluster-key-other-0123456789"
	node := func(id, extra string) (*fleet, string, func(*exec.Cmd)) {
		return newFleet(t, "cl"+strings.ToLower(id)), freeAddr(t), withArgs(fmt.Sprintf(
			"--cluster %s --cluster-node-id %s --cluster-heartbeat 200ms %s", natsURL, id, extra))
	}
	fa, addrA, argsA := node("A", "--max-sandboxes 1")
	fb, addrB, argsB := node("B", "")
	// C has less room than B even once B holds what A forwards, so placement (the node with
	// the most room) is B whatever the heartbeats' timing.
	fc, addrC, argsC := node("C", "--max-sandboxes 500")
	keys := withKeys(owner, other)
	a := fa.start(addrA, argsA, keys)
	b := fb.start(addrB, argsB, keys)
	c := fc.start(addrC, argsC, keys)
	clusterUp(t, natsURL, "A", "B", "C")

	viaA := tenant{t, a.url, owner}
	filler := viaA.mustCreate("/v1/sandboxes", `{}`) // A is full from now on
	if got := registryNode(t, natsURL, filler.ID); got != "A" {
		t.Fatalf("the first sandbox is on node %q, want A (it had room)", got)
	}
	sb := viaA.mustCreate("/v1/sandboxes", `{"timeout":600}`)
	sess := viaA.mustCreate("/v1/sessions", `{"timeout":600}`)
	for _, id := range []string{sb.ID, sess.ID} {
		if got := registryNode(t, natsURL, id); got != "B" {
			t.Fatalf("%s created through the full node A is on node %q, want B (the node with the most room)", id, got)
		}
	}
	tenant{t, c.url, owner}.mustCell(sess.ID, "x = 41")

	for _, d := range []*daemon{a, b, c} {
		via := tenant{t, d.url, owner}
		t.Run("through "+d.addr, func(t *testing.T) {
			via.t = t
			if got := strings.TrimSpace(via.mustExec(sb.ID, "echo", "hi")); got != "hi" {
				t.Errorf("exec: got %q, want hi", got)
			}
			if st, body := via.raw("PUT", "/v1/sandboxes/"+sb.ID+"/files?path=/workspace/f", "from "+d.addr); st != 200 {
				t.Errorf("write file: %d %s", st, body)
			}
			if st, body := via.raw("GET", "/v1/sandboxes/"+sb.ID+"/files?path=/workspace/f", ""); st != 200 || string(body) != "from "+d.addr {
				t.Errorf("read file: %d %q, want 200 %q", st, body, "from "+d.addr)
			}
			if got := strings.TrimSpace(via.mustCell(sess.ID, "print(x + 1)")); got != "42" {
				t.Errorf("session cell: got %q, want 42", got)
			}
			if got := wsExec(t.Context(), d.url, owner, sb.ID, `{"cmd":["echo","ws"]}`); got != "ws\n exit 0" {
				t.Errorf("WebSocket exec: got %q, want %q", got, "ws\n exit 0")
			}
			// A list through any node is the cluster's: A's filler and B's sandbox and session.
			var list api.SandboxList
			if st := via.call("GET", "/v1/sandboxes", "", &list); st != 200 {
				t.Fatalf("list: %d", st)
			}
			var ids []string
			for _, sb := range list.Sandboxes {
				ids = append(ids, sb.ID)
			}
			for _, want := range []string{filler.ID, sb.ID, sess.ID} {
				if !slices.Contains(ids, want) {
					t.Errorf("list: got %v, want it to hold %s", ids, want)
				}
			}
			if st := (tenant{t, d.url, other}).call("GET", "/v1/sandboxes", "", &list); st != 200 || len(list.Sandboxes) != 0 {
				t.Errorf("another key's list: %d %+v, want 200 and nothing of the owner's", st, list.Sandboxes)
			}
		})
	}

	logRoutingOverhead(t, tenant{t, a.url, owner}, tenant{t, b.url, owner}, sb.ID)

	b.kill()
	var e api.ErrorBody
	waitFor(t, "B's sandbox to answer 410 through A", func() bool {
		return viaA.call("GET", "/v1/sandboxes/"+sb.ID, "", &e) == 410
	})
	if !strings.Contains(e.Error.Message, "node B is gone") {
		t.Errorf("410 through A says %q, want the reason (node B is gone)", e.Error.Message)
	}
	// With B gone, a list through A still answers: A's and C's sandboxes, none of B's.
	var list api.SandboxList
	if st := viaA.call("GET", "/v1/sandboxes", "", &list); st != 200 || len(list.Sandboxes) != 1 || list.Sandboxes[0].ID != filler.ID {
		t.Errorf("list through A with B gone: %d %+v, want 200 with only A's sandbox", st, list.Sandboxes)
	}
	if st := (tenant{t, c.url, other}).call("GET", "/v1/sandboxes/"+sb.ID, "", &e); st != 404 {
		t.Errorf("another key asking C for B's gone sandbox: %d %+v, want 404 (no sign it exists)", st, e)
	}

	fb.start(addrB, argsB, keys) // on B's state directory: adopts and re-registers
	waitFor(t, "B's adopted sandbox to be served through A", func() bool {
		return viaA.call("GET", "/v1/sandboxes/"+sb.ID, "", nil) == 200
	})
	if got := strings.TrimSpace(viaA.mustExec(sb.ID, "cat", "/workspace/f")); got != "from "+c.addr {
		t.Errorf("after B's restart, the file written through C reads %q, want %q", got, "from "+c.addr)
	}
	if got := strings.TrimSpace(viaA.mustCell(sess.ID, "print(x)")); got != "41" {
		t.Errorf("after B's restart, the session's variable through A: got %q, want 41", got)
	}
	if st := (tenant{t, a.url, ""}).call("GET", "/v1/sandboxes/"+sb.ID, "", nil); st != 401 {
		t.Errorf("no key, through A, for B's sandbox: %d, want 401 (answered by A, no lookup, no hop)", st)
	}

	// B stopped cleanly (--drain-on-stop): its sandboxes end, and every node says so at once.
	fb.ds[len(fb.ds)-1].stop()
	if st := viaA.call("GET", "/v1/sandboxes/"+sb.ID, "", &e); st != 410 || !strings.Contains(e.Error.Message, "ended (shutdown)") {
		t.Errorf("B's drained sandbox through A: %d %q, want 410 saying it ended (shutdown)", st, e.Error.Message)
	}
	for _, f := range []*fleet{fa, fc} {
		f.ds[len(f.ds)-1].stop() // --drain-on-stop: the fleets' cleanups find nothing left
	}
}

// logRoutingOverhead logs the median of a request for B's sandbox served by B itself against
// the same request through A (registry lookup plus proxy), paired and interleaved; a
// measurement for BENCHMARKS.md, not an assertion.
func logRoutingOverhead(t *testing.T, viaA, viaB tenant, id string) {
	const n = 200
	var local, routed []time.Duration
	for range n {
		for _, c := range []struct {
			via tenant
			to  *[]time.Duration
		}{{viaB, &local}, {viaA, &routed}} {
			start := time.Now()
			if st := c.via.call("GET", "/v1/sandboxes/"+id, "", nil); st != 200 {
				t.Fatalf("GET through %s: %d", c.via.url, st)
			}
			*c.to = append(*c.to, time.Since(start))
		}
	}
	slices.Sort(local)
	slices.Sort(routed)
	t.Logf("GET /v1/sandboxes/{id}, %d pairs: served locally median %v p90 %v; through another node median %v p90 %v",
		n, local[n/2], local[n*9/10], routed[n/2], routed[n*9/10])
}

// clusterImage serves, on a registry on 127.0.0.1 until the test ends, an image of one layer
// (the host's static busybox as /bin/sh and a marker file) and returns its reference.
func clusterImage(t *testing.T) string {
	t.Helper()
	testutil.MustHaveFile(t, "/bin/busybox", "busybox-static")
	var buf bytes.Buffer
	lw := &layerWriter{tw: tar.NewWriter(&buf), seen: map[string]bool{}}
	for _, err := range []error{lw.file("/bin/busybox", "/bin/busybox", nil), lw.symlink("/bin/sh", "busybox"),
		lw.file("", imageMarker, []byte("only-c\n")), lw.tw.Close()} {
		if err != nil {
			t.Fatal(err)
		}
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	ref := strings.TrimPrefix(srv.URL, "http://") + "/e2e/only-c:1"
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	return ref
}

// metricOf is the sum of the samples of metric (with every label in labels) in d's /metrics.
func metricOf(t *testing.T, d *daemon, key, metric string, labels ...string) float64 {
	t.Helper()
	_, b := tenant{t, d.url, key}.raw("GET", "/metrics", "")
	sum := 0.0
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, metric) || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, _ := strings.Cut(line, " ")
		if !strings.HasPrefix(name, metric+"{") && name != metric {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(name, l)
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil && match {
			sum += v
		}
	}
	return sum
}

// burst runs n one-shot runs at once through via, each printing its index after a second,
// and returns how many answered 429 and the outputs of those that answered 200 (by index).
func burst(t *testing.T, via tenant, n int) (refused int, out map[int]string) {
	t.Helper()
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	out = map[int]string{}
	for i := range n {
		wg.Go(func() {
			body := fmt.Sprintf(`{"code":"import time; time.sleep(1); print(%d * 7)","timeout":30}`, i)
			req, _ := http.NewRequest("POST", via.url+"/v1/execute", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+via.key)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("run %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			var res api.ExecuteResponse
			json.NewDecoder(resp.Body).Decode(&res)
			mu.Lock()
			defer mu.Unlock()
			switch resp.StatusCode {
			case 200:
				out[i] = strings.TrimSpace(res.Stdout)
			case 429:
				refused++
			default:
				t.Errorf("run %d: %d %+v", i, resp.StatusCode, res)
			}
		})
	}
	wg.Wait()
	return refused, out
}

// TestClusterPlacement: three nodes of two one-shot slots and a queue of one each. A burst of
// three times one node's capacity through node A completes with no 429 (A alone refuses
// some); a create naming an image only node C has, or a runtime only C offers (gvisor: A and B
// have no runsc), made through A, lands on C; a key allowed 2 live sandboxes cannot hold a
// third by creating through another node, nor spend its CPU seconds again on another node;
// E2B's control plane and envd data plane, and Modal's
// control and router calls (an exec), reach through A a sandbox on B; once B is killed and gone,
// a burst through A avoids it.
func TestClusterPlacement(t *testing.T) {
	natsURL := natstest.Start(t)
	user, limited, cpu := "cluster-place-user-0123456789", "cluster-place-limited-0123456789", "cluster-place-cpu-0123456789"
	keyFile := filepath.Join(t.TempDir(), "keys.json")
	kb, _ := json.Marshal(map[string]any{"keys": []map[string]any{{"id": "user", "key": user}, {"id": "limited", "key": limited, "max_sandboxes": 2},
		{"id": "cpu", "key": cpu, "cpu_seconds": 0.1, "cpu_period": "24h"}}})
	if err := os.WriteFile(keyFile, kb, 0o600); err != nil {
		t.Fatal(err)
	}
	const slots = "--max-concurrent 2 --max-queue 1 --max-concurrent-per-key 2 --max-queue-per-key 1"
	node := func(id, extra string) (*fleet, *daemon) {
		f := newFleet(t, "pl"+strings.ToLower(id))
		d := f.start(freeAddr(t), withArgs(fmt.Sprintf("--cluster %s --cluster-node-id %s --cluster-heartbeat 200ms --api-key-file %s %s %s",
			natsURL, id, keyFile, slots, extra)))
		return f, d
	}
	noGvisor := "--gvisor-runsc /nonexistent/runsc"
	fa, a := node("A", noGvisor)
	_, b := node("B", noGvisor) // killed below: its fleet's cleanup destroys what it left
	fc, c := node("C", "")
	clusterUp(t, natsURL, "A", "B", "C")
	viaA := tenant{t, a.url, user}

	refused, out := burst(t, viaA, 6)
	if refused != 0 || len(out) != 6 {
		t.Errorf("a burst of 6 through A over three nodes of 2 slots: %d answered 429, %d answered 200; want 0 and 6", refused, len(out))
	}
	for i, got := range out {
		if want := strconv.Itoa(i * 7); got != want {
			t.Errorf("run %d printed %q, want %q", i, got, want)
		}
	}
	if n := metricOf(t, a, user, "airlock_cluster_forwarded_total", `reason="full"`, `outcome="served"`); n < 3 {
		t.Errorf("A forwarded %v runs for want of room, want at least 3 (it has 2 slots and 1 queue place)", n)
	}

	t.Run("seed sessions by name per key", func(t *testing.T) {
		cell := func(d *daemon, key, code string) string {
			var res struct{ Stdout, Stderr string }
			body, _ := json.Marshal(api.SeedREPLRequest{SessionID: "shared", Code: code})
			if st := (tenant{t, d.url, key}).call("POST", "/repl/execute", string(body), &res); st != 200 {
				t.Fatalf("/repl/execute through %s: %d %+v", d.addr, st, res)
			}
			return strings.TrimSpace(res.Stdout + res.Stderr)
		}
		cell(a, user, "x = 6")
		if got := cell(b, user, "print(x * 7)"); got != "42" {
			t.Errorf("the seed session named through A, through B: %q, want 42", got)
		}
		if got := cell(c, limited, "print('x' in globals())"); got != "False" {
			t.Errorf("another key's session of the same name sees %q, want False (names are per key)", got)
		}
	})
	t.Run("a Piston run on a full node goes elsewhere", func(t *testing.T) {
		var wg sync.WaitGroup
		codes := make([]int, 5)
		for i := range codes {
			wg.Go(func() {
				body := fmt.Sprintf(`{"language":"python","version":"*","files":[{"content":"import time; time.sleep(1); print(%d)"}]}`, i)
				req, _ := http.NewRequest("POST", a.url+"/piston/api/v2/execute", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+user)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				codes[i] = resp.StatusCode
			})
		}
		wg.Wait()
		if slices.ContainsFunc(codes, func(c int) bool { return c != 200 }) {
			t.Errorf("5 Piston runs at once through A (2 slots, 1 queued): %v, want every one 200", codes)
		}
	})
	t.Run("image only C has", func(t *testing.T) {
		ref := clusterImage(t)
		if st, body := (tenant{t, c.url, user}).raw("POST", "/v1/images/pull", fmt.Sprintf(`{"ref":%q}`, ref)); st != 200 {
			t.Fatalf("pull through C: %d %s", st, body)
		}
		waitFor(t, "C's heartbeat to list the image", func() bool {
			nodes, _ := cluster.Status(t.Context(), cluster.Config{URL: natsURL})
			for _, n := range nodes {
				if n.Node == "C" && slices.Contains(n.Images, ref) {
					return true
				}
			}
			return false
		})
		sb := (tenant{t, a.url, user}).mustCreate("/v1/sandboxes", fmt.Sprintf(`{"image":%q}`, ref))
		if got := registryNode(t, natsURL, sb.ID); got != "C" {
			t.Errorf("a sandbox of an image only C has, created through A, is on %q, want C", got)
		}
		if got := strings.TrimSpace((tenant{t, b.url, user}).mustExec(sb.ID, "/bin/busybox", "cat", imageMarker)); got != "only-c" {
			t.Errorf("its marker through B: %q, want only-c", got)
		}
	})
	t.Run("runtime only C offers", func(t *testing.T) {
		if _, err := exec.LookPath("runsc"); err != nil {
			if testutil.Strict() {
				t.Fatalf("AIRLOCK_TEST_STRICT=1 and no runsc for node C's gvisor runtime: %v", err)
			}
			t.Skipf("node C has no gvisor runtime: %v", err)
		}
		sb := (tenant{t, a.url, user}).mustCreate("/v1/sandboxes", `{"runtime":"gvisor"}`)
		if got := registryNode(t, natsURL, sb.ID); got != "C" {
			t.Errorf("a gvisor sandbox created through A is on %q, want C (the one node with runsc)", got)
		}
		var e api.ErrorBody
		if st := (tenant{t, a.url, user}).call("POST", "/v1/sandboxes", `{"runtime":"nope"}`, &e); st != 400 {
			t.Errorf("a runtime no node offers: %d %+v, want 400", st, e)
		}
	})
	t.Run("live sandboxes per key are counted cluster-wide", func(t *testing.T) {
		var ids []string
		for _, d := range []*daemon{a, b} {
			ids = append(ids, (tenant{t, d.url, limited}).mustCreate("/v1/sandboxes", `{}`).ID)
		}
		var e api.ErrorBody
		if st := (tenant{t, c.url, limited}).call("POST", "/v1/sandboxes", `{}`, &e); st != 429 || !strings.Contains(e.Error.Message, "2 live sandboxes") {
			t.Errorf("a third sandbox of a key allowed 2, through C: %d %q, want 429 (the key holds 2 on A and B)", st, e.Error.Message)
		}
		if st := (tenant{t, c.url, limited}).call("DELETE", "/v1/sandboxes/"+ids[0], "", nil); st != 200 && st != 204 {
			t.Errorf("terminate through C: %d", st)
		}
		(tenant{t, c.url, limited}).mustCreate("/v1/sandboxes", `{}`) // room again
	})
	t.Run("CPU seconds per key are counted cluster-wide", func(t *testing.T) {
		var res api.ExecuteResponse
		if st := (tenant{t, b.url, cpu}).call("POST", "/v1/execute", `{"code":"x = 0\nfor i in range(4000000): x += i\nprint(x > 0)","timeout":60}`, &res); st != 200 {
			t.Fatalf("a run that burns CPU through B: %d %+v", st, res)
		}
		// The probe is a cell for a session that does not exist: refused (429) once the key's
		// CPU seconds are spent, else a 404 that charges nothing.
		var e api.ErrorBody
		waitFor(t, "C to refuse the key B charged past its CPU seconds", func() bool {
			return (tenant{t, c.url, cpu}).call("POST", "/v1/sessions/sb-none/run", `{"code":"1"}`, &e) == 429
		})
		if !strings.Contains(e.Error.Message, "CPU seconds") {
			t.Errorf("C's refusal says %q, want it to name the CPU seconds", e.Error.Message)
		}
	})
	t.Run("E2B through another node", func(t *testing.T) {
		e2bCall := func(d *daemon, method, path, body string, hdr map[string]string, out any) int {
			req, _ := http.NewRequest(method, d.url+path, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if out != nil {
				json.Unmarshal(b, out)
			}
			if resp.StatusCode >= 300 {
				t.Logf("%s %s: %d %s", method, path, resp.StatusCode, b)
			}
			return resp.StatusCode
		}
		key := map[string]string{"X-API-KEY": user}
		var sb struct{ SandboxID, EnvdAccessToken string }
		if st := e2bCall(b, "POST", "/e2b/sandboxes", `{"templateID":"base","timeout":120}`, key, &sb); st != 201 {
			t.Fatalf("E2B create through B: %d", st)
		}
		var got struct{ SandboxID string }
		if st := e2bCall(a, "GET", "/e2b/sandboxes/"+sb.SandboxID, "", key, &got); st != 200 || got.SandboxID != sb.SandboxID {
			t.Errorf("E2B get through A of B's sandbox: %d %+v", st, got)
		}
		data := map[string]string{"E2b-Sandbox-Id": sb.SandboxID, "X-Access-Token": sb.EnvdAccessToken}
		if st := e2bCall(a, "POST", "/e2b/sandbox/files?path=/workspace/e2b.txt", "via A", data, nil); st != 200 {
			t.Errorf("envd upload through A: %d", st)
		}
		if got := strings.TrimSpace((tenant{t, b.url, user}).mustExec(sb.SandboxID, "cat", "/workspace/e2b.txt")); got != "via A" {
			t.Errorf("the file uploaded through A reads %q on B, want %q", got, "via A")
		}
		// Lists through any node are the cluster's, paged over the nodes with one cursor.
		var sb2 struct{ SandboxID string }
		if st := e2bCall(c, "POST", "/e2b/sandboxes", `{"templateID":"base","timeout":120}`, key, &sb2); st != 201 {
			t.Fatalf("E2B create through C: %d", st)
		}
		defer e2bCall(c, "DELETE", "/e2b/sandboxes/"+sb2.SandboxID, "", key, nil)
		var listed []struct{ SandboxID string }
		st := e2bCall(a, "GET", "/e2b/sandboxes", "", key, &listed)
		var ids []string
		for _, l := range listed {
			ids = append(ids, l.SandboxID)
		}
		if st != 200 || !slices.Contains(ids, sb.SandboxID) || !slices.Contains(ids, sb2.SandboxID) {
			t.Errorf("E2B list through A: %d %v, want B's %s and C's %s among them", st, ids, sb.SandboxID, sb2.SandboxID)
		}
		var paged []string
		next := ""
		for range 20 {
			req, _ := http.NewRequest("GET", a.url+"/e2b/v2/sandboxes?limit=1&nextToken="+next, nil)
			req.Header.Set("X-API-KEY", user)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var page []struct{ SandboxID string }
			json.NewDecoder(resp.Body).Decode(&page)
			resp.Body.Close()
			for _, p := range page {
				paged = append(paged, p.SandboxID)
			}
			if next = resp.Header.Get("X-Next-Token"); next == "" {
				break
			}
		}
		// Paged one at a time: the same sandboxes as the whole list, each once, oldest first.
		if i, j := slices.Index(paged, sb.SandboxID), slices.Index(paged, sb2.SandboxID); len(paged) != len(ids) || i < 0 || j < i {
			t.Errorf("E2B v2 list through A, a page of 1 at a time: got %v, want the %d of the whole list with %s before %s", paged, len(ids), sb.SandboxID, sb2.SandboxID)
		}
		slices.Sort(paged)
		if len(slices.Compact(paged)) != len(ids) {
			t.Errorf("E2B v2 pages repeat a sandbox: %v", paged)
		}
		if st := e2bCall(a, "DELETE", "/e2b/sandboxes/"+sb.SandboxID, "", key, nil); st != 204 {
			t.Errorf("E2B kill through A: %d, want 204", st)
		}
	})
	t.Run("Modal through another node", func(t *testing.T) {
		id := (tenant{t, b.url, user}).mustCreate("/v1/sandboxes", `{"timeout":120}`).ID
		conn, err := grpc.NewClient(strings.TrimPrefix(a.url, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx := metadata.AppendToOutgoingContext(t.Context(), "x-modal-token-id", "any", "x-modal-token-secret", user, "x-modal-client-type", "9")
		cp := pb.NewModalClientClient(conn)
		task, err := cp.SandboxGetTaskId(ctx, pb.SandboxGetTaskIdRequest_builder{SandboxId: id}.Build())
		if err != nil || task.GetTaskId() != id {
			t.Fatalf("SandboxGetTaskId through A of B's sandbox: %v, %v", task, err)
		}
		acc, err := cp.TaskGetCommandRouterAccess(ctx, pb.TaskGetCommandRouterAccessRequest_builder{TaskId: id}.Build())
		if err != nil {
			t.Fatalf("TaskGetCommandRouterAccess through A: %v", err)
		}
		rc := pb.NewTaskCommandRouterClient(conn) // the router URL is the host the client used: A
		rctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+acc.GetJwt())
		if _, err := rc.TaskExecStart(rctx, pb.TaskExecStartRequest_builder{TaskId: id, ExecId: "x1", CommandArgs: []string{"cat", "/proc/sys/kernel/hostname"},
			StdoutConfig: pb.TaskExecStdoutConfig_TASK_EXEC_STDOUT_CONFIG_PIPE}.Build()); err != nil {
			t.Fatalf("TaskExecStart through A: %v", err)
		}
		if w, err := rc.TaskExecWait(rctx, pb.TaskExecWaitRequest_builder{TaskId: id, ExecId: "x1"}.Build()); err != nil || w.GetCode() != 0 {
			t.Fatalf("TaskExecWait through A: %v, %v", w, err)
		}
		st, err := rc.TaskExecStdioRead(rctx, pb.TaskExecStdioReadRequest_builder{TaskId: id, ExecId: "x1",
			FileDescriptor: pb.TaskExecStdioFileDescriptor_TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT}.Build())
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		for {
			m, err := st.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("TaskExecStdioRead through A: %v", err)
			}
			out.Write(m.GetData())
		}
		want := strings.TrimSpace(strings.Join(strings.Fields((tenant{t, b.url, user}).mustExec(id, "cat", "/proc/sys/kernel/hostname")), " "))
		if got := strings.TrimSpace(out.String()); got != want || got == "" {
			t.Errorf("a Modal exec through A in B's sandbox printed %q, want %q (its hostname, as B's REST exec reads it)", got, want)
		}
	})

	b.kill()
	clusterUp(t, natsURL, "A", "C")
	before := metricOf(t, a, user, "airlock_cluster_forwarded_total", `outcome="unreachable"`)
	if refused, out := burst(t, viaA, 4); refused != 0 || len(out) != 4 {
		t.Errorf("a burst of 4 through A with B gone: %d answered 429, %d answered 200; want 0 and 4", refused, len(out))
	}
	if after := metricOf(t, a, user, "airlock_cluster_forwarded_total", `outcome="unreachable"`); after != before {
		t.Errorf("A tried the gone node B %v times, want 0", after-before)
	}
	for _, f := range []*fleet{fa, fc} {
		f.ds[len(f.ds)-1].stop() // --drain-on-stop: the fleets' cleanups find nothing left
	}
}

// TestClusterBenchPlacement measures placement for BENCHMARKS.md: a burst of one-shot runs
// through node A alone and then with B and C joined (runs per second, 429s), for a run that
// waits (sleep 0.5 s: slots bound it) and one that computes (print: the CPU bounds it); then,
// paired and interleaved, a one-shot served by B itself against the same run sent through a
// full A to B. Every node has 2 slots. It runs only when asked (AIRLOCK_BENCH_CLUSTER=RUNS per
// burst, e.g. 60):
//
//	CGO_ENABLED=0 AIRLOCK_TEST_VM=0 AIRLOCK_BENCH_CLUSTER=60 go test -count=1 -v -run TestClusterBenchPlacement ./internal/e2e/
func TestClusterBenchPlacement(t *testing.T) {
	n := os.Getenv("AIRLOCK_BENCH_CLUSTER")
	if n == "" {
		t.Skip("a measurement: set AIRLOCK_BENCH_CLUSTER=RUNS to run it")
	}
	runs, err := strconv.Atoi(n)
	if err != nil || runs < 1 {
		t.Fatalf("AIRLOCK_BENCH_CLUSTER=%q: want a number of runs", n)
	}
	natsURL := natstest.Start(t)
	key := "cluster-bench-key-0123456789"
	var fleets []*fleet
	node := func(id string) *daemon {
		f := newFleet(t, "cb"+strings.ToLower(id))
		fleets = append(fleets, f)
		return f.start(freeAddr(t), withKeys(key), withArgs(fmt.Sprintf(
			"--cluster %s --cluster-node-id %s --cluster-heartbeat 200ms --max-concurrent 2 --max-concurrent-per-key 2 --max-queue 1000 --max-queue-per-key 1000",
			natsURL, id)))
	}
	a := node("A")
	clusterUp(t, natsURL, "A")
	viaA := tenant{t, a.url, key}
	measure := func(nodes string) {
		for _, w := range []struct{ name, code string }{{"sleep 0.5 s", "import time; time.sleep(0.5); print(1)"}, {"print", "print(1)"}} {
			var wg sync.WaitGroup
			var mu sync.Mutex
			codes := map[int]int{}
			start := time.Now()
			for range runs {
				wg.Go(func() {
					st, _ := viaA.raw("POST", "/v1/execute", fmt.Sprintf(`{"code":%q,"timeout":120}`, w.code))
					mu.Lock()
					codes[st]++
					mu.Unlock()
				})
			}
			wg.Wait()
			el := time.Since(start)
			t.Logf("%s, %d runs (%s) at once through A: %.1f s, %.2f runs/s, answers %v", nodes, runs, w.name, el.Seconds(), float64(runs)/el.Seconds(), codes)
		}
	}
	measure("1 node")
	b, _ := node("B"), node("C")
	clusterUp(t, natsURL, "A", "B", "C")
	measure("3 nodes")

	// A full: two long runs held on A itself (as hops, which are never forwarded).
	hold, cancel := context.WithCancel(t.Context())
	var held sync.WaitGroup
	for range 2 {
		held.Go(func() {
			// Refused (429) while the bursts' last sandboxes are torn down: again.
			for hold.Err() == nil {
				req, _ := http.NewRequestWithContext(hold, "POST", a.url+"/v1/execute", strings.NewReader(`{"code":"import time; time.sleep(100)","timeout":120}`))
				req.Header.Set("Authorization", "Bearer "+key)
				req.Header.Set(server.ClusterHopHeader, "bench")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return
				}
				resp.Body.Close()
				if resp.StatusCode != 429 {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	waitFor(t, "A's slots to be held", func() bool {
		return metricOf(t, a, key, "airlock_sandboxes_live") >= 2
	})
	var local, crossed []time.Duration
	for range runs {
		for _, p := range []struct {
			via tenant
			to  *[]time.Duration
		}{{tenant{t, b.url, key}, &local}, {viaA, &crossed}} {
			t0 := time.Now()
			if st, body := p.via.raw("POST", "/v1/execute", `{"code":"print(1)"}`); st != 200 {
				t.Fatalf("run through %s: %d %s", p.via.url, st, body)
			}
			*p.to = append(*p.to, time.Since(t0))
		}
	}
	cancel()
	held.Wait()
	slices.Sort(local)
	slices.Sort(crossed)
	t.Logf("one-shot print(1), %d pairs: served by B itself median %v p90 %v; through a full A to another node median %v p90 %v",
		runs, local[runs/2], local[runs*9/10], crossed[runs/2], crossed[runs*9/10])
	if got := metricOf(t, a, key, "airlock_cluster_forwarded_total", `reason="full"`, `outcome="served"`); got < float64(runs) {
		t.Errorf("A forwarded %v runs, want at least %d (it was full)", got, runs)
	}
	for _, f := range fleets {
		f.ds[len(f.ds)-1].stop()
	}
}
