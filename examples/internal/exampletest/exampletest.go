// Package exampletest connects the examples' tests to a running daemon.
package exampletest

import (
	"os"
	"testing"

	"github.com/airlockhq/airlock"
)

// Client returns a client for the daemon named by AIRLOCK_EXAMPLES_SERVER (scripts/test starts
// one). Without it the test is skipped, or fails under AIRLOCK_TEST_STRICT=1.
func Client(t *testing.T) *airlock.Client {
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
