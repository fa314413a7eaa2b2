// Command airlock-sandbox is what runs inside a native or gvisor sandbox: its init, then the agent. The
// daemon (airlock serve, airlock run) uses it when it sits beside the airlock binary or
// --sandbox-binary names it; without it airlock re-executes itself, which works the same but
// pays the daemon's own start-up in every sandbox.
package main

import (
	"fmt"
	"os"

	"github.com/airlockhq/airlock/internal/runtime/gvisor/guest"
	"github.com/airlockhq/airlock/internal/runtime/native/sandboxinit"
	"github.com/airlockhq/airlock/internal/sandboxmain"
)

func main() {
	if sandboxinit.IsInit() {
		os.Exit(sandboxmain.Serve(sandboxinit.Runtime, sandboxmain.NativeInit))
	}
	if guest.IsInit() {
		os.Exit(sandboxmain.Serve(guest.Runtime, guest.Init))
	}
	if len(os.Args) == 2 && os.Args[1] == "build-id" {
		fmt.Println(sandboxmain.BuildID()) // the daemon's check that it is of the same build
		return
	}
	fmt.Fprintln(os.Stderr, "airlock-sandbox runs only as a sandbox's init, started by airlock; try: airlock --help")
	os.Exit(2)
}
