package worker

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// memfdCreate is unix.MemfdCreate; a test replaces it to take the pipe.
var memfdCreate = unix.MemfdCreate

// memoryFile returns a sealed memory file that holds b: the seals keep
// the processes that read it from changing or resizing it.
func memoryFile(b []byte) (*os.File, error) {
	fd, err := memfdCreate("safepool-stdin", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, os.NewSyscallError("memfd_create", err)
	}
	f := os.NewFile(uintptr(fd), "safepool-stdin")
	if _, err := f.WriteAt(b, 0); err != nil { // the offset stays at 0
		f.Close()
		return nil, err
	}
	const seals = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		f.Close()
		return nil, os.NewSyscallError("fcntl", err)
	}
	return f, nil
}

// reopenReadOnly opens f again, read-only, through /proc: a new open file
// description, at offset 0. A variable for tests.
var reopenReadOnly = func(f *os.File) (*os.File, error) {
	return os.OpenFile("/proc/self/fd/"+strconv.Itoa(int(f.Fd())), os.O_RDONLY, 0)
}
