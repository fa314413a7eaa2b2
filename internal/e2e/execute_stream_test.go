package e2e

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// timedWriter records when each write arrived.
type timedWriter struct {
	mu    sync.Mutex
	times []time.Time
	data  []string
}

func (w *timedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.times = append(w.times, time.Now())
	w.data = append(w.data, string(b))
	return len(b), nil
}

// A one-shot through the daemon streams its output as the program writes it (POST /v1/execute
// with Accept: application/x-ndjson, as `airlock run --server` uses it), and the closing result
// is the whole answer.
func TestExecuteStreamsThroughTheDaemon(t *testing.T) {
	t.Parallel()
	a := newAPIServer(t, engine.Config{ScratchBytes: 64 << 20})
	c := airlock.New(a.url, "")
	var out timedWriter
	resp, err := c.ExecuteStream(t.Context(), api.ExecuteRequest{Code: `
import time
for i in range(3):
    print("line", i, flush=True)
    time.sleep(0.3)`}, &out, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Stdout != "line 0\nline 1\nline 2\n" || !resp.Success {
		t.Fatalf("result: %+v", resp)
	}
	if got := strings.Join(out.data, ""); got != resp.Stdout {
		t.Fatalf("streamed %q, answer %q", got, resp.Stdout)
	}
	if len(out.times) < 3 {
		t.Fatalf("%d writes for 3 lines written 0.3 s apart: not streamed (%q)", len(out.times), out.data)
	}
	for i := 1; i < len(out.times); i++ {
		if gap := out.times[i].Sub(out.times[i-1]); gap < 200*time.Millisecond {
			t.Errorf("write %d arrived %v after the one before, want ≥ 200ms (not streamed)", i, gap)
		}
	}
}

// A one-shot in flight on a real sandbox is listed and can be cancelled: its answer comes back at
// once (137, "cancelled") and it is no longer listed. (It is listed as soon as its sandbox
// exists, so it may be cancelled before it has printed anything.)
func TestExecutionListedAndCancelled(t *testing.T) {
	t.Parallel()
	a := newAPIServer(t, engine.Config{ScratchBytes: 64 << 20})
	c := airlock.New(a.url, "")
	type answer struct {
		resp *api.ExecuteResponse
		err  error
	}
	ans := make(chan answer, 1)
	go func() {
		r, err := c.Execute(t.Context(), api.ExecuteRequest{Language: "bash", Code: "echo started; sleep 60", Timeout: 90})
		ans <- answer{r, err}
	}()
	var id string
	waitFor(t, "the run to be listed", func() bool {
		l, err := c.Executions(t.Context())
		if err == nil && len(l) == 1 {
			id = l[0].ID
		}
		return id != ""
	})
	if _, err := c.CancelExecution(t.Context(), id); err != nil {
		t.Fatalf("cancel %s: %v", id, err)
	}
	got := <-ans
	if got.err != nil || got.resp.ReturnCode != 137 || !strings.Contains(got.resp.Stderr, "cancelled") {
		t.Fatalf("cancelled run: %+v %v", got.resp, got.err)
	}
	if l, err := c.Executions(t.Context()); err != nil || len(l) != 0 {
		t.Fatalf("after the cancel: %v %v", l, err)
	}
}
