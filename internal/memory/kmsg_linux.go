package memory

import (
	"fmt"
	"io"
	"os"
	"time"
)

// WatchOOMKills starts reading the kernel log (/dev/kmsg, which needs root
// or CAP_SYSLOG) from its end, so that only kills from now on are seen.
// Close must be called to stop it.
func WatchOOMKills() (*OOMLog, error) {
	// /dev/kmsg can be polled, so the runtime's poller serves Read, and
	// Close wakes a pending Read: the goroutine ends without a timeout.
	f, err := os.Open("/dev/kmsg")
	if err != nil {
		return nil, fmt.Errorf("memory: kernel log: %w", err)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, fmt.Errorf("memory: kernel log: %w", err)
	}
	return newOOMLog(f, time.Now, procLineage), nil
}
