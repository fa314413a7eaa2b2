package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/image"
	"github.com/airlockhq/airlock/internal/testutil"
)

// The stock npm `modal` SDK, pinned in testdata/npm/modal/package-lock.json, against a real
// daemon: Modal's client API served over h2c on the daemon's listener.

const (
	modalKey1 = "modal-e2e-key-000000000001"
	modalKey2 = "modal-e2e-key-000000000002"
	// modalImage is the name the JS code asks for; the test, as an operator would, tags the
	// e2e python image under it in the daemon's store.
	modalImage = "python:3.11-slim"
)

// modalSDK installs the pinned SDK (npm ci from the committed lockfile) once per test binary and
// returns the directory holding it and checks.mjs.
func modalSDK(t testing.TB) string {
	t.Helper()
	return npmInstall(t, "modal", "checks.mjs")
}

// modalDaemon starts a daemon with two API keys whose image store holds the e2e python image
// under modalImage.
func modalDaemon(t *testing.T) *daemon {
	t.Helper()
	mustEngine(t)
	testutil.MustHaveFile(t, "/bin/busybox", "busybox-static")
	// The operator's part: pull an image and tag it under the name the code asks for, in the
	// store the daemon will open.
	state, st := stateWithStore(t, "airlock-modal-")
	ref, _, stop, err := servePythonImage(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img, err := st.Pull(t.Context(), ref, image.PullOptions{Insecure: true})
	stop()
	if err != nil {
		t.Fatal(err)
	}
	// A layer as python:3.11-slim has it: python, and the coreutils the checks use.
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	links := map[string]string{"usr/bin/python": "python3"}
	for _, tool := range []string{"sleep", "pwd"} {
		links["usr/bin/"+tool] = "busybox"
	}
	for name, target := range links {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777})
	}
	tw.Close()
	if _, err := st.Commit(t.Context(), img, &layer, modalImage); err != nil {
		t.Fatal(err)
	}
	cg := fmt.Sprintf("airlock-modal-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	t.Setenv("AIRLOCK_API_KEYS", modalKey1+","+modalKey2)
	d := startDaemon(t, state, cg, freeAddr(t))
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.stop()
		}
	})
	return d
}

// modalJSResult is a check's JSON answer, decoded loosely.
type modalJSResult map[string]any

// runModal runs one check of checks.mjs with key as MODAL_TOKEN_SECRET.
func runModal(t *testing.T, d *daemon, key, check string, args ...string) modalJSResult {
	t.Helper()
	return runModalEnv(t, d, nil, key, check, args...)
}

// runModalEnv is runModal with more environment (NAME=value) for the client.
func runModalEnv(t *testing.T, d *daemon, env []string, key, check string, args ...string) modalJSResult {
	t.Helper()
	dir := modalSDK(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{"checks.mjs", check}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MODAL_SERVER_URL=http://"+d.addr, "MODAL_TOKEN_ID=airlock",
		"MODAL_TOKEN_SECRET="+key, "MODAL_CONFIG_PATH=/dev/null", "HOME="+t.TempDir(), "MODAL_E2E_IMAGE="+modalImage)
	cmd.Env = append(cmd.Env, env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var res modalJSResult
	if jerr := json.Unmarshal(out, &res); jerr != nil || err != nil {
		t.Fatalf("node checks.mjs %s: %v\nstdout: %s\nstderr: %s", check, err, out, stderr.String())
	}
	return res
}

// get walks a decoded result by keys.
func (r modalJSResult) get(path ...string) any {
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

func (r modalJSResult) str(path ...string) string {
	s, _ := r.get(path...).(string)
	return s
}

func (r modalJSResult) num(path ...string) float64 {
	n, _ := r.get(path...).(float64)
	return n
}

// TestModalSDK drives the daemon with the stock JS SDK: the seed's execute_code flow, stdin,
// env and workdir, timeouts, files, fromId and list by tags, terminate-then-use, refusals in
// Modal's error shape, and another key's sandbox.
func TestModalSDK(t *testing.T) {
	d := modalDaemon(t)
	modalSDK(t)

	t.Run("seed execute_code", func(t *testing.T) {
		r := runModal(t, d, modalKey1, "seed")
		if got := r.str("ok", "stdout"); got != "42\n" {
			t.Errorf("stdout: got %q, want %q (result %v)", got, "42\n", r["ok"])
		}
		if got := r.str("ok", "stderr"); got != "to stderr\n" {
			t.Errorf("stderr: got %q, want %q", got, "to stderr\n")
		}
		if got := r.get("ok", "success"); got != true {
			t.Errorf("success: got %v, want true", got)
		}
		if got := r.num("fail", "returncode"); got != 3 {
			t.Errorf("SystemExit(3): got returncode %v, want 3 (%v)", got, r["fail"])
		}
		if got := r.str("net", "stdout"); !strings.HasPrefix(got, "blocked") {
			t.Errorf("blockNetwork: got %q, want the connection refused", got)
		}
		// terminate ended the sandbox: Airlock's own API sees it gone.
		if id := r.str("ok", "sandboxId"); id == "" {
			t.Errorf("no sandbox id in %v", r["ok"])
		} else if code := getStatus(t, d, modalKey1, "/v1/sandboxes/"+id); code != http.StatusGone {
			t.Errorf("GET /v1/sandboxes/%s after terminate: %d, want 410", id, code)
		}
	})

	t.Run("stdin", func(t *testing.T) {
		r := runModal(t, d, modalKey1, "stdin")
		if got, want := r.str("stdout"), "hello stdin\n"; got != want || r.num("code") != 0 {
			t.Errorf("cat: got %q (exit %v), want %q (exit 0)", got, r["code"], want)
		}
	})

	t.Run("env and workdir", func(t *testing.T) {
		r := runModal(t, d, modalKey1, "envWorkdir")
		if got, want := r.str("first"), "from-create from-exec /tmp\n"; got != want {
			t.Errorf("got %q, want %q", got, want)
		}
		if got, want := r.str("second"), "/etc\n"; got != want {
			t.Errorf("exec workdir: got %q, want %q", got, want)
		}
	})

	t.Run("exec timeout", func(t *testing.T) {
		r := runModal(t, d, modalKey1, "execTimeout")
		// Either the daemon's kill (124, Airlock's timeout status) reached the client first,
		// or the client's own deadline passed first: never the sleep's full 30 s exit 0.
		if code, ok := r.get("code").(float64); ok {
			if code != 124 {
				t.Errorf("got exit %v, want 124", code)
			}
		} else if !strings.Contains(r.str("error"), "Deadline exceeded") {
			t.Errorf("got %v, want exit 124 or the client's deadline error", r)
		}
	})

	t.Run("sandbox timeout", func(t *testing.T) {
		r := runModal(t, d, modalKey1, "sandboxTimeout")
		if got := r.num("code"); got != 124 {
			t.Errorf("sb.wait() after the sandbox's timeout: got %v, want 124", got)
		}
	})

	t.Run("files", func(t *testing.T) {
		r := runModal(t, d, modalKey1, "files")
		if got := r.str("text"); got != "text file\n" {
			t.Errorf("readText: got %q", got)
		}
		if got := fmt.Sprint(r.get("bytes")); got != "[0 1 2 255]" {
			t.Errorf("readBytes: got %s, want [0 1 2 255]", got)
		}
		if got := fmt.Sprint(r.get("list")); got != "[b.bin:file e:directory]" {
			t.Errorf("listFiles: got %s", got)
		}
		if r.num("size") != 10 || r.str("type") != "file" {
			t.Errorf("stat: got size %v type %q, want 10 file", r["size"], r["type"])
		}
		if got := r.str("missing", "name"); got != "SandboxFilesystemNotFoundError" {
			t.Errorf("reading a removed file: got %v, want SandboxFilesystemNotFoundError", r["missing"])
		}
		if got := r.str("cat"); got != "seen by cat" {
			t.Errorf("cat of a file written through sb.filesystem: got %q", got)
		}
	})

	t.Run("fromId and list by tags", func(t *testing.T) {
		r := runModal(t, d, modalKey1, "fromId")
		id := r.str("id")
		if got := r.str("stdout"); got != "same sandbox\n" {
			t.Errorf("exec through fromId: got %q", got)
		}
		listed, _ := r.get("listed").([]any)
		if !slices.Contains(listed, any(id)) {
			t.Errorf("list by tag: %v lacks %s", listed, id)
		}
		if none, _ := r.get("none").([]any); len(none) != 0 {
			t.Errorf("list by an unknown tag: got %v, want none", none)
		}
		// The same sandbox as /v1 sees it: its tags included.
		var info api.SandboxInfo
		if code := getJSON(t, d, modalKey1, "/v1/sandboxes/"+id, &info); code != 200 || info.Tags["suite"] != "modal-e2e" {
			t.Errorf("GET /v1/sandboxes/%s: %d %+v, want 200 with tag suite=modal-e2e", id, code, info)
		}
		tr := runModal(t, d, modalKey1, "terminateThenUse", id)
		if got := tr.num("code"); got != 137 {
			t.Errorf("wait after terminate: got %v, want 137", got)
		}
		if tr.str("exec", "error") == "" {
			t.Errorf("exec after terminate: got %v, want an error", tr["exec"])
		}
		t.Logf("exec after terminate: %s: %s", tr.str("exec", "name"), tr.str("exec", "error"))
	})

	t.Run("V1 family", func(t *testing.T) {
		// MODAL_SANDBOX_V2=0: SandboxCreate, SandboxGetTaskId, TaskGetCommandRouterAccess and
		// the V1 waits, over the same sandboxes.
		v1 := []string{"MODAL_SANDBOX_V2=0"}
		r := runModalEnv(t, d, v1, modalKey1, "seed")
		if got := r.str("ok", "stdout"); got != "42\n" || r.num("fail", "returncode") != 3 {
			t.Errorf("seed on V1: got %v", r)
		}
		if got, want := runModalEnv(t, d, v1, modalKey1, "envWorkdir").str("first"), "from-create from-exec /tmp\n"; got != want {
			t.Errorf("env on V1 (an ephemeral secret): got %q, want %q", got, want)
		}
	})

	t.Run("dockerfileCommands", func(t *testing.T) {
		r := runModal(t, d, modalKey1, "dockerfile")
		if got, want := r.str("stdout"), "built\nyes\n/opt/app\n"; got != want {
			t.Errorf("got %q, want %q (%v)", got, want, r)
		}
		if e := r.str("unsupported", "error"); !strings.Contains(e, `"USER nobody" is not supported`) {
			t.Errorf("USER: got %v, want the builder's refusal naming it", r["unsupported"])
		}
	})

	t.Run("host files stay out of reach", func(t *testing.T) {
		// The filesystem convention is served daemon-side: prove it reaches only the
		// sandbox's tree, not the daemon's, whatever path it is given.
		secret := filepath.Join(os.TempDir(), fmt.Sprintf("airlock-modal-host-%d", os.Getpid()))
		if err := os.WriteFile(secret, []byte("HOST-SECRET"), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(secret) })
		r := runModal(t, d, modalKey1, "hostFile", secret)
		for k, v := range r {
			if strings.Contains(fmt.Sprint(v), "HOST-SECRET") {
				t.Errorf("%s read the host's file: %v", k, v)
			}
		}
		if r.str("fs", "name") != "SandboxFilesystemNotFoundError" {
			t.Errorf("readText of a host path: got %v, want SandboxFilesystemNotFoundError", r["fs"])
		}
	})

	t.Run("resources and network as /v1 sees them", func(t *testing.T) {
		for _, tc := range []struct{ kind, want string }{
			{"sized", "cpu 0.5, 256 MiB, idle 60 s, network block"},
			{"open", "cpu 1, 512 MiB, idle 0 s, network internet"},
		} {
			id := runModal(t, d, modalKey1, "create", tc.kind).str("id")
			var info api.SandboxInfo
			if code := getJSON(t, d, modalKey1, "/v1/sandboxes/"+id, &info); code != 200 {
				t.Fatalf("GET /v1/sandboxes/%s: %d", id, code)
			}
			got := fmt.Sprintf("cpu %v, %d MiB, idle %v s, network %s", info.CPU, info.MemoryMB, info.IdleTimeout, info.Network.Mode)
			if got != tc.want {
				t.Errorf("%s: got %s, want %s", tc.kind, got, tc.want)
			}
			runModal(t, d, modalKey1, "terminateThenUse", id)
		}
	})

	t.Run("wrong key", func(t *testing.T) {
		r := runModal(t, d, "not-a-key-of-this-daemon-000", "wrongKey")
		t.Logf("wrong key: %s: %s", r.str("name"), r.str("error"))
		if !strings.Contains(r.str("error"), "UNAUTHENTICATED") && !strings.Contains(r.str("error"), "invalid API key") {
			t.Errorf("got %v, want UNAUTHENTICATED", r)
		}
	})

	t.Run("another key's sandbox", func(t *testing.T) {
		id := runModal(t, d, modalKey1, "create").str("id")
		if id == "" {
			t.Fatal("no sandbox made")
		}
		r := runModal(t, d, modalKey2, "useOther", id)
		t.Logf("another key's exec: %s: %s; terminate: %s: %s", r.str("exec", "name"), r.str("exec", "error"),
			r.str("terminate", "name"), r.str("terminate", "error"))
		for _, op := range []string{"exec", "terminate"} {
			if e := r.str(op, "error"); !strings.Contains(e, "NOT_FOUND") && !strings.Contains(e, "not found") && !strings.Contains(e, "no sandbox") {
				t.Errorf("%s on another key's sandbox: got %v, want NOT_FOUND", op, r[op])
			}
		}
		// Still the first key's, alive.
		if code := getStatus(t, d, modalKey1, "/v1/sandboxes/"+id); code != 200 {
			t.Errorf("the owner's GET after the other key's attempts: %d, want 200", code)
		}
		runModal(t, d, modalKey1, "terminateThenUse", id)
	})

	t.Run("refusals", func(t *testing.T) {
		r := runModal(t, d, modalKey1, "refused")
		for k, v := range r {
			t.Logf("refused %s: %v", k, v)
		}
		wants := map[string]string{"gpu": "no GPUs", "memory": "memory", "timeout": "timeout", "image": "not in the daemon's image store", "app": "not found"}
		keys := make([]string, 0, len(wants))
		for k := range wants {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if e := r.str(k, "error"); !strings.Contains(e, wants[k]) {
				t.Errorf("%s: got %v, want an error containing %q", k, r[k], wants[k])
			}
		}
		if got := r.str("app", "name"); got != "NotFoundError" {
			t.Errorf("apps.fromName of a missing app: got %s, want NotFoundError", got)
		}
	})
}

func getStatus(t *testing.T, d *daemon, key, path string) int {
	t.Helper()
	return getJSON(t, d, key, path, nil)
}

func getJSON(t *testing.T, d *daemon, key, path string, out any) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", d.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode == 200 {
		json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

// TestModalBenchPaired measures create → exec echo → terminate through the npm SDK and the
// same through Airlock's Go SDK against one daemon, in alternating blocks so that drift hits
// both alike. It runs only when asked (AIRLOCK_BENCH_MODAL=ROUNDS, e.g. 20), as a measurement:
//
//	CGO_ENABLED=0 AIRLOCK_TEST_VM=0 AIRLOCK_BENCH_MODAL=20 go test -count=1 -v -run TestModalBenchPaired ./internal/e2e/
func TestModalBenchPaired(t *testing.T) {
	n := os.Getenv("AIRLOCK_BENCH_MODAL")
	if n == "" {
		t.Skip("a measurement: set AIRLOCK_BENCH_MODAL=ROUNDS to run it")
	}
	d := modalDaemon(t)
	modalSDK(t)
	c := airlock.New(d.url, modalKey1)
	goRounds := func(rounds int) []float64 {
		var ms []float64
		for range rounds {
			t0 := time.Now()
			sb, err := c.CreateSandbox(t.Context(), api.CreateSandboxRequest{Image: modalImage})
			if err != nil {
				t.Fatal(err)
			}
			p, err := sb.Exec(t.Context(), "echo", "hi")
			if err != nil {
				t.Fatal(err)
			}
			p.Stdin.Close()
			out, _ := io.ReadAll(p.Stdout)
			if r, err := p.Wait(); err != nil || string(out) != "hi\n" {
				t.Fatalf("echo: %q %+v, %v", out, r, err)
			}
			if err := sb.Terminate(t.Context()); err != nil {
				t.Fatal(err)
			}
			ms = append(ms, float64(time.Since(t0).Microseconds())/1000)
		}
		return ms
	}
	rounds, err := strconv.Atoi(n)
	if err != nil || rounds < 1 {
		t.Fatalf("AIRLOCK_BENCH_MODAL=%q: want a number of rounds", n)
	}
	for block := 1; block <= 3; block++ {
		var js []float64
		for _, v := range runModal(t, d, modalKey1, "bench", n).get("ms").([]any) {
			js = append(js, v.(float64))
		}
		gs := goRounds(rounds)
		pj, pg := percentile(js, 50), percentile(gs, 50)
		t.Logf("block %d, %d rounds: npm modal SDK p50 %.1f ms p90 %.1f ms | Go SDK p50 %.1f ms p90 %.1f ms | ratio %.2f×",
			block, rounds, pj, percentile(js, 90), pg, percentile(gs, 90), pj/pg)
	}
}

// percentile is the p-th percentile of v (nearest rank).
func percentile(v []float64, p int) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[max(0, (len(s)*p+99)/100-1)]
}
