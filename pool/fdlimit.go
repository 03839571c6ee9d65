package pool

import "fmt"

// filesPerWorker is the most file descriptors one worker holds in the
// supervisor at once, by protocol: the supervisor's ends of the worker's
// pipes and, until the worker has started, the child's ends; /dev/null as
// its stdin where it has no stdin pipe; the pidfd Go keeps while it runs;
// and five for its cgroup: under v1 the peak, OOM counter and tasks files
// and the directory kept open, under v2 the peak kept and the directory
// that starts the worker in it; and a file being read. A one-shot slot has
// two cgroups, and the read ends of a job that ended stay open until it is
// settled, while the next job starts (oneshot.go).
func filesPerWorker(p Protocol) int {
	const cgroup = 5
	switch p {
	case Line:
		return 6 + 1 + cgroup // stdin, stdout and stderr pipes; pidfd
	case Framed:
		return 8 + 2 + cgroup // task, result, stdout and stderr pipes; /dev/null, pidfd
	}
	// stdout and stderr pipes, /dev/null, pidfd; the ended job's read ends;
	// two cgroups, one file read at a time.
	return 4 + 2 + 2 + 2*cgroup - 1
}

// fileReserve is what the supervisor keeps for itself beyond the files
// open when the pool is made: exec's error pipe, the spill file, the
// kernel log, the governor's readings, and what a caller opens meanwhile
// (a job log, input files, a JSON summary).
const fileReserve = 32

// fitWorkers returns how many of workers, each holding up to per files,
// fit under limit open files with inUse open already; at least one.
func fitWorkers(workers, per int, limit, inUse int64) int {
	n := (limit - inUse - fileReserve) / int64(per)
	return int(max(1, min(int64(workers), n)))
}

// fitFiles lowers c.Workers so that the workers' files fit the
// supervisor's open-file limit, and says so; it returns "" when they fit
// or the limit cannot be read. Go raises the soft limit to the hard one as
// a program starts, so the limit is the hard one unless the program set
// its own.
func (c *Config) fitFiles() string {
	limit, inUse, err := openFiles()
	if err != nil {
		return ""
	}
	per := filesPerWorker(c.Protocol)
	n := fitWorkers(c.Workers, per, limit, inUse)
	if n >= c.Workers {
		return ""
	}
	notice := fmt.Sprintf("running %s at once instead of %d: the open-file limit (ulimit -n) is %d, %d files are open and safepool keeps %d for itself, %s, and each worker needs up to %d",
		plural(n, "worker"), c.Workers, limit, inUse, fileReserve, leaves(limit-inUse-fileReserve), per)
	if int64(n*per) > limit-inUse-fileReserve {
		notice += "; one runs anyway"
	}
	c.Workers = n
	return notice
}

// plural is n followed by noun, with an s unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// leaves says how much of a limit is left for the workers, in the notices
// that say why fewer run.
func leaves(left int64) string {
	if left <= 0 {
		return "which leaves none for the workers"
	}
	return fmt.Sprintf("which leaves %d for the workers", left)
}
