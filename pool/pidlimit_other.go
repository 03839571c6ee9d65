//go:build !linux

package pool

// pidsRoom is not implemented here: the number of workers is not capped.
func pidsRoom() (limit, inUse int64, dir string, ok bool) { return 0, 0, "", false }

// nprocRoom is not implemented here: RLIMIT_NPROC does not cap the workers.
func nprocRoom(need int64) (limit, inUse int64, uid int, ok bool) { return 0, 0, 0, false }
