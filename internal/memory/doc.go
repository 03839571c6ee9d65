// Package memory senses and limits the memory of worker processes.
//
// Control: a [Manager] owns this supervisor's cgroups, a parent directory
// named safepool-<pid> under the supervisor's own memory cgroup, and hands
// out one [Group] per worker. A Group carries the worker's limit (cgroup v2
// memory.max or v1 memory.limit_in_bytes), so the kernel OOM-kills only the
// offender, and its counters (OOM kills, usage, peak) tell the supervisor
// afterwards what happened. Where workers cannot have cgroups of their own,
// the Manager says so and why ([Mode], [Detection]); in [ModeEnclosing] its
// [OOMWitness] still confirms OOM kills from the supervisor's own cgroup,
// and the supervisor measures each worker by what it alone holds
// ([TreePrivateMemory], sampled by a [Watch]) and enforces limits itself.
//
// Sensing: [WatchOOMKills] reads the kernel log and confirms OOM kills of
// a worker or of any process of its tree ([OOMLog.KilledInTree], with the
// processes a [Watch] saw, its [Tree]), told apart from other processes
// with the same pid by their start times, [HostMemTotal], [HostMemAvailable], [OwnCgroupLimit] and
// [PressureFull] feed the memory budget, and [TreePrivateMemory],
// [ProcessRSS] and [ProcessPeakRSS] measure processes.
package memory
