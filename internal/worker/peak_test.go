package worker

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/memory"
)

const mib = 1 << 20

// latePeakInnerEnv is set in the fresh process that TestSessionLatePeak
// runs itself in.
const latePeakInnerEnv = "SAFEPOOL_TEST_LATEPEAK_INNER"

func TestSampledPeak(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sampled int64
		samples int
		maxRSS  int64
		last    memory.Resident
		want    int64
	}{
		{name: "sampled once, maxrss unknown", sampled: 2 * mib, samples: 1, want: 0},
		{name: "sampled once, maxrss less shared", sampled: 2 * mib, samples: 1, maxRSS: 60 * mib,
			last: memory.Resident{HWM: 3 * mib, Shared: 1 * mib}, want: 59 * mib},
		{name: "no growth after the last sample", sampled: 10 * mib, samples: 5, maxRSS: 500 * mib,
			last: memory.Resident{HWM: 500 * mib, Shared: 100 * mib}, want: 10 * mib},
		{name: "a shared block, no private growth", sampled: 10 * mib, samples: 5, maxRSS: 415 * mib,
			last: memory.Resident{HWM: 414 * mib, Shared: 404 * mib}, want: 11 * mib},
		{name: "grew in its last moment", sampled: 3 * mib, samples: 5, maxRSS: 72 * mib,
			last: memory.Resident{HWM: 8 * mib, Shared: 5 * mib}, want: 67 * mib},
		{name: "grew less than it had held", sampled: 90 * mib, samples: 5, maxRSS: 100 * mib,
			last: memory.Resident{HWM: 95 * mib, Shared: 40 * mib}, want: 90 * mib},
		{name: "maxrss unknown", sampled: 3 * mib, samples: 5, maxRSS: 0,
			last: memory.Resident{HWM: 8 * mib, Shared: 5 * mib}, want: 3 * mib},
		{name: "more shared than maxrss", sampled: 3 * mib, samples: 5, maxRSS: 50 * mib,
			last: memory.Resident{HWM: 8 * mib, Shared: 60 * mib}, want: 3 * mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sampledPeak(tc.sampled, tc.samples, tc.maxRSS, tc.last); got != tc.want {
				t.Errorf("sampledPeak(%d, %d, %d, %+v) = %d, want %d", tc.sampled, tc.samples, tc.maxRSS, tc.last, got, tc.want)
			}
		})
	}
}

// lateGrow does "lategrow:MB[:FILE]": it maps FILE, if given, shared with
// every page in memory, sleeps 400 ms, long enough to be sampled four
// times at a few MiB of private memory, then maps MB MiB of private memory,
// every page in, and exits 0 at once, so that the worker ends with them.
func lateGrow(arg string) {
	n, file, _ := strings.Cut(arg, ":")
	mb, _ := strconv.Atoi(n)
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		st, _ := f.Stat()
		// MAP_POPULATE brings every page in without a read of this
		// program's: under the race detector, each read would also touch
		// the detector's private shadow of the page, as much memory again.
		b, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED|syscall.MAP_POPULATE)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer runtime.KeepAlive(b)
	}
	time.Sleep(400 * time.Millisecond)
	// Private pages, in memory at once (MAP_POPULATE, as above).
	b, err := syscall.Mmap(-1, 0, mb*mib, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_POPULATE)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	runtime.KeepAlive(b)
	// At once, with none of the exit's hooks: the race detector's ran
	// long enough for a sample to find the new pages, which left the test
	// nothing to check.
	syscall.Exit(0)
}

// TestSessionLatePeak: a one-shot worker without a cgroup of its own that
// grows only in its last moment, after samples of a few MiB, is charged
// what it grew to: its maxrss less the shared memory its last sample found.
// One that holds a shared block throughout is not charged the block.
func TestSessionLatePeak(t *testing.T) {
	if os.Getenv(latePeakInnerEnv) == "" {
		// A job's maxrss at or below the supervisor's own peak cannot be
		// told from the one it inherits at its fork (ownPeak), and this
		// package's other tests grow this process past 300 MiB: the test
		// runs again in a fresh process of this binary, as its
		// supervisor. That process inherits, as its getrusage maxrss,
		// the peak of this one, which is made at least 160 MiB here:
		// what counts is its own peak since its exec, as for a
		// supervisor that a large Python program started.
		big := make([]byte, 160*mib)
		for i := range big {
			big[i] = 1
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestSessionLatePeak$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), latePeakInnerEnv+"=1")
		out, err := cmd.CombinedOutput()
		runtime.KeepAlive(big)
		t.Logf("in a fresh process:\n%s", out)
		if err != nil {
			t.Fatalf("TestSessionLatePeak in a fresh process: %v", err)
		}
		return
	}
	if own, err := memory.ProcessPeakRSS(os.Getpid()); err != nil || own >= 64*mib {
		t.Fatalf("this process's own peak is %d bytes already (%v): a job's 64 MiB cannot be told from it", own, err)
	}
	block := sharedFile(t, 128*mib)
	for _, tc := range []struct {
		name, input string
		most        int64 // the peak must be below it
	}{
		{name: "private", input: "lategrow:64", most: 100 * mib},
		{name: "beside a shared block", input: "lategrow:64:" + block, most: 100 * mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := helperConfig("oneshot", IONone, "--", tc.input)
			_, d := drive(t, cfg, []string{tc.input}, false, 20*time.Second)
			if d.Cause != "" || len(d.Flights) != 1 || d.Flights[0].Outcome.Cause != "" {
				t.Fatalf("Death = %+v, want a success", d)
			}
			var ru syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
			if p := d.Flights[0].Outcome.PeakRSS; p < 64*mib || p >= tc.most {
				t.Errorf("PeakRSS = %d bytes (maxrss %d, this process's %d), want at least 64 MiB and below %d MiB",
					p, d.Exit.MaxRSS, ru.Maxrss*1024, tc.most/mib)
			} else {
				t.Logf("PeakRSS = %d bytes (maxrss %d)", p, d.Exit.MaxRSS)
			}
		})
	}
}

// sharedFile writes a file of size bytes in /dev/shm and returns its path.
// It is removed when the test ends.
func sharedFile(t *testing.T, size int) string {
	t.Helper()
	f, err := os.CreateTemp("/dev/shm", "safepool-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(f.Name()) })
	// A MiB at a time: this process stays small (TestSessionLatePeak).
	chunk := make([]byte, mib)
	for n := 0; n < size; n += len(chunk) {
		if _, err := f.Write(chunk[:min(len(chunk), size-n)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}
