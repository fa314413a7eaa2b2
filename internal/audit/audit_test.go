package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestLogLines: records are whole JSON lines with the ids of their context, appended to a
// 0600 file, even from many goroutines at once.
func TestLogLines(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "audit.log")
	os.WriteFile(p, []byte("{\"earlier\":true}\n"), 0o600)
	l, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	ctx := WithKeyID(WithRequestID(context.Background(), "req-1"), "alice")
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() { l.Record(ctx, Record{Event: "run", Owner: "hidden-owner", CodeBytes: 3}) })
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 51 || lines[0] != `{"earlier":true}` {
		t.Fatalf("got %d lines, want the earlier one and 50 appended", len(lines))
	}
	for _, line := range lines[1:] {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil || r["request_id"] != "req-1" || r["key_id"] != "alice" || r["event"] != "run" {
			t.Fatalf("line %q: %v", line, err)
		}
		if strings.Contains(line, "hidden-owner") {
			t.Fatal("the owner hash is written")
		}
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
}

func TestLogHandler(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	h := NewLogHandler(slog.NewJSONHandler(&buf, nil))
	if NewLogHandler(h) != h {
		t.Fatal("wrapping twice")
	}
	logger := slog.New(h).With("component", "x")
	logger.InfoContext(WithRequestID(context.Background(), "req-9"), "hello")
	logger.InfoContext(context.Background(), "no request")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if !strings.Contains(lines[0], `"request_id":"req-9"`) || strings.Contains(lines[1], "request_id") {
		t.Fatalf("got %q", lines)
	}
}

// BenchmarkLogRecord is the cost one audited event adds: encoding a run's record and one
// O_APPEND write(2) to a file, from parallel goroutines.
func BenchmarkLogRecord(b *testing.B) {
	l, err := Open(filepath.Join(b.TempDir(), "audit.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ctx := WithKeyID(WithRequestID(context.Background(), "req-0123456789abcdef01234567"), "alice")
	sum, n := Sum([]byte("print('hello')"))
	exit, run := 0, 12.5
	r := Record{Event: "run", SandboxID: "ex-abcdefghijklmnopqrst", Kind: "one-shot", Image: "host", Language: "python",
		Limits: &Limits{MemoryBytes: 512 << 20, CPU: 1, TimeoutS: 30, Pids: 256}, Network: &Network{Mode: "block"},
		CodeSHA256: sum, CodeBytes: n, Outcome: "ok", ExitCode: &exit, RunMS: &run, DurationMS: 40, CPUSeconds: 0.01, OutputBytes: 6}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Record(ctx, r)
		}
	})
}
