//go:build !linux

package repl

import (
	"errors"
	"fmt"
	"syscall"
)

func startProc(Config) (*proc, error) { return nil, errors.ErrUnsupported }

func (pr *proc) kill() { _ = pr.cmd.Process.Kill() }

func describeStatus(ws syscall.WaitStatus, waitErr error) string {
	if waitErr != nil {
		return waitErr.Error()
	}
	return fmt.Sprintf("exit status %d", ws.ExitStatus())
}
