//go:build !linux

package netns

import "errors"

// Do returns errors.ErrUnsupported: network namespaces are Linux's.
func Do(fd int, f func() error) error { return errors.ErrUnsupported }
