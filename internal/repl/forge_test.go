//go:build linux

package repl

import (
	"strings"
	"testing"
)

// forgeCell is the review's L1 attack: the cell writes an end marker with the token "0"*32 to fds
// 1 and 2 and a "done" frame naming that token to the driver's reply fd, then goes on with its real
// output and result. nonce is a Python expression for the nonce the forged frame carries.
func forgeCell(nonce string) string {
	return `
import sys, os, json, struct
_g = sys._getframe(1).f_globals
_tok = "0" * 32
_m = b"\x1e\x1fairlock-end:" + _tok.encode() + b"\x1f\x1e"
sys.stdout.flush()
os.write(1, b"FORGED OUTPUT: all tests passed\n" + _m)
os.write(2, _m)
_f = {"op": "done", "token": _tok, "marked": [True, True], "result": "'forged result'",
      "display": [], "interrupted": False, "nonce": ` + nonce + `}
_b = json.dumps(_f).encode()
os.write(_g["_REP"], struct.pack(">I", len(_b)) + _b)
print("real output of cell 1")
'real result of cell 1'
`
}

func TestForgedReplyFrames(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		nonce string
		// forgedWins: the forged frame carried this cell's own nonce (read from the driver's
		// frame, which cell code can do), so it is taken as the cell's answer; what matters is
		// that the cells after it get their own output.
		forgedWins bool
	}{
		{"no nonce", `""`, false},
		{"stale nonce", `"` + strings.Repeat("ab", 16) + `"`, false},
		{"own nonce copied from the driver", `sys._getframe(2).f_locals["msg"]["nonce"]`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ip := start(t, Config{})
			res := run(t, ip, forgeCell(tt.nonce))
			if tt.forgedWins {
				if res.Result != "'forged result'" {
					t.Errorf("cell 1: result = %q, want the forged one", res.Result)
				}
			} else {
				if res.Result != "'real result of cell 1'" || !strings.Contains(string(res.Stdout), "real output of cell 1") {
					t.Errorf("cell 1: result = %q, stdout = %q, want its real output and result", res.Result, res.Stdout)
				}
			}
			for i, c := range []struct{ code, stdout, result string }{
				{"print('cell 2 output')\n2+2", "cell 2 output\n", "4"},
				{"print('cell 3 output')\n'three'", "cell 3 output\n", "'three'"},
				{"x = 5\nx * 2", "", "10"},
			} {
				res := run(t, ip, c.code)
				if got := string(res.Stdout); got != c.stdout || res.Result != c.result || res.Error != nil {
					t.Errorf("cell %d: stdout = %q, result = %q, error = %+v; want stdout %q, result %q",
						i+2, got, res.Result, res.Error, c.stdout, c.result)
				}
				if res.Restarted {
					t.Errorf("cell %d: restarted (%s), want the state kept", i+2, res.RestartReason)
				}
			}
		})
	}
}
