package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/cluster"
	"github.com/airlockhq/airlock/internal/cluster/natstest"
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
