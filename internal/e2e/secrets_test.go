package e2e

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/api"
)

const (
	aliceKey = "alice-key-e2e-0123456789"
	bobKey   = "bob-key-e2e-01234567890a"
)

// keysDaemon is a daemon with alice's and bob's keys (limits from keyJSON's entries), named
// secrets and an audit log.
type keysDaemon struct {
	*daemon
	state, auditLog string
	hc              *http.Client
	answers         bytes.Buffer // every body the daemon answered through call
}

// startKeysDaemon writes the key file (aliceLimits and bobLimits are JSON members added to
// each key's entry, "" for none; extra are whole entries of more keys), a secrets key and
// starts the daemon with them.
func startKeysDaemon(t *testing.T, name, aliceLimits, bobLimits string, extra ...string) *keysDaemon {
	t.Helper()
	dir := t.TempDir()
	entry := func(id, key, limits string) string {
		e := `{"id":"` + id + `","key":"` + key + `"`
		if limits != "" {
			e += "," + limits
		}
		return e + "}"
	}
	keyFile := filepath.Join(dir, "keys.json")
	os.WriteFile(keyFile, []byte(`{"keys":[`+entry("alice", aliceKey, aliceLimits)+`,`+entry("bob", bobKey, bobLimits)+strings.Join(append([]string{""}, extra...), ",")+`]}`), 0o600)
	secretKey := filepath.Join(dir, "secrets.key")
	os.WriteFile(secretKey, []byte(strings.Repeat("5a", 32)+"\n"), 0o600)
	auditLog := filepath.Join(dir, "audit.log")
	d, _ := startLimitsDaemon(t, name, "AIRLOCK_API_KEY_FILE", keyFile, "AIRLOCK_SECRETS_KEY_FILE", secretKey, "AIRLOCK_AUDIT_LOG", auditLog)
	return &keysDaemon{daemon: d, auditLog: auditLog, hc: &http.Client{}, state: stateOf(d)}
}

// stateOf is the --state-dir of d's command line.
func stateOf(d *daemon) string {
	for _, e := range d.cmd.Env {
		if args, ok := strings.CutPrefix(e, "AIRLOCK_E2E_DAEMON="); ok {
			f := strings.Fields(args)
			for i := range f {
				if f[i] == "--state-dir" && i+1 < len(f) {
					return f[i+1]
				}
			}
		}
	}
	return ""
}

// call does one request with key, keeps the answer's body, and decodes it into out (if any).
func (kd *keysDaemon) call(t *testing.T, key, method, path, body string, out any) int {
	t.Helper()
	st, b := keyed(t, t.Context(), kd.hc, method, kd.url+path, key, body)
	kd.answers.Write(b)
	kd.answers.WriteByte('\n')
	if out != nil && st < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, st, b, err)
		}
	}
	if st >= 500 {
		t.Fatalf("%s %s: %d %s", method, path, st, b)
	}
	return st
}

// TestNamedSecretReachesOnlyItsSandbox: a secret's variables reach the processes of the
// sandbox, session and run that name it, and nothing else: not another sandbox of the same key,
// not another key (who cannot name it), not an API answer, the daemon's log, the audit log or
// any file of the state directory.
func TestNamedSecretReachesOnlyItsSandbox(t *testing.T) {
	kd := startKeysDaemon(t, "secrets", "", "")
	const value = "sk-e2e-SECRET-VALUE-31337"
	// What a program prints of its environment and every other process's it can see.
	const probe = `printf 'v=%s\n' "$OPENAI_API_KEY"; cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -c SECRET-VALUE || true`
	if st := kd.call(t, aliceKey, "POST", "/v1/secrets", `{"name":"openai","values":{"OPENAI_API_KEY":"`+value+`"}}`, nil); st != 201 {
		t.Fatalf("create secret: %d", st)
	}
	var named, plain, bobs api.SandboxInfo
	if st := kd.call(t, aliceKey, "POST", "/v1/sandboxes", `{"secrets":["openai"]}`, &named); st != 201 {
		t.Fatalf("create the naming sandbox: %d", st)
	}
	if st := kd.call(t, aliceKey, "POST", "/v1/sandboxes", `{}`, &plain); st != 201 {
		t.Fatalf("create the other sandbox: %d", st)
	}
	if st := kd.call(t, bobKey, "POST", "/v1/sandboxes", `{"secrets":["openai"]}`, nil); st != 404 {
		t.Fatalf("bob naming alice's secret: got %d, want 404", st)
	}
	if st := kd.call(t, bobKey, "POST", "/v1/sandboxes", `{}`, &bobs); st != 201 {
		t.Fatalf("create bob's sandbox: %d", st)
	}
	execIn := func(key, id string) string {
		t.Helper()
		body, _ := json.Marshal(api.ExecRequest{Cmd: []string{"sh", "-c", probe}})
		st, b := keyed(t, t.Context(), kd.hc, "POST", kd.url+"/v1/sandboxes/"+id+"/exec", key, string(body))
		var r api.ExecResult
		if st != 200 || json.Unmarshal(b, &r) != nil {
			t.Fatalf("exec in %s: %d %s", id, st, b)
		}
		return r.Stdout
	}
	// The naming sandbox's processes get it (its answer is the one place the value may be).
	if out := execIn(aliceKey, named.ID); !strings.Contains(out, "v="+value+"\n") {
		t.Fatalf("the naming sandbox's process has no secret: %q", out)
	}
	for what, out := range map[string]string{"alice's other sandbox": execIn(aliceKey, plain.ID), "bob's sandbox": execIn(bobKey, bobs.ID)} {
		kd.answers.WriteString(out)
		if out != "v=\n0\n" {
			t.Errorf("%s sees %q, want no secret anywhere in its processes", what, out)
		}
	}
	// One-shot runs and sessions.
	var run api.ExecuteResponse
	kd.call(t, aliceKey, "POST", "/v1/execute", `{"language":"bash","code":"echo \"v=$OPENAI_API_KEY\"","secrets":["openai"]}`, &run)
	if run.Stdout != "v="+value+"\n" {
		t.Fatalf("a run naming the secret printed %q", run.Stdout)
	}
	kd.answers.Reset() // that answer is the run's own output; everything after it is checked
	kd.call(t, aliceKey, "POST", "/v1/execute", `{"language":"bash","code":"echo \"v=$OPENAI_API_KEY\""}`, &run)
	if run.Stdout != "v=\n" {
		t.Errorf("a run not naming it printed %q", run.Stdout)
	}
	var sess api.SessionInfo
	if st := kd.call(t, aliceKey, "POST", "/v1/sessions", `{"secrets":["openai"]}`, &sess); st != 201 {
		t.Fatalf("create session: %d", st)
	}
	st, b := keyed(t, t.Context(), kd.hc, "POST", kd.url+"/v1/sessions/"+sess.ID+"/run", aliceKey,
		`{"code":"import os\nprint(os.environ.get('OPENAI_API_KEY') == '`+value+`')"}`)
	if st != 200 || !strings.Contains(string(b), `"stdout":"True\n"`) {
		t.Fatalf("the session's interpreter has no secret: %d %s", st, b)
	}
	// Every other answer about them: infos, lists, the secret list, errors.
	for _, p := range []string{"/v1/sandboxes", "/v1/sandboxes/" + named.ID, "/v1/sessions/" + sess.ID, "/v1/secrets", "/v1/info"} {
		kd.call(t, aliceKey, "GET", p, "", nil)
	}
	kd.call(t, aliceKey, "POST", "/v1/secrets", `{"name":"bad name","values":{"X":"`+value+`"}}`, nil)
	kd.call(t, aliceKey, "POST", "/v1/secrets", `{"name":"ok","values":{"1X":"`+value+`"}}`, nil)
	// The CLI: create with the value taken from its environment (never its command line), list
	// (names only), remove.
	airlock := func(args string, env ...string) string {
		t.Helper()
		exe, _ := os.Executable()
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), append(env, "AIRLOCK_E2E_DAEMON="+args, "AIRLOCK_SERVER="+kd.url, "AIRLOCK_API_KEY="+aliceKey)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("airlock %s: %v\n%s", args, err, out)
		}
		kd.answers.Write(out)
		return string(out)
	}
	if out := airlock("secret create cli-made CLI_TOKEN", "CLI_TOKEN="+value); !strings.Contains(out, "secret cli-made: CLI_TOKEN") {
		t.Errorf("airlock secret create: %q", out)
	}
	if out := airlock("secret ls"); !strings.Contains(out, "cli-made") || !strings.Contains(out, "openai") {
		t.Errorf("airlock secret ls: %q", out)
	}
	airlock("secret rm cli-made")
	if out := airlock("secret ls"); strings.Contains(out, "cli-made") {
		t.Errorf("airlock secret ls after rm: %q", out)
	}
	kd.call(t, aliceKey, "DELETE", "/v1/sandboxes/"+named.ID, "", nil)
	kd.call(t, aliceKey, "DELETE", "/v1/sessions/"+sess.ID, "", nil)
	kd.stop() // the daemon's last log and audit lines are written
	daemonLog, _ := os.ReadFile(kd.log)
	auditLog, _ := os.ReadFile(kd.auditLog)
	if !bytes.Contains(auditLog, []byte(`"secrets":["openai"]`)) {
		t.Errorf("the audit log does not name the secret a sandbox used:\n%s", auditLog)
	}
	for what, b := range map[string][]byte{"an API answer": kd.answers.Bytes(), "the daemon's log": daemonLog, "the audit log": auditLog} {
		if bytes.Contains(b, []byte(value)) {
			t.Errorf("%s holds the secret's value", what)
		}
	}
	// Nothing the daemon stores holds it: sandbox records, the secret file itself.
	filepath.WalkDir(kd.state, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() && d.Name() == "images" {
			return fs.SkipDir
		}
		if st, err := d.Info(); err == nil && st.Mode().IsRegular() && st.Size() < 4<<20 {
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(value)) {
				t.Errorf("%s holds the secret's value", p)
			}
		}
		return nil
	})
	if ents, _ := filepath.Glob(filepath.Join(kd.state, "secrets", "*", "openai.secret")); len(ents) != 1 {
		t.Errorf("no secret file under the state directory: %v", ents)
	}
}
