package pool

import (
	"os"
	"strconv"
	"testing"
)

// TestUserThreads counts this process's own threads among its user's, and
// finds root free of RLIMIT_NPROC.
func TestUserThreads(t *testing.T) {
	n, ok := userThreads(os.Getuid())
	if !ok || n < 2 {
		t.Errorf("userThreads(%d) = %d, %v; want at least this process's threads", os.Getuid(), n, ok)
	}
	if os.Getuid() == 0 && !exemptFromNproc(0) {
		t.Error("root in the first user namespace is held to RLIMIT_NPROC")
	}
}

// TestSystemThreads reads the system's threads, among them this process's.
// The count is held against this process's own threads, read just before:
// other tests' processes start and end meanwhile, and userThreads, a scan
// of every process one after the other, may count more of this user's
// threads than the system had at any one moment.
func TestSystemThreads(t *testing.T) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	field, _ := statusField(status, "Threads:")
	mine, err := strconv.ParseInt(field, 10, 64)
	if err != nil || mine < 1 {
		t.Fatalf("Threads: %q in /proc/self/status", field)
	}
	if n, ok := systemThreads(); !ok || n < mine {
		t.Errorf("systemThreads() = %d, %v; want at least this process's %d", n, ok, mine)
	}
}
