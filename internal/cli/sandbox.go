package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
)

func sandboxCmd() *cobra.Command {
	o := &clientOptions{server: "http://127.0.0.1:8080"}
	cmd := &cobra.Command{
		Use:     "sandbox",
		Aliases: []string{"sb"},
		Short:   "Create, use and remove long-lived sandboxes on an airlock daemon",
		Long: "Create, use and remove long-lived sandboxes on an airlock daemon (--server, env\n" +
			"AIRLOCK_SERVER, default http://127.0.0.1:8080).",
	}
	pf := cmd.PersistentFlags()
	bindClientFlags(pf, o, "airlock daemon URL")
	cmd.AddCommand(sandboxCreateCmd(o), sandboxListCmd(o), sandboxExecCmd(o), sandboxCpCmd(o),
		sandboxRmCmd(o), sandboxInfoCmd(o), sandboxExtendCmd(o), sandboxPortForwardCmd(o), sandboxSnapshotCmd(o))
	return cmd
}

func sandboxCreateCmd(o *clientOptions) *cobra.Command {
	var (
		req          api.CreateSandboxRequest
		env, tags    []string
		allowNetwork bool
		asJSON       bool
	)
	cmd := &cobra.Command{
		Use:   "create [flags]",
		Short: "Start a sandbox and print its id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if req.Env, err = parseKV("--env", env); err != nil {
				return err
			}
			if req.Tags, err = parseKV("--tag", tags); err != nil {
				return err
			}
			if allowNetwork {
				req.BlockNetwork = new(false)
			}
			ctx := cmd.Context()
			sb, err := o.client().CreateSandbox(ctx, req)
			if err != nil {
				return err
			}
			if !asJSON {
				fmt.Fprintln(cmd.OutOrStdout(), sb.ID())
				return nil
			}
			info, err := sb.Info(ctx)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), info)
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Image, "image", "", "image to run (default: the daemon's)")
	f.Float64Var(&req.Timeout, "timeout", 0, "life of the sandbox in seconds (default 300)")
	f.Float64Var(&req.IdleTimeout, "idle-timeout", 0, "end the sandbox after this many seconds without API activity (default never)")
	f.Float64Var(&req.CPU, "cpu", 0, "CPU cores")
	f.Int64Var(&req.MemoryMB, "memory-mb", 0, "memory limit in MiB")
	f.StringVar(&req.Workdir, "workdir", "", "working directory, created if missing (default /workspace)")
	f.StringArrayVar(&env, "env", nil, "environment variable K=V for every exec (repeatable)")
	f.StringArrayVar(&tags, "tag", nil, "tag K=V to find the sandbox by (repeatable)")
	f.BoolVar(&allowNetwork, "allow-network", false, "allow outbound network access")
	f.IntSliceVar(&req.Ports, "port", nil, "expose this port with a token of its own (repeatable; see port-forward for the API key's way)")
	f.BoolVar(&asJSON, "json", false, "print the sandbox's description as JSON instead of its id")
	return cmd
}

func sandboxListCmd(o *clientOptions) *cobra.Command {
	var (
		tags   []string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:     "ls [--tag K=V]...",
		Aliases: []string{"list"},
		Short:   "List running sandboxes",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			want, err := parseKV("--tag", tags)
			if err != nil {
				return err
			}
			list, err := o.client().ListSandboxes(cmd.Context(), want)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), list)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATUS\tIMAGE\tCPU\tMEMORY\tCREATED\tEXPIRES\tTAGS")
			now := time.Now()
			for _, s := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%g\t%dMiB\t%s ago\tin %s\t%s\n", s.ID, s.Status, s.Image, s.CPU,
					s.MemoryMB, roundAge(now.Sub(s.CreatedAt)), roundAge(s.ExpiresAt.Sub(now)), formatKV(s.Tags))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "only sandboxes with tag K=V (repeatable; all must match)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the list as JSON")
	return cmd
}

func roundAge(d time.Duration) time.Duration {
	if d < 0 {
		return 0
	}
	return d.Round(time.Second)
}

func sandboxExecCmd(o *clientOptions) *cobra.Command {
	var (
		req         api.ExecRequest
		env         []string
		interactive bool
		tty         bool
	)
	cmd := &cobra.Command{
		Use:   "exec [flags] ID [--] CMD [ARGS...]",
		Short: "Run a command in a sandbox, streaming its output; the exit status is the command's",
		Long: "Run a command in a sandbox and stream its stdout and stderr as they are written. With -i\n" +
			"this command's stdin is forwarded to the command; with -t the command runs on a terminal\n" +
			"(the local one in raw mode, its size followed) and stdin is always forwarded. The exit status is the command's own\n" +
			"(124 when --timeout ran out, 128+N after signal N). Flags go before the command; '--'\n" +
			"before it is optional.",
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			// Flags stop at the ID (SetInterspersed below) so that the command's own flags are
			// its; the documented "ID [flags] -- CMD" form is parsed here.
			rest := args[1:]
			if strings.HasPrefix(rest[0], "-") {
				if err := cmd.Flags().Parse(rest); err != nil {
					return err
				}
				rest = cmd.Flags().Args()
			}
			if len(rest) == 0 {
				return errors.New("exec: no command given")
			}
			var err error
			if req.Env, err = parseKV("--env", env); err != nil {
				return err
			}
			req.Cmd, req.StdinOpen = rest, interactive
			ctx := cmd.Context()
			if tty {
				code, err := execTTY(ctx, o, args[0], req, cmd.InOrStdin(), cmd.OutOrStdout())
				if err != nil {
					return err
				}
				if code != 0 {
					return &exitError{code: code & 0xff}
				}
				return nil
			}
			sb, err := o.client().Sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			p, err := sb.ExecWith(ctx, req)
			if err != nil {
				return err
			}
			if interactive {
				// Not waited for: a terminal's stdin may never reach EOF, and the command's
				// exit is what ends this one.
				go func() {
					io.Copy(p.Stdin, cmd.InOrStdin())
					p.Stdin.Close()
				}()
			}
			var wg sync.WaitGroup
			wg.Go(func() { io.Copy(cmd.OutOrStdout(), p.Stdout) }) // errors: Wait has them
			wg.Go(func() { io.Copy(cmd.ErrOrStderr(), p.Stderr) })
			wg.Wait()
			res, err := p.Wait()
			switch {
			case errors.Is(err, context.Canceled) && ctx.Err() != nil:
				return &exitError{code: 130} // interrupted; the process was killed
			case err != nil:
				return err
			case res.TimedOut:
				fmt.Fprintf(cmd.ErrOrStderr(), "airlock: timed out after %.3gs\n", res.ExecutionTime)
			}
			if res.ExitCode != 0 {
				return &exitError{code: res.ExitCode & 0xff}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.SetInterspersed(false)
	f.Float64Var(&req.Timeout, "timeout", 0, "kill the command after this many seconds (default: when the sandbox ends)")
	f.StringVar(&req.Workdir, "workdir", "", "working directory (default: the sandbox's)")
	f.StringArrayVar(&env, "env", nil, "environment variable K=V (repeatable)")
	f.BoolVarP(&interactive, "interactive", "i", false, "forward stdin to the command")
	f.BoolVarP(&tty, "tty", "t", false, "run on a terminal (through the WebSocket), stdin forwarded raw; output is all on stdout")
	return cmd
}

// location is one side of cp: a local path, "-", or a path in a sandbox.
type location struct {
	sandbox string // empty for local
	path    string
}

// parseLocation reads ID:PATH as a sandbox path when ID is non-empty and has no '/', like
// docker cp; write ./a:b for a local file with a colon in its name.
func parseLocation(s string) location {
	if i := strings.IndexByte(s, ':'); i > 0 && !strings.Contains(s[:i], "/") {
		return location{sandbox: s[:i], path: s[i+1:]}
	}
	return location{path: s}
}

func sandboxCpCmd(o *clientOptions) *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:   "cp [-r] SRC DST",
		Short: "Copy a file into, out of or between sandboxes (ID:PATH; - is stdin or stdout)",
		Long: "Copy one file, streaming it. One side at least is ID:PATH in a sandbox; the other may be a\n" +
			"local path or '-' for stdin (as SRC) or stdout (as DST). A local DST that is a directory, or a\n" +
			"sandbox DST ending in '/', receives the file under its own name. With -r, SRC and DST are\n" +
			"directories (or '-' for a tar on stdin or stdout) and DST becomes a copy of SRC's tree:\n" +
			"files with their modes and directories; symlinks come out of a sandbox but cannot go in.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, dst := parseLocation(args[0]), parseLocation(args[1])
			if src.sandbox == "" && dst.sandbox == "" {
				return errors.New("cp: one of SRC and DST must be ID:PATH in a sandbox")
			}
			if src.path == "" || dst.path == "" {
				return errors.New("cp: empty path")
			}
			if recursive {
				return copyTree(cmd, o, src, dst)
			}
			ctx := cmd.Context()
			c := o.client()
			if src.sandbox == "" {
				return upload(ctx, c, src.path, dst, cmd.InOrStdin())
			}
			sb, err := c.Sandbox(ctx, src.sandbox)
			if err != nil {
				return err
			}
			rc, err := sb.OpenFile(ctx, src.path)
			if err != nil {
				return fmt.Errorf("cp %s: %w", args[0], err)
			}
			defer rc.Close()
			switch {
			case dst.sandbox != "":
				to, err := c.Sandbox(ctx, dst.sandbox)
				if err != nil {
					return err
				}
				p := dst.path
				if strings.HasSuffix(p, "/") {
					p += path.Base(src.path)
				}
				return to.WriteFile(ctx, p, rc)
			case dst.path == "-":
				_, err := io.Copy(cmd.OutOrStdout(), rc)
				return err
			default:
				return download(rc, dst.path, path.Base(src.path))
			}
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "copy a directory tree (as a tar stream)")
	return cmd
}

func upload(ctx context.Context, c *airlock.Client, local string, dst location, stdin io.Reader) error {
	sb, err := c.Sandbox(ctx, dst.sandbox)
	if err != nil {
		return err
	}
	if local == "-" {
		return sb.WriteFile(ctx, dst.path, stdin)
	}
	f, err := os.Open(local)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("cp: %s is a directory; copy a tree with -r", local)
	}
	p := dst.path
	if strings.HasSuffix(p, "/") {
		p += filepath.Base(local)
	}
	_, err = sb.WriteFileMode(ctx, p, f, uint32(fi.Mode().Perm()))
	return err
}

// download writes r to local (or into it, when it is a directory), leaving no partial file
// behind on failure.
func download(r io.Reader, local, name string) error {
	if fi, err := os.Stat(local); err == nil && fi.IsDir() {
		local = filepath.Join(local, name)
	}
	f, err := os.Create(local)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(local)
		return fmt.Errorf("cp to %s: %w", local, err)
	}
	return nil
}

func sandboxRmCmd(o *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:     "rm ID...",
		Aliases: []string{"terminate"},
		Short:   "Terminate sandboxes",
		Long:    "Terminate sandboxes. One that has already ended is reported and not an error.",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := o.client()
			var errs []error
			for _, id := range args {
				sb, err := c.Sandbox(cmd.Context(), id)
				if err == nil {
					err = sb.Terminate(cmd.Context())
				}
				switch {
				case airlock.IsGone(err):
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: already ended\n", id)
				case err != nil:
					errs = append(errs, fmt.Errorf("%s: %w", id, err))
				default:
					fmt.Fprintln(cmd.OutOrStdout(), id)
				}
			}
			return errors.Join(errs...)
		},
	}
}

func sandboxExtendCmd(o *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "extend ID SECONDS",
		Short: "Make a running sandbox expire SECONDS from now; prints its new expiry",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			secs, err := strconv.ParseFloat(args[1], 64)
			if err != nil || secs <= 0 {
				return fmt.Errorf("SECONDS %q must be a positive number", args[1])
			}
			sb, err := o.client().Sandbox(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			info, err := sb.SetTimeout(cmd.Context(), time.Duration(secs*float64(time.Second)))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s expires %s\n", info.ID, info.ExpiresAt.Local().Format(time.RFC3339))
			return nil
		},
	}
}

func sandboxSnapshotCmd(o *clientOptions) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "snapshot ID",
		Short: "Turn a sandbox's files into a new image; prints the image's id",
		Long: "Turn a sandbox's writable layer into a new image on top of the sandbox's own; the\n" +
			"sandbox keeps running. Start sandboxes or sessions from it with --image NAME or ID.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sb, err := o.client().Sandbox(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			img, err := sb.Snapshot(cmd.Context(), name)
			if err != nil {
				return err
			}
			out := img.ID
			if len(img.Names) > 0 {
				out += " " + strings.Join(img.Names, " ")
			}
			fmt.Fprintln(cmd.OutOrStdout(), out)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name[:tag] for the new image (default: known by its id only)")
	return cmd
}

func sandboxInfoCmd(o *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "info ID",
		Short: "Describe a sandbox as JSON, with its resource usage",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sb, err := o.client().Sandbox(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			info, err := sb.Info(cmd.Context())
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), info)
		},
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// parseKV parses repeated K=V flag values.
func parseKV(flag string, list []string) (map[string]string, error) {
	if len(list) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(list))
	for _, kv := range list {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s %q: want K=V", flag, kv)
		}
		m[k] = v
	}
	return m, nil
}

func formatKV(m map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}
