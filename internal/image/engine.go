package image

import (
	"context"
	"fmt"
	"io"
	"os"

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
