package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/image"
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
		outDir   string
	)
	cmd := &cobra.Command{
		Use:   "run [flags] [FILE | - | -- CODE]",
		Short: "Run code once in a fresh sandbox; the exit status is the program's",
		Long: "Run code once in a fresh sandbox and print what it writes as it writes it. The exit\n" +
			"status is the program's own; 124 on timeout, 137 when the memory limit killed it, 130\n" +
			"when Ctrl-C stopped it (the sandbox is destroyed).\n\n" +
			"Where the code comes from:\n" +
			"  airlock run script.py        one argument naming an existing file runs that file\n" +
			"  airlock run --file script.py the same, explicitly\n" +
			"  airlock run - < script.py    '-' (or --file -) reads the program from stdin\n" +
			"  airlock run -- 'print(1)'    arguments after '--' are always code, joined by spaces\n" +
			"  airlock run 'print(1)'       any other arguments are code too\n" +
			"A file whose name ends in .sh runs with bash unless --language says otherwise.",
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			code, path, err := readCode(file, args, cmd.ArgsLenAtDash() == 0, cmd.InOrStdin())
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("language") && strings.HasSuffix(path, ".sh") {
				language = api.LanguageBash
			}
			req.Code, req.Language = code, language
			if outDir == "" && len(req.OutputFiles) > 0 {
				outDir = "."
			}
			if outDir != "" && len(req.OutputFiles) == 0 {
				req.OutputFiles = []string{"*"}
			}
			// Without --state-dir the embedded engine never shares a state directory, cgroup
			// root or uid range with a daemon or another run.
			rc.Native.Private = rc.Native.StateDir == ""
			ctx, interrupted := interruptible(cmd.Context())
			var output func(stream int, b []byte)
			if !asJSON {
				output = func(stream int, b []byte) {
					if stream == engine.StreamStderr {
						cmd.ErrOrStderr().Write(b)
					} else {
						cmd.OutOrStdout().Write(b)
					}
				}
			}
			resp, streamed, err := execute(ctx, co, rc, req, output)
			if interrupted() {
				fmt.Fprintln(cmd.ErrOrStderr(), "airlock: interrupted")
				return &exitError{code: 130} // 128 + SIGINT, as a shell reports it
			}
			if err != nil {
				return err
			}
			if outDir != "" {
				if err := saveFiles(outDir, resp.Files, cmd.ErrOrStderr()); err != nil {
					return err
				}
				if resp.FilesTruncated {
					fmt.Fprintln(cmd.ErrOrStderr(), "airlock: output files truncated: more than 64 files or 10 MiB matched")
				}
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				enc.Encode(resp)
			} else {
				if !streamed {
					io.WriteString(cmd.OutOrStdout(), resp.Stdout)
					io.WriteString(cmd.ErrOrStderr(), resp.Stderr)
				}
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
	f.StringVar(&req.Image, "image", "", "image to run in: host (default) or a name[:tag] or id of the image store (airlock image pull)")
	f.StringVarP(&file, "file", "f", "", "read the program from this file")
	f.BoolVar(&asJSON, "json", false, "print the full result as JSON")
	f.StringArrayVar(&req.OutputFiles, "output-file", nil, "after the run, fetch the files matching this glob (relative to /workspace, or under /tmp); repeatable")
	f.StringVarP(&outDir, "output", "o", "", "save the fetched files in this directory (default . with --output-file; alone it fetches the workspace's top-level files)")
	bindClientFlags(f, &co, "send the run to this airlock daemon instead of an embedded engine")
	bindRuntimeFlags(f, &rc, "state directory of the embedded engine (default: a private one under /run/airlock, removed after the run)")
	return cmd
}

// readCode returns the program the arguments name and the file it came from, if any. A single
// argument naming an existing regular file is that file, unless it came after '--' (afterDash):
// those are always code.
func readCode(file string, args []string, afterDash bool, stdin io.Reader) (code, path string, err error) {
	switch {
	case file != "" && len(args) > 0:
		return "", "", errors.New("give the code either with --file or as arguments, not both")
	case file == "-" || (file == "" && len(args) == 1 && args[0] == "-" && !afterDash):
		b, err := io.ReadAll(stdin)
		return string(b), "", err
	case file != "":
		b, err := os.ReadFile(file)
		return string(b), file, err
	case len(args) == 0:
		return "", "", errors.New("no code: pass FILE, --file F, '-' for stdin, or -- CODE")
	case len(args) == 1 && !afterDash && isFile(args[0]):
		b, err := os.ReadFile(args[0])
		return string(b), args[0], err
	default:
		return strings.Join(args, " "), "", nil
	}
}

// isFile reports whether name is an existing regular file (or a link to one).
func isFile(name string) bool {
	fi, err := os.Stat(name)
	return err == nil && fi.Mode().IsRegular()
}

// interruptible returns a context that ends on SIGINT, and a function telling whether it did
// (this handler or the command line's own, which may see the signal first).
func interruptible(parent context.Context) (context.Context, func() bool) {
	ctx, cancel := context.WithCancel(parent)
	var hit atomic.Bool
	c := make(chan os.Signal, 1)
	notifyInterrupt(c)
	go func() {
		select {
		case <-c:
			hit.Store(true)
			cancel()
		case <-ctx.Done():
		}
		stopNotify(c)
	}()
	return ctx, func() bool { return hit.Load() || interruptedBy(parent) }
}

// saveFiles writes a run's output files under dir, keeping their relative paths (an absolute
// one, e.g. /tmp/x, lands at dir/tmp/x). os.Root confines every write to dir: a name with ".."
// or a symbolic link pointing out of it is refused.
func saveFiles(dir string, files []api.OutputFile, log io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create output directory: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open output directory: %w", err)
	}
	defer root.Close()
	for _, f := range files {
		name := filepath.FromSlash(strings.TrimLeft(f.Name, "/"))
		if !filepath.IsLocal(name) {
			return fmt.Errorf("output file %q: name escapes %s", f.Name, dir)
		}
		if d := filepath.Dir(name); d != "." {
			if err := root.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("save output file %q: %w", f.Name, err)
			}
		}
		if err := root.WriteFile(name, f.Data, 0o644); err != nil {
			return fmt.Errorf("save output file %q: %w", f.Name, err)
		}
		fmt.Fprintf(log, "airlock: saved %s (%d bytes)\n", filepath.Join(dir, name), len(f.Data))
	}
	return nil
}

// streamWriter passes what is written to it on to a run's output callback as one stream.
type streamWriter struct {
	output func(int, []byte)
	stream int
}

func (w streamWriter) Write(b []byte) (int, error) {
	w.output(w.stream, b)
	return len(b), nil
}

// execute runs req on a daemon when one is named, else on an embedded engine. The embedded
// engine and a daemon pass output to output (when set) as the program writes it; streamed says
// it did.
func execute(ctx context.Context, co clientOptions, rc runtimeConfig, req api.ExecuteRequest, output func(int, []byte)) (resp *api.ExecuteResponse, streamed bool, err error) {
	if co.server != "" {
		if output == nil {
			resp, err := co.client().Execute(ctx, req)
			return resp, false, err
		}
		resp, err := co.client().ExecuteStream(ctx, req, streamWriter{output, engine.StreamStdout}, streamWriter{output, engine.StreamStderr})
		return resp, err == nil, err
	}
	logger := warnLogger()
	var ec engine.Config
	if req.Image != "" && req.Image != "host" {
		// The store `airlock image pull` fills, the daemon's of the same --state-dir: opened
		// only for an image, so a host run leaves no store behind.
		st, err := image.Open(image.Config{Dir: imageDir(rc.Native.StateDir), Logger: logger})
		if err != nil {
			return nil, false, err
		}
		ec.Images = image.EngineImages(st)
	}
	e, rt, err := newEngine(logger, ec, rc)
	if err != nil {
		return nil, false, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		closeEngine(cctx, logger, e, rt)
	}()
	o := apiserver.OneShot(req)
	o.Output = output
	res, err := e.Execute(ctx, o)
	if err != nil {
		return nil, false, err
	}
	return apiserver.ExecuteResponse(res), output != nil, nil
}
