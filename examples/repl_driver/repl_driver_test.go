package main

import (
	"bytes"
	"os"
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
