package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
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
