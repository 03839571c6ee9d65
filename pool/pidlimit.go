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

// fitPidWorkers returns how many of workers fit under a pids cgroup that
// allows limit processes and threads with inUse of them in use; at least
// one.
func fitPidWorkers(workers int, limit, inUse int64) int {
	n := (limit - inUse - pidsReserve) / pidsPerWorker
	return int(max(1, min(int64(workers), n)))
}

// fitPids lowers c.Workers so that the workers fit the room the
// supervisor's pids cgroups leave (a container's pids limit, systemd's
// TasksMax), and says so; it returns "" when they fit or no such limit
// applies. Past that room a worker's fork fails, and so does the Go
// runtime's next thread, which ends the supervisor.
func (c *Config) fitPids() string {
	limit, inUse, dir, ok := pidsRoom()
	if !ok {
		return ""
	}
	n := fitPidWorkers(c.Workers, limit, inUse)
	if n >= c.Workers {
		return ""
	}
	notice := fmt.Sprintf("running %s at once instead of %d: the pids cgroup %s allows %d processes and threads (pids.max), %d are in use and safepool keeps %d for its threads and what the jobs start, %s, and each worker takes %d (its process and a thread of safepool's)",
		plural(n, "worker"), c.Workers, dir, limit, inUse, pidsReserve, leaves(limit-inUse-pidsReserve), pidsPerWorker)
	if int64(n*pidsPerWorker) > limit-inUse-pidsReserve {
		notice += "; one runs anyway"
	}
	c.Workers = n
	return notice
}
