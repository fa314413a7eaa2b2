//go:build !linux

package seccomp

import "errors"

// Install returns errors.ErrUnsupported: seccomp exists only on Linux.
// Program is not defined here because unix.SockFilter is Linux-only.
func Install(o Options) error { return errors.ErrUnsupported }
