// Package e2b serves E2B's API over Airlock's engine, so that the stock E2B SDKs (npm
// e2b@2.51.0 and @e2b/code-interpreter@2.8.0) drive Airlock unmodified. It is a front end,
// not a second engine: every sandbox it creates is an engine sandbox (or, for the code
// interpreter's template, an engine session), with the engine's limits, per-key ownership and
// network policy, and the same sandbox /v1 sees.
//
// Two planes, both under the daemon's listener (see COMPAT.md §3):
//
//   - the control plane at /e2b (E2B_API_URL=http://HOST:PORT/e2b), authenticated by
//     X-API-KEY = an Airlock API key: create, connect, list, get, kill, set timeout, metrics;
//   - the data plane at /e2b/sandbox (E2B_SANDBOX_URL=http://HOST:PORT/e2b/sandbox), routed by
//     the E2b-Sandbox-Id and E2b-Sandbox-Port headers and authenticated by the per-sandbox
//     X-Access-Token issued at create or connect: envd's Connect services process.Process and
//     filesystem.Filesystem, its REST /files and /health (port 49983), and the code
//     interpreter's /execute and /contexts (port 49999).
//
// envd's Connect services are the agent's own (internal/agent/agentpb mirrors envd's protos
// under envd's package, service and message names), so the generated handler interfaces serve
// E2B's paths and wire JSON as they are.
package e2b
