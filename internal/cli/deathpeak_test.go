package cli

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/safepool/safepool/internal/testenv"
)

// killerWorker is a Python line worker that answers each line with itself
// and SIGKILLs itself on every tenth (a line that is a multiple of 10).
const killerWorker = `import os, signal, sys
for line in sys.stdin:
    if int(line) % 10 == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    print(line.strip(), flush=True)
`

// TestMapDeathPeakAfterAnswer: a map worker with a cgroup of its own that
// answers lines and dies of the next one at once is charged, for that
// death, at least what it held while it ran. The supervisor often reads the
// answers before a death after it: its reading of the slot cgroup's peak
// then started the peak anew from what the dead worker had left there, a
// few hundred KiB, and the death, with the lines answered in its block,
// was charged that: 7 to 20 of these 100 deaths.
func TestMapDeathPeakAfterAnswer(t *testing.T) {
	py, worker, dir := pythonWorkerWithCgroups(t, killerWorker)
	joblog := filepath.Join(dir, "jobs.tsv")
	var in strings.Builder
	for i := 1; i <= 1000; i++ {
		in.WriteString(strconv.Itoa(i) + "\n")
	}
	var out, stderr syncBuffer
	code := Run(context.Background(), []string{"map", "-j", "3", "--no-progress", "--joblog", joblog,
		"--worker", py + " -u " + worker}, strings.NewReader(in.String()), &out, &stderr)
	if code != exitFailed {
		t.Fatalf("Run = %d, want %d (tasks failed); stderr:\n%s", code, exitFailed, stderr.String())
	}
	b, err := os.ReadFile(joblog)
	if err != nil {
		t.Fatal(err)
	}
	deaths, small := 0, 0
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n")[1:] {
		f := strings.Split(line, "\t")
		// task_id input attempt worker_pid start runtime exit_status signal cause peak_rss_bytes
		if len(f) < 10 || f[8] == "-" {
			continue
		}
		deaths++
		// A Python interpreter holds 3 MiB and more of its own.
		if peak, _ := strconv.ParseInt(f[9], 10, 64); peak < 2<<20 {
			small++
			if small <= 3 {
				t.Errorf("task %s: its worker died with a peak of %d bytes, want at least the 2 MiB a Python interpreter holds", f[0], peak)
			}
		}
	}
	if deaths != 100 {
		t.Errorf("%d deaths in the job log, want 100 (one a tenth line)", deaths)
	}
	if small > 0 {
		t.Errorf("%d of %d deaths charged under 2 MiB", small, deaths)
	}
}

// bigThenDieWorker is a Python line worker that fills 100 MiB and exits 1
// on the line "big", exits 5 at once on "die", and answers other lines.
const bigThenDieWorker = `import sys
for line in sys.stdin:
    if line.strip() == "big":
        hog = bytearray(100 << 20)
        sys.exit(1)
    if line.strip() == "die":
        sys.exit(5)
    print(line.strip(), flush=True)
`

// TestMapDeathPeakOfReplacement: a map worker that dies of the first line
// it runs is charged its own peak, not that of the worker it replaced in
// its slot's cgroup. The replaced worker's 100 MiB were read as the
// replacement's peak at its first line, and charged to that line.
func TestMapDeathPeakOfReplacement(t *testing.T) {
	py, worker, dir := pythonWorkerWithCgroups(t, bigThenDieWorker)
	joblog := filepath.Join(dir, "jobs.tsv")
	var out, stderr syncBuffer
	code := Run(context.Background(), []string{"map", "-j", "1", "--no-progress", "--joblog", joblog,
		"--worker", py + " -u " + worker}, strings.NewReader("big\ndie\nok\n"), &out, &stderr)
	if code != exitFailed {
		t.Fatalf("Run = %d, want %d (tasks failed); stderr:\n%s", code, exitFailed, stderr.String())
	}
	b, err := os.ReadFile(joblog)
	if err != nil {
		t.Fatal(err)
	}
	peaks := map[string]int64{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n")[1:] {
		f := strings.Split(line, "\t")
		// task_id input attempt worker_pid start runtime exit_status signal cause peak_rss_bytes
		if len(f) < 10 {
			t.Fatalf("job log row %q", line)
		}
		peaks[f[1]], _ = strconv.ParseInt(f[9], 10, 64)
	}
	if peaks["big"] < 100<<20 {
		t.Errorf("big: peak %d, want at least the 100 MiB it filled; job log:\n%s", peaks["big"], b)
	}
	if p := peaks["die"]; p <= 0 || p >= 50<<20 {
		t.Errorf("die: peak %d, want its own worker's (some MiB), not the 100 MiB of the worker before it; job log:\n%s", p, b)
	}
}

// pythonWorkerWithCgroups skips t, or fails it under CI=true, unless
// python3 is installed and safepool makes a memory cgroup per worker here;
// it writes source as a worker script in a directory of t's and returns
// python3, the script and the directory.
func pythonWorkerWithCgroups(t *testing.T, source string) (py, worker, dir string) {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		testenv.SkipOrFail(t, "python3 is not installed")
	}
	needWorkerCgroups(t)
	dir = t.TempDir()
	worker = filepath.Join(dir, "w.py")
	if err := os.WriteFile(worker, []byte(source), 0o644); err != nil {
		t.Fatal(err)
	}
	return py, worker, dir
}
