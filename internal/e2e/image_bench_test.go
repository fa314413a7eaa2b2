package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/airlockhq/airlock/internal/image"
)

// BenchmarkImageLifecycle measures, per iteration, on the e2e python image (one layer: busybox,
// the host's python3 and its standard library): a pull from a registry on 127.0.0.1 into an
// empty store, an import of the same image as a docker-save tarball into an empty store, a
// 3-step build on the pulled image through the engine (run_commands, copy, run_commands: three
// build sandboxes, three layers; the first step differs per iteration so nothing is cached),
// and the cached rebuild of that spec.
func BenchmarkImageLifecycle(b *testing.B) {
	ref := pythonImage(b) // in the shared store: the build's base
	dir := b.TempDir()
	pullRef, img, stop, err := servePythonImage(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer stop()
	r, err := name.ParseReference(pullRef, name.Insecure)
	if err != nil {
		b.Fatal(err)
	}
	save := filepath.Join(dir, "save.tar")
	if err := tarball.WriteToFile(save, r, img); err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "layer.tar"))
	if err != nil {
		b.Fatal(err)
	}

	e := buildEngine(b)
	builder := &image.Builder{Store: images, Runner: image.EngineRunner(e, images)}
	spec := func(i int) *image.BuildSpec {
		return &image.BuildSpec{Name: "bench/built:1", Base: ref, Steps: []image.BuildStep{
			{RunCommands: []string{fmt.Sprintf("mkdir -p /opt/app && echo %d > /opt/app/iteration", i)}},
			{Copy: &image.CopyStep{Content: b64("print('hello')\n"), Dst: "/opt/app/main.py"}},
			{RunCommands: []string{"python3 /opt/app/main.py > /opt/app/said.txt"}},
		}}
	}
	timed := func(f func() error) time.Duration {
		t0 := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	var pulls, imports, builds, rebuilds []time.Duration
	i := 0
	for b.Loop() {
		i++
		s1, err := image.Open(image.Config{Dir: filepath.Join(b.TempDir(), "images")})
		if err != nil {
			b.Fatal(err)
		}
		pulls = append(pulls, timed(func() error { _, err := s1.Pull(b.Context(), pullRef, image.PullOptions{Insecure: true}); return err }))
		s2, err := image.Open(image.Config{Dir: filepath.Join(b.TempDir(), "images")})
		if err != nil {
			b.Fatal(err)
		}
		imports = append(imports, timed(func() error { _, err := s2.Import(b.Context(), save); return err }))
		sp := spec(i + int(time.Now().UnixNano()%1e9)) // never in the cache of an earlier run
		builds = append(builds, timed(func() error { _, err := builder.Build(b.Context(), sp, "", func(image.BuildEvent) {}); return err }))
		rebuilds = append(rebuilds, timed(func() error { _, err := builder.Build(b.Context(), sp, "", func(image.BuildEvent) {}); return err }))
	}
	b.ReportMetric(float64(fi.Size())/(1<<20), "layer-MiB")
	for _, m := range []struct {
		name string
		ts   []time.Duration
	}{{"pull", pulls}, {"import", imports}, {"build3", builds}, {"rebuild", rebuilds}} {
		b.ReportMetric(ms(pct(m.ts, 50)), m.name+"-p50-ms")
	}
}
