package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/airlockhq/airlock"
)

func client(t *testing.T) *airlock.Client {
	t.Helper()
	url := os.Getenv("AIRLOCK_EXAMPLES_SERVER")
	if url == "" {
		const why = "examples need a daemon: set AIRLOCK_EXAMPLES_SERVER=http://HOST:PORT (and AIRLOCK_API_KEY if it uses keys); scripts/test starts one"
		if os.Getenv("AIRLOCK_TEST_STRICT") == "1" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	return airlock.New(url, os.Getenv("AIRLOCK_API_KEY"))
}

func TestRun(t *testing.T) {
	c := client(t)
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
