package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/safepool/safepool/pool"
	"golang.org/x/sys/unix"
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
	// at is when NotifyContext received it (zero otherwise).
	at time.Time
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
			cancel(&SignalError{Signal: s, at: time.Now()})
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

// relayWindow is how soon after the signal that stopped a run the same
// signal is taken for that one again, passed on by a program in between
// rather than sent anew. timeout(1), unless --foreground, sends a signal it
// gets to its whole process group, which safepool is in: a Ctrl-C reaches
// safepool from the terminal and again from timeout a moment later (and
// timeout's own SIGTERM reaches it twice, sent to it and to the group). A
// person who presses Ctrl-C twice does so further apart, or presses again.
const relayWindow = 250 * time.Millisecond

// relayed reports whether s, received while a run stops, is the signal that
// stopped it (the cause of ctx) received again within relayWindow: the same
// signal passed on, which must not count as the second one that kills the
// workers at once.
func relayed(ctx context.Context, s os.Signal, now time.Time) bool {
	var se *SignalError
	if !errors.As(context.Cause(ctx), &se) || se.at.IsZero() {
		return false
	}
	return se.Signal == s && now.Sub(se.at) < relayWindow
}

// signalName returns "SIGHUP" for syscall.SIGHUP.
func signalName(s os.Signal) string {
	if n, ok := s.(syscall.Signal); ok {
		return pool.SignalName(n)
	}
	return s.String()
}

// followTerminalStops makes Ctrl-Z stop the whole run, as it stops the
// processes of a foreground pipeline: the terminal sends SIGTSTP to
// safepool's process group, which p's workers are not in (each has a group
// of its own), so on SIGTSTP safepool pauses them (pool.Pool.Pause) and
// stops itself; once continued (fg, bg), it lets them go on. As the kernel
// does for SIGTSTP, it does not stop when its process group is orphaned:
// no shell would continue it. paused is true from before the pause until
// after the resume. It returns a function that stops following.
func followTerminalStops(p *pool.Pool, paused *atomic.Bool) (stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTSTP)
	conts := make(chan os.Signal, 1)
	signal.Notify(conts, syscall.SIGCONT)
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() { // ends when stop is called
		defer close(ended)
		for {
			select {
			case <-sigs:
				if orphanedGroup() {
					continue
				}
				paused.Store(true)
				p.Pause()
				select {
				case <-conts: // an earlier one
				default:
				}
				// SIGTSTP, once notified, cannot have its default action
				// back (the runtime keeps its handler): SIGSTOP stops as
				// it would. The stop may take hold after Kill returns
				// (another thread takes the signal): only SIGCONT says
				// that safepool was stopped and is going on.
				_ = syscall.Kill(syscall.Getpid(), syscall.SIGSTOP)
				select {
				case <-conts:
				case <-done:
				}
				p.Resume()
				paused.Store(false)
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(sigs)
		signal.Stop(conts)
		close(done)
		<-ended
	}
}

// orphanedGroup reports whether safepool's process group is orphaned: no
// member has a parent in another process group of the same session, which
// a job-control shell would be. It says true when /proc cannot tell.
func orphanedGroup() bool {
	pgid, sid := syscall.Getpgrp(), 0
	if s, err := unix.Getsid(0); err == nil {
		sid = s
	} else {
		return true
	}
	dir, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	for _, e := range dir {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, pg, _, ok := procGroup(pid)
		if !ok || pg != pgid {
			continue
		}
		if _, ppg, psid, ok := procGroup(ppid); ok && ppg != pgid && psid == sid {
			return false
		}
	}
	return true
}

// procGroup reads the parent, process group and session of pid from
// /proc/PID/stat.
func procGroup(pid int) (ppid, pgrp, sid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	// After the command name, which may hold spaces and parentheses:
	// state ppid pgrp session.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 4 {
		return 0, 0, 0, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	pgrp, err2 := strconv.Atoi(f[2])
	sid, err3 := strconv.Atoi(f[3])
	return ppid, pgrp, sid, err1 == nil && err2 == nil && err3 == nil
}
