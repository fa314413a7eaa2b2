package agent

import (
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// exitInfo is how a process ended.
type exitInfo struct {
	status unix.WaitStatus
}

// reaper is PID 1's zombie reaper. Every child the agent starts is started through spawn, which
// registers it under the same lock the reaper holds while calling wait4, so no exit status is
// ever collected before its waiter exists. Orphans re-parented to PID 1 are reaped and dropped.
type reaper struct {
	mu      sync.Mutex // guards waiters and serializes spawn with wait4
	waiters map[int]chan exitInfo
	sig     chan os.Signal
	done    chan struct{}
	forkOn  func(func()) // runs a fork on the spawner thread
}

func newReaper(forkOn func(func())) *reaper {
	r := &reaper{waiters: map[int]chan exitInfo{}, sig: make(chan os.Signal, 16), done: make(chan struct{}), forkOn: forkOn}
	signal.Notify(r.sig, syscall.SIGCHLD)
	go r.loop()
	return r
}

func (r *reaper) loop() {
	for {
		select {
		case <-r.sig:
			r.reap()
		case <-r.done:
			return
		}
	}
}

func (r *reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		if ch, ok := r.waiters[pid]; ok {
			ch <- exitInfo{status: ws}
			delete(r.waiters, pid)
		}
	}
}

// spawn runs start (which forks) under the reaper lock and registers the returned pid.
func (r *reaper) spawn(start func() (int, error)) (int, <-chan exitInfo, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var pid int
	var err error
	r.forkOn(func() { pid, err = start() })
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan exitInfo, 1)
	r.waiters[pid] = ch
	return pid, ch, nil
}

func (r *reaper) stop() {
	signal.Stop(r.sig)
	close(r.done)
}
