package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/cluster"
	"github.com/safepool/safepool/pool"
)

// remoteGoroutines returns the stacks of the goroutines executeRemote
// started that are still there.
func remoteGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, ").executeRemote.func") {
			out = append(out, g)
		}
	}
	return out
}

// TestRemoteQuietInputInterrupted interrupts a run --nats whose standard
// input, a pipe, stays open and quiet: it returns, and the goroutines
// that read and publish its input have ended with it. The feeder stayed
// blocked in its read until the input's next line, or for ever.
func TestRemoteQuietInputInterrupted(t *testing.T) {
	bin := buildSafepool(t)
	dir := t.TempDir()
	url := startNatsServer(t, bin, dir)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	fmt.Fprintln(w, "a")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout bytes.Buffer
	var stderr lockedBuffer
	code := make(chan int, 1)
	go func() { code <- Run(ctx, []string{"run", "--nats", url, "--", "echo", "{}"}, r, &stdout, &stderr) }()
	if !waitFor(20*time.Second, func() bool { return strings.Contains(stderr.String(), "started on") }) {
		cancel()
		<-code
		t.Fatalf("the run did not start:\n%s", stderr.String())
	}
	time.Sleep(300 * time.Millisecond) // the feeder has published "a" and waits for more
	cancel()
	select {
	case c := <-code:
		if c != exitAborted {
			t.Errorf("run --nats interrupted = %d, want %d; stderr:\n%s", c, exitAborted, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("run --nats still running 20 s after its interrupt; stderr:\n%s", stderr.String())
	}
	var left []string
	waitFor(time.Second, func() bool { left = remoteGoroutines(); return len(left) == 0 })
	if len(left) > 0 {
		t.Errorf("%d goroutines of the run left after it returned:\n%s", len(left), strings.Join(left, "\n\n"))
	}
}

// startNatsServer starts `safepool server` with its store in dir on a free
// port, ended with the test, and returns its URL once it listens.
func startNatsServer(t *testing.T, bin, dir string) string {
	t.Helper()
	server := startDaemon(t, bin, "server", "-q", "--store", filepath.Join(dir, "store"), "--listen", "127.0.0.1:0")
	listening := regexp.MustCompile(`listening on (nats://\S+),`)
	var url string
	if !waitFor(20*time.Second, func() bool {
		if m := listening.FindStringSubmatch(server.String()); m != nil {
			url = m[1]
		}
		return url != ""
	}) {
		t.Fatalf("the server did not start:\n%s", server.String())
	}
	return url
}

// TestRemoteDeathAsLocal runs a run and a map locally, each with a task
// that exits 3 and one ended for its timeout, and checks that remoteDeath
// counts, from the causes of their attempts, the worker deaths the local
// summary counts: a one-shot job ended for its timeout is no worker death,
// a line worker ended for it is. And that an agent lost counts, an output
// lost not.
func TestRemoteDeathAsLocal(t *testing.T) {
	dir := t.TempDir()
	worker := filepath.Join(dir, "w.sh")
	if err := os.WriteFile(worker, []byte("#!/bin/sh\nwhile read l; do case $l in t) sleep 60;; e) exit 3;; esac; echo \"$l\"; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		proto pool.Protocol
		args  []string
	}{
		{pool.OneShot, []string{"run", "-j", "3", "--", "sh", "-c", "case $0 in t) sleep 60;; e) exit 3;; esac", "{}", ":::", "t", "e", "ok"}},
		{pool.Line, []string{"map", "-j", "1", "--worker", worker}},
	} {
		js := filepath.Join(dir, string(c.proto)+".json")
		args := append([]string{c.args[0], "--json", js, "--timeout", "1s", "--timeout-grace", "0"}, c.args[1:]...)
		var stdout, stderr bytes.Buffer
		if code := Run(context.Background(), args, strings.NewReader("a\nt\nb\ne\nc\n"), &stdout, &stderr); code != 1 {
			t.Fatalf("%s exited %d, want 1\n%s", c.args[0], code, stderr.String())
		}
		b, err := os.ReadFile(js)
		if err != nil {
			t.Fatal(err)
		}
		var s struct {
			WorkerDeaths int `json:"worker_deaths"`
			Failed       []struct {
				Cause    pool.Cause `json:"cause"`
				Attempts int        `json:"attempts"`
			} `json:"failed"`
		}
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		var causes []pool.Cause
		deaths := 0
		for _, f := range s.Failed {
			causes = append(causes, f.Cause)
			if remoteDeath(c.proto, f.Cause) {
				deaths++
			}
		}
		if len(causes) != 2 {
			t.Fatalf("%s: failed with %v, want a timeout and exit:3\n%s", c.args[0], causes, b)
		}
		if deaths != s.WorkerDeaths {
			t.Errorf("%s: remoteDeath counts %d worker deaths for %v, the local run %d", c.args[0], deaths, causes, s.WorkerDeaths)
		}
	}
	for _, p := range []pool.Protocol{pool.OneShot, pool.Line, pool.Framed} {
		if !remoteDeath(p, cluster.CauseAgentLost) || remoteDeath(p, pool.CauseOutputLost) {
			t.Errorf("%s: an agent lost must count as a worker death, an output lost not", p)
		}
	}
}
