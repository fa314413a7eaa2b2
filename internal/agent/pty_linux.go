package agent

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// startPTY starts spec on a new pseudo-terminal from the sandbox's own devpts instance: the
// process gets the terminal as its controlling tty and stdin, stdout and stderr; the agent keeps
// the master side for output, input and resizes.
func (a *Agent) startPTY(spec procSpec, path string, env []string, dir string) (*proc, *sub, error) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	// Through SyscallConn, not Fd(): Fd would switch the master to blocking mode and take it off
	// the poller, and the output pump relies on read deadlines.
	var n int
	err = control(master, func(fd int) error {
		if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
			return fmt.Errorf("unlock pty: %w", err)
		}
		var err error
		n, err = unix.IoctlGetInt(fd, unix.TIOCGPTN)
		return err
	})
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("pty number: %w", err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("open pty slave: %w", err)
	}
	defer slave.Close()
	uid, gid := spec.UID, spec.GID
	if uid == 0 {
		uid, gid = a.cfg.UID, a.cfg.GID
	}
	// The terminal belongs to the user, as a login would make it (programs reopen their tty).
	unix.Fchown(int(slave.Fd()), uid, gid)
	setWinSize(master, *spec.PTY)
	hasTerm := false
	for _, e := range env {
		hasTerm = hasTerm || len(e) > 5 && e[:5] == "TERM="
	}
	if !hasTerm {
		env = append(env, "TERM=xterm-256color")
	}
	sfd := slave.Fd()
	attr := &syscall.ProcAttr{
		Dir: dir, Env: env, Files: []uintptr{sfd, sfd, sfd},
		Sys: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
			Setsid:     true, Setctty: true, Ctty: 0,
		},
	}
	a.intoUserCgroup(attr.Sys)
	p := &proc{spec: spec, stdin: master, pty: master}
	first := newSub()
	p.subs = []*sub{first}
	pid, exitc, err := a.reaper.spawn(func() (int, error) {
		p.start = time.Now()
		return syscall.ForkExec(path, append([]string{spec.Cmd}, spec.Args...), attr)
	})
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("start %s: %w", spec.Cmd, err)
	}
	p.pid = pid
	if len(spec.Stdin) > 0 {
		master.Write(spec.Stdin)
	}
	a.track(p)
	// The master's read ends with EIO once the last slave descriptor is closed.
	a.procsWG.Go(func() { a.run(p, exitc, master, nil) })
	return p, first, nil
}

func setWinSize(master *os.File, ws winSize) error {
	return control(master, func(fd int) error {
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Col: ws.Cols, Row: ws.Rows})
	})
}

// control runs fn on f's descriptor without changing its blocking mode.
func control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// resize changes the terminal size of a PTY process.
func (p *proc) resize(ws winSize) error {
	if p.pty == nil {
		return fmt.Errorf("process %d has no terminal", p.pid)
	}
	return setWinSize(p.pty, ws)
}
