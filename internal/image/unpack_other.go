//go:build !linux

package image

import (
	"context"
	"errors"
	"io"
)

// unpack needs Linux: overlayfs whiteouts and xattrs.
func unpack(ctx context.Context, r io.Reader, dir string, lim limits) (layerMeta, error) {
	return layerMeta{}, errors.ErrUnsupported
}
