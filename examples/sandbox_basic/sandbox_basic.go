package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
)

// Output is what one run produced (the seed's dict and CodeResponse).
type Output struct {
	Stdout        string
	Stderr        string
	ReturnCode    int
	ExecutionTime float64 // seconds, as the client saw it
}

// terminate ends sb even when ctx is already canceled: the seed's `finally: sb.terminate()`.
func terminate(ctx context.Context, sb *airlock.Sandbox) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	sb.Terminate(ctx)
}

// executeUserCode is the seed's "Basic Usage": a fresh sandbox with a 60 s life, python -c.
func executeUserCode(ctx context.Context, c *airlock.Client, code string) (Output, error) {
	start := time.Now()
	sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{Timeout: 60})
	if err != nil {
		return Output{}, err
	}
	defer terminate(ctx, sb)
	p, err := sb.Exec(ctx, "python3", "-c", code)
	if err != nil {
		return Output{}, err
	}
	p.Stdin.Close() // like Modal's, stdin stays open until closed; this program reads none
	return collect(p, start)
}

// collect waits for p and reads its buffered output.
func collect(p *airlock.Process, start time.Time) (Output, error) {
	res, err := p.Wait()
	if err != nil {
		return Output{}, err
	}
	stdout, _ := io.ReadAll(p.Stdout)
	stderr, _ := io.ReadAll(p.Stderr)
	return Output{Stdout: string(stdout), Stderr: string(stderr), ReturnCode: res.ExitCode,
		ExecutionTime: time.Since(start).Seconds()}, nil
}

// fileOperations is the seed's "File Operations": write JSON in, let the program turn it into
// a result file, read that back, list the directory.
func fileOperations(ctx context.Context, sb *airlock.Sandbox, w io.Writer) error {
	data, _ := json.Marshal(map[string]any{"numbers": []int{3, 1, 4, 1, 5, 9, 2, 6}})
	// sb.fs.write("/app/data.json", json.dumps(data))
	if err := sb.WriteFile(ctx, "/app/data.json", strings.NewReader(string(data))); err != nil {
		return err
	}
	res, err := sb.Run(ctx, api.ExecRequest{Cmd: []string{"python3", "-c", `
import json
d = json.load(open("/app/data.json"))
open("/app/result.txt", "w").write(f"sum={sum(d['numbers'])} max={max(d['numbers'])}\n")
`}, Timeout: 30})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("processing data.json: exit %d: %s", res.ExitCode, res.Stderr)
	}
	// content = sb.fs.read("/app/result.txt")
	content, err := sb.ReadFile(ctx, "/app/result.txt")
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "result.txt: %s", content)
	// files = sb.fs.ls("/app")
	files, err := sb.List(ctx, "/app")
	if err != nil {
		return err
	}
	for _, f := range files {
		fmt.Fprintf(w, "  %-12s %-4s %d bytes\n", f.Name, f.Type, f.Size)
	}
	return nil
}

// interactive is the seed's "Interactive Execution": python -i fed through stdin.
func interactive(ctx context.Context, sb *airlock.Sandbox, w io.Writer) error {
	p, err := sb.Exec(ctx, "python3", "-i")
	if err != nil {
		return err
	}
	// process.stdin.write("print('hello')\n"); process.stdin.write("exit()\n")
	for _, line := range []string{"x = 6 * 7\n", "print('hello')\n", "print(x)\n", "exit()\n"} {
		if _, err := io.WriteString(p.Stdin, line); err != nil {
			return err
		}
	}
	p.Stdin.Close()
	// output = process.stdout.read(); the prompts (>>>) go to stderr.
	out, err := io.ReadAll(p.Stdout)
	if err != nil {
		return err
	}
	if _, err := p.Wait(); err != nil {
		return err
	}
	fmt.Fprintf(w, "python -i printed: %q\n", out)
	return nil
}

// pooled is the seed's "Sandbox Pooling": one sandbox, many programs, each written to a file
// and run.
func pooled(ctx context.Context, sb *airlock.Sandbox, w io.Writer) error {
	for _, code := range []string{"print('first')", "import os; print(os.getcwd())", "print(2**100)"} {
		if err := sb.WriteFile(ctx, "/tmp/code.py", strings.NewReader(code)); err != nil {
			return err
		}
		res, err := sb.Run(ctx, api.ExecRequest{Cmd: []string{"python3", "/tmp/code.py"}, Timeout: 30})
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "pooled: %s", res.Stdout)
	}
	return nil
}

func run(ctx context.Context, c *airlock.Client, w io.Writer) error {
	out, err := executeUserCode(ctx, c, "import sys; print('2 + 2 =', 2 + 2); print('careful', file=sys.stderr)")
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "basic: return_code=%d stdout=%q stderr=%q\n", out.ReturnCode, out.Stdout, out.Stderr)

	// Sandbox Configuration: the seed's knobs that Airlock has (no GPU, no exposed ports).
	sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{
		Timeout:  300,
		CPU:      1,
		MemoryMB: 1024,
		Workdir:  "/app",
		Tags:     map[string]string{"example": "sandbox_basic"},
		// BlockNetwork: nil means blocked, the default.
	})
	if err != nil {
		return err
	}
	defer terminate(ctx, sb)
	info, err := sb.Info(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "sandbox: workdir=%s cpu=%g memory=%dMiB network blocked=%v\n", info.Workdir, info.CPU, info.MemoryMB, info.BlockNetwork)

	if err := fileOperations(ctx, sb, w); err != nil {
		return fmt.Errorf("file operations: %w", err)
	}
	if err := interactive(ctx, sb, w); err != nil {
		return fmt.Errorf("interactive: %w", err)
	}
	return pooled(ctx, sb, w)
}
