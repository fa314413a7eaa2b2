package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock"
)

func sandboxPortForwardCmd(o *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "port-forward ID PORT[:LOCAL]",
		Short: "Forward a local port to a port in the sandbox, through the daemon",
		Long: "Listens on 127.0.0.1:LOCAL (default the same port; 0 picks a free one), prints the\n" +
			"address, and carries each connection accepted there to PORT on the sandbox's loopback\n" +
			"over the daemon (it works with the sandbox's network blocked). Ctrl-C ends it.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			port, local, err := parsePortPair(args[1])
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			sb, err := o.client().Sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(local)))
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Forwarding %s -> %s:%d\n", ln.Addr(), sb.ID(), port)
			return forwardPort(ctx, ln, sb, port, cmd.ErrOrStderr())
		},
	}
}

// parsePortPair parses PORT[:LOCAL].
func parsePortPair(s string) (port, local int, err error) {
	ps, ls, hasLocal := strings.Cut(s, ":")
	port, err = strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return 0, 0, fmt.Errorf("port %q: want PORT[:LOCAL], each 1…65535 (LOCAL may be 0)", s)
	}
	local = port
	if hasLocal {
		local, err = strconv.Atoi(ls)
		if err != nil || local < 0 || local > 65535 {
			return 0, 0, fmt.Errorf("local port %q: want 0…65535", ls)
		}
	}
	return port, local, nil
}

// forwardPort serves ln until ctx ends: one tunnel per accepted connection. It closes ln and
// every connection, and waits for them, before it returns.
func forwardPort(ctx context.Context, ln net.Listener, sb *airlock.Sandbox, port int, errw io.Writer) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		wg.Go(func() {
			defer c.Close()
			t, err := sb.DialPort(ctx, port)
			if err != nil {
				fmt.Fprintf(errw, "port-forward: %v\n", err)
				return
			}
			defer t.Close()
			// Ctrl-C ends the connections in flight too.
			stop := context.AfterFunc(ctx, func() { c.Close(); t.Close() })
			defer stop()
			var up sync.WaitGroup
			up.Go(func() {
				// At the client's EOF the answer may still be coming: the tunnel ends when the
				// sandbox's side does. A broken client ends it now.
				if _, err := io.Copy(t, c); err != nil {
					t.Close()
				}
			})
			io.Copy(c, t)
			c.Close()
			up.Wait()
		})
	}
}
