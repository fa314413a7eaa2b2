// Package modal serves Modal's client API (the stock npm `modal` SDK, 0.11.1) from the
// daemon: gRPC over h2c on the REST API's own listener, generated server code from
// github.com/modal-labs/modal-client/go. It is a front end onto the engine, not a second
// engine: a Modal sandbox is an Airlock sandbox (same id, same limits, same owner), a Modal
// image is an image of Airlock's store, and an exec is an engine exec.
//
// The wire sequence of a typical client (COMPAT.md §2 has the whole reference):
//
//	AuthTokenGet                      → a JWT-shaped token; every call is checked by its
//	                                    x-modal-token-secret (an Airlock API key) anyway
//	AppGetOrCreate                    → ap-… (in memory, per key)
//	EnvironmentGetOrCreate            → builder version 2025.06
//	ImageGetOrCreate ["FROM ref", …]  → im-<store id hex>; result inline (no join stream)
//	SandboxCreateV2                   → the engine's sandbox id (also the task id) and
//	                                    router access: https://<the host the client used>
//	                                    and an HS256 token for that one sandbox
//	router TaskExecStart …            → an engine exec, output kept offset-addressable
//	router TaskExecStdioRead/Wait/StdinWriteStream …
//	SandboxWaitV2 / SandboxTerminateV2
//
// V1 (SandboxCreate, SandboxGetTaskId, TaskGetCommandRouterAccess, …) is served over the
// same sandboxes. sb.filesystem.* arrives as execs of /__modal/.bin/modal-sandbox-fs-tools,
// which are served daemon-side by the engine's file calls (fstools.go). Every RPC not
// written here answers UNIMPLEMENTED naming itself.
package modal
