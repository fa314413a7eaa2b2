// Command repl_driver is the port of Modal's "stateful, sandboxed code interpreter" (seeds
// 003/004): a Python driver program runs in a sandbox, reads JSON commands from its stdin and
// answers JSON on its stdout, so state survives between snippets. It needs nothing but a
// streamed exec with stdin open.
//
//	AIRLOCK_SERVER=http://127.0.0.1:8080 go run ./examples/repl_driver
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
		fmt.Fprintln(os.Stderr, "repl_driver:", err)
		os.Exit(1)
	}
}
