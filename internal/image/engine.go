package image

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/airlockhq/airlock/internal/engine"
)

// EngineImages adapts s to engine.Images: the engine resolves and leases the images sandboxes
// stand on, and commits snapshots, through it.
func EngineImages(s *Store) engine.Images { return engineImages{s} }

type engineImages struct{ s *Store }

var _ engine.Images = engineImages{}

// Resolve resolves ref and leases the image. The lease is taken after the lookup, so a prune
// may have collected the image in between: it is looked up again by id under the lease, and
// its layers checked, before the engine builds on it.
func (e engineImages) Resolve(ctx context.Context, ref string) (engine.ImageRef, func(), error) {
	img, err := e.s.Resolve(ref)
	if err != nil {
		return engine.ImageRef{}, nil, err
	}
	release := e.s.Lease(img)
	if img, err = e.s.Resolve(img.ID); err != nil {
		release()
		return engine.ImageRef{}, nil, err
	}
	dirs := img.LayerDirs()
	for _, d := range dirs {
		if _, err := os.Stat(d); err != nil {
			release()
			return engine.ImageRef{}, nil, fmt.Errorf("image %s: layer: %w", img.ID, err)
		}
	}
	return engine.ImageRef{ID: img.ID, Layers: dirs, Env: img.Config.Env, Workdir: img.Config.WorkingDir}, release, nil
}

// Commit adds layer on top of the image parentID.
func (e engineImages) Commit(ctx context.Context, parentID string, layer io.Reader, name string) (engine.ImageRef, error) {
	parent, err := e.s.Resolve(parentID)
	if err != nil {
		return engine.ImageRef{}, err
	}
	img, err := e.s.Commit(ctx, parent, layer, name)
	if err != nil {
		return engine.ImageRef{}, err
	}
	return engine.ImageRef{ID: img.ID, Layers: img.LayerDirs(), Env: img.Config.Env, Workdir: img.Config.WorkingDir}, nil
}

// EngineRunner runs build steps through e (engine.RunBuildStep: the create funnel, admission,
// the engine's limits and network modes), spooling each step's layer in the store's tmp/
// until the builder commits it.
func EngineRunner(e *engine.Engine, s *Store) StepRunner { return engineRunner{e, s} }

type engineRunner struct {
	e *engine.Engine
	s *Store
}

var _ StepRunner = engineRunner{}

func (r engineRunner) RunStep(ctx context.Context, parent *Image, run StepRun, log io.Writer) (io.ReadCloser, int, error) {
	env := make(map[string]string, len(run.Env))
	for _, kv := range run.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	f, err := os.CreateTemp(filepath.Join(r.s.dir, "tmp"), "step-*.tar")
	if err != nil {
		return nil, 0, fmt.Errorf("spool a build layer: %w", err)
	}
	os.Remove(f.Name()) // the open file is all the builder reads; nothing is left on a crash
	code, err := r.e.RunBuildStep(ctx, engine.BuildStep{ImageID: parent.ID, Cmd: run.Cmd, Env: env, Workdir: run.Workdir,
		Stdin: run.Stdin, Network: run.Network, NeedsNetwork: run.NeedsNetwork}, log, f)
	if err == nil && code == 0 {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil || code != 0 {
		f.Close()
		return nil, code, err
	}
	return f, 0, nil
}
