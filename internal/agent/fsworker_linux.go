package agent

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"golang.org/x/sync/semaphore"
	"golang.org/x/sys/unix"
)

// fsWorkerCount is how many OS threads serve file-system calls. Calls are short syscalls on
// tmpfs and overlay, so a few threads keep up with any client; what matters is that the number
// is fixed, because every agent thread is a task in the sandbox's pids budget (review H2: one
// new thread per call crashed the agent with "fatal error: newosproc").
const fsWorkerCount = 8

var errFSPoolClosed = errors.New("the agent is shutting down")

// fsPool is a fixed set of long-lived OS threads whose filesystem uid and gid are the sandbox
// user's. Changing the fsuid from 0 clears the thread's file capabilities (DAC_OVERRIDE, FOWNER,
// …), so a job can open exactly what code in the sandbox could open, no more, and what it
// creates is owned by the sandbox user.
//
// The threads are started by newFSPool, while the sandbox is fresh, so user code that later
// fills the pids budget cannot stop them from existing. A worker never unlocks its thread:
// when it returns, the Go runtime ends the thread instead of reusing its credentials.
type fsPool struct {
	jobs chan fsJob    // unbuffered: a send succeeds only when a worker is idle
	quit chan struct{} // closed by close
	err  error         // set by newFSPool if the workers could not become the sandbox user
	wg   sync.WaitGroup

	// lists is the memory directory listings may hold at once, in bytes (see ListDir).
	lists *semaphore.Weighted
}

type fsJob struct {
	fn   func() error
	done chan<- error // buffered (1)
}

// newFSPool starts the workers for the sandbox user uid:gid. Its error, if any, is returned by
// every run rather than failing the agent's start: processes can still be served.
func newFSPool(uid, gid int) *fsPool {
	p := &fsPool{jobs: make(chan fsJob), quit: make(chan struct{}), lists: semaphore.NewWeighted(listBudget)}
	ready := make(chan error, fsWorkerCount)
	for range fsWorkerCount {
		p.wg.Go(func() { p.work(uid, gid, ready) })
	}
	for range fsWorkerCount {
		if err := <-ready; err != nil && p.err == nil {
			p.err = err
		}
	}
	return p
}

func (p *fsPool) work(uid, gid int, ready chan<- error) {
	runtime.LockOSThread() // for the life of the thread; see fsPool
	unix.Setfsgid(gid)
	unix.Setfsuid(uid)
	// Both calls report the previous value, so read them back to see that they took effect.
	gotUID, _ := unix.SetfsuidRetUid(-1)
	gotGID, _ := unix.SetfsgidRetGid(-1)
	if gotUID != uid || gotGID != gid {
		// gVisor's kernel (the gvisor runtime) has no setfsuid: switch this thread's effective
		// ids instead, which the file-system ids follow. Raw syscalls change this locked thread
		// only; its saved uid stays 0, so it is never unlocked or reused for anything else.
		_, _, e1 := unix.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), uintptr(gid), ^uintptr(0))
		_, _, e2 := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0))
		if e1 != 0 || e2 != 0 || unix.Geteuid() != uid || unix.Getegid() != gid {
			ready <- fmt.Errorf("switch file-system credentials to %d:%d: still %d:%d", uid, gid, gotUID, gotGID)
			return
		}
	}
	ready <- nil
	for {
		select {
		case j := <-p.jobs:
			j.done <- runJob(j.fn)
		case <-p.quit:
			return
		}
	}
}

// runJob runs fn, turning a panic into an error: a panic on a worker would take the agent down.
func runJob(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("file operation panicked: %v", r)
		}
	}()
	return fn()
}

// run runs fn on a worker thread as the sandbox user and returns its error. When every worker
// is busy it waits for one (or for ctx); it never starts a thread. Once a worker has taken fn,
// run waits for it to finish even if ctx ends: fn writes its results into the caller's
// variables, and file-system calls here do not block indefinitely (FIFOs and devices are
// opened non-blocking and refused).
func (p *fsPool) run(ctx context.Context, fn func() error) error {
	if p.err != nil {
		return p.err
	}
	done := make(chan error, 1)
	select {
	case p.jobs <- fsJob{fn: fn, done: done}:
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-p.quit:
		return errFSPoolClosed
	}
	return <-done
}

// close stops the workers once they finish their current job and waits for them; their threads
// end with them. Later runs fail with errFSPoolClosed.
func (p *fsPool) close() {
	close(p.quit)
	p.wg.Wait()
}
