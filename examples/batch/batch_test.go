package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/examples/internal/exampletest"
)

func TestRun(t *testing.T) {
	c := exampletest.Client(t)
	var out bytes.Buffer
	if err := run(t.Context(), c, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{" 0: 45\n", " 7: 3160\n", " 8: exit 1: ValueError: bad input\n", " 9: timed out"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestLastLine(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"a\nb\n": "b\n", "a\nb": "b\n", "only\n\n": "only\n", "": "\n"} {
		if got := lastLine(in); got != want {
			t.Errorf("lastLine(%q) = %q, want %q", in, got, want)
		}
	}
}
