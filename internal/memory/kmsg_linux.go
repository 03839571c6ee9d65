package memory

import (
	"errors"
	"fmt"
	"os"
	"time"
)

// initPidNS is the link /proc/self/ns/pid of a process in the initial pid
// namespace: its inode number is fixed (PROC_PID_INIT_INO, Linux 3.8+).
const initPidNS = "pid:[4026531836]"

// errPidNS says that the kernel log's pids are not the supervisor's.
var errPidNS = errors.New("the supervisor is not in the initial pid namespace, whose pids the kernel log gives")

// WatchOOMKills starts reading the kernel log (/dev/kmsg, which needs root
// or CAP_SYSLOG) from its end, so that only kills from now on are seen.
// Close must be called to stop it. In a pid namespace other than the
// initial one it fails: the log's pids would name other processes than
// the supervisor's own that have the same numbers, and a false oom is
// worse than none.
func WatchOOMKills() (*OOMLog, error) {
	if ns, err := os.Readlink("/proc/self/ns/pid"); err != nil || ns != initPidNS {
		if err == nil {
			err = errPidNS
		}
		return nil, fmt.Errorf("memory: kernel log: %w", err)
	}
	// /dev/kmsg can be polled, so the runtime's poller waits for it, and
	// Close wakes a pending wait: the goroutine ends without a timeout.
	k, err := openKmsg()
	if err != nil {
		return nil, fmt.Errorf("memory: kernel log: %w", err)
	}
	return newOOMLog(k, time.Now, procLineage), nil
}
