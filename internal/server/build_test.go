package server

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/image"
	"github.com/airlockhq/airlock/internal/testutil"
)

// fakeRunner "runs" a step by returning a layer with one file named after its call; a command
// containing "fail" exits 2 after a line of output.
type fakeRunner struct{ calls int }

func (f *fakeRunner) RunStep(_ context.Context, _ *image.Image, run image.StepRun, log io.Writer) (io.ReadCloser, int, error) {
	f.calls++
	if strings.Contains(strings.Join(run.Cmd, " "), "fail") {
		fmt.Fprintln(log, "it failed")
		return nil, 2, nil
	}
	fmt.Fprintf(log, "run %d\n", f.calls)
	return io.NopCloser(oneFileTar(fmt.Sprintf("out/%d", f.calls))), 0, nil
}

func oneFileTar(name string) io.Reader {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: 2})
	tw.Write([]byte("x\n"))
	tw.Close()
	return &buf
}

func buildServer(t *testing.T, runner image.StepRunner) (string, *image.Store, func(string) (*http.Response, []api.BuildImageEvent, api.ErrorBody)) {
	t.Helper()
	testutil.MustHaveRoot(t) // unpacking keeps the layers' owners
	st, err := image.Open(image.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	base, err := st.Commit(t.Context(), nil, oneFileTar("base.txt"), "test/base:1")
	if err != nil {
		t.Fatal(err)
	}
	e, err := engine.New(engine.Config{Runtime: noRuntime{}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Engine: e, Images: st, BuildRunner: runner})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	post := func(body string) (*http.Response, []api.BuildImageEvent, api.ErrorBody) {
		t.Helper()
		resp, err := ts.Client().Post(ts.URL+"/v1/images", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var eb api.ErrorBody
		var evs []api.BuildImageEvent
		if resp.StatusCode != http.StatusOK {
			json.NewDecoder(resp.Body).Decode(&eb)
			return resp, nil, eb
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var ev api.BuildImageEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Fatalf("event %q: %v", sc.Text(), err)
			}
			evs = append(evs, ev)
		}
		return resp, evs, eb
	}
	return base.ID, st, post
}

// TestBuildImageBadSpecs: every malformed spec is a 400 (a missing base a 404), with nothing run.
func TestBuildImageBadSpecs(t *testing.T) {
	runner := &fakeRunner{}
	base, _, post := buildServer(t, runner)
	ok := `{"name":"x:1","base":"` + base + `","steps":[%s]}`
	for _, tt := range []struct {
		name, body string
		status     int
	}{
		{"unknown field", `{"name":"x:1","base":"` + base + `","stepz":[]}`, 400},
		{"unknown step field", fmt.Sprintf(ok, `{"apt_get":["curl"]}`), 400},
		{"no name", `{"base":"` + base + `","steps":[]}`, 400},
		{"bad name", `{"name":"Bad Name","base":"` + base + `","steps":[]}`, 400},
		{"no base", `{"name":"x:1","steps":[]}`, 400},
		{"empty apt list", fmt.Sprintf(ok, `{"apt_install":[]}`), 400},
		{"apt option", fmt.Sprintf(ok, `{"apt_install":["-oAPT::x=y"]}`), 400},
		{"pip option", fmt.Sprintf(ok, `{"pip_install":["--index-url=http://evil"]}`), 400},
		{"empty command", fmt.Sprintf(ok, `{"run_commands":[" "]}`), 400},
		{"two kinds in a step", fmt.Sprintf(ok, `{"run_commands":["true"],"workdir":"/app"}`), 400},
		{"empty step", fmt.Sprintf(ok, `{}`), 400},
		{"relative workdir", fmt.Sprintf(ok, `{"workdir":"app"}`), 400},
		{"bad env name", fmt.Sprintf(ok, `{"env":{"A-B":"1"}}`), 400},
		{"empty env", fmt.Sprintf(ok, `{"env":{}}`), 400},
		{"copy without content", fmt.Sprintf(ok, `{"copy":{"dst":"/a"}}`), 400},
		{"copy bad base64", fmt.Sprintf(ok, `{"copy":{"content":"!!!","dst":"/a"}}`), 400},
		{"copy src over HTTP", fmt.Sprintf(ok, `{"copy":{"src":"a.txt","dst":"/a"}}`), 400},
		{"copy src escaping", fmt.Sprintf(ok, `{"copy":{"src":"../a","dst":"/a"}}`), 400},
		{"copy relative dst", fmt.Sprintf(ok, `{"copy":{"content":"eA==","dst":"a"}}`), 400},
		{"bad python_version", `{"name":"x:1","base":"` + base + `","python_version":"three","steps":[]}`, 400},
		{"missing base", `{"name":"x:1","base":"nothere:1","steps":[]}`, 404},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, _, eb := post(tt.body)
			if resp.StatusCode != tt.status || eb.Error.Message == "" {
				t.Errorf("got %d %+v, want %d with a message", resp.StatusCode, eb, tt.status)
			}
		})
	}
	if runner.calls != 0 {
		t.Errorf("bad specs ran %d steps, want 0", runner.calls)
	}
}

// TestBuildImageStream: the NDJSON stream says each step's cache state, carries the log and
// ends with the image; the same spec again is all cache hits; a failing step ends the stream
// with its error.
func TestBuildImageStream(t *testing.T) {
	runner := &fakeRunner{}
	base, st, post := buildServer(t, runner)
	body := `{"name":"built:1","base":"` + base + `","steps":[{"run_commands":["make"]},{"env":{"A":"1"}},{"copy":{"content":"eA==","dst":"/x"}}]}`
	kinds := func(evs []api.BuildImageEvent) string {
		var s []string
		for _, e := range evs {
			switch e.Type {
			case "step":
				s = append(s, fmt.Sprintf("%s:%v", e.Kind, e.Cached))
			case "log":
				s = append(s, "log:"+e.Line)
			case "image", "error":
				s = append(s, e.Type)
			}
		}
		return strings.Join(s, " ")
	}
	_, evs, _ := post(body)
	if got, want := kinds(evs), "base:false run_commands:false log:run 1 env:false copy:false log:run 2 image"; got != want {
		t.Errorf("first build: got %q, want %q", got, want)
	}
	last := evs[len(evs)-1]
	if last.Image == nil || !strings.HasSuffix(last.Image.Names[0], "built:1") {
		t.Fatalf("last event %+v, want the image named built:1", last)
	}
	img, err := st.Resolve("built:1")
	if err != nil || img.ID != last.Image.ID {
		t.Errorf("built:1 resolves to %v, %v; want %s", img, err, last.Image.ID)
	}
	_, evs, _ = post(body)
	if got, want := kinds(evs), "base:false run_commands:true env:true copy:true image"; got != want {
		t.Errorf("rebuild: got %q, want %q", got, want)
	}
	if runner.calls != 2 {
		t.Errorf("runner called %d times, want 2 (the rebuild is all cache)", runner.calls)
	}
	_, evs, _ = post(`{"name":"built:2","base":"` + base + `","steps":[{"run_commands":["fail"]}]}`)
	last = evs[len(evs)-1]
	if last.Type != "error" || last.Error == nil || last.Error.Message != "step 1 (run_commands): exited with status 2: it failed" {
		t.Errorf("failing step: last event %+v, want its error", last)
	}
}
