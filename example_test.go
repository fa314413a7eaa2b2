package airlock_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"strings"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
)

// exampleServer stands in for `airlock serve` so the examples run anywhere (the real handler
// and engine, over sandboxes whose agent is a fake that knows a few commands); in real code use
// airlock.New(os.Getenv("AIRLOCK_SERVER"), os.Getenv("AIRLOCK_API_KEY")).
func exampleServer() (url string, closeFn func()) {
	d, err := newDaemon("")
	if err != nil {
		log.Fatal(err)
	}
	return d.URL, d.Close
}

func ExampleClient_Execute() {
	url, done := exampleServer()
	defer done()
	ctx := context.Background()

	c := airlock.New(url, "")
	resp, err := c.Execute(ctx, api.ExecuteRequest{Code: "print('Hello from sandbox!')", Timeout: 10})
	if err != nil {
		log.Fatal(err)
	}
	// resp.Stdout and resp.Stderr hold what the program printed.
	fmt.Printf("success=%v returncode=%d\n", resp.Success, resp.ReturnCode)
	// Output:
	// success=true returncode=0
}

func ExampleClient_CreateSandbox() {
	url, done := exampleServer()
	defer done()
	ctx := context.Background()

	c := airlock.New(url, "")
	sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{Timeout: 600, MemoryMB: 1024,
		Tags: map[string]string{"user": "alice"}})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Terminate(ctx)

	res, err := sb.Run(ctx, api.ExecRequest{Cmd: []string{"echo", "hi"}, Timeout: 30})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("exit %d: %s", res.ExitCode, res.Stdout)

	list, _ := c.ListSandboxes(ctx, map[string]string{"user": "alice"})
	fmt.Println(len(list), "sandbox tagged user=alice")
	// Output:
	// exit 0: hi
	// 1 sandbox tagged user=alice
}

func ExampleSandbox_Exec() {
	url, done := exampleServer()
	defer done()
	ctx := context.Background()
	sb, err := airlock.New(url, "").CreateSandbox(ctx, api.CreateSandboxRequest{})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Terminate(ctx)

	// cat echoes its stdin; a real program could be `python3 -i` or a JSON-lines driver.
	p, err := sb.Exec(ctx, "cat")
	if err != nil {
		log.Fatal(err)
	}
	out := bufio.NewScanner(p.Stdout)
	for _, line := range []string{"one", "two"} {
		fmt.Fprintln(p.Stdin, line) // sent now, while the process runs
		out.Scan()
		fmt.Println("got:", out.Text())
	}
	p.Stdin.Close() // end-of-file: cat exits
	res, err := p.Wait()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit", res.ExitCode)
	// Output:
	// got: one
	// got: two
	// exit 0
}

func ExampleProcess_Wait() {
	url, done := exampleServer()
	defer done()
	ctx := context.Background()
	sb, err := airlock.New(url, "").CreateSandbox(ctx, api.CreateSandboxRequest{})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Terminate(ctx)

	p, err := sb.Exec(ctx, "sh", "-c", "echo boom >&2; exit 3")
	if err != nil {
		log.Fatal(err)
	}
	// Waiting before reading is fine: output is buffered until read.
	res, err := p.Wait()
	if err != nil {
		log.Fatal(err)
	}
	stderr, _ := io.ReadAll(p.Stderr)
	fmt.Printf("exit %d, stderr %q\n", res.ExitCode, stderr)
	// Output:
	// exit 3, stderr "boom\n"
}

func ExampleSandbox_WriteFile() {
	url, done := exampleServer()
	defer done()
	ctx := context.Background()
	sb, err := airlock.New(url, "").CreateSandbox(ctx, api.CreateSandboxRequest{})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Terminate(ctx)

	// Any io.Reader works, an *os.File of gigabytes too: the body is streamed.
	if err := sb.WriteFile(ctx, "/tmp/user_code.py", strings.NewReader("print(6*7)\n")); err != nil {
		log.Fatal(err)
	}
	b, err := sb.ReadFile(ctx, "/tmp/user_code.py")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(string(b))
	entries, _ := sb.List(ctx, "/tmp")
	for _, e := range entries {
		fmt.Println(e.Name, e.Type, e.Size)
	}
	// Output:
	// print(6*7)
	// user_code.py file 11
}

func ExampleIsGone() {
	url, done := exampleServer()
	defer done()
	ctx := context.Background()
	c := airlock.New(url, "")
	sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{})
	if err != nil {
		log.Fatal(err)
	}
	sb.Terminate(ctx)

	_, err = c.Sandbox(ctx, sb.ID())
	fmt.Println("gone:", airlock.IsGone(err), "not found:", airlock.IsNotFound(err))
	_, err = c.Sandbox(ctx, "sb-never")
	fmt.Println("gone:", airlock.IsGone(err), "not found:", airlock.IsNotFound(err))
	var ae *api.Error
	fmt.Println(errors.As(err, &ae), ae.Code)
	// Output:
	// gone: true not found: false
	// gone: false not found: true
	// true not_found
}

func ExampleSandbox_PortURL() {
	url, done := exampleServer()
	defer done()
	ctx := context.Background()

	c := airlock.New(url, "")
	sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{Ports: []int{8080}})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Terminate(ctx)
	info, err := sb.Info(ctx)
	if err != nil {
		log.Fatal(err)
	}
	// Whoever has the token (and no API key) reaches port 8080 of this sandbox, and nothing
	// else: send it as the X-Airlock-Port-Token header, or ?airlock_token= from a browser.
	fmt.Println(info.Ports[0].Port, len(info.Ports[0].Token), strings.TrimPrefix(sb.PortURL(8080), url+"/v1/sandboxes/"+sb.ID()))
	// Output:
	// 8080 43 /ports/8080/
}
