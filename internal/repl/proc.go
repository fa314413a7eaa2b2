package repl

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// bootstrap is the interpreter's -c program: it reads the driver from fd 5 and runs it in
// __main__, so the command line stays short in ps.
const bootstrap = "import os\nf = os.fdopen(5, 'rb')\nsrc = f.read()\nf.close()\ndel f\n" +
	"exec(compile(src, '<airlock-driver>', 'exec'))\n"

// proc is one interpreter process and the goroutines that serve it: the two stream pumps, the
// reply reader, the driver-source writer and the waiter. shutdown ends all of them.
type proc struct {
	cmd      *exec.Cmd
	pid      int
	group    bool  // the interpreter leads its own process group, so kills reach its children
	maxFrame int64 // largest reply frame accepted

	cmdW      *os.File      // command frames; written only by the goroutine holding Interp.mu
	out, errs *stream       // stdout and stderr
	frames    chan *frame   // reply frames; closed when the reply pipe ends
	exited    chan struct{} // closed once the process has been waited for
	status    syscall.WaitStatus
	waitErr   error // set before exited is closed

	files []*os.File    // parent ends of every pipe, closed by shutdown to unblock the goroutines
	quit  chan struct{} // closed by shutdown
	wg    sync.WaitGroup
	once  sync.Once

	mu  sync.Mutex // guards why
	why string     // why Go killed the interpreter, if it did
}

// start launches the goroutines of pr, which now owns outR, errR, repR and bootW.
func (pr *proc) start(outR, errR, repR, bootW *os.File, wait func() (syscall.WaitStatus, error), release bool) {
	pr.wg.Add(5)
	go func() {
		defer pr.wg.Done()
		pr.out.pump(outR)
	}()
	go func() {
		defer pr.wg.Done()
		pr.errs.pump(errR)
	}()
	go func() {
		defer pr.wg.Done()
		pr.readFrames(repR)
	}()
	go func() {
		defer pr.wg.Done()
		// Errors mean the interpreter died before reading it all; the waiter reports that.
		_, _ = bootW.Write(Driver)
		_ = bootW.Close()
	}()
	go func() {
		defer pr.wg.Done()
		pr.status, pr.waitErr = wait()
		if release {
			_ = pr.cmd.Process.Release()
		}
		close(pr.exited)
	}()
}

// readFrames decodes reply frames from r until it ends or carries something that is not a frame.
func (pr *proc) readFrames(r io.Reader) {
	defer close(pr.frames)
	br := bufio.NewReaderSize(r, 64<<10)
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if int64(n) > pr.maxFrame {
			return
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		f := new(frame)
		if err := json.Unmarshal(body, f); err != nil {
			return
		}
		select {
		case pr.frames <- f:
		case <-pr.quit:
			return
		}
	}
}

// send writes one command frame and returns how many bytes of it were written. It gives up at
// deadline (if not zero) or when ctx is done; a partly written frame leaves the protocol out of
// step, so the caller must then discard the interpreter.
func (pr *proc) send(ctx context.Context, body []byte, deadline time.Time) (int, error) {
	buf := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	copy(buf[4:], body)
	if err := pr.cmdW.SetWriteDeadline(deadline); err != nil {
		return 0, fmt.Errorf("send frame: %w", err)
	}
	var mu sync.Mutex
	active := true
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if active {
			_ = pr.cmdW.SetWriteDeadline(time.Unix(1, 0))
		}
	})
	n, err := pr.cmdW.Write(buf)
	mu.Lock()
	active = false
	mu.Unlock()
	stop()
	if err != nil {
		return n, fmt.Errorf("send frame: %w", err)
	}
	return n, nil
}

// dead reports whether the process has been waited for.
func (pr *proc) dead() bool {
	select {
	case <-pr.exited:
		return true
	default:
		return false
	}
}

// statusText describes how the process ended, e.g. "exit status 3" or "signal: segmentation fault".
func (pr *proc) statusText() string {
	if !pr.dead() {
		return "running"
	}
	return describeStatus(pr.status, pr.waitErr)
}

// interrupt sends SIGINT to the interpreter alone; its children are left to the cell's handling.
func (pr *proc) interrupt() {
	_ = pr.cmd.Process.Signal(os.Interrupt)
}

// killFor kills the interpreter and records why, unless a reason was already recorded.
func (pr *proc) killFor(why string) {
	pr.mu.Lock()
	if pr.why == "" {
		pr.why = why
	}
	pr.mu.Unlock()
	pr.kill()
}

func (pr *proc) killReason() string {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.why
}

// shutdown kills the process group, waits for the process and ends every goroutine of pr, closing
// the pipes itself in case an escaped grandchild still holds their other ends. Idempotent.
func (pr *proc) shutdown() {
	pr.once.Do(func() {
		pr.kill()
		<-pr.exited
		close(pr.quit)
		for _, f := range pr.files {
			_ = f.Close()
		}
		pr.wg.Wait()
	})
}
