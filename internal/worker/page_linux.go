package worker

import (
	"os"

	"golang.org/x/sys/unix"

	"github.com/safepool/safepool/internal/protocol"
)

// newPage makes the running-item page of a framed worker
// (protocol.PageVersion): a memory file of protocol.PageSize bytes, which
// the worker gets as a descriptor and maps shared, and the supervisor's
// mapping of it, in which it writes only the time paused
// (protocol.PagePausedOff). The file lives as long as one of them holds it:
// nothing is left behind when both are killed.
func newPage() (f *os.File, m []byte, err error) {
	fd, err := unix.MemfdCreate("safepool-page", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, os.NewSyscallError("memfd_create", err)
	}
	f = os.NewFile(uintptr(fd), "safepool-page")
	if err := f.Truncate(protocol.PageSize); err != nil {
		f.Close()
		return nil, nil, err
	}
	m, err = unix.Mmap(fd, 0, protocol.PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, nil, os.NewSyscallError("mmap", err)
	}
	return f, m, nil
}

// freePage unmaps the supervisor's mapping of a page.
func freePage(m []byte) { _ = unix.Munmap(m) }
