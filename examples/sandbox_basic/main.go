// Command sandbox_basic is the port of Modal's sandbox guide (seed 001): run untrusted code,
// configure a sandbox, work with its files, drive `python3 -i` through stdin, and reuse one
// sandbox for several programs.
//
//	AIRLOCK_SERVER=http://127.0.0.1:8080 go run ./examples/sandbox_basic
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/airlockhq/airlock"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, airlock.NewFromEnv(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "sandbox_basic:", err)
		os.Exit(1)
	}
}
