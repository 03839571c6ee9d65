package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestResumeJoblogAppends checks that a resumed run adds its rows to the
// job log that the runs before it wrote, as GNU parallel's --resume does,
// where it wrote over them: rerun with the same command line, it lost
// what the runs before had done. A run without --resume starts the file
// anew, and so does a resumed run whose --joblog names a file that is not
// a job log.
func TestResumeJoblogAppends(t *testing.T) {
	bin := buildSafepool(t)
	dir := t.TempDir()
	jdb, jl, fixed := filepath.Join(dir, "j.db"), filepath.Join(dir, "jobs.tsv"), filepath.Join(dir, "fixed")
	run := func(flags ...string) {
		t.Helper()
		args := append([]string{"run", "--no-progress", "-j", "2", "--journal", jdb, "--joblog", jl}, flags...)
		args = append(args, "--", "sh", "-c", `[ "$1" != 3 ] || [ -e `+fixed+` ]`, "sh", "{}", ":::", "1", "2", "3", "4", "5")
		out, err := exec.Command(bin, args...).CombinedOutput()
		if _, ok := err.(*exec.ExitError); err != nil && !ok {
			t.Fatalf("safepool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// The task ids of the job log's rows, after its header.
	rows := func() []string {
		t.Helper()
		data, err := os.ReadFile(jl)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		if lines[0] != strings.Join(joblogColumns, "\t") {
			t.Fatalf("the job log begins with %q, not its header:\n%s", lines[0], data)
		}
		var ids []string
		for _, l := range lines[1:] {
			f := strings.Split(l, "\t")
			if len(f) != len(joblogColumns) {
				t.Fatalf("row %q has %d columns:\n%s", l, len(f), data)
			}
			ids = append(ids, f[0]+":"+f[8]) // task_id:cause
		}
		return ids
	}
	want := func(what string, n int, has ...string) {
		t.Helper()
		got := rows()
		if len(got) != n {
			t.Errorf("%s: the job log has %d rows, want %d: %v", what, len(got), n, got)
		}
		for _, h := range has {
			if !strings.Contains(" "+strings.Join(got, " ")+" ", " "+h+" ") {
				t.Errorf("%s: the job log has no row %s: %v", what, h, got)
			}
		}
	}

	run()
	want("first run", 5, "3:exit:1", "1:-")
	if err := os.WriteFile(fixed, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	run("--resume-failed")
	want("after --resume-failed", 6, "3:exit:1", "1:-", "3:-")
	run("--resume")
	want("after a --resume that ran nothing", 6)
	run()
	want("a run without --resume", 5, "3:-")

	if err := os.WriteFile(jl, []byte("my notes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run("--resume")
	want("--resume over a file that is not a job log", 0)
}
