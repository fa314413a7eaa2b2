// Command airlock is the Airlock daemon, CLI and in-sandbox agent in one static binary.
package main

import (
	"context"
	"os"

	"github.com/airlockhq/airlock/internal/cli"
)

func main() {
	os.Exit(cli.Main(context.Background(), os.Args[1:]))
}
