package pool

import "fmt"

// pidsPerWorker is how many processes and threads one worker takes in the
// supervisor's pids cgroup: its process, and the supervisor's thread that
// waits for it to exit (os.Process.Wait blocks a thread). What its command
// starts comes on top, within pidsReserve.
const pidsPerWorker = 2

// pidsReserve is what the supervisor keeps of its pids cgroup's room beyond
// the workers: threads the Go runtime adds (it aborts the whole process,
// workers' supervisor included, when it cannot make one), and processes
// the workers' commands start.
const pidsReserve = 16

// pidsMinimum is the least room for more processes and threads with which
// the supervisor starts: the threads the Go runtime still makes as it runs
// (a thread it cannot make aborts the process with a dump of every
// goroutine) and one worker's. With less, a run is refused with the reason.
const pidsMinimum = 9

// fitPidWorkers returns how many of workers fit under a pids cgroup that
// allows limit processes and threads with inUse of them in use; at least
// one.
func fitPidWorkers(workers int, limit, inUse int64) int {
	n := (limit - inUse - pidsReserve) / pidsPerWorker
	return int(max(1, min(int64(workers), n)))
}

// pidLimit is one limit on the processes and threads the supervisor and its
// workers may have at once: a pids cgroup's, or RLIMIT_NPROC.
type pidLimit struct {
	limit, inUse int64
	// what names the limit in the notice, as "the pids cgroup DIR allows
	// N processes and threads (pids.max)".
	what string
}

// room is what the limit leaves.
func (l pidLimit) room() int64 { return l.limit - l.inUse }

// fitPids lowers c.Workers so that the workers fit the room the
// supervisor's pids cgroups (a container's pids limit, systemd's TasksMax)
// and its user's limit on processes (RLIMIT_NPROC, `ulimit -u`) leave, and
// says so; it returns "" when they fit or no such limit applies. Past that
// room a worker's fork fails, and so does the Go runtime's next thread,
// which ends the supervisor. It returns an error when the room is below
// pidsMinimum.
func (c *Config) fitPids() (string, error) {
	var tightest pidLimit
	found := false
	for _, l := range pidLimits(int64(c.Workers*pidsPerWorker + pidsReserve)) {
		if !found || l.room() < tightest.room() {
			tightest, found = l, true
		}
	}
	if !found {
		return "", nil
	}
	if tightest.room() < pidsMinimum {
		return "", fmt.Errorf("too few processes left to run: %s and %d are in use, which leaves %d; safepool needs room for at least %d (its own threads and one worker)",
			tightest.what, tightest.inUse, max(0, tightest.room()), pidsMinimum)
	}
	n := fitPidWorkers(c.Workers, tightest.limit, tightest.inUse)
	if n >= c.Workers {
		return "", nil
	}
	notice := fmt.Sprintf("running %s at once instead of %d: %s, %d are in use and safepool keeps %d for its threads and what the jobs start, %s, and each worker takes %d (its process and a thread of safepool's)",
		plural(n, "worker"), c.Workers, tightest.what, tightest.inUse, pidsReserve, leaves(tightest.room()-pidsReserve), pidsPerWorker)
	if int64(n*pidsPerWorker) > tightest.room()-pidsReserve {
		notice += "; one runs anyway"
	}
	c.Workers = n
	return notice, nil
}

// pidLimits returns the limits on processes and threads that apply to this
// process and can be read; RLIMIT_NPROC only where it may leave less room
// than need.
func pidLimits(need int64) []pidLimit {
	var limits []pidLimit
	if limit, inUse, dir, ok := pidsRoom(); ok {
		limits = append(limits, pidLimit{limit, inUse,
			fmt.Sprintf("the pids cgroup %s allows %d processes and threads (pids.max)", dir, limit)})
	}
	if limit, inUse, uid, ok := nprocRoom(need); ok {
		limits = append(limits, pidLimit{limit, inUse,
			fmt.Sprintf("the limit on processes and threads of user %d (ulimit -u) is %d", uid, limit)})
	}
	return limits
}
