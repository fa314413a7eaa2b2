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
