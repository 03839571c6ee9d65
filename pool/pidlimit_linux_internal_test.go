package pool

import (
	"os"
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
func TestSystemThreads(t *testing.T) {
	n, ok := systemThreads()
	if mine, _ := userThreads(os.Getuid()); !ok || n < mine {
		t.Errorf("systemThreads() = %d, %v; want at least this user's %d", n, ok, mine)
	}
}
