package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestOtherUsersJournal: another user's journal in a directory that
// others write too (/tmp). A dry run with --resume only reads it, so it
// shows what a run would do, where it failed ("attempt to write a
// readonly database"); a run, which may not write it, is refused; and
// neither leaves a WAL or shared memory of its own beside it, which kept
// the journal's owner from resuming ("attempt to write a readonly
// database", exit 2).
func TestOtherUsersJournal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to be two users")
	}
	dir, err := os.MkdirTemp("", "safepool-otheruser-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "safepool")
	data, err := os.ReadFile(buildSafepool(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	jdb := filepath.Join(dir, "j.db")
	as := func(uid uint32, input string, args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		cmd.Stdin = strings.NewReader(input)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		err := cmd.Run()
		if _, ok := err.(*exec.ExitError); err != nil && !ok {
			t.Fatalf("safepool %s as uid %d: %v", strings.Join(args, " "), uid, err)
		}
		return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
	}
	noneBeside := func(what string) {
		t.Helper()
		for _, suffix := range []string{"-wal", "-shm"} {
			if fi, err := os.Lstat(jdb + suffix); err == nil {
				t.Errorf("%s: %s is beside the journal (uid %d)", what, filepath.Base(jdb+suffix), fi.Sys().(*syscall.Stat_t).Uid)
			}
		}
	}
	const owner, other = 65534, 65533
	if _, stderr, code := as(owner, "a\nb\n", "run", "--no-progress", "--journal", jdb, "echo", "{}"); code != 0 {
		t.Fatalf("the owner's run: exit %d: %s", code, stderr)
	}
	noneBeside("after the owner's run")

	stdout, stderr, code := as(other, "a\nb\nc\n", "run", "--dry-run", "--journal", jdb, "--resume", "echo", "{}")
	if code != 0 || stdout != "echo c\n" {
		t.Errorf("another user's dry run with --resume: exit %d, stdout %q, want 0 and only the input not done: %s", code, stdout, stderr)
	}
	noneBeside("after another user's dry run")

	_, stderr, code = as(other, "a\nb\nc\n", "run", "--no-progress", "--journal", jdb, "--resume", "echo", "{}")
	if code != exitUsage || !strings.Contains(stderr, jdb+" cannot be written (permission denied)") {
		t.Errorf("another user's run: exit %d, %q; want %d, saying the journal cannot be written", code, stderr, exitUsage)
	}
	noneBeside("after another user's run")

	stdout, stderr, code = as(owner, "a\nb\nc\n", "run", "--no-progress", "--journal", jdb, "--resume", "echo", "{}")
	if code != 0 || stdout != "c\n" {
		t.Errorf("the owner's --resume after the others: exit %d, stdout %q, want 0 and c: %s", code, stdout, stderr)
	}
}
