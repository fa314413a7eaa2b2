package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/api"
)

// fakeCells records the cells it is given and answers from a table.
type fakeCells struct {
	cells   []string
	answers map[string]*api.RunResult
}

func (f *fakeCells) run(ctx context.Context, code string, timeout float64) (*api.RunResult, error) {
	f.cells = append(f.cells, code)
	if r, ok := f.answers[code]; ok {
		return r, nil
	}
	return &api.RunResult{Success: true}, nil
}
func (f *fakeCells) interrupt(ctx context.Context) error { return nil }
func (f *fakeCells) close(ctx context.Context)           {}

func TestReplLoop(t *testing.T) {
	t.Parallel()
	png := base64.StdEncoding.EncodeToString([]byte("\x89PNG\r\n\x1a\nfake"))
	res := "42"
	f := &fakeCells{answers: map[string]*api.RunResult{
		"x + 1":  {Result: &res, Stdout: "printed\n"},
		"plot()": {Display: []api.Display{{MIME: "image/png", Data: png}}},
		"1/0":    {Error: &api.CellError{Name: "ZeroDivisionError", Traceback: []string{"Traceback", "ZeroDivisionError: division by zero"}}},
	}}
	in := strings.Join([]string{
		"def f(a):", "    return a", "", // a block ends at an empty line
		"x + 1",
		"d = {", "  'k': 1,", "}", // open brackets continue
		"plot()",
		"1/0",
	}, "\n") + "\n"
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	if err := replLoop(t.Context(), f, strings.NewReader(in), &out, &errOut, dir, 30); err != nil {
		t.Fatal(err)
	}
	want := []string{"def f(a):\n    return a\n", "x + 1", "d = {\n  'k': 1,\n}", "plot()", "1/0"}
	if strings.Join(f.cells, "|") != strings.Join(want, "|") {
		t.Fatalf("cells %q, want %q", f.cells, want)
	}
	if !strings.Contains(out.String(), "printed\n42\n") || !strings.Contains(errOut.String(), "ZeroDivisionError") {
		t.Fatalf("out %q err %q", out.String(), errOut.String())
	}
	b, err := os.ReadFile(filepath.Join(dir, "plot-1.png"))
	if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) || !strings.Contains(out.String(), "plot-1.png") {
		t.Fatalf("plot file: %v, output %q", err, out.String())
	}
}

// TestHistoryBounded: the history file is compacted to its last historyLimit lines when loaded,
// new lines are appended at once, and Up (At(0)) is the newest line.
func TestHistoryBounded(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "airlock", "history")
	h := loadHistory(path) // no file yet
	for i := range historyLimit + 10 {
		h.Add("x = " + strconv.Itoa(i))
	}
	h.Add("x = " + strconv.Itoa(historyLimit+9)) // a repeat of the newest line is not added again
	h.Add("   ")
	if got, want := h.Len(), historyLimit; got != want {
		t.Fatalf("Len %d, want %d", got, want)
	}
	h = loadHistory(path)
	if got, want := h.Len(), historyLimit; got != want {
		t.Fatalf("reloaded Len %d, want %d", got, want)
	}
	if got, want := h.At(0), "x = "+strconv.Itoa(historyLimit+9); got != want {
		t.Errorf("At(0) %q, want %q", got, want)
	}
	if got, want := h.At(historyLimit-1), "x = 10"; got != want {
		t.Errorf("oldest %q, want %q", got, want)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(string(b), "\n"); got != historyLimit {
		t.Errorf("file has %d lines after compaction, want %d", got, historyLimit)
	}
}
