// Package agentpb holds the wire protocol between the Airlock daemon and the
// agent that runs as PID 1 inside every sandbox: Connect RPC over HTTP/2
// cleartext on a unix socket.
//
// Three proto packages share this Go package:
//
//   - process (process.proto) and filesystem (filesystem.proto) follow E2B's
//     envd field for field, so their procedure paths are
//     "/process.Process/<Method>" and "/filesystem.Filesystem/<Method>" and
//     E2B SDK requests can be routed to the agent without translation.
//     Airlock-only fields are numbered from 100 up.
//   - airlock.agent.v1 (airlock.proto) holds Airlock's own services: Agent
//     (health, shutdown, streamed file transfer) and Repl (persistent
//     Python interpreter).
//
// Client and handler constructors live in the agentpbconnect subpackage.
// The generated code is committed; run `go generate` here (needs protoc)
// after changing a .proto file.
package agentpb

//go:generate sh generate.sh
