package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safepool/safepool/internal/testenv"
)

// smallDisk mounts a tmpfs of size (such as "64k") on a new directory and
// returns it; it is unmounted at the end of t. It skips t, or fails it
// under CI=true, unless this process may mount.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		testenv.SkipOrFail(t, "mounting a tmpfs: "+err.Error())
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// fillDisk fills the file system of dir, with a file of its own.
func fillDisk(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, 1<<20)); err == nil {
		t.Fatalf("wrote 1 MiB to %s, want it full", dir)
	}
}

// runIn runs bin with args in dir, stdout to stdout (nil: discarded), and
// returns its exit status and stderr.
func runIn(t *testing.T, dir string, stdout *os.File, env []string, bin string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if stdout != nil {
		cmd.Stdout = stdout
	}
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// TestFullDiskNamesStdout runs safepool with stdout redirected to a file
// on a full disk: the error names that file, not /dev/stdout, which says
// nothing of which disk is full.
func TestFullDiskNamesStdout(t *testing.T) {
	disk := smallDisk(t, "64k")
	bin := buildSafepool(t)
	out := filepath.Join(disk, "out.txt")
	dry := []string{"run", "--dry-run", "echo {}", ":::"}
	for range 100 {
		dry = append(dry, strings.Repeat("x", 2000))
	}
	for _, args := range [][]string{
		{"run", "--no-progress", "head -c 200000 /dev/zero", ":::", "1"},
		dry,
	} {
		f, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		code, stderr := runIn(t, t.TempDir(), f, nil, bin, args...)
		f.Close()
		if want := "safepool: writing output: write " + out + ": no space left on device\n"; code != 3 || !strings.Contains(stderr, want) {
			t.Errorf("safepool %q > %s: exit %d, stderr:\n%s\nwant exit 3 and %q", args[:2], out, code, stderr, want)
		}
		if err := os.Remove(out); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFullDiskJoblogWholeRows runs safepool run with its job log on a
// disk that fills: the job log ends with the last whole row that fitted,
// not with the start of one cut off.
func TestFullDiskJoblogWholeRows(t *testing.T) {
	disk := smallDisk(t, "64k")
	bin := buildSafepool(t)
	jl := filepath.Join(disk, "jobs.tsv")
	args := []string{"run", "--no-progress", "--joblog", jl, "--", "true", ":::"}
	for i := range 3000 {
		args = append(args, strings.Repeat("x", 20+i%7))
	}
	code, stderr := runIn(t, t.TempDir(), nil, nil, bin, args...)
	if code != 1 || !strings.Contains(stderr, "safepool: writing the job log: write "+jl+": no space left on device") {
		t.Fatalf("exit %d, stderr:\n%s\nwant exit 1 and that the job log could not be written", code, stderr)
	}
	b, err := os.ReadFile(jl)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 || b[len(b)-1] != '\n' {
		t.Errorf("the job log (%d bytes) ends with %q, want a whole row", len(b), b[max(0, len(b)-40):])
	}
	for i, row := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if n := strings.Count(row, "\t"); n != len(joblogColumns)-1 {
			t.Fatalf("row %d has %d tabs, want %d: %q", i+1, n, len(joblogColumns)-1, row)
		}
	}
}

// TestFullDiskJournalLeftOut runs safepool run with a --journal on a
// full disk: it cannot be set up, the run stops before any job (exit 2),
// and no empty file is left that would pass for a journal (safepool
// report took it for another program's database).
func TestFullDiskJournalLeftOut(t *testing.T) {
	disk := smallDisk(t, "64k")
	fillDisk(t, disk)
	bin := buildSafepool(t)
	j := filepath.Join(disk, "jobs.db")
	code, stderr := runIn(t, t.TempDir(), nil, nil, bin, "run", "--no-progress", "--journal", j, "--", "true", ":::", "a")
	if code != 2 || !strings.Contains(stderr, "safepool: cannot open the journal: ") {
		t.Fatalf("exit %d, stderr:\n%s\nwant exit 2 and that the journal cannot be opened", code, stderr)
	}
	if fi, err := os.Stat(j); err == nil {
		t.Errorf("%s is left, %d bytes; want no file", j, fi.Size())
	}
}

// TestFullDiskJournalHalfMade runs safepool with a journal on a disk
// with room for its first page but not for its schema: nothing is left of
// the journal, as when nothing fits. Its schema was made a table at a
// time, and the tables made before the disk was full stayed, with the
// schema's version, beside a WAL of most of a megabyte: a journal half
// made, which the report took for one that holds no run.
func TestFullDiskJournalHalfMade(t *testing.T) {
	disk := smallDisk(t, "768k")
	fillDisk(t, disk)
	filler := filepath.Join(disk, "filler")
	fi, err := os.Stat(filler)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filler, fi.Size()-256<<10); err != nil {
		t.Fatal(err)
	}
	bin := buildSafepool(t)
	j := filepath.Join(disk, "jobs.db")
	code, stderr := runIn(t, t.TempDir(), nil, nil, bin, "run", "--no-progress", "--journal", j, "--", "true", ":::", "a")
	if code != 2 || !strings.Contains(stderr, "safepool: cannot open the journal: ") {
		t.Fatalf("exit %d, stderr:\n%s\nwant exit 2 and that the journal cannot be opened", code, stderr)
	}
	for _, name := range []string{j, j + "-wal", j + "-shm", j + "-journal"} {
		if fi, err := os.Stat(name); err == nil {
			t.Errorf("%s is left, %d bytes; want no file", name, fi.Size())
		}
	}
}

// TestFullTmpdirSaysSo runs jobs whose output outgrows memory with a full
// $TMPDIR: each fails with cause output-lost, and the summary says once
// that $TMPDIR, by its name, was full.
func TestFullTmpdirSaysSo(t *testing.T) {
	disk := smallDisk(t, "64k")
	fillDisk(t, disk)
	bin := buildSafepool(t)
	code, stderr := runIn(t, t.TempDir(), nil, []string{"TMPDIR=" + disk}, bin,
		"run", "--no-progress", "-j", "2", "head -c 3000000 /dev/zero", ":::", "1", "2", "3")
	if code != 1 || strings.Count(stderr, " output-lost after 1 attempt") != 3 {
		t.Fatalf("exit %d, stderr:\n%s\nwant exit 1 and 3 tasks output-lost", code, stderr)
	}
	want := "safepool: $TMPDIR (" + disk + ") was full: 3 tasks lost their output (output-lost)\n"
	if n := strings.Count(stderr, want); n != 1 {
		t.Errorf("stderr:\n%s\nwant once %q", stderr, want)
	}
	if n := strings.Count(stderr, "$TMPDIR"); n != 1 {
		t.Errorf("stderr names $TMPDIR %d times, want once:\n%s", n, stderr)
	}
}
