// Package natstest runs an embedded NATS server with JetStream, listening on 127.0.0.1, for tests
// of cluster mode. (The daemon embeds one of its own only for single-node async batches, with
// no listener: cluster.LocalQueue.)
package natstest

import (
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// Start runs a NATS server with JetStream in this process, on 127.0.0.1 with its store in a
// temporary directory, until the test ends; it returns its client URL.
func Start(t testing.TB) string {
	t.Helper()
	return Run(t, -1, t.TempDir()).ClientURL()
}

// Run is Start on 127.0.0.1:port (-1 for any free one) with its store in dir, returning the
// server so that a test can shut it down and start another on the same port and store.
func Run(t testing.TB, port int, dir string) *natsserver.Server {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: port, JetStream: true,
		StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("the embedded NATS server did not come up")
	}
	return ns
}
