package cli

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"
)

func notifyInterrupt(c chan os.Signal) { signal.Notify(c, os.Interrupt) }
func stopNotify(c chan os.Signal)      { signal.Stop(c) }

// signalCause is the cause of a command's context ended by a signal.
type signalCause struct{ sig os.Signal }

func (s *signalCause) Error() string { return s.sig.String() + " signal received" }

// Is makes the cause answer errors.Is(err, context.Canceled), as a plain cancellation does.
func (s *signalCause) Is(target error) bool { return target == context.Canceled }

// notifySignals returns a context that ends on SIGINT or SIGTERM, with the signal as its cause:
// a command can then tell an interrupt from any other cancellation, whichever of the handlers
// saw the signal first.
func notifySignals(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	c := make(chan os.Signal, 1)
	signal.Notify(c, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case s := <-c:
			cancel(&signalCause{s})
		case <-ctx.Done():
		}
		signal.Stop(c)
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// interruptedBy reports whether ctx ended because of SIGINT.
func interruptedBy(ctx context.Context) bool {
	var sc *signalCause
	return errors.As(context.Cause(ctx), &sc) && sc.sig == os.Interrupt
}
