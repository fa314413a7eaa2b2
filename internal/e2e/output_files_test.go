package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// output_files returns what the program wrote, by glob, intact (issue 18): a matplotlib PNG
// and a CSV, and the bounds refuse or flag what is too much.
func TestExecuteOutputFiles(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	post := func(t *testing.T, req any, out any) int {
		t.Helper()
		b, _ := json.Marshal(req)
		return a.call(http.MethodPost, "/v1/execute", bytes.NewReader(b), out)
	}
	t.Run("png and csv by glob", func(t *testing.T) {
		code := `
import csv, hashlib, os
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
os.makedirs("out", exist_ok=True)
plt.plot([1, 2, 3], [4, 1, 9])
plt.savefig("out/plot.png")
with open("out/data.csv", "w", newline="") as f:
    csv.writer(f).writerows([["x", "y"], [1, 4], [2, 1], [3, 9]])
open("out/skip.txt", "w").write("not matched")
for n in ("out/data.csv", "out/plot.png"):
    print(n, os.path.getsize(n), hashlib.sha256(open(n, "rb").read()).hexdigest())
`
		var resp api.ExecuteResponse
		if st := post(t, api.ExecuteRequest{Code: code, OutputFiles: []string{"out/*.png", "/workspace/out/*.csv"}, Timeout: 60}, &resp); st != http.StatusOK {
			t.Fatalf("status %d: %+v", st, resp)
		}
		if resp.ReturnCode != 0 {
			t.Fatalf("program failed: %s", resp.Stderr)
		}
		var got strings.Builder
		for _, f := range resp.Files {
			fmt.Fprintf(&got, "%s %d %s\n", f.Name, f.Size, sha256Hex(f.Data))
			if int64(len(f.Data)) != f.Size {
				t.Errorf("%s: size %d, data %d bytes", f.Name, f.Size, len(f.Data))
			}
		}
		if got, want := got.String(), resp.Stdout; got != want {
			t.Errorf("files returned:\n%s\nwant (as the program saw them):\n%s", got, want)
		}
		if len(resp.Files) != 2 {
			t.Fatalf("%d files returned, want 2", len(resp.Files))
		}
		if got, want := resp.Files[1].MIME, "image/png"; got != want {
			t.Errorf("%s mime = %q, want %q", resp.Files[1].Name, got, want)
		}
		if got := resp.Files[0].MIME; !strings.HasPrefix(got, "text/") {
			t.Errorf("%s mime = %q, want text/…", resp.Files[0].Name, got)
		}
		if !bytes.HasPrefix(resp.Files[1].Data, []byte("\x89PNG\r\n\x1a\n")) {
			t.Errorf("plot.png does not start with the PNG signature: %q", resp.Files[1].Data[:min(8, len(resp.Files[1].Data))])
		}
		if resp.FilesTruncated {
			t.Error("files_truncated set for two small files")
		}
	})
	t.Run("batch snippet", func(t *testing.T) {
		b, _ := json.Marshal(api.BatchRequest{Snippets: []api.ExecuteRequest{
			{Code: "open('a.txt', 'w').write('one')", OutputFiles: []string{"a.txt"}},
			{Code: "open('/tmp/b.txt', 'w').write('two')", OutputFiles: []string{"/tmp/*.txt"}},
		}})
		var resp api.BatchResponse
		if st := a.call(http.MethodPost, "/v1/execute/batch", bytes.NewReader(b), &resp); st != http.StatusOK {
			t.Fatalf("status %d: %+v", st, resp)
		}
		var got []string
		for _, r := range resp.Results {
			if r.ExecuteResponse == nil {
				t.Fatalf("snippet failed: %+v", r.Error)
			}
			for _, f := range r.Files {
				got = append(got, f.Name+"="+string(f.Data))
			}
		}
		if got, want := strings.Join(got, " "), "a.txt=one /tmp/b.txt=two"; got != want {
			t.Errorf("batch files = %q, want %q", got, want)
		}
	})
	t.Run("refused patterns", func(t *testing.T) {
		tests := []struct {
			name     string
			patterns []string
		}{
			{"too many", make([]string, engine.MaxOutputPatterns+1)},
			{"system directory", []string{"/etc/passwd"}},
			{"escape", []string{"../etc/*"}},
			{"root glob", []string{"/*/shadow"}},
			{"bad pattern", []string{"out/[x"}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				for i := range tt.patterns {
					if tt.patterns[i] == "" {
						tt.patterns[i] = fmt.Sprintf("f%d", i)
					}
				}
				var e api.ErrorBody
				if st := post(t, api.ExecuteRequest{Code: "pass", OutputFiles: tt.patterns}, &e); st != http.StatusBadRequest {
					t.Errorf("status %d (%+v), want 400", st, e)
				}
			})
		}
	})
	t.Run("bounds truncate", func(t *testing.T) {
		// 70 small files: 64 come back. Then 3 × 4 MiB: two fit in 10 MiB.
		code := fmt.Sprintf(`
import os
for i in range(%d):
    open(f"f{i:03}.txt", "w").write(str(i))
for i in range(3):
    open(f"/tmp/big{i}.bin", "wb").write(os.urandom(4 << 20))
`, engine.MaxOutputFiles+6)
		var resp api.ExecuteResponse
		if st := post(t, api.ExecuteRequest{Code: code, OutputFiles: []string{"f*.txt"}}, &resp); st != http.StatusOK {
			t.Fatalf("status %d", st)
		}
		if got, want := len(resp.Files), engine.MaxOutputFiles; got != want || !resp.FilesTruncated {
			t.Errorf("%d files, files_truncated %v; want %d, true", got, resp.FilesTruncated, want)
		}
		resp = api.ExecuteResponse{}
		if st := post(t, api.ExecuteRequest{Code: code, OutputFiles: []string{"/tmp/big*.bin"}}, &resp); st != http.StatusOK {
			t.Fatalf("status %d", st)
		}
		if got, want := len(resp.Files), 2; got != want || !resp.FilesTruncated {
			t.Errorf("%d files, files_truncated %v; want %d, true", got, resp.FilesTruncated, want)
		}
	})
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
