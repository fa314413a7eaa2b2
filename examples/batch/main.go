// Command batch is the port of a Modal "execute_batch" (seed 000): run many snippets, each in
// a fresh sandbox, with bounded concurrency, and return the results in order.
//
//	AIRLOCK_SERVER=http://127.0.0.1:8080 go run ./examples/batch
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
		fmt.Fprintln(os.Stderr, "batch:", err)
		os.Exit(1)
	}
}
