package worker

import (
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Cause says why an attempt ended without a result. The empty Cause means the
// attempt succeeded.
type Cause string

const (
	// CauseOOM means the kernel OOM killer took the worker, confirmed by the
	// oom_kill counter of the worker's own cgroup, by that of the cgroup it
	// shares with the supervisor (see docs/memory.md for the rule), or by
	// the kernel log.
	CauseOOM Cause = "oom"
	// CauseMemoryLimit means the supervisor enforced pool.Config.MemLimit on a
	// worker without a cgroup of its own: its process tree's private memory
	// went over the limit, or the kernel refused it memory past the data
	// size limit that backs it (see pool.Config.NoDataLimit).
	CauseMemoryLimit Cause = "memory-limit"
	// CauseSegfault means the worker died of SIGSEGV or SIGBUS.
	CauseSegfault Cause = "segfault"
	// CauseTimeout means the attempt ran longer than its limit (the task's
	// own, or pool.Config.Timeout) and its worker was ended (SIGTERM, then
	// SIGKILL after its grace: Flight.TimeoutGrace or Config.TimeoutGrace),
	// however it then ended.
	CauseTimeout Cause = "timeout"
	// CauseProtocol means the worker wrote something the protocol does not
	// allow, or closed its pipes while alive, and was killed.
	CauseProtocol Cause = "protocol"
	// CauseTaskError means the worker reported that the task failed and
	// stayed alive (framed protocol error frame).
	CauseTaskError Cause = "task-error"
	// CausePreempted means the supervisor stopped the attempt to save memory.
	// It is not the task's fault and is not charged as an attempt.
	CausePreempted Cause = "preempted"
	// CauseCancelled means the attempt was stopped because the pool aborted.
	CauseCancelled Cause = "cancelled"
	// CauseOutputLost means a one-shot attempt's stdout or stderr went
	// beyond pool.Config.OutputInMemory and could not be kept in the temporary
	// file (for example, $TMPDIR is full): the worker was stopped.
	CauseOutputLost Cause = "output-lost"
)

// SignalCause returns the cause for a worker killed by sig: CauseSegfault for
// SIGSEGV and SIGBUS, otherwise "signal:NAME", for example "signal:SIGKILL".
func SignalCause(sig syscall.Signal) Cause {
	if sig == syscall.SIGSEGV || sig == syscall.SIGBUS {
		return CauseSegfault
	}
	return Cause("signal:" + SignalName(sig))
}

// SignalName returns the conventional name of sig, such as "SIGKILL".
func SignalName(sig syscall.Signal) string {
	if name := unix.SignalName(sig); name != "" {
		return name
	}
	return "SIG" + strconv.Itoa(int(sig))
}

// ExitCause returns the cause "exit:N" for a worker that exited with code.
func ExitCause(code int) Cause { return Cause("exit:" + strconv.Itoa(code)) }

// IsWorkerDeath reports whether c means that the worker process ended or was
// killed, as opposed to success, a task error, preemption or cancellation.
func (c Cause) IsWorkerDeath() bool {
	switch c {
	case "", CauseTaskError, CausePreempted, CauseCancelled:
		return false
	}
	return true
}
