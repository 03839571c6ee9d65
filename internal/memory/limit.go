package memory

import (
	"strings"
	"syscall"
	"time"
)

// A worker without a cgroup of its own is held to its memory limit twice:
// by sampling (Watch), which stops it once its private memory is seen over
// the limit, and by the kernel, which refuses it memory past a data size
// limit (RLIMIT_DATA, set by Shim) a little above. Sampling alone cannot
// see an allocation that grows and ends between two samples; the data size
// limit cannot be missed, but makes the allocation fail inside the worker,
// which then dies or reports an error in its own way. RefusedMemory tells
// such a failure from others.

// DataLimitFor returns the data size limit (RLIMIT_DATA) that backs a
// memory limit: limit plus an eighth, at least 32 MiB more. The data size
// counts private writable mappings, touched or not, so it runs ahead of
// the private memory that sampling sees; the margin lets sampling stop a
// worker that grows page by page before the kernel refuses it. A limit <=
// 0 gives 0: none.
func DataLimitFor(limit int64) int64 {
	if limit <= 0 {
		return 0
	}
	return limit + max(limit/8, 32<<20)
}

// Failure says how a worker under a data size limit ended, for
// RefusedMemory.
type Failure struct {
	// Signal is the signal that ended the worker, or 0.
	Signal syscall.Signal
	// ExitCode is its exit status when it exited.
	ExitCode int
	// Stderr is the end of what it wrote on stderr.
	Stderr string
	// Crash is the first line of the last crash dump of the Go runtime
	// in its stderr ("fatal error: ...", "SIGSEGV: segmentation
	// violation"), or "".
	Crash string
	// Private is its private memory at the last sample, in bytes.
	Private int64
	// Limit is its memory limit in bytes (not the data size limit above).
	Limit int64
	// Data is the largest data size (VmData) of a process of its tree at
	// the last sample, in bytes.
	Data int64
	// DataLimit is its data size limit in bytes, or 0.
	DataLimit int64
}

// RefusedMemory reports whether a worker's failure was, most likely, the
// kernel refusing it memory at its data size limit: it failed (a non-zero
// exit or a signal other than SIGKILL, which is never its own doing) and
// either it said so on stderr in the words of a common runtime (Python's
// MemoryError, C's "Cannot allocate memory", C++'s std::bad_alloc, Go's,
// Java's, Rust's, numpy's or R's out-of-memory messages; not a GPU's, such
// as "CUDA out of memory", which no limit of the worker's caused), or it
// crashed near its limit (see nearLimit): it died of SIGSEGV, SIGBUS or
// SIGABRT, as C code does on a null malloc, or the Go runtime died of one
// of them (see goFault) and exited 2. A worker that grows by one large
// allocation fails far below its limit: only its words tell.
func RefusedMemory(f Failure) bool {
	if f.Signal == 0 && f.ExitCode == 0 || f.Signal == syscall.SIGKILL {
		return false
	}
	if saysOutOfMemory(f.Stderr) {
		return true
	}
	switch f.Signal {
	case syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGABRT:
		return nearLimit(f)
	case 0:
		return f.ExitCode == 2 && goFault(f.Crash) && nearLimit(f)
	}
	return false
}

// nearLimit reports whether a worker was near what the kernel lets it
// have when it failed: its private memory at the last sample within a
// quarter of its limit, or the data size of one of its processes within a
// quarter of its data size limit. The second is how a Go worker fails: Go
// maps its heap over address space it reserved beforehand, which the
// kernel does not count against the data size limit when it is mapped, so
// its data size runs past the limit with little memory in use, and the
// runtime's next small mapping of its own (for the garbage collector) is
// refused.
func nearLimit(f Failure) bool {
	return f.Limit > 0 && f.Private >= f.Limit-f.Limit/4 ||
		f.DataLimit > 0 && f.Data >= f.DataLimit-f.DataLimit/4
}

// goFaultHeaders start the first line of a Go runtime crash dump that a
// fault caused: the runtime's names of SIGSEGV, SIGBUS and SIGABRT, which
// head the dump of a signal the runtime could not turn into a panic (one
// in the runtime's own code, such as the garbage collector's, or in C
// code), and the throw of a fault in the runtime that it caught as a
// panic. The runtime then exits 2 (with GOTRACEBACK=crash it aborts, and
// the signal says it all). A fault in the program's own Go code is a panic
// ("panic: runtime error: invalid memory address or nil pointer
// dereference"), which tells nothing of memory.
var goFaultHeaders = []string{
	"SIGSEGV: segmentation violation",
	"SIGBUS: bus error",
	"SIGABRT: abort",
	"fatal error: unexpected signal during runtime execution",
}

// goFault reports whether crash, the first line of a Go runtime crash
// dump, is that of a fault (goFaultHeaders).
func goFault(crash string) bool {
	for _, h := range goFaultHeaders {
		if strings.HasPrefix(crash, h) {
			return true
		}
	}
	return false
}

// outOfMemoryWords are what common runtimes write when an allocation
// fails, in lower case.
var outOfMemoryWords = []string{
	"memoryerror",              // Python, numpy's _ArrayMemoryError, Java's OutOfMemoryError
	"out of memory",            // Go, Node, Perl, many C programs
	"cannot allocate memory",   // strerror(ENOMEM)
	"bad_alloc",                // C++
	"memory allocation of",     // Rust: "memory allocation of N bytes failed"
	"unable to allocate",       // numpy
	"cannot allocate vector",   // R
	"virtual memory exhausted", // GNU xmalloc
}

// deviceWords name the memory of a GPU or another accelerator, in lower
// case. A line that says an allocation failed in such memory ("CUDA out of
// memory", torch's OutOfMemoryError on a GPU, CuPy's, ROCm's "HIP out of
// memory") is about memory that no limit of the worker's touches.
var deviceWords = []string{"cuda", "gpu", "cudnn", "cublas", "rocm", "hip out of memory", "hip error", "xpu", "mps backend", "opencl"}

// saysOutOfMemory reports whether text holds a failure to allocate the
// host's memory: a line in outOfMemoryWords that names no device memory.
func saysOutOfMemory(text string) bool {
	for _, line := range strings.Split(strings.ToLower(text), "\n") {
		if containsAny(line, outOfMemoryWords) && !containsAny(line, deviceWords) {
			return true
		}
	}
	return false
}

// containsAny reports whether s contains any of words.
func containsAny(s string, words []string) bool {
	for _, w := range words {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

const (
	// minSample is the time between two samples of a worker near its limit.
	minSample = 5 * time.Millisecond
	// maxSample is the time between two samples of a worker far from it,
	// or without a limit.
	maxSample = 100 * time.Millisecond
)

// nextSample returns when to sample a worker next: every maxSample when
// its private memory used is at most a quarter of the limit, every
// minSample within a quarter of it, linearly in between; and at least
// twice before the limit is reached at the rate it grew since the previous
// sample, prev bytes ago by elapsed.
func nextSample(used, prev int64, elapsed time.Duration, limit int64) time.Duration {
	if limit <= 0 {
		return maxSample
	}
	headroom := limit - used
	far, near := limit-limit/4, limit/4 // headroom at a quarter used, and at three quarters
	var d time.Duration
	switch {
	case headroom <= near:
		return minSample
	case headroom >= far:
		d = maxSample
	default:
		d = minSample + time.Duration(float64(maxSample-minSample)*float64(headroom-near)/float64(far-near))
	}
	if grew := used - prev; grew > 0 && elapsed > 0 {
		// At this rate the limit is reached in headroom/grew × elapsed.
		if reach := time.Duration(float64(elapsed) * float64(headroom) / float64(grew)); reach/2 < d {
			d = reach / 2
		}
	}
	return max(d, minSample)
}
