package native

import "github.com/airlockhq/airlock/internal/runtime/native/sandboxinit"

// What the daemon's side shares with the sandbox's (package sandboxinit, all of this runtime a
// sandbox's init links): the init's config and its parts, and what the init reports.
type (
	initConfig = sandboxinit.Config
	bindSpec   = sandboxinit.Bind
	zygoteInit = sandboxinit.ZygoteInit
	// SetupError reports the setup step that failed inside a sandbox's init.
	SetupError = sandboxinit.SetupError
)

// PTYsPerSandbox caps each sandbox's private devpts instance (sandboxinit.PTYsPerSandbox).
const PTYsPerSandbox = sandboxinit.PTYsPerSandbox
