//go:build !linux

package image

import "errors"

func flock(path string, exclusive bool) (unlock func(), err error) { return nil, errors.ErrUnsupported }

func lockHeld(path string) (bool, error) { return false, errors.ErrUnsupported }
