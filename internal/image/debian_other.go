//go:build !linux

package image

import (
	"context"
	"errors"
	"io"
)

// DebianImageName is the name of the base "debian" in the store.
const DebianImageName = "debian:bookworm-minbase"

// Bootstrap needs Linux (debootstrap).
func (s *Store) Bootstrap(ctx context.Context, log io.Writer) (*Image, error) {
	return nil, errors.ErrUnsupported
}
