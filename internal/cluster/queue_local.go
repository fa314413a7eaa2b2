package cluster

import (
	"context"
	"fmt"
	"os"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/airlockhq/airlock/internal/engine"
)

// LocalQueue is the batch queue of a daemon that is no cluster node (no --cluster): the very
// same queue, over a NATS server embedded in the daemon that listens on no port (the daemon
// connects to it in-process) and keeps its JetStream store in dir, under the state directory,
// so that queued snippets, results and pending webhooks survive a restart. Close stops it.
func LocalQueue(ctx context.Context, dir string, e *engine.Engine, cfg QueueConfig) (*Queue, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("batch queue store: %w", err)
	}
	ns, err := natsserver.NewServer(&natsserver.Options{ServerName: "airlock-local", DontListen: true,
		JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		return nil, fmt.Errorf("batch queue: embedded NATS server: %w", err)
	}
	go ns.Start()
	stop := func() { ns.Shutdown(); ns.WaitForShutdown() }
	if !ns.ReadyForConnections(30 * time.Second) {
		stop()
		return nil, fmt.Errorf("batch queue: the embedded NATS server did not start")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns), nats.Name("airlock local batch queue"), nats.MaxReconnects(-1))
	if err != nil {
		stop()
		return nil, fmt.Errorf("batch queue: connect in-process: %w", err)
	}
	q, err := newQueue(ctx, nc, "local", e, cfg)
	if err != nil {
		nc.Close()
		stop()
		return nil, err
	}
	q.close = func() { nc.Close(); stop() }
	return q, nil
}
