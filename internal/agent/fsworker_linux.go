package agent

import (
	"cmp"
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
// The pool starts its workers on demand, up to fsWorkerCount: an idle sandbox holds none of
// these threads rather than eight (each an OS thread with a kernel stack and a task in the pids
// budget, ≈ 30 KiB of host memory; see BENCHMARKS.md, "Idle footprint"). A thread started later cannot be refused by user code: the agent's threads are
// counted in the sandbox's outer pids group, where the agent's reserve (native's
// agentPidsReserve) lies beyond the user group's limit, and under its own uid for RLIMIT_NPROC
// — except when user code runs as the agent's uid (a build sandbox: uid 0), where every worker
// is started with the agent, while the sandbox is fresh. A worker never unlocks its thread:
// when it returns, the Go runtime ends the thread instead of reusing its credentials.
type fsPool struct {
	jobs     chan fsJob    // unbuffered; a caller sends only once it has reserved an idle worker
	quit     chan struct{} // closed by close
	calls    chan struct{} // a token per call in progress: at most fsWorkerCount at once
	uid, gid int
	wg       sync.WaitGroup

	mu      sync.Mutex // guards started, idle, closed and err
	started int        // workers started so far, at most fsWorkerCount
	// idle counts the workers free for a job and not yet reserved by a caller. A worker counts
	// itself free again before it hands back its result, so calls one after another find it.
	idle   int
	closed bool  // set by close: no worker starts after it
	err    error // set when a worker could not become the sandbox user; returned by every run

	// lists is the memory directory listings may hold at once, in bytes (see ListDir).
	lists *semaphore.Weighted
}

type fsJob struct {
	fn   func() error
	done chan<- error // buffered (1)
}

// newFSPool starts the pool for the sandbox user uid:gid: no worker yet, or all of them when uid
// is the agent's own (0; see fsPool). A worker's error is returned by every run rather than
// failing the agent's start: processes can still be served.
func newFSPool(uid, gid int) *fsPool {
	p := &fsPool{jobs: make(chan fsJob), quit: make(chan struct{}), calls: make(chan struct{}, fsWorkerCount),
		uid: uid, gid: gid, lists: semaphore.NewWeighted(listBudget)}
	n := 0
	if uid == 0 {
		n = fsWorkerCount
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.grow(n)
	return p
}

// grow starts n more workers (no more than fsWorkerCount in all) and waits until each has
// become the sandbox user, counting it idle, or failed to. p.mu must be held.
func (p *fsPool) grow(n int) {
	if p.closed {
		return
	}
	n = min(n, fsWorkerCount-p.started)
	ready := make(chan error, n)
	for range n {
		p.wg.Go(func() { p.work(p.uid, p.gid, ready) })
	}
	p.started += n
	for range n {
		if err := <-ready; err != nil {
			p.err = cmp.Or(p.err, err)
		} else {
			p.idle++
		}
	}
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
			err := runJob(j.fn)
			p.mu.Lock()
			p.idle++
			p.mu.Unlock()
			j.done <- err
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

// run runs fn on a worker thread as the sandbox user and returns its error. At most
// fsWorkerCount calls run at once; the others wait for a turn (or for ctx). A call whose turn
// comes while every started worker is busy starts one more. Once it has a turn, run waits for
// fn to finish even if ctx ends: fn writes its results into the caller's variables, and
// file-system calls here do not block indefinitely (FIFOs and devices are opened non-blocking
// and refused).
func (p *fsPool) run(ctx context.Context, fn func() error) error {
	select {
	case p.calls <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-p.quit:
		return errFSPoolClosed
	}
	defer func() { <-p.calls }()
	// Fewer than fsWorkerCount other calls hold a turn, so if no worker is idle, fewer than
	// fsWorkerCount have been started.
	p.mu.Lock()
	if p.idle == 0 {
		p.grow(1)
	}
	err := p.err
	if p.closed {
		err = errFSPoolClosed
	}
	if err == nil {
		p.idle-- // reserved for this call
	}
	p.mu.Unlock()
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	select {
	case p.jobs <- fsJob{fn: fn, done: done}:
	case <-p.quit:
		return errFSPoolClosed
	}
	return <-done
}

// close stops the workers once they finish their current job and waits for them; their threads
// end with them. Later runs fail with errFSPoolClosed.
func (p *fsPool) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	close(p.quit)
	p.wg.Wait()
}
