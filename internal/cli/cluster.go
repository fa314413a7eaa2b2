package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/airlockhq/airlock/internal/cluster"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/image"
)

// bindClusterFlags binds the NATS connection's flags, shared by serve and `cluster status`.
func bindClusterFlags(f *pflag.FlagSet, cc *cluster.Config) {
	flagEnv(f, &cc.URL, "cluster", "AIRLOCK_CLUSTER", "join the cluster on this NATS server (nats://HOST:4222, comma-separated for several; see README \"Cluster mode\"); empty runs a single node")
	flagEnv(f, &cc.CredsFile, "cluster-creds", "AIRLOCK_CLUSTER_CREDS", "NATS credentials file (JWT and nkey seed) for --cluster")
	flagEnv(f, &cc.TLSCA, "cluster-tls-ca", "AIRLOCK_CLUSTER_TLS_CA", "PEM file of the CAs that sign the NATS servers' certificates")
	flagEnv(f, &cc.TLSCert, "cluster-tls-cert", "AIRLOCK_CLUSTER_TLS_CERT", "PEM client certificate for NATS servers that verify clients (with --cluster-tls-key)")
	flagEnv(f, &cc.TLSKey, "cluster-tls-key", "AIRLOCK_CLUSTER_TLS_KEY", "PEM key of --cluster-tls-cert")
}

// bindClusterNodeFlags binds serve's flags about this node in the cluster.
func bindClusterNodeFlags(f *pflag.FlagSet, cc *cluster.Config) {
	bindClusterFlags(f, cc)
	flagEnv(f, &cc.NodeID, "cluster-node-id", "AIRLOCK_CLUSTER_NODE_ID", "this node's id in the cluster (default the host name)")
	flagEnv(f, &cc.APIURL, "cluster-advertise", "AIRLOCK_CLUSTER_ADVERTISE", "base URL at which the other nodes reach this node's API (default http://ADDR of --addr, which must then name a host)")
	flagEnv(f, &cc.Heartbeat, "cluster-heartbeat", "AIRLOCK_CLUSTER_HEARTBEAT", "how often this node publishes its heartbeat; a node silent for 3 of them is gone (default 2s)")
}

// advertiseURL is the API URL a node publishes when --cluster-advertise is not given: that of
// --addr, which must name a concrete host and port for the other nodes to reach.
func advertiseURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--addr %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || port == "0" || (ip != nil && ip.IsUnspecified()) {
		return "", fmt.Errorf("--addr %s names no host and port other nodes can reach: set --cluster-advertise", addr)
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// joinCluster joins the cluster of cc for serve, before the engine's Recover (so that adopted
// sandboxes are registered), or returns nil, nil without --cluster. The caller runs and closes
// the node.
func joinCluster(ctx context.Context, logger *slog.Logger, cc cluster.Config, addr string, e *engine.Engine,
	images *image.Store, runtimes []string) (*cluster.Node, error) {
	if cc.URL == "" {
		return nil, nil
	}
	if cc.APIURL == "" {
		u, err := advertiseURL(addr)
		if err != nil {
			return nil, err
		}
		cc.APIURL = u
	}
	cc.Logger, cc.Engine, cc.Version, cc.Runtimes = logger, e, Version, runtimes
	cc.Images = func() []string { return imageNames(images) }
	n, err := cluster.Join(ctx, cc)
	if err != nil {
		return nil, err
	}
	logger.InfoContext(ctx, "joined the cluster", "node", n.ID(), "api", cc.APIURL)
	return n, nil
}

// reconcile marks ended the registry's entries of this node that Recover did not adopt; a
// failure only leaves them to answer 404 from here rather than 410.
func reconcile(ctx context.Context, logger *slog.Logger, n *cluster.Node) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	lost, err := n.Reconcile(ctx)
	if err != nil {
		logger.WarnContext(ctx, "reconciling the cluster registry", "err", err)
	}
	if lost > 0 {
		logger.InfoContext(ctx, "marked the registry's sandboxes of this node that did not survive its restart as ended", "sandboxes", lost)
	}
}

// imageNames are the names of the store's images, for the heartbeats.
func imageNames(st *image.Store) []string {
	if st == nil {
		return nil
	}
	imgs, err := st.List()
	if err != nil {
		return nil
	}
	var names []string
	for _, img := range imgs {
		names = append(names, img.Names...)
	}
	slices.Sort(names)
	return names
}

func clusterCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "Inspect an Airlock cluster on NATS"}
	cmd.AddCommand(clusterStatusCmd())
	return cmd
}

func clusterStatusCmd() *cobra.Command {
	var (
		cc     cluster.Config
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "List the cluster's nodes: state, capacity, load, runtimes, images and versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cc.URL == "" {
				return errors.New("name the cluster's NATS server with --cluster or AIRLOCK_CLUSTER")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			nodes, err := cluster.Status(ctx, cc)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(clusterJSON{Nodes: nodes, Total: cluster.Sum(nodes)})
			}
			printNodes(cmd.OutOrStdout(), nodes)
			return nil
		},
	}
	f := cmd.Flags()
	bindClusterFlags(f, &cc)
	flagEnv(f, &cc.GoneAfter, "gone-after", "AIRLOCK_CLUSTER_GONE_AFTER", "a node whose last heartbeat is older than this is shown gone (default 6s)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// clusterJSON is `airlock cluster status --json`: every node, and the sums over those up.
type clusterJSON struct {
	Nodes []cluster.NodeStatus `json:"nodes"`
	Total cluster.Totals       `json:"total"`
}

// printNodes writes nodes as a table, with a last row of the sums over the nodes up.
func printNodes(w io.Writer, nodes []cluster.NodeStatus) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tAPI\tSANDBOXES\tROOM\tONE-SHOT\tWAITING\tRUNTIMES\tIMAGES\tVERSION\tSEEN")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%d\t%d/%d\t%d\t%s\t%s\t%s\t%s ago\n", n.Node, n.State, n.API,
			n.LongLived(), n.MaxSandboxes, n.Room, n.Running, n.MaxConcurrent, n.Waiting,
			strings.Join(n.Runtimes, ","), orDash(strings.Join(n.Images, ",")), n.Version,
			time.Since(n.Seen).Round(time.Second))
	}
	if len(nodes) > 0 {
		t := cluster.Sum(nodes)
		fmt.Fprintf(tw, "TOTAL\t%d up, %d gone\t-\t%d/%d\t%d\t%d/%d\t%d\t\t\t\t\n", t.Up, t.Gone,
			t.Sandboxes, t.MaxSandboxes, t.Room, t.Running, t.MaxConcurrent, t.Waiting)
	}
	tw.Flush()
	if len(nodes) == 0 {
		fmt.Fprintln(w, "no node has joined this cluster")
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
