// Package cluster joins Airlock daemons into one cluster over NATS (`airlock serve --cluster
// nats://…`), with no cluster protocol of Airlock's own: every node answers any request.
//
// Two JetStream key-value buckets hold the shared state:
//
//	airlock_nodes      node id → Heartbeat (JSON), written by the node every Config.Heartbeat:
//	                   its API address, capacity (engine limits, live counts, runs holding a
//	                   slot and queued), runtimes, image names, version, and its use of the
//	                   per-key limits (server.KeyUsage: CPU seconds in the period, requests
//	                   per second). A node whose heartbeat is older than
//	                   Config.GoneAfter, or whose last heartbeat says it is leaving, is gone.
//	airlock_sandboxes  sandbox or session id → Entry (JSON): the node that holds it, the
//	                   owner (the engine's hash of the API key), the kind and the expiry;
//	                   written through engine.Hooks when a sandbox becomes live (created or
//	                   adopted by Recover after a restart) and when it ends.
//
// The sequence of one node:
//
//	Join       connect (TLS, credentials), create or bind both buckets, install the engine
//	           hooks (before engine.Recover, so that adopted sandboxes are re-registered)
//	Run        first heartbeat at once, then one per Config.Heartbeat; watch airlock_nodes
//	Locate     id → where it lives (server.Cluster): local, another live node's API, or gone
//	Candidates the live nodes that offer a request's image and runtime, the most room first
//	LiveOf     an owner's live sandboxes or sessions on every live node (the owner index)
//	Claim      a seed session's name → the node that holds it (compare-and-set)
//	Close      a last heartbeat that says the node is leaving, then disconnect
//
// Beside the entries, airlock_sandboxes holds an owner index (own.<owner>.<node>.<kind>.<id>,
// written with a live entry and removed when it ends) and seed-session claims
// (seed.<hash>: a node id).
//
// The server (internal/server/cluster.go) proxies a request for an id held elsewhere to that
// node (REST, E2B's planes, Modal's gRPC), answers 410 for one whose node is gone, and places a
// create or a one-shot run this node cannot or should not take on a node that can
// (docs/cluster.md, "Placement").
package cluster
