package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/airlockhq/airlock/api"
)

// Images is the image store as far as the engine needs it (Config.Images). Without one only
// the host image exists.
type Images interface {
	// Resolve finds the image ref names (a name[:tag], a digest, an id or an id prefix) and
	// leases it: the image and its layers stay on disk until release is called. An unknown
	// ref is api.ErrNotFound.
	Resolve(ctx context.Context, ref string) (img ImageRef, release func(), err error)
	// Commit adds layer (an OCI layer tar) on top of the image parentID and returns the new
	// image, named name unless that is empty. It reads layer to its end or until it fails.
	Commit(ctx context.Context, parentID string, layer io.Reader, name string) (ImageRef, error)
}

// ImageRef is one image of the store, resolved.
type ImageRef struct {
	ID      string   // sha256:… of its config: what a record keeps
	Layers  []string // host directories of its unpacked layers, lowest first
	Env     []string // NAME=value; PATH among them
	Workdir string   // its config's working directory; "" for none
}

// ImageRoot is the root a runtime builds for an image sandbox (Spec.ImageRoot), portable: the
// runtime converts it to its own.
type ImageRoot struct {
	ID      string
	Layers  []string
	Env     []string
	Workdir string
}

// Snapshotter is an Instance whose writable layer can be written out as an OCI layer tar (the
// native runtime's image sandboxes).
type Snapshotter interface {
	Snapshot(ctx context.Context, w io.Writer) error
}

// maxRuntimeName bounds a request's runtime name; which names exist is the Runtime's to say
// (an unknown one is refused there, with the list of those the daemon offers).
const maxRuntimeName = 32

// checkRuntime refuses a runtime name that cannot name any runtime.
func checkRuntime(name string) error {
	if len(name) > maxRuntimeName {
		return invalid("runtime: at most %d characters", maxRuntimeName)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return invalid("runtime %q: not a runtime name", name)
		}
	}
	return nil
}

// hostImage is the zero-set-up root file system: the host's own, read-only.
const hostImage = "host"

// maxImageRef bounds an image reference (a registry name, a tag and a digest fit well within).
const maxImageRef = 512

// checkImage returns the image a request asked for, "" meaning the host image. Whether it
// exists is for leaseImage to say, when the sandbox is made.
func checkImage(image string) (string, error) {
	if image == "" || image == hostImage {
		return hostImage, nil
	}
	if len(image) > maxImageRef || strings.ContainsAny(image, "\x00\n\r\t ") {
		return "", invalid("image %q is not a valid image reference", image)
	}
	return image, nil
}

// leaseImage resolves ref through the image store and leases it: the root for the runtime and
// the release of the lease. The host image needs neither (nil root, a no-op release).
func (e *Engine) leaseImage(ctx context.Context, ref string) (*ImageRoot, func(), error) {
	if ref == hostImage || ref == "" {
		return nil, func() {}, nil
	}
	if e.cfg.Images == nil {
		return nil, nil, invalid("image %q is not available: this server has no image store (only %q)", ref, hostImage)
	}
	img, release, err := e.cfg.Images.Resolve(ctx, ref)
	if errors.Is(err, api.ErrNotFound) {
		return nil, nil, api.Errorf(api.ErrNotFound, "image %q is not in the daemon's image store; pull it first (airlock image pull %s, or POST /v1/images/pull)", ref, ref)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("image %s: %w", ref, err)
	}
	return &ImageRoot{ID: img.ID, Layers: img.Layers, Env: img.Env, Workdir: img.Workdir}, release, nil
}

// ErrHostSnapshot refuses a snapshot of a sandbox of the host image.
var ErrHostSnapshot = api.Errorf(api.ErrInvalidArgument,
	"snapshots need an image sandbox; the host image has no writable layer to capture")

// Snapshot turns the sandbox's writable layer into a new image on top of the sandbox's own,
// named name ("" for none): sandboxes and sessions can start from it by its name or id. The
// layer streams from the runtime into the store through a pipe, never whole in memory.
func (sb *Sandbox) Snapshot(ctx context.Context, name string) (ImageRef, error) {
	if sb.spec.ImageID == "" {
		return ImageRef{}, ErrHostSnapshot
	}
	if sb.e.cfg.Images == nil {
		return ImageRef{}, api.Errorf(api.ErrUnimplemented, "this server has no image store to keep a snapshot in")
	}
	snap, ok := sb.inst.(Snapshotter)
	if !ok {
		return ImageRef{}, api.Errorf(api.ErrUnimplemented, "this sandbox's runtime cannot snapshot it")
	}
	if len(name) > maxImageRef || strings.ContainsRune(name, 0) {
		return ImageRef{}, invalid("snapshot name %q is invalid", name)
	}
	pr, pw := io.Pipe()
	werr := make(chan error, 1)
	go func() {
		err := snap.Snapshot(ctx, pw)
		pw.CloseWithError(err) // nil: the reader sees EOF
		werr <- err
	}()
	img, err := sb.e.cfg.Images.Commit(ctx, sb.spec.ImageID, pr, name)
	// A commit that failed early leaves the writer blocked on the pipe: this unblocks it.
	pr.CloseWithError(errors.New("the image store stopped reading the snapshot"))
	if serr := <-werr; serr != nil && err == nil {
		err = serr
	} else if serr != nil {
		sb.e.cfg.Logger.DebugContext(ctx, "snapshot writer", "sandbox", sb.id, "err", serr)
	}
	if err != nil {
		return ImageRef{}, sb.endedError(fmt.Errorf("snapshot sandbox %s: %w", sb.id, err))
	}
	sb.e.cfg.Logger.InfoContext(ctx, "sandbox snapshot", "sandbox", sb.id, "image", img.ID, "name", name)
	return img, nil
}
