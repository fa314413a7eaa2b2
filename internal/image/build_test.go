package image

import (
	"strings"
	"testing"
)

// TestStepKey: the cache key is the parent and the step's canonical JSON: an env step's map
// order does not matter, a changed step or parent does.
func TestStepKey(t *testing.T) {
	t.Parallel()
	key := func(parent string, st BuildStep) string {
		t.Helper()
		k, err := stepKey(parent, &st)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	a := key("sha256:aa", BuildStep{Env: map[string]string{"A": "1", "B": "2", "C": "3"}})
	b := key("sha256:aa", BuildStep{Env: map[string]string{"C": "3", "A": "1", "B": "2"}})
	if a != b {
		t.Errorf("env in another order: key %s, want %s", b, a)
	}
	for name, other := range map[string]string{
		"other parent": key("sha256:bb", BuildStep{Env: map[string]string{"A": "1", "B": "2", "C": "3"}}),
		"other value":  key("sha256:aa", BuildStep{Env: map[string]string{"A": "1", "B": "2", "C": "4"}}),
		"other kind":   key("sha256:aa", BuildStep{RunCommands: []string{"A=1"}}),
	} {
		if other == a {
			t.Errorf("%s: same key %s", name, a)
		}
	}
}

// TestStepLogBounds: lines are cut at maxLogLine, at most maxStepLog are streamed, and the
// error of a failed step carries the last lines.
func TestStepLogBounds(t *testing.T) {
	t.Parallel()
	var got []BuildEvent
	l := &stepLog{emit: func(e BuildEvent) { got = append(got, e) }, step: 1}
	l.Write([]byte(strings.Repeat("x", 3*maxLogLine) + "\n"))
	for range maxStepLog + 50 {
		l.Write([]byte("line\n"))
	}
	l.Write([]byte("last, no newline"))
	l.flush()
	if n := len(got); n != maxStepLog+1 {
		t.Errorf("%d log events, want %d (the bound and one note)", n, maxStepLog+1)
	}
	for _, e := range got {
		if len(e.Line) > maxLogLine+len("…") {
			t.Fatalf("a log line of %d bytes, want at most %d", len(e.Line), maxLogLine)
		}
	}
	if tail := l.tailText(); !strings.HasSuffix(tail, "line\nlast, no newline") {
		t.Errorf("tail %q, want the last lines", tail)
	}
}
