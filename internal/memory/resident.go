package memory

// Resident is what a Watch's latest sample read of its worker's resident
// memory beside the private memory it samples: enough to read the one
// figure the kernel gives as a process ends, its peak resident memory
// (wait4's maxrss), which counts shared memory and file pages with the
// rest. The zero Resident is a watch before its first sample.
type Resident struct {
	// HWM is the highest peak resident memory (VmHWM of /proc/PID/status)
	// of a process of the tree, in bytes: a maxrss above it was reached
	// after the sample.
	HWM int64
	// Shared is the most shared memory and file pages (RssShmem and
	// RssFile) that one process of the tree had in RAM, in bytes.
	Shared int64
}

// LatePrivate returns what a process of the tree held alone at a peak of
// maxRSS bytes of resident memory reached after the sample r: maxRSS less
// r.Shared, at least 0. It returns 0 when maxRSS is not above r.HWM: that
// peak came before the sample, and the samples stand for it (a sample
// after it may have found shared memory that was not there at the peak,
// or less of it).
//
// It assumes that the shared memory of the process that peaked did not
// grow after the sample; should it have (a block mapped and read in the
// last moment), the estimate counts it. maxrss is one process's figure
// (the worker's, or that of a descendant it waited for), so the estimate
// is what one process held, not the tree.
func (r Resident) LatePrivate(maxRSS int64) int64 {
	if maxRSS <= r.HWM {
		return 0
	}
	return max(maxRSS-r.Shared, 0)
}
