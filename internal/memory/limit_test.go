package memory

import (
	"syscall"
	"testing"
	"time"
)

func TestDataLimitFor(t *testing.T) {
	for _, tc := range []struct{ limit, want int64 }{
		{0, 0},
		{-1, 0},
		{200 * mib, 232 * mib},
		{1 << 30, 1<<30 + 128*mib},
	} {
		if got := DataLimitFor(tc.limit); got != tc.want {
			t.Errorf("DataLimitFor(%d) = %d, want %d", tc.limit, got, tc.want)
		}
	}
}

func TestRefusedMemory(t *testing.T) {
	const limit = 200 * mib
	for _, tc := range []struct {
		name string
		f    Failure
		want bool
	}{
		{
			name: "python MemoryError far below the limit",
			f:    Failure{ExitCode: 1, Stderr: "Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\nMemoryError\n", Private: 2 * mib},
			want: true,
		},
		{
			name: "numpy",
			f:    Failure{ExitCode: 1, Stderr: "numpy.core._exceptions._ArrayMemoryError: Unable to allocate 2.00 GiB for an array with shape (268435456,) and data type float64\n"},
			want: true,
		},
		{name: "C++", f: Failure{Signal: syscall.SIGABRT, Stderr: "terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n"}, want: true},
		{name: "Go", f: Failure{ExitCode: 2, Stderr: "fatal error: runtime: out of memory\n\nruntime stack:\n"}, want: true},
		{name: "Rust", f: Failure{Signal: syscall.SIGABRT, Stderr: "memory allocation of 314572800 bytes failed\n"}, want: true},
		{name: "strerror", f: Failure{ExitCode: 1, Stderr: "convert: Cannot allocate memory\n"}, want: true},
		{name: "a C crash near the limit", f: Failure{Signal: syscall.SIGSEGV, Private: 160 * mib}, want: true},
		{name: "a C crash far from the limit", f: Failure{Signal: syscall.SIGSEGV, Private: 100 * mib}, want: false},
		{name: "a C crash with its data size near the data size limit", f: Failure{Signal: syscall.SIGSEGV, Private: 10 * mib, Data: 220 * mib}, want: true},
		{name: "a Go fault near the limit", f: Failure{ExitCode: 2, Crash: "SIGSEGV: segmentation violation", Private: 160 * mib}, want: true},
		{name: "a Go fault past the data size limit", f: Failure{ExitCode: 2, Crash: "SIGSEGV: segmentation violation", Private: 2 * mib, Data: 344 * mib}, want: true},
		{name: "a Go bus error near the limit", f: Failure{ExitCode: 2, Crash: "SIGBUS: bus error", Private: 190 * mib}, want: true},
		{name: "a Go fault caught in the runtime near the limit", f: Failure{ExitCode: 2, Crash: "fatal error: unexpected signal during runtime execution", Private: 190 * mib}, want: true},
		{name: "a Go fault far from the limits", f: Failure{ExitCode: 2, Crash: "SIGSEGV: segmentation violation", Private: 100 * mib, Data: 150 * mib}, want: false},
		{name: "a Go panic near the limit", f: Failure{ExitCode: 2, Crash: "panic: runtime error: invalid memory address or nil pointer dereference", Private: 190 * mib}, want: false},
		{name: "a Go SIGQUIT near the limit", f: Failure{ExitCode: 2, Crash: "SIGQUIT: quit", Private: 190 * mib}, want: false},
		{name: "exit 2 near the limit without a crash", f: Failure{ExitCode: 2, Stderr: "usage: prog FILE\n", Private: 190 * mib, Data: 230 * mib}, want: false},
		{name: "a Go fault's header, exit 1", f: Failure{ExitCode: 1, Crash: "SIGSEGV: segmentation violation", Private: 190 * mib}, want: false},
		{name: "an error near the limit, not about memory", f: Failure{ExitCode: 1, Stderr: "ValueError: bad input\n", Private: 190 * mib}, want: false},
		{name: "success", f: Failure{Stderr: "MemoryError caught and handled\n"}, want: false},
		{name: "torch on a GPU", f: Failure{ExitCode: 1, Stderr: "  File \"train.py\", line 9, in <module>\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB\n"}, want: false},
		{name: "CUDA runtime", f: Failure{ExitCode: 1, Stderr: "RuntimeError: CUDA error: out of memory\n"}, want: false},
		{name: "CuPy", f: Failure{ExitCode: 1, Stderr: "cupy.cuda.memory.OutOfMemoryError: Out of memory allocating 1,024 bytes (allocated so far: 0 bytes).\n"}, want: false},
		{name: "ROCm", f: Failure{ExitCode: 1, Stderr: "torch.OutOfMemoryError: HIP out of memory. Tried to allocate 20.00 MiB\n"}, want: false},
		{name: "the host's, after a GPU's", f: Failure{ExitCode: 1, Stderr: "warning: CUDA out of memory, falling back to the CPU\nMemoryError\n"}, want: true},
		{name: "SIGKILL", f: Failure{Signal: syscall.SIGKILL, Stderr: "MemoryError\n", Private: 199 * mib}, want: false},
		{name: "SIGTERM near the limit", f: Failure{Signal: syscall.SIGTERM, Private: 199 * mib}, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.f
			f.Limit, f.DataLimit = limit, DataLimitFor(limit)
			if got := RefusedMemory(f); got != tc.want {
				t.Errorf("RefusedMemory(%+v) = %v, want %v", f, got, tc.want)
			}
		})
	}
}

func TestNextSample(t *testing.T) {
	const limit = 400 * mib
	for _, tc := range []struct {
		name    string
		used    int64
		prev    int64
		elapsed time.Duration
		limit   int64
		want    time.Duration
	}{
		{name: "no limit", used: 10 * mib, limit: 0, want: maxSample},
		{name: "a quarter used", used: 100 * mib, limit: limit, want: maxSample},
		{name: "nothing used", used: 0, limit: limit, want: maxSample},
		{name: "half used", used: 200 * mib, limit: limit, want: (minSample + maxSample) / 2},
		{name: "within a quarter", used: 300 * mib, limit: limit, want: minSample},
		{name: "over", used: 500 * mib, limit: limit, want: minSample},
		{name: "far but growing fast", used: 50 * mib, prev: 10 * mib, elapsed: 10 * time.Millisecond, limit: limit, want: 43750 * time.Microsecond},
		{name: "half used and growing", used: 200 * mib, prev: 100 * mib, elapsed: 20 * time.Millisecond, limit: limit, want: 20 * time.Millisecond},
		{name: "far and growing slowly", used: 50 * mib, prev: 0, elapsed: 100 * time.Millisecond, limit: limit, want: maxSample},
		{name: "growing past the limit at once", used: 250 * mib, prev: 0, elapsed: time.Millisecond, limit: limit, want: minSample},
		{name: "shrinking", used: 50 * mib, prev: 100 * mib, elapsed: time.Millisecond, limit: limit, want: maxSample},
		{name: "no previous sample", used: 50 * mib, prev: 0, elapsed: 0, limit: limit, want: maxSample},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := nextSample(tc.used, tc.prev, tc.elapsed, tc.limit); got != tc.want {
				t.Errorf("nextSample(%d MiB, %d MiB, %v, %d MiB) = %v, want %v", tc.used/mib, tc.prev/mib, tc.elapsed, tc.limit/mib, got, tc.want)
			}
		})
	}
}
