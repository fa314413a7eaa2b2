package repl

import (
	"strings"
	"testing"
	"time"
)

// TestTracebackWithoutDriverFrames: a traceback shows the user's frames only, never the driver's
// (<airlock-driver>), also for an interrupt, whose KeyboardInterrupt the driver's signal handler
// raises.
func TestTracebackWithoutDriverFrames(t *testing.T) {
	t.Parallel()
	ip := start(t, Config{})
	check := func(t *testing.T, res *Result, want string) {
		t.Helper()
		if res.Error == nil {
			t.Fatalf("no error: %+v", res)
		}
		tb := strings.Join(res.Error.Traceback, "\n")
		if strings.Contains(tb, "<airlock-driver>") {
			t.Errorf("traceback has driver frames:\n%s", tb)
		}
		if !strings.Contains(tb, want) || !strings.Contains(tb, "<cell-") {
			t.Errorf("traceback lacks %q or the cell's frame:\n%s", want, tb)
		}
	}
	t.Run("error", func(t *testing.T) {
		res := run(t, ip, "def f():\n    return 1/0\ntry:\n    f()\nexcept Exception as e:\n    raise ValueError('x') from e")
		check(t, res, "ValueError: x")
	})
	t.Run("interrupt", func(t *testing.T) {
		done := make(chan *Result, 1)
		go func() { done <- run(t, ip, "import time\nwhile True:\n    time.sleep(0.01)") }()
		var res *Result
		for res == nil {
			if ok, _, _ := ip.Interrupt(); !ok {
				time.Sleep(10 * time.Millisecond) // poll: the cell has not started yet
				continue
			}
			res = <-done
		}
		if !res.Interrupted {
			t.Fatalf("not interrupted: %+v", res)
		}
		check(t, res, "KeyboardInterrupt")
	})
}
