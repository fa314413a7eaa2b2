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
