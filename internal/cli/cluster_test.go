package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/airlockhq/airlock/internal/cluster"
	"github.com/airlockhq/airlock/internal/cluster/natstest"
)

// TestClusterStatus: `airlock cluster status` lists every node of the heartbeats bucket with
// its state, capacity, load, runtimes, images and version, as a table and as JSON.
func TestClusterStatus(t *testing.T) {
	url := natstest.Start(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: cluster.NodesBucket})
	if err != nil {
		t.Fatal(err)
	}
	for _, hb := range []cluster.Heartbeat{
		{Node: "n1", API: "http://10.0.0.1:8080", Version: "v9", Runtimes: []string{"native"}, Images: []string{"python:3.12"},
			MaxSandboxes: 10, Room: 7, Sandboxes: map[string]int{"sandbox": 2, "session": 1, "one-shot": 4}, MaxConcurrent: 8, Running: 4, Waiting: 1},
		{Node: "n2", API: "http://10.0.0.2:8080", Version: "v9", Runtimes: []string{"native", "gvisor"}, MaxSandboxes: 10, Room: 10, Leaving: true},
	} {
		b, _ := json.Marshal(hb)
		if _, err := kv.Put(t.Context(), hb.Node, b); err != nil {
			t.Fatal(err)
		}
	}

	run := func(args ...string) string {
		var out bytes.Buffer
		root := newRoot()
		root.SetOut(&out)
		root.SetArgs(append([]string{"cluster", "status", "--cluster", url}, args...))
		if err := root.ExecuteContext(t.Context()); err != nil {
			t.Fatalf("cluster status %v: %v", args, err)
		}
		return out.String()
	}
	lines := strings.Split(strings.TrimSpace(run()), "\n")
	if len(lines) != 4 {
		t.Fatalf("table:\n%s\nwant a header, two nodes and the totals", strings.Join(lines, "\n"))
	}
	for i, want := range [][]string{
		{"n1", "up", "http://10.0.0.1:8080", "3/10", "7", "4/8", "1", "native", "python:3.12", "v9"},
		{"n2", "left", "http://10.0.0.2:8080", "0/10", "10", "0/0", "0", "native,gvisor", "-", "v9"},
		{"TOTAL", "1", "up,", "1", "gone", "-", "3/10", "7", "4/8", "1"}, // the nodes up only
	} {
		if got := strings.Fields(lines[i+1]); len(got) < len(want) || strings.Join(got[:len(want)], " ") != strings.Join(want, " ") {
			t.Errorf("row %d: %q, want it to start %q", i+1, lines[i+1], strings.Join(want, " "))
		}
	}
	var got clusterJSON
	if err := json.Unmarshal([]byte(run("--json")), &got); err != nil || len(got.Nodes) != 2 || got.Nodes[0].Room != 7 ||
		got.Nodes[1].State != "left" || got.Total != (cluster.Totals{Up: 1, Gone: 1, MaxSandboxes: 10, Sandboxes: 3, Room: 7, MaxConcurrent: 8, Running: 4, Waiting: 1}) {
		t.Errorf("--json: %+v, %v", got, err)
	}
}
