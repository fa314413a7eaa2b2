//go:build linux

package repl

import (
	"strings"
	"testing"
)

// TestEmptyCellTakesNoNumber: empty cells (the warm pool runs one in each session it prepares)
// answer nothing and take no cell number, so the first real cell's traceback still says
// <cell-1>, and the next <cell-2>.
func TestEmptyCellTakesNoNumber(t *testing.T) {
	ip := start(t, Config{})
	for _, code := range []string{"", "  \n\t\n"} {
		res := run(t, ip, code)
		if res.Error != nil || res.HasResult || len(res.Stdout) > 0 || len(res.Stderr) > 0 {
			t.Fatalf("empty cell %q: got %+v, want nothing", code, res)
		}
	}
	for i, want := range []string{`File "<cell-1>", line 1`, `File "<cell-2>", line 2`} {
		res := run(t, ip, strings.Repeat("\n", i)+"1/0")
		if res.Error == nil || !strings.Contains(strings.Join(res.Error.Traceback, "\n"), want) {
			t.Errorf("cell %d: got %+v, want a traceback with %s", i+1, res.Error, want)
		}
	}
}
