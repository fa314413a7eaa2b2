package main

import (
	"bytes"
	"testing"

	"github.com/airlockhq/airlock/examples/internal/exampletest"
)

func TestRun(t *testing.T) {
	c := exampletest.Client(t)
	var out bytes.Buffer
	if err := run(t.Context(), c, &out); err != nil {
		t.Fatalf("%v\noutput so far:\n%s", err, out.String())
	}
	want := "hello, world!\n" +
		"The result is: 15\n" +
		"Attempting to divide by zero...\n" +
		"stderr: Execution Error: division by zero\n"
	if got := out.String(); got != want {
		t.Errorf("output:\n%s\nwant:\n%s", got, want)
	}
}
