package memory

import (
	"os/exec"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// WithStopsBlocked calls f locked to the calling thread, with SIGTTIN, SIGTTOU
// and SIGTSTP blocked, and a child that f starts on that thread starts with
// them blocked too. Go starts a child with vfork: the thread that starts
// it waits in the kernel until the child calls exec or exits, and no stop
// reaches a thread that waits there. A stop signal sent to the
// supervisor's process group in that moment (its own write to a terminal
// set to `stty tostop` from the background, a Ctrl-Z) also reaches the
// child, and stops it before its exec: the supervisor then never stops as
// a whole, its shell never hears of a stop, fg does not continue the
// child, and everything is stuck for good. Blocked, the signals stay
// pending in the child. Only for children that run no job's program
// (probes, Go's own test of pidfds): a program started with them blocked
// could not be stopped by the terminal.
func WithStopsBlocked(f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var block, old unix.Sigset_t
	bits := uint(unsafe.Sizeof(block.Val[0])) * 8
	for _, s := range []unix.Signal{unix.SIGTTIN, unix.SIGTTOU, unix.SIGTSTP} {
		block.Val[(uint(s)-1)/bits] |= 1 << ((uint(s) - 1) % bits)
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &block, &old); err != nil {
		f()
		return
	}
	defer unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
	f()
}

// startProbe is the Spawner of probes: StartCmd with the stop signals
// blocked (WithStopsBlocked).
func startProbe(cmd *exec.Cmd) (pid int, err error) {
	WithStopsBlocked(func() { pid, err = StartCmd(cmd) })
	return pid, err
}
