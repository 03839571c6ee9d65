package cli

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/safepool/safepool/pool"
)

// stopSignals returns the signals that stop a run gracefully the first time
// and kill its workers the second: Ctrl-C, kill's default, and the hang-up of
// a closed terminal. A signal that safepool was started with ignored is left
// ignored: under nohup, SIGHUP must not stop the run, and signal.Notify
// would stop ignoring it. It is decided once, before any Notify.
var stopSignals = sync.OnceValue(func() []os.Signal {
	var sigs []os.Signal
	for _, s := range []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP} {
		if !signal.Ignored(s) {
			sigs = append(sigs, s)
		}
	}
	return sigs
})

// SignalError is the cause of the context that NotifyContext cancels: the
// signal that asked safepool to stop.
type SignalError struct {
	// Signal is the signal received.
	Signal os.Signal
}

func (e *SignalError) Error() string {
	return "interrupted by " + signalName(e.Signal)
}

// NotifyContext returns a copy of parent that is cancelled by the first
// SIGINT, SIGTERM or SIGHUP, with a *SignalError as its cause (see
// context.Cause). Run reads the cause to say which signal stopped the run.
// stop releases the signals; it must be called when Run has returned.
//
// It also catches SIGPIPE for as long as it is in force. Go's default is to
// die of a SIGPIPE raised by a write to a closed stdout or stderr; caught,
// the write fails with EPIPE instead, and Run stops the run cleanly when its
// reader has gone (safepool map ... | head -1). Workers still start with
// the default SIGPIPE: a caught signal is reset on exec, an ignored one
// would not be.
func NotifyContext(parent context.Context) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, stopSignals()...)
	// Nobody reads pipes: a signal that finds the channel full is dropped,
	// which is all that is wanted of it.
	pipes := make(chan os.Signal, 1)
	signal.Notify(pipes, syscall.SIGPIPE)
	done := make(chan struct{})
	go func() { // ends when stop is called
		select {
		case s := <-sigs:
			cancel(&SignalError{Signal: s})
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		signal.Stop(pipes)
		close(done)
		cancel(nil)
	}
}

// interruptedBy returns the signal that cancelled ctx, or nil when ctx was
// cancelled some other way (a caller of Run that stops it).
func interruptedBy(ctx context.Context) os.Signal {
	var se *SignalError
	if errors.As(context.Cause(ctx), &se) {
		return se.Signal
	}
	return nil
}

// signalName returns "SIGHUP" for syscall.SIGHUP.
func signalName(s os.Signal) string {
	if n, ok := s.(syscall.Signal); ok {
		return pool.SignalName(n)
	}
	return s.String()
}
