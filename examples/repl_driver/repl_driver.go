package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
)

// driverProgram is the seed's driver_program, unchanged but for ending quietly at EOF: one
// JSON command per stdin line, one JSON answer per stdout line, globals kept between them.
const driverProgram = `
import json
import sys
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

def driver_program():
    globals = {}
    while True:
        try:
            line = input()  # read a line of JSON from stdin
        except EOFError:
            return
        command = json.loads(line)
        if (code := command.get("code")) is None:
            print(json.dumps({"error": "No code to execute"}), flush=True)
            continue

        # Capture the executed code's outputs
        stdout_io, stderr_io = StringIO(), StringIO()
        with redirect_stdout(stdout_io), redirect_stderr(stderr_io):
            try:
                exec(code, globals)
            except Exception as e:
                print(f"Execution Error: {e}", file=sys.stderr)

        print(json.dumps({"stdout": stdout_io.getvalue(), "stderr": stderr_io.getvalue()}), flush=True)

driver_program()
`

// Interpreter is a running driver program.
type Interpreter struct {
	p   *airlock.Process
	out *bufio.Reader
}

// startInterpreter runs the driver in sb. ctx bounds the interpreter's whole life.
func startInterpreter(ctx context.Context, sb *airlock.Sandbox) (*Interpreter, error) {
	// p = sb.exec("python", "-c", driver_program_command, bufsize=1)
	p, err := sb.Exec(ctx, "python3", "-c", driverProgram)
	if err != nil {
		return nil, err
	}
	return &Interpreter{p: p, out: bufio.NewReader(p.Stdout)}, nil
}

// Answer is one line the driver printed.
type Answer struct {
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	Error  string `json:"error"`
}

// RunCode is the seed's run_code: write one JSON line, read one JSON line. Calls must not
// overlap.
func (in *Interpreter) RunCode(code string) (Answer, error) {
	line, _ := json.Marshal(map[string]string{"code": code})
	// writer.write(json.dumps({"code": code}) + "\n"); writer.drain()
	if _, err := in.p.Stdin.Write(append(line, '\n')); err != nil {
		return Answer{}, fmt.Errorf("send code: %w", err)
	}
	// result = json.loads(next(reader))
	reply, err := in.out.ReadBytes('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			// The driver died; Wait says how (its traceback is on Stderr).
			res, werr := in.p.Wait()
			stderr, _ := io.ReadAll(in.p.Stderr)
			if werr != nil {
				return Answer{}, fmt.Errorf("driver ended: %w", werr)
			}
			return Answer{}, fmt.Errorf("driver exited %d: %s", res.ExitCode, stderr)
		}
		return Answer{}, err
	}
	var a Answer
	if err := json.Unmarshal(reply, &a); err != nil {
		return Answer{}, fmt.Errorf("driver answered %q: %w", reply, err)
	}
	return a, nil
}

// Close ends the driver (EOF on its stdin) and waits for it.
func (in *Interpreter) Close() error {
	in.p.Stdin.Close()
	res, err := in.p.Wait()
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		stderr, _ := io.ReadAll(in.p.Stderr)
		return fmt.Errorf("driver exited %d: %s", res.ExitCode, stderr)
	}
	return nil
}

func run(ctx context.Context, c *airlock.Client, w io.Writer) error {
	// sb = modal.Sandbox.create(app=app)
	sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{Timeout: 600, IdleTimeout: 120})
	if err != nil {
		return err
	}
	defer func() { // sb.terminate()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		sb.Terminate(ctx)
	}()
	in, err := startInterpreter(ctx, sb)
	if err != nil {
		return err
	}
	for _, code := range []string{
		"print('hello, world!')", // hello, world!
		"x = 10",
		"y = 5",
		"result = x + y",
		"print(f'The result is: {result}')", // The result is: 15
		"print('Attempting to divide by zero...')",
		"1 / 0", // Execution Error: division by zero
	} {
		a, err := in.RunCode(code)
		if err != nil {
			return err
		}
		fmt.Fprint(w, a.Stdout)
		if a.Stderr != "" {
			fmt.Fprint(w, "stderr: ", a.Stderr)
		}
	}
	return in.Close()
}
