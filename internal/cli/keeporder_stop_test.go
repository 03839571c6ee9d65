package cli

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/safepool/safepool/internal/cluster"
)

// keepOrderJob is the command of the stop tests: input "slow" runs until
// the file release exists, the others end at once; each prints "done"
// and its input.
func keepOrderJob(release string) []string {
	return []string{"sh", "-c", `if [ $1 = slow ]; then while [ ! -e ` + release + ` ]; do sleep 0.02; done; fi; echo done $1`, "sh", "{}"}
}

// waitFor polls cond every 20 ms for up to limit, and reports whether it
// came true.
func waitFor(limit time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// joblogFileRows returns the rows of the job log at path, header left out.
func joblogFileRows(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[1:]
}

// TestKeepOrderStopWritesHeld stops a local run -k while its first job
// runs and the three after it are done, held for order: their outputs are
// written at the stop and counted done, and --resume, which runs only
// the tasks the journal does not have done, runs only the first job, so that the two runs' outputs make
// the whole output. A second signal, which kills the workers at once, does
// the same.
func TestKeepOrderStopWritesHeld(t *testing.T) {
	bin := buildSafepool(t)
	for _, tt := range []struct {
		name    string
		signals []syscall.Signal
		extra   []string
		job     func(release string) []string
	}{
		{"SIGINT", []syscall.Signal{syscall.SIGINT}, nil, keepOrderJob},
		{"SIGTERM", []syscall.Signal{syscall.SIGTERM}, nil, keepOrderJob},
		// The slow job ignores SIGTERM: only the second signal's SIGKILL
		// ends it, long before --grace.
		{"SIGINT twice", []syscall.Signal{syscall.SIGINT, syscall.SIGINT}, []string{"--grace", "60s"}, func(release string) []string {
			job := keepOrderJob(release)
			job[2] = `trap "" TERM; ` + job[2]
			return job
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			db := filepath.Join(dir, "j.db")
			release := filepath.Join(dir, "release")
			joblog := filepath.Join(dir, "jobs.tsv")
			args := append([]string{"run", "-k", "-j", "4", "--no-governor", "--journal", db, "--joblog", joblog}, tt.extra...)
			args = append(append(args, "--"), tt.job(release)...)
			args = append(args, ":::", "slow", "a", "b", "c")
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(bin, args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			// The job log has an attempt once it has ended.
			if !waitFor(20*time.Second, func() bool { return len(joblogFileRows(joblog)) == 3 }) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("the three quick jobs did not end: job log %q; stderr:\n%s", joblogFileRows(joblog), stderr.String())
			}
			for i, s := range tt.signals {
				if i > 0 {
					time.Sleep(300 * time.Millisecond)
				}
				cmd.Process.Signal(s)
			}
			cmd.Wait()
			if st := cmd.ProcessState.ExitCode(); st != 3 {
				t.Errorf("exit status %d, want 3; stderr:\n%s", st, stderr.String())
			}
			if got, want := stdout.String(), "done a\ndone b\ndone c\n"; got != want {
				t.Errorf("stdout of the stopped run = %q, want %q; stderr:\n%s", got, want, stderr.String())
			}
			if !strings.Contains(stderr.String(), "interrupted: 3 done, 0 failed, 1 cancelled of 4 tasks") {
				t.Errorf("summary does not count the three done and the one cancelled:\n%s", stderr.String())
			}

			os.WriteFile(release, nil, 0o644)
			stdout.Reset()
			stderr.Reset()
			resumed := exec.Command(bin, append([]string{"run", "-k", "--journal", db, "--resume", "--"}, append(tt.job(release), ":::", "slow", "a", "b", "c")...)...)
			resumed.Stdout, resumed.Stderr = &stdout, &stderr
			if err := resumed.Run(); err != nil {
				t.Fatalf("resumed: %v; stderr:\n%s", err, stderr.String())
			}
			if got, want := stdout.String(), "done slow\n"; got != want {
				t.Errorf("stdout of the resumed run = %q, want %q (the tasks not written before)", got, want)
			}
			if !strings.Contains(stderr.String(), "1 task done") || !strings.Contains(stderr.String(), "3 skipped") {
				t.Errorf("resumed summary = %q, want 1 task done and 3 skipped", stderr.String())
			}
		})
	}
}

// lockedBuffer is a bytes.Buffer that a command writes while the test
// reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startDaemon starts bin with args, stderr in the returned buffer, and
// stops it (SIGTERM, then SIGKILL) when the test ends.
func startDaemon(t *testing.T, bin string, args ...string) *lockedBuffer {
	t.Helper()
	var stderr lockedBuffer
	cmd := exec.Command(bin, args...)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return &stderr
}

// recordedOf returns how many results of run the results bucket at url
// holds.
func recordedOf(js jetstream.JetStream, run string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, cluster.ResultsBucket)
	if err != nil {
		return 0
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return 0
	}
	n := 0
	for key := range keys.Keys() {
		if strings.HasPrefix(key, run+".") {
			n++
		}
	}
	return n
}

// TestKeepOrderStopWritesHeldNats stops a run -k --nats while its first
// task runs on the agent and the three after it are done and collected,
// held for order. The stop aborts the run, which cannot be collected
// again: the three outputs must be written then, in order, and counted
// done, or they are lost although the run recorded them.
func TestKeepOrderStopWritesHeldNats(t *testing.T) {
	bin := buildSafepool(t)
	dir := t.TempDir()
	url := startNatsServer(t, bin, dir)
	agent := startDaemon(t, bin, "agent", "--nats", url, "--name", "a1", "-j", "4", "--no-governor")
	if !waitFor(30*time.Second, func() bool { return strings.Contains(agent.String(), "slots") }) {
		t.Fatalf("the agent did not start:\n%s", agent.String())
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	runID := regexp.MustCompile(`--run-id (\S+)\)`)

	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(signalName(sig), func(t *testing.T) {
			sub := t.TempDir()
			release := filepath.Join(sub, "release")
			defer os.WriteFile(release, nil, 0o644) // no job left waiting on the agent
			joblog := filepath.Join(sub, "jobs.tsv")
			args := append([]string{"run", "-k", "--nats", url, "--joblog", joblog, "--"}, keepOrderJob(release)...)
			var stdout bytes.Buffer
			var stderr lockedBuffer
			cmd := exec.Command(bin, append(args, ":::", "slow", "a", "b", "c")...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			var run string
			if !waitFor(20*time.Second, func() bool {
				if m := runID.FindStringSubmatch(stderr.String()); m != nil {
					run = m[1]
				}
				return run != "" && recordedOf(js, run) == 3
			}) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("run %q: the three quick tasks were not recorded; stderr:\n%s\nagent:\n%s", run, stderr.String(), agent.String())
			}
			// Recorded, the results reach the submitter's watch at once;
			// a moment more for them to be collected.
			time.Sleep(time.Second)
			cmd.Process.Signal(sig)
			cmd.Wait()
			if st := cmd.ProcessState.ExitCode(); st != 3 {
				t.Errorf("exit status %d, want 3; stderr:\n%s", st, stderr.String())
			}
			if got, want := stdout.String(), "done a\ndone b\ndone c\n"; got != want {
				t.Errorf("stdout = %q, want %q; stderr:\n%s", got, want, stderr.String())
			}
			if !strings.Contains(stderr.String(), "interrupted: 3 done, 0 failed, 1 cancelled of 4 tasks") {
				t.Errorf("summary does not count the three done and the one cancelled:\n%s", stderr.String())
			}
			if rows := joblogFileRows(joblog); len(rows) != 3 {
				t.Errorf("job log rows = %q, want the three done tasks'", rows)
			}
		})
	}
}
