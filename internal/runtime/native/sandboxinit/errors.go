package sandboxinit

import (
	"fmt"
	"syscall"
)

// SetupError reports the setup step that failed inside the sandbox's init, with its errno, so the
// daemon can say "pivot_root: operation not permitted" instead of "exit status 1".
type SetupError struct {
	Step  string        `json:"step"`
	Errno syscall.Errno `json:"errno"`
	Msg   string        `json:"msg,omitempty"`
}

func (e *SetupError) Error() string {
	if e.Errno != 0 {
		return fmt.Sprintf("sandbox setup: %s: %v", e.Step, e.Errno)
	}
	return fmt.Sprintf("sandbox setup: %s: %s", e.Step, e.Msg)
}

func (e *SetupError) Unwrap() error {
	if e.Errno != 0 {
		return e.Errno
	}
	return nil
}
