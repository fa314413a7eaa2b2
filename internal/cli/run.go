package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	apiserver "github.com/airlockhq/airlock/internal/server"
)

func runCmd() *cobra.Command {
	var (
		req      api.ExecuteRequest
		file     string
		asJSON   bool
		co       clientOptions
		rc       runtimeConfig
		language string
	)
	cmd := &cobra.Command{
		Use:   "run [flags] [--file F | - | -- CODE]",
		Short: "Run code once in a fresh sandbox; the exit status is the program's",
		Long: "Run code once in a fresh sandbox and print what it wrote. The exit status is the\n" +
			"program's own; 124 on timeout, 137 when the memory limit killed it. Code comes from\n" +
			"--file, from stdin with '-', or from the arguments after '--'.",
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			code, err := readCode(file, args, cmd.InOrStdin())
			if err != nil {
				return err
			}
			req.Code, req.Language = code, language
			// Without --state-dir the embedded engine never shares a state directory, cgroup
			// root or uid range with a daemon or another run.
			rc.Native.Private = rc.Native.StateDir == ""
			resp, err := execute(cmd.Context(), co, rc, req)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				enc.Encode(resp)
			} else {
				io.WriteString(cmd.OutOrStdout(), resp.Stdout)
				io.WriteString(cmd.ErrOrStderr(), resp.Stderr)
				switch {
				case resp.TimedOut:
					fmt.Fprintf(cmd.ErrOrStderr(), "airlock: timed out after %.3gs\n", resp.ExecutionTime)
				case resp.OOMKilled:
					fmt.Fprintln(cmd.ErrOrStderr(), "airlock: killed: memory limit reached")
				}
				if resp.Truncated {
					fmt.Fprintln(cmd.ErrOrStderr(), "airlock: output truncated")
				}
			}
			if resp.ReturnCode != 0 {
				return &exitError{code: resp.ReturnCode & 0xff}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.Float64Var(&req.Timeout, "timeout", 0, "wall-clock limit in seconds (default 30)")
	f.Int64Var(&req.MemoryMB, "memory-mb", 0, "memory limit in MiB (default 512)")
	f.Float64Var(&req.CPU, "cpu", 0, "CPU cores (default 1)")
	f.BoolVar(&req.AllowNetwork, "allow-network", false, "allow outbound network access")
	f.StringVar(&language, "language", "python", "python or bash")
	f.StringVarP(&file, "file", "f", "", "read the program from this file")
	f.BoolVar(&asJSON, "json", false, "print the full result as JSON")
	bindClientFlags(f, &co, "send the run to this airlock daemon instead of an embedded engine")
	bindRuntimeFlags(f, &rc, "state directory of the embedded engine (default: a private one under /run/airlock, removed after the run)")
	return cmd
}

func readCode(file string, args []string, stdin io.Reader) (string, error) {
	switch {
	case file != "" && len(args) > 0:
		return "", errors.New("give the code either with --file or as arguments, not both")
	case file == "-" || (file == "" && len(args) == 1 && args[0] == "-"):
		b, err := io.ReadAll(stdin)
		return string(b), err
	case file != "":
		b, err := os.ReadFile(file)
		return string(b), err
	case len(args) == 0:
		return "", errors.New("no code: pass --file F, '-' for stdin, or -- CODE")
	default:
		return strings.Join(args, " "), nil
	}
}

// execute runs req on a daemon when one is named, else on an embedded engine.
func execute(ctx context.Context, co clientOptions, rc runtimeConfig, req api.ExecuteRequest) (*api.ExecuteResponse, error) {
	if co.server != "" {
		return co.client().Execute(ctx, req)
	}
	logger := warnLogger()
	e, rt, err := newEngine(logger, engine.Config{}, rc)
	if err != nil {
		return nil, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		closeEngine(cctx, logger, e, rt)
	}()
	res, err := e.Execute(ctx, apiserver.OneShot(req))
	if err != nil {
		return nil, err
	}
	return apiserver.ExecuteResponse(res), nil
}
