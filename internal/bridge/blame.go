package bridge

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// A blame file is how a worker that runs a batch of items as one task says
// which item it is running, in a way that survives its death: the worker
// maps the 16-byte file <dir>/<pid> into memory and stores, little-endian,
// the id of the task it runs (bytes 0-7) and the index of the item it runs
// within it (bytes 8-15). It writes the index before each item, and at the
// start of a task the index 0 before the id. The page belongs to the file,
// not to the process, so after the worker died, even by SIGKILL, the file
// names the item that was running.

// blameFileSize is the size of a blame file.
const blameFileSize = 16

// makeBlameDir creates the directory of this session's blame files, in
// memory (/dev/shm) where possible.
func makeBlameDir() (string, error) {
	base := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		base = "/dev/shm"
	}
	dir, err := os.MkdirTemp(base, "safepool-blame-")
	if err != nil {
		return "", fmt.Errorf("bridge: making the blame directory: %w", err)
	}
	return dir, nil
}

// readBlame returns the index of the item that worker pid was running in
// task id, or -1 when its blame file is missing or names another task (the
// worker died before it began the task's first item). It removes the file:
// the worker is dead, and a new process may reuse its pid.
func readBlame(dir string, pid int, id uint64) int64 {
	if pid <= 0 {
		return -1
	}
	name := filepath.Join(dir, strconv.Itoa(pid))
	b, err := os.ReadFile(name)
	os.Remove(name)
	if err != nil || len(b) < blameFileSize {
		return -1
	}
	if binary.LittleEndian.Uint64(b[0:8]) != id {
		return -1
	}
	item := binary.LittleEndian.Uint64(b[8:16])
	if item > 1<<62 {
		return -1
	}
	return int64(item)
}
