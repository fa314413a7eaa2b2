package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// samples times f b.N times and reports p50/p90 in ms, and the ratio of the p50 to base's p50
// when base is set (a baseline measured in the same run).
func samples(b *testing.B, base func(), f func()) {
	b.Helper()
	var baseP50 time.Duration
	if base != nil {
		var bs []time.Duration
		for range max(b.N, 20) {
			t := time.Now()
			base()
			bs = append(bs, time.Since(t))
		}
		baseP50 = pct(bs, 50)
	}
	var ts []time.Duration
	b.ResetTimer()
	for b.Loop() {
		t := time.Now()
		f()
		ts = append(ts, time.Since(t))
	}
	b.ReportMetric(ms(pct(ts, 50)), "p50-ms")
	b.ReportMetric(ms(pct(ts, 90)), "p90-ms")
	if base != nil {
		b.ReportMetric(ms(baseP50), "baseline-p50-ms")
		b.ReportMetric(float64(pct(ts, 50))/float64(baseP50), "ratio")
	}
}

func pct(ts []time.Duration, p int) time.Duration {
	s := slices.Clone(ts)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func hostTrue(b *testing.B) func() {
	return func() {
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExecTrue: `true` in a running sandbox through the engine, against spawning
// /bin/true on the host.
func BenchmarkExecTrue(b *testing.B) {
	e := benchEngine(b)
	sb, err := e.CreateSandbox(b.Context(), engine.SandboxSpec{})
	if err != nil {
		b.Fatal(err)
	}
	samples(b, hostTrue(b), func() {
		if _, err := sb.Exec(b.Context(), engine.ExecSpec{Cmd: []string{"true"}}, func(engine.Event) {}); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkExecTrueHTTP: the same through POST /v1/sandboxes/{id}/exec.
func BenchmarkExecTrueHTTP(b *testing.B) {
	url, id := benchServerSandbox(b, "/v1/sandboxes", `{}`)
	body := []byte(`{"cmd":["true"]}`)
	samples(b, hostTrue(b), func() { mustPost(b, url+"/v1/sandboxes/"+id+"/exec", body) })
}

// BenchmarkCellXPlus1: a REPL cell `x + 1`, through the engine and through HTTP.
func BenchmarkCellXPlus1(b *testing.B) {
	e := benchEngine(b)
	sb, err := e.CreateSession(b.Context(), engine.SessionSpec{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := sb.RunCell(b.Context(), "x = 1", 0); err != nil {
		b.Fatal(err)
	}
	b.Run("engine", func(b *testing.B) {
		samples(b, nil, func() {
			r, err := sb.RunCell(b.Context(), "x + 1", 0)
			if err != nil || r.Result == nil || *r.Result != "2" {
				b.Fatal(r, err)
			}
		})
	})
	b.Run("http", func(b *testing.B) {
		url, id := benchServerSandbox(b, "/v1/sessions", `{}`)
		mustPost(b, url+"/v1/sessions/"+id+"/run", []byte(`{"code":"x = 1"}`))
		samples(b, nil, func() { mustPost(b, url+"/v1/sessions/"+id+"/run", []byte(`{"code":"x + 1"}`)) })
	})
}

// BenchmarkSessionFirstCell: a new session and its first cell, against bare python3 -c on the host.
func BenchmarkSessionFirstCell(b *testing.B) {
	e := benchEngine(b)
	samples(b, func() { exec.Command("/usr/bin/python3", "-c", "1").Run() }, func() {
		sb, err := e.CreateSession(b.Context(), engine.SessionSpec{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := sb.RunCell(b.Context(), "1", 0); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		e.TerminateSandbox(b.Context(), sb.ID())
		b.StartTimer()
	})
}

// BenchmarkCreateTerminate: a sandbox created and terminated (no pool), against /bin/true.
func BenchmarkCreateTerminate(b *testing.B) {
	e := benchEngine(b)
	samples(b, hostTrue(b), func() {
		sb, err := e.CreateSandbox(b.Context(), engine.SandboxSpec{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.TerminateSandbox(b.Context(), sb.ID()); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkStdoutStream: MB/s of a process's stdout streamed through the agent to the daemon.
func BenchmarkStdoutStream(b *testing.B) {
	e := benchEngine(b)
	sb, err := e.CreateSandbox(b.Context(), engine.SandboxSpec{})
	if err != nil {
		b.Fatal(err)
	}
	const size = 256 << 20
	b.SetBytes(size)
	for b.Loop() {
		var n int
		_, err := sb.Exec(b.Context(), engine.ExecSpec{Cmd: []string{"head", "-c", fmt.Sprint(size), "/dev/zero"}},
			func(ev engine.Event) { n += len(ev.Stdout) })
		if err != nil || n != size {
			b.Fatal(n, err)
		}
	}
}

// BenchmarkFileTransfer: MB/s of a 64 MiB upload and download through the HTTP API. The data
// is random, as real files mostly are: repeated bytes would hide a transfer that compresses
// (a gzip in the agent costs the sandbox's CPU per byte).
func BenchmarkFileTransfer(b *testing.B) {
	url, id := benchServerSandbox(b, "/v1/sandboxes", `{"memory_mb":1024}`)
	const size = 64 << 20
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{}).Read(data)
	b.Run("upload", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			req, _ := http.NewRequest("PUT", url+"/v1/sandboxes/"+id+"/files?path=f.bin", bytes.NewReader(data))
			resp, err := http.DefaultClient.Do(req)
			if err != nil || resp.StatusCode != 200 {
				b.Fatal(resp, err)
			}
			resp.Body.Close()
		}
	})
	b.Run("download", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			resp, err := http.Get(url + "/v1/sandboxes/" + id + "/files?path=f.bin")
			if err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if n != size {
				b.Fatal(n)
			}
		}
	})
}

func benchEngine(b *testing.B) *engine.Engine {
	b.Helper()
	return newAPIServer(b, engine.Config{ScratchBytes: 1 << 30, MaxConcurrent: 64, MaxMemory: 4 << 30}).e
}

// benchServerSandbox starts a server and creates a sandbox or session through route.
func benchServerSandbox(b *testing.B, route, body string) (url, id string) {
	b.Helper()
	a := newAPIServer(b, engine.Config{ScratchBytes: 1 << 30, MaxConcurrent: 64, MaxMemory: 4 << 30})
	var info api.SandboxInfo
	if code := a.call("POST", route, strings.NewReader(body), &info); code != 201 {
		b.Fatalf("create: %d", code)
	}
	return a.url, info.ID
}

func mustPost(b *testing.B, url string, body []byte) {
	resp, err := http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("%s: %d", url, resp.StatusCode)
	}
}
