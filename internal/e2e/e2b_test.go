package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/bench"
)

// The stock npm `e2b` and `@e2b/code-interpreter` SDKs, pinned in
// testdata/npm/e2b/package-lock.json, against a real daemon: E2B's API served at /e2b.

const (
	e2bKey1 = "e2b-e2e-key-00000000000001"
	e2bKey2 = "e2b-e2e-key-00000000000002"
)

// e2bSDK installs the pinned SDK (npm ci from the committed lockfile) once per test binary and
// returns the directory holding it and checks.mjs.
func e2bSDK(t testing.TB) string {
	t.Helper()
	return npmInstall(t, "e2b", "checks.mjs")
}

// e2bDaemon starts a daemon with two API keys.
func e2bDaemon(t *testing.T) *daemon {
	t.Helper()
	mustEngine(t)
	state, err := os.MkdirTemp("", "airlock-e2b-") // t.TempDir's parent is 0700: not traversable
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	cg := fmt.Sprintf("airlock-e2b-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	t.Setenv("AIRLOCK_API_KEYS", e2bKey1+","+e2bKey2)
	d := startDaemon(t, state, cg, freeAddr(t))
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.stop()
		}
	})
	return d
}

// e2bResult is a check's JSON answer, decoded loosely.
type e2bResult map[string]any

// get walks a decoded result by keys.
func (r e2bResult) get(path ...string) any {
	var v any = map[string]any(r)
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func (r e2bResult) str(path ...string) string {
	s, _ := r.get(path...).(string)
	return s
}

// runE2B runs one check of checks.mjs with key as E2B_API_KEY.
func runE2B(t *testing.T, d *daemon, key, check string, args ...string) e2bResult {
	t.Helper()
	dir := e2bSDK(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{"checks.mjs", check}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "E2B_API_URL="+d.url+"/e2b", "E2B_SANDBOX_URL="+d.url+"/e2b/sandbox",
		"E2B_API_KEY="+key, "HOME="+t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var res e2bResult
	if jerr := json.Unmarshal(out, &res); jerr != nil || err != nil {
		t.Fatalf("node checks.mjs %s: %v\nstdout: %s\nstderr: %s", check, err, out, stderr.String())
	}
	return res
}

// TestE2BSDK drives the daemon with the stock E2B SDKs: commands, files, timeouts, the code
// interpreter, connect by id and list, the same sandbox as /v1 sees it, and refusals in the
// SDK's error classes for a wrong key and another key's sandbox.
func TestE2BSDK(t *testing.T) {
	d := e2bDaemon(t)
	e2bSDK(t)

	t.Run("commands", func(t *testing.T) {
		r := runE2B(t, d, e2bKey1, "commands")
		for _, c := range []struct {
			name string
			got  any
			want any
		}{
			{"echo stdout", r.str("echo", "stdout"), "hello\n"},
			{"echo exit code", r.get("echo", "exitCode"), 0.0},
			{"exit 3 class", r.str("exit", "name"), "CommandExitError"},
			{"exit 3 code", r.get("exit", "exitCode"), 3.0},
			{"exit 3 stderr", r.str("exit", "stderr"), "oops\n"},
			{"exit 5 is a CommandExitError", r.get("exitError", "isCommandExitError"), true},
			{"exit 5 code", r.get("exitError", "exitCode"), 5.0},
			{"streamed stdout", r.str("streamed", "stdout"), "out1\nout2\nout3\n"},
			{"streamed stderr", r.str("streamed", "stderr"), "err1\nerr2\nerr3\n"},
			{"envs and cwd", r.str("env"), "bar\n/tmp\n"},
			{"background listed", r.get("background", "listed"), true},
			{"background killed", r.get("background", "killed"), true},
			{"killed command's wait", r.str("background", "wait", "name"), "CommandExitError"},
			{"kill of no process", r.get("background", "killMissing"), false},
			{"stdin", r.str("stdin"), "hi from stdin\n"},
			{"stream past its timeout", r.str("reattach", "cut"), "TimeoutError"},
			{"reattached pid", r.get("reattach", "pid"), true},
			{"output after reattaching", r.str("reattach", "stdout"), "late\n"},
			{"exit after reattaching", r.get("reattach", "exitCode"), 0.0},
		} {
			if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
				t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
			}
		}
		// onStdout fires per chunk as the command prints (it sleeps between lines).
		if got, _ := r.get("streamed", "chunks", "stdout").([]any); len(got) < 2 {
			t.Errorf("onStdout chunks: got %v, want one per line", got)
		}
	})

	t.Run("pty", func(t *testing.T) {
		r := runE2B(t, d, e2bKey1, "pty")
		if out := r.str("out"); !strings.Contains(out, "30 100") || !strings.Contains(out, "pty-42") {
			t.Errorf("terminal output: got %q, want the new size (30 100) and pty-42", out)
		}
		if got := r.get("end", "exitCode"); got != 7.0 {
			t.Errorf("terminal's exit: got %v, want a CommandExitError with 7", r.get("end"))
		}
	})

	t.Run("files", func(t *testing.T) {
		r := runE2B(t, d, e2bKey1, "files")
		for _, c := range []struct {
			name string
			got  any
			want any
		}{
			{"write path", r.str("wrote", "path"), "/tmp/e2b/dir/hello.txt"},
			{"read text", r.str("text"), "hello files"},
			{"read bytes", fmt.Sprint(r.get("bytesOut")), "[0 1 2 253 254 255]"},
			{"multi-file write", fmt.Sprint(r.get("multi")), "[/tmp/e2b/m/a.txt /tmp/e2b/m/b.txt]"},
			{"makeDir", r.get("mkdir"), true},
			{"makeDir of an existing dir", r.get("mkdirAgain"), false},
			{"exists before remove", r.get("existsBefore"), true},
			{"exists after remove", r.get("existsAfter"), false},
			{"directory tree removed", r.get("dirGone"), false},
			{"rename", r.str("renamed"), "/tmp/e2b/moved.txt"},
			{"read renamed", r.str("movedText"), "hello files"},
			{"getInfo", fmt.Sprint(r.get("info")), "map[name:moved.txt size:11 type:file]"},
			{"missing file class", r.str("missing", "name"), "FileNotFoundError"},
			{"written file seen by a command", r.str("cat"), "hello files"},
		} {
			if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
				t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
			}
		}
		list, _ := r.get("list").([]any)
		var names []string
		for _, e := range list {
			m, _ := e.(map[string]any)
			names = append(names, fmt.Sprint(m["name"], ":", m["type"]))
		}
		if want := []string{"bin.dat:file", "dir:dir", "m:dir", "newdir:dir"}; !slices.Equal(names, want) {
			t.Errorf("list: got %v, want %v", names, want)
		}
	})

	t.Run("timeouts", func(t *testing.T) {
		r := runE2B(t, d, e2bKey1, "timeouts")
		start, _ := time.Parse(time.RFC3339, r.str("startedAt"))
		before, _ := time.Parse(time.RFC3339, r.str("endBefore"))
		after, _ := time.Parse(time.RFC3339, r.str("endAfter"))
		if got := before.Sub(start); got < 59*time.Second || got > 61*time.Second {
			t.Errorf("endAt at create: %v after start, want 60 s", got)
		}
		if !after.Before(before) {
			t.Errorf("endAt after setTimeout(2000): got %v, want before %v", after, before)
		}
		if r.get("running") != false || r.get("listed") != false {
			t.Errorf("an expired sandbox: isRunning %v, listed %v; want false, false", r.get("running"), r.get("listed"))
		}
		if got := r.str("info", "name"); got != "SandboxNotFoundError" {
			t.Errorf("getInfo of an expired sandbox: got %v, want SandboxNotFoundError", r.get("info"))
		}
		if r.get("command", "ok") != nil {
			t.Errorf("a command in an expired sandbox: got %v, want an error", r.get("command"))
		}
	})

	t.Run("code interpreter", func(t *testing.T) {
		r := runE2B(t, d, e2bKey1, "interpreter")
		for _, c := range []struct {
			name string
			got  any
			want any
		}{
			{"state across cells", r.str("state"), "42"},
			{"matplotlib PNG", fmt.Sprint(r.get("png")), "[iVBORw0KGgoA]"},
			{"error name", r.str("error", "name"), "ZeroDivisionError"},
			{"error value", r.str("error", "value"), "division by zero"},
			{"error traceback", r.get("error", "traceback"), true},
			{"stdout log", fmt.Sprint(r.get("streamed", "logs", "stdout")), "[to out\n]"},
			{"stderr log", fmt.Sprint(r.get("streamed", "logs", "stderr")), "[to err\n]"},
			{"onStdout", fmt.Sprint(r.get("streamed", "callbacks", "stdout")), "[to out\n]"},
			{"onStderr", fmt.Sprint(r.get("streamed", "callbacks", "stderr")), "[to err\n]"},
			{"contexts", fmt.Sprint(r.get("contexts", "ok")), "[default]"},
		} {
			if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
				t.Errorf("%s: got %q, want %q", c.name, fmt.Sprint(c.got), fmt.Sprint(c.want))
			}
		}
		if got := fmt.Sprint(r.get("html")); !strings.HasPrefix(got, "[<b>bold</b>") {
			t.Errorf("html result: got %s, want <b>bold</b> first", got)
		}
	})

	t.Run("same sandbox, connect, refusals", func(t *testing.T) {
		id := runE2B(t, d, e2bKey1, "create").str("sandboxId")
		var sb struct {
			ID     string            `json:"id"`
			Status string            `json:"status"`
			Tags   map[string]string `json:"tags"`
		}
		if code := getV1(t, d, e2bKey1, "/v1/sandboxes/"+id, &sb); code != 200 || sb.Status != "running" || sb.Tags["suite"] != "e2b-e2e" {
			t.Fatalf("GET /v1/sandboxes/%s: %d %+v; want 200, running, tagged with the E2B metadata", id, code, sb)
		}
		if code := getV1(t, d, e2bKey2, "/v1/sandboxes/"+id, nil); code != 404 {
			t.Errorf("GET /v1/sandboxes/%s with the other key: %d, want 404", id, code)
		}

		other := runE2B(t, d, e2bKey2, "refused", id)
		for _, c := range []struct{ name, got, want string }{
			{"connect another key's sandbox", other.str("connect", "name"), "SandboxNotFoundError"},
			{"getInfo of another key's sandbox", other.str("info", "name"), "SandboxNotFoundError"},
			{"kill another key's sandbox", fmt.Sprint(other.get("kill", "ok")), "false"},
			{"unknown template", other.str("badTemplate", "name"), "SandboxError"},
		} {
			if c.got != c.want {
				t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
			}
		}
		if l, _ := other.get("list", "ok").([]any); slices.Contains(l, any(id)) {
			t.Errorf("the other key's list shows %s: %v", id, l)
		}
		if !strings.Contains(other.str("badTemplate", "error"), "404") {
			t.Errorf("unknown template: got %q, want a 404 naming it", other.str("badTemplate", "error"))
		}

		wrong := runE2B(t, d, "not-an-airlock-key-at-all", "refused", id)
		for _, call := range []string{"create", "connect", "info", "kill", "list"} {
			if got := wrong.str(call, "name"); got != "AuthenticationError" {
				t.Errorf("%s with a wrong key: got %v, want AuthenticationError", call, wrong.get(call))
			}
		}

		// A second process connects by id, finds the file the first wrote, lists by metadata
		// and kills; /v1 then sees the sandbox gone.
		c := runE2B(t, d, e2bKey1, "connect", id)
		for _, x := range []struct{ name, got, want string }{
			{"file from the first process", c.str("marker"), "made through E2B"},
			{"command", c.str("run"), "connected\n"},
			{"list by metadata", fmt.Sprint(c.get("listed")), "[" + id + "]"},
			{"list by other metadata", fmt.Sprint(c.get("other")), "0"},
			{"template", c.str("templateId"), "base"},
			{"kill", fmt.Sprint(c.get("killed")), "true"},
			{"kill again", fmt.Sprint(c.get("killedAgain")), "false"},
		} {
			if x.got != x.want {
				t.Errorf("%s: got %q, want %q", x.name, x.got, x.want)
			}
		}
		if code := getV1(t, d, e2bKey1, "/v1/sandboxes/"+id, nil); code != 410 {
			t.Errorf("GET /v1/sandboxes/%s after the E2B kill: %d, want 410", id, code)
		}
	})

	t.Run("access tokens", func(t *testing.T) { e2bTokenAttacks(t, d) })
}

// getV1 GETs an Airlock /v1 path with key and decodes a 200's body into out.
func getV1(t *testing.T, d *daemon, key, path string, out any) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", d.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == 200 && out != nil {
		decodeJSON(t, resp, out)
	}
	return resp.StatusCode
}

// e2bTokenAttacks tries the data plane with every credential but the right one: another
// sandbox's access token, an API key, none; an upload whose path climbs to the host's /tmp; and
// a command run with its own token that tries to read the other sandbox's files through the
// host paths it can see.
func e2bTokenAttacks(t *testing.T, d *daemon) {
	type created struct {
		SandboxID       string `json:"sandboxID"`
		EnvdAccessToken string `json:"envdAccessToken"`
	}
	create := func(key string) created {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), "POST", d.url+"/e2b/v2/sandboxes", strings.NewReader(`{"templateID":"base","timeout":60}`))
		req.Header.Set("X-API-KEY", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var c created
		if resp.StatusCode != 201 {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("create: %d %s", resp.StatusCode, b)
		}
		decodeJSON(t, resp, &c)
		t.Cleanup(func() {
			req, _ := http.NewRequest("DELETE", d.url+"/e2b/sandboxes/"+c.SandboxID, nil)
			req.Header.Set("X-API-KEY", key)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		})
		return c
	}
	a, b := create(e2bKey1), create(e2bKey2)
	// The victim b keeps a secret in its sandbox.
	stat := func(id string, hdr map[string]string, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), "POST", d.url+"/e2b/sandbox/filesystem.Filesystem/Stat", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("E2b-Sandbox-Id", id)
		req.Header.Set("E2b-Sandbox-Port", "49983")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}
	if code, body := stat(b.SandboxID, map[string]string{"X-Access-Token": b.EnvdAccessToken}, `{"path":"/tmp"}`); code != 200 {
		t.Fatalf("stat with the sandbox's own token: %d %s", code, body)
	}
	for _, c := range []struct {
		name string
		hdr  map[string]string
	}{
		{"another sandbox's token", map[string]string{"X-Access-Token": a.EnvdAccessToken}},
		{"another sandbox's token as the traffic token", map[string]string{"E2B-Traffic-Access-Token": a.EnvdAccessToken}},
		{"the owner's API key", map[string]string{"X-API-KEY": e2bKey2, "Authorization": "Bearer " + e2bKey2}},
		{"no token", nil},
		{"a prefix of the token", map[string]string{"X-Access-Token": b.EnvdAccessToken[:16]}},
	} {
		if code, body := stat(b.SandboxID, c.hdr, `{"path":"/tmp"}`); code != 401 || !strings.Contains(body, `"unauthenticated"`) {
			t.Errorf("%s: got %d %s, want 401 unauthenticated", c.name, code, body)
		}
	}
	// Paths a command runs with under a's token stay in a's sandbox: the other sandbox's
	// state on the host is out of its reach.
	run := func(tok, id, cmd string) string {
		req, _ := http.NewRequestWithContext(t.Context(), "POST", d.url+"/e2b/sandbox/process.Process/Start",
			bytes.NewReader(envelope(fmt.Sprintf(`{"process":{"cmd":"/bin/sh","args":["-c",%q]}}`, cmd))))
		req.Header.Set("Content-Type", "application/connect+json")
		req.Header.Set("Connect-Protocol-Version", "1")
		req.Header.Set("E2b-Sandbox-Id", id)
		req.Header.Set("X-Access-Token", tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return string(out)
	}
	// An upload whose multipart filename climbs out of the root lands inside the sandbox, never
	// on the host.
	escape := fmt.Sprintf("airlock-e2b-escape-%d", os.Getpid())
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, _ := mw.CreateFormFile("file", "/../../../../../../tmp/"+escape)
	fw.Write([]byte("escaped"))
	mw.Close()
	req, _ := http.NewRequestWithContext(t.Context(), "POST", d.url+"/e2b/sandbox/files", &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("E2b-Sandbox-Id", a.SandboxID)
	req.Header.Set("X-Access-Token", a.EnvdAccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	t.Cleanup(func() { os.Remove("/tmp/" + escape) })
	if _, err := os.Stat("/tmp/" + escape); err == nil {
		t.Errorf("an upload to /../../tmp/%s reached the host's /tmp (status %d)", escape, resp.StatusCode)
	}
	run(b.EnvdAccessToken, b.SandboxID, "echo victim-secret > /tmp/secret")
	out := run(a.EnvdAccessToken, a.SandboxID, "cat /tmp/secret 2>&1; ls /proc/*/root/tmp/secret 2>&1 | head -3")
	if strings.Contains(out, "dmljdGltLXNlY3JldA") { // base64 of "victim-secret"
		t.Errorf("sandbox a read sandbox b's file: %q", out)
	}
}

// envelope frames msg as one Connect streaming envelope (flag 0, big-endian length).
func envelope(msg string) []byte {
	n := len(msg)
	return append([]byte{0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}, msg...)
}

// TestE2BBenchPaired measures create → commands.run echo → kill through the npm e2b SDK and
// create → exec echo (and bash -l -c echo) → terminate through Airlock's Go SDK against one daemon, in alternating
// blocks so that drift hits both alike. It runs only when asked (AIRLOCK_BENCH_E2B=ROUNDS, e.g.
// 20), as a measurement:
//
//	CGO_ENABLED=0 AIRLOCK_TEST_VM=0 AIRLOCK_BENCH_E2B=20 go test -count=1 -v -run TestE2BBenchPaired ./internal/e2e/
func TestE2BBenchPaired(t *testing.T) {
	n := os.Getenv("AIRLOCK_BENCH_E2B")
	if n == "" {
		t.Skip("a measurement: set AIRLOCK_BENCH_E2B=ROUNDS to run it")
	}
	rounds, err := strconv.Atoi(n)
	if err != nil || rounds < 1 {
		t.Fatalf("AIRLOCK_BENCH_E2B=%q: want a number of rounds", n)
	}
	d := e2bDaemon(t)
	e2bSDK(t)
	c := airlock.New(d.url, e2bKey1)
	goRounds := func(cmd ...string) []time.Duration {
		var out []time.Duration
		for range rounds {
			t0 := time.Now()
			sb, err := c.CreateSandbox(t.Context(), api.CreateSandboxRequest{Timeout: 60})
			if err != nil {
				t.Fatal(err)
			}
			p, err := sb.Exec(t.Context(), cmd...)
			if err != nil {
				t.Fatal(err)
			}
			p.Stdin.Close()
			got, _ := io.ReadAll(p.Stdout)
			if r, err := p.Wait(); err != nil || string(got) != "hi\n" {
				t.Fatalf("echo: %q %+v, %v", got, r, err)
			}
			if err := sb.Terminate(t.Context()); err != nil {
				t.Fatal(err)
			}
			out = append(out, time.Since(t0))
		}
		return out
	}
	for block := 1; block <= 3; block++ {
		var js []time.Duration
		for _, v := range runE2B(t, d, e2bKey1, "bench", n).get("ms").([]any) {
			js = append(js, time.Duration(v.(float64)*float64(time.Millisecond)))
		}
		// The E2B SDK runs every command as /bin/bash -l -c CMD: the third series runs that
		// through the Go SDK, so that the login shell's cost is told apart from the protocol's.
		sj, sg := bench.Summarize(js), bench.Summarize(goRounds("echo", "hi"))
		sb := bench.Summarize(goRounds("/bin/bash", "-l", "-c", "echo hi"))
		t.Logf("block %d, %d rounds: npm e2b SDK p50 %.1f ms p90 %.1f ms | Go SDK echo p50 %.1f ms p90 %.1f ms | Go SDK bash -l -c echo p50 %.1f ms p90 %.1f ms | npm÷Go echo %.2f×, npm÷Go bash %.2f×",
			block, rounds, sj.P50, sj.P90, sg.P50, sg.P90, sb.P50, sb.P90, sj.P50/sg.P50, sj.P50/sb.P50)
	}
}
