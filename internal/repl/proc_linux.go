package repl

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// startProc starts the interpreter with its pipes (see doc.go for the fd layout).
func startProc(cfg Config) (*proc, error) {
	var files []*os.File
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err == nil {
			files = append(files, r, w)
		}
		return r, w, err
	}
	closeAll := func() {
		for _, f := range files {
			_ = f.Close()
		}
	}
	var p [5][2]*os.File
	for i := range p {
		r, w, err := pipe()
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("pipe: %w", err)
		}
		p[i] = [2]*os.File{r, w}
	}
	cmdR, cmdW := p[0][0], p[0][1]
	repR, repW := p[1][0], p[1][1]
	outR, outW := p[2][0], p[2][1]
	errR, errW := p[3][0], p[3][1]
	bootR, bootW := p[4][0], p[4][1]

	cmd := exec.Command(cfg.Python, "-c", bootstrap)
	cmd.Env = cfg.Env
	cmd.Dir = cfg.Dir
	cmd.Stdout, cmd.Stderr = outW, errW // stdin stays nil: /dev/null
	cmd.ExtraFiles = []*os.File{cmdR, repW, bootR}
	attr, group := sysProcAttr(cfg.SysProcAttr)
	cmd.SysProcAttr = attr

	var wait func() (syscall.WaitStatus, error)
	var err error
	if cfg.Spawn != nil {
		wait, err = cfg.Spawn(cmd)
	} else {
		err = cmd.Start()
		wait = func() (syscall.WaitStatus, error) {
			err := cmd.Wait()
			if ps := cmd.ProcessState; ps != nil {
				if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
					return ws, nil
				}
			}
			return 0, err
		}
	}
	if err != nil {
		closeAll()
		return nil, err
	}
	// The child holds its ends now; ours would keep the pipes open after it dies.
	for _, f := range []*os.File{cmdR, repW, outW, errW, bootR} {
		_ = f.Close()
	}
	pr := &proc{
		cmd:   cmd,
		pid:   cmd.Process.Pid,
		group: group,
		// Base64 display data, the result and an error, with JSON overhead.
		maxFrame: 2*cfg.DisplayLimit + 2*cfg.OutputLimit + 1<<20,
		cmdW:     cmdW,
		out:      newStream(cfg.OutputLimit),
		errs:     newStream(cfg.OutputLimit),
		frames:   make(chan *frame, 4),
		exited:   make(chan struct{}),
		files:    []*os.File{cmdW, repR, outR, errR, bootW},
		quit:     make(chan struct{}),
	}
	pr.start(outR, errR, repR, bootW, wait, cfg.Spawn != nil)
	return pr, nil
}

// sysProcAttr merges the caller's attributes with a new process group for the interpreter, and
// reports whether the interpreter leads its group.
func sysProcAttr(user *syscall.SysProcAttr) (*syscall.SysProcAttr, bool) {
	a := &syscall.SysProcAttr{}
	if user != nil {
		*a = *user
	}
	if !a.Setsid && !a.Setpgid {
		a.Setpgid, a.Pgid = true, 0
	}
	return a, a.Setsid || a.Pgid == 0
}

// kill sends SIGKILL to the interpreter's process group (if it leads one) and to the interpreter.
// After the interpreter has been reaped, the group kill still reaches its leftover children: a
// process group id is not reused while the group has members.
func (pr *proc) kill() {
	if pr.group {
		_ = syscall.Kill(-pr.pid, syscall.SIGKILL)
	}
	_ = pr.cmd.Process.Kill()
}

// describeStatus says how a process ended, e.g. "exit status 3" or "signal: segmentation fault".
func describeStatus(ws syscall.WaitStatus, waitErr error) string {
	switch {
	case waitErr != nil && ws == 0:
		return "exit status unknown: " + waitErr.Error()
	case ws.Exited():
		return fmt.Sprintf("exit status %d", ws.ExitStatus())
	case ws.Signaled():
		s := "signal: " + ws.Signal().String()
		if ws.CoreDump() {
			s += " (core dumped)"
		}
		return s
	}
	return fmt.Sprintf("wait status %#x", uint32(ws))
}
