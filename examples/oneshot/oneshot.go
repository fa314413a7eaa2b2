package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
)

var codeFlag = flag.String("code", "print('Hello from sandbox!')", "Python program to run")

// Result is what execute_code returned in the seed.
type Result struct {
	Success    bool   `json:"success"`
	Stdout     string `json:"stdout"`
	Stderr     string `json:"stderr"`
	ReturnCode int    `json:"returncode"`
}

// Options are execute_code's keyword arguments. Zero values mean the seed's defaults.
type Options struct {
	Timeout  float64 // seconds; 30
	MemoryMB int64   // 512
	// The seed's allow_network maps to CreateSandboxRequest.BlockNetwork; sandboxes block
	// the network by default, so it is left out here.
}

// executeCode runs code in a fresh sandbox. Like the seed, a timeout or a failure of the
// sandbox itself is reported in the Result (returncode -1) rather than as an error; err is
// only for failures to reach the daemon at all.
func executeCode(ctx context.Context, c *airlock.Client, code string, o Options) (Result, error) {
	if o.Timeout == 0 {
		o.Timeout = 30
	}
	if o.MemoryMB == 0 {
		o.MemoryMB = 512
	}
	sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{
		Timeout:  o.Timeout + 30, // the sandbox outlives the program's own timeout
		MemoryMB: o.MemoryMB,
	})
	if err != nil {
		return Result{}, fmt.Errorf("create sandbox: %w", err)
	}
	defer func() { // finally: sb.terminate(), even when ctx was canceled
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		sb.Terminate(ctx)
	}()

	// with sb.open("/tmp/user_code.py", "w") as f: f.write(code)
	if err := sb.WriteFile(ctx, "/tmp/user_code.py", strings.NewReader(code)); err != nil {
		return Result{Stderr: err.Error(), ReturnCode: -1}, nil
	}
	// p = sb.exec("python", "/tmp/user_code.py", timeout=timeout); p.wait()
	p, err := sb.ExecWith(ctx, api.ExecRequest{Cmd: []string{"python3", "/tmp/user_code.py"}, Timeout: o.Timeout})
	if err != nil {
		return Result{Stderr: err.Error(), ReturnCode: -1}, nil
	}
	res, err := p.Wait()
	if err != nil {
		return Result{Stderr: err.Error(), ReturnCode: -1}, nil
	}
	// Output stays buffered after Wait, as with Modal's p.stdout.read().
	stdout, _ := io.ReadAll(p.Stdout)
	stderr, _ := io.ReadAll(p.Stderr)
	if res.TimedOut {
		return Result{Stdout: string(stdout), Stderr: string(stderr) + "Execution timed out", ReturnCode: -1}, nil
	}
	return Result{Success: res.ExitCode == 0, Stdout: string(stdout), Stderr: string(stderr), ReturnCode: res.ExitCode}, nil
}

// run is the seed's local entrypoint: run -code and print the result.
func run(ctx context.Context, c *airlock.Client, w io.Writer) error {
	r, err := executeCode(ctx, c, *codeFlag, Options{})
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "=== Execution Result ===")
	fmt.Fprintf(w, "Success: %v\n", r.Success)
	fmt.Fprintf(w, "Return code: %d\n", r.ReturnCode)
	fmt.Fprintf(w, "\n--- stdout ---\n%s", r.Stdout)
	if r.Stderr != "" {
		fmt.Fprintf(w, "\n--- stderr ---\n%s\n", r.Stderr)
	}
	return nil
}
