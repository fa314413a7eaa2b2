package e2e

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/engine"
)

// runCLI runs `airlock ARGS` as a child (this test binary re-executed, see TestMain) with
// stdin, and returns its stdout, stderr and exit status. ARGS are split on spaces.
func runCLI(t *testing.T, stdin, args string) (stdout, stderr string, code int) {
	t.Helper()
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "AIRLOCK_E2E_DAEMON="+args)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// `airlock sandbox exec -t` runs the command on a terminal of the sandbox (80×24 when the
// local stdin is not one), forwards stdin to it, and exits with its status; the command's own
// flags need no `--`.
func TestCLIExecTTY(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	id := a.create(`{}`)
	tests := []struct {
		name, stdin, cmd string
		want             []string // substrings of stdout
		code             int
	}{
		{"a terminal of the default size", "", "sh -c tty;stty${IFS}size", []string{"/dev/pts/", "24 80"}, 0},
		{"stdin reaches it", "hello\x04", "head -c 5", []string{"hello"}, 0},
		{"exit status", "", "sh -c exit${IFS}3", nil, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, tc.stdin, "sandbox --server "+a.url+" exec -t "+id+" "+tc.cmd)
			if code != tc.code {
				t.Fatalf("got exit %d (stdout %q stderr %q), want %d", code, out, errOut, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("got stdout %q, want it to contain %q", out, w)
				}
			}
		})
	}
}

// `airlock sandbox cp -r` copies a local tree into a sandbox and back with its modes; a symlink
// made in the sandbox comes out as a symlink, and nothing is written through it.
func TestCLICopyTree(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	id := a.create(`{}`)
	src, back := t.TempDir(), t.TempDir()
	os.MkdirAll(src+"/sub/deeper", 0o755)
	os.WriteFile(src+"/run.sh", []byte("#!/bin/sh\n"), 0o750)
	os.WriteFile(src+"/sub/deeper/secret", []byte("s3cret"), 0o600)
	if out, errOut, code := runCLI(t, "", "sandbox --server "+a.url+" cp -r "+src+" "+id+":tree"); code != 0 {
		t.Fatalf("cp in: %d %q %q", code, out, errOut)
	}
	res := a.exec(id, "sh", "-c", "cd tree && stat -c '%n %a' run.sh sub/deeper/secret && cat sub/deeper/secret && ln -s /etc/passwd tree-link && ln -s /etc/passwd link")
	if want := "run.sh 750\nsub/deeper/secret 600\ns3cret"; res.Stdout != want {
		t.Fatalf("in the sandbox: got %q, want %q", res.Stdout, want)
	}
	if out, errOut, code := runCLI(t, "", "sandbox --server "+a.url+" cp -r "+id+":tree "+back+"/copy"); code != 0 {
		t.Fatalf("cp out: %d %q %q", code, out, errOut)
	}
	for _, f := range []struct {
		name string
		mode os.FileMode
	}{{"run.sh", 0o750}, {"sub/deeper/secret", 0o600}} {
		fi, err := os.Stat(back + "/copy/" + f.name)
		if err != nil || fi.Mode().Perm() != f.mode {
			t.Errorf("%s: got %v %v, want mode %v", f.name, fi, err, f.mode)
		}
	}
	if target, err := os.Readlink(back + "/copy/link"); err != nil || target != "/etc/passwd" {
		t.Errorf("link: got %q, %v, want a symlink to /etc/passwd", target, err)
	}
}
