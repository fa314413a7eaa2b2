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
		t.Fatalf("%v\noutput so far:\n%s", err, out.String())
	}
	for _, want := range []string{
		`basic: return_code=0 stdout="2 + 2 = 4\n" stderr="careful\n"`,
		"workdir=/app",
		"result.txt: sum=31 max=9\n",
		"data.json",
		`python -i printed: "hello\n42\n"`,
		"pooled: first\n",
		"pooled: /app\n",
		"pooled: 1267650600228229401496703205376\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
