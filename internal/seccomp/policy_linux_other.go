//go:build linux && !amd64 && !arm64

package seccomp

import (
	"errors"
	"fmt"
	"runtime"
)

func nativePolicy() (policy, error) {
	return policy{}, fmt.Errorf("seccomp filter for %s: %w", runtime.GOARCH, errors.ErrUnsupported)
}
