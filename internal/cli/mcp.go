package cli

import (
	"log/slog"
	"net"
	"net/http"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	airlockmcp "github.com/airlockhq/airlock/internal/mcp"
)

// mcpCmd is `airlock mcp`: the MCP server over stdio, for MCP hosts that start it as a
// subprocess. It is a client of a running daemon (--server, --api-key), so sandboxes and
// sessions outlive the host's process and are shared with the daemon's other clients under the
// same key; `airlock serve` offers the same tools at /mcp over streamable HTTP.
func mcpCmd() *cobra.Command {
	co := clientOptions{server: "http://127.0.0.1:8080"}
	cmd := &cobra.Command{
		Use:   "mcp",
		Short: "Serve Airlock's tools to an MCP host over stdio",
		Long: "Speaks the Model Context Protocol on stdin and stdout, with tools that run code, keep Python sessions " +
			"and drive sandboxes of the daemon at --server, with --api-key. Logs go to stderr.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s := airlockmcp.New(co.client(), Version)
			return s.Run(cmd.Context(), &mcp.StdioTransport{})
		},
	}
	bindClientFlags(cmd.Flags(), &co, "daemon whose sandboxes the tools use")
	return cmd
}

// mountMCP serves the MCP tools at /mcp beside the API handler h; the tools call the API at
// base with each request's own key.
func mountMCP(h http.Handler, base string, logger *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/mcp", airlockmcp.Handler(airlockmcp.HandlerConfig{Base: base, Version: Version, Logger: logger}))
	mux.Handle("/", h)
	return mux
}

// selfURL is the URL at which the daemon reaches its own API on addr: loopback for a listener
// on every address.
func selfURL(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "http://" + addr.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, port)
}
