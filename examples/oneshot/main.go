// Command oneshot is the port of a Modal "execute_code" function (seed 000): write the
// program into a fresh sandbox, run it with python3, collect its output and always terminate
// the sandbox.
//
//	AIRLOCK_SERVER=http://127.0.0.1:8080 go run ./examples/oneshot -code 'print(sum(range(100)))'
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/airlockhq/airlock"
)

func main() {
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, airlock.NewFromEnv(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "oneshot:", err)
		os.Exit(1)
	}
}
