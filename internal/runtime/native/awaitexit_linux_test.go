package native

import (
	"os"
	"os/exec"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAwaitExitHoldsNoThread: waiting for many processes to exit takes no OS thread each (a
// goroutine blocked in wait4 or poll would), and every wait returns once its process is gone.
func TestAwaitExitHoldsNoThread(t *testing.T) {
	const n = 40
	threads := func() int { ents, _ := os.ReadDir("/proc/self/task"); return len(ents) }
	before := threads()
	var wg sync.WaitGroup
	cmds := make([]*exec.Cmd, n)
	for i := range n {
		cmds[i] = exec.Command("sleep", "60")
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
		pidfd, err := unix.PidfdOpen(cmds[i].Process.Pid, unix.PIDFD_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { awaitExit(pidfd) })
	}
	t.Cleanup(func() {
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
	})
	// Let the waiters block (the ones that would hold a thread would have made it by then).
	for range 100 {
		if threads() >= before+n {
			break
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
	}
	if got := threads(); got >= before+n/2 {
		t.Errorf("%d threads while %d processes are awaited, %d before: a thread per wait", got, n, before)
	}
	for _, c := range cmds {
		c.Process.Kill()
	}
	wg.Wait() // every awaitExit returns once its process has exited
}
