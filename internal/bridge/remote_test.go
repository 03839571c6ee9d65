package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/safepool/safepool/internal/cluster"
	"github.com/safepool/safepool/internal/testenv"
	"github.com/safepool/safepool/pool"
)

// startNATS starts an embedded NATS server on a free loopback port and
// returns its port; cleanup shuts it down.
func startNATS(t *testing.T) int {
	t.Helper()
	srv, err := cluster.StartServer(cluster.ServerConfig{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	_, port, err := net.SplitHostPort(srv.URL()[len("nats://"):])
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	return n
}

// natsURL is the URL of a server on the loopback port.
func natsURL(port int) string { return fmt.Sprintf("nats://127.0.0.1:%d", port) }

// startAgent runs an agent of two workers, in this process, on the server
// at port; cleanup stops it.
func startAgent(t *testing.T, port int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := cluster.NewAgent(ctx, cluster.AgentConfig{URL: natsURL(port), Name: "a1", Pool: pool.Config{Workers: 2}})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = a.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// startRemote starts a session whose tasks go to the agents of the server
// at url (Pool(nats=URL)), run by the helper worker.
func startRemote(t *testing.T, url string) *session {
	t.Helper()
	return startRemoteCommand(t, url, []string{os.Args[0]})
}

// startRemoteCommand is startRemote with the worker command command.
func startRemoteCommand(t *testing.T, url string, command []string) *session {
	t.Helper()
	return startRemoteWith(t, url, command, Options{})
}

// startRemoteWith is startRemoteCommand with opt's Stderr.
func startRemoteWith(t *testing.T, url string, command []string, opt Options) *session {
	t.Helper()
	h, _ := json.Marshal(Hello{Version: Version, Command: command, Workers: 2})
	var m map[string]any
	_ = json.Unmarshal(h, &m)
	m["nats"] = url
	hello, _ := json.Marshal(m)
	s := startHello(t, hello, "1", opt)
	if f := s.next(); f.kind != KindReady {
		t.Fatalf("first frame kind = %d, want ready: %s", f.kind, f.payload)
	}
	return s
}

// queuedEver returns how many messages the task stream of the server at
// port ever stored: its last sequence number.
func queuedEver(t *testing.T, port int) uint64 {
	t.Helper()
	nc, err := nats.Connect(natsURL(port))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, cluster.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// checkRemoteResults reads n results, each once and done with the helper's
// output, and then the session's end.
func checkRemoteResults(t *testing.T, s *session, n int) {
	t.Helper()
	seen := map[uint64]bool{}
	for len(seen) < n {
		f := s.next()
		m, out := result(t, f)
		if seen[f.id] {
			t.Fatalf("task %d answered twice", f.id)
		}
		seen[f.id] = true
		if want := fmt.Sprintf("did t%d", f.id); m.State != string(pool.Done) || out != want {
			t.Errorf("task %d: %s %q, want done %q", f.id, m.State, out, want)
		}
	}
	s.send(KindClose, 0, nil)
	f := s.next()
	if f.kind != KindEnd {
		t.Fatalf("frame kind = %d after every result, want end", f.kind)
	}
	var e End
	if err := json.Unmarshal(f.payload, &e); err != nil || e.Error != "" || e.Stats.Done != n {
		t.Errorf("end = %s, want %d done", f.payload, n)
	}
}

// TestRemoteFarServer: a session 400 ms (there and back) from the server
// keeps many tasks in flight, and each runs once. It published a task a
// round trip, and 100 tasks took 40 s only to be queued.
func TestRemoteFarServer(t *testing.T) {
	port := startNATS(t)
	startAgent(t, port)
	far, _ := testenv.Proxy(t, port, 200*time.Millisecond)
	s := startRemote(t, natsURL(far))
	const n = 100
	began := time.Now()
	s.rf.SetReadDeadline(began.Add(2 * time.Minute))
	for i := 1; i <= n; i++ {
		s.send(KindTask, uint64(i), fmt.Appendf(nil, "t%d", i))
	}
	checkRemoteResults(t, s, n)
	took := time.Since(began)
	t.Logf("%d tasks from 400 ms away: %v", n, took.Round(100*time.Millisecond))
	if took > 15*time.Second {
		t.Errorf("%d tasks from 400 ms away took %v, want less than 15 s (a round trip a task takes 40 s)", n, took.Round(100*time.Millisecond))
	}
	if q := queuedEver(t, port); q != n {
		t.Errorf("the stream stored %d messages, want %d", q, n)
	}
}

// TestRemoteWorkerCannotStart: a task whose worker cannot start on the
// agent (the client's Python is not at that path there, or dies at once
// because safepool is not importable there) comes back failed with a
// cause and the agent's message. Without a cause, the Python client took
// it for a cancellation by a pool that had aborted, waited for that
// pool's end, and Pool.map never returned.
func TestRemoteWorkerCannotStart(t *testing.T) {
	for _, tc := range []struct {
		name    string
		command []string
		says    string
	}{
		{"absent", []string{"/nonexistent/python3"}, "/nonexistent/python3"},
		{"dies", []string{"/bin/sh", "-c", "echo No module named safepool >&2; exit 1"}, "No module named safepool"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := startNATS(t)
			startAgent(t, port)
			s := startRemoteCommand(t, natsURL(port), tc.command)
			s.rf.SetReadDeadline(time.Now().Add(time.Minute))
			s.send(KindTask, 1, []byte("t1"))
			m, _ := result(t, s.next())
			if m.State != string(pool.Failed) || len(m.Attempts) == 0 {
				t.Fatalf("result = %+v, want failed with an attempt", m)
			}
			last := m.Attempts[len(m.Attempts)-1]
			if last.Cause != string(pool.CauseTaskError) || !strings.Contains(last.Message, tc.says) {
				t.Errorf("last attempt = %+v, want cause %s and a message naming %q", last, pool.CauseTaskError, tc.says)
			}
			s.send(KindClose, 0, nil)
			if f := s.next(); f.kind != KindEnd {
				t.Fatalf("frame kind = %d after the result, want end", f.kind)
			}
		})
	}
}

// TestRemoteLinkCut: the link to the server breaks as the first tasks
// reach it, the acknowledgements on their way back and the tasks sent
// after them lost with it, and the client then sends nothing more until
// it has their results. The session sends again what was not
// acknowledged, with the same message ids: each task is queued once and
// answered once.
func TestRemoteLinkCut(t *testing.T) {
	port := startNATS(t)
	far, cut := testenv.Proxy(t, port, 200*time.Millisecond)
	s := startRemote(t, natsURL(far))
	const n = 50
	s.rf.SetReadDeadline(time.Now().Add(2 * time.Minute))
	for i := 1; i <= n; i++ {
		if i == n/2+1 {
			time.Sleep(100 * time.Millisecond) // the second half is on the way when the link breaks
		}
		s.send(KindTask, uint64(i), fmt.Appendf(nil, "t%d", i))
	}
	deadline := time.Now().Add(30 * time.Second)
	for queuedEver(t, port) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no task queued after 30 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cut()
	t.Logf("%d tasks queued when the link broke", queuedEver(t, port))
	startAgent(t, port)
	checkRemoteResults(t, s, n)
	if q := queuedEver(t, port); q != n {
		t.Errorf("the stream stored %d messages, want %d: a task was queued twice, or lost", q, n)
	}
}

// lockedBuffer is a bytes.Buffer that a session writes and a test reads
// at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// waitFor waits until b holds s.
func (b *lockedBuffer) waitFor(t *testing.T, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(b.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q on stderr after %v:\n%s", s, d, b.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRemoteServerSilent: the link to the server holds what the session
// sends, so that nothing it asks is answered, while its tasks wait for
// an agent. The session says on stderr within seconds that it lost the
// server, with how many tasks it submitted, and when it is back, once the
// link breaks and it reconnects; its tasks are then answered once. It
// said nothing for six minutes, NATS's pings, nor when the server was
// back.
func TestRemoteServerSilent(t *testing.T) {
	port := startNATS(t)
	link := testenv.NewLink(t, port, 0)
	var stderr lockedBuffer
	s := startRemoteWith(t, natsURL(link.Port), []string{os.Args[0]}, Options{Stderr: &stderr})
	const n = 10
	s.rf.SetReadDeadline(time.Now().Add(3 * time.Minute))
	for i := 1; i <= n; i++ {
		s.send(KindTask, uint64(i), fmt.Appendf(nil, "t%d", i))
	}
	deadline := time.Now().Add(30 * time.Second)
	for queuedEver(t, port) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d tasks queued after 30 s, want %d", queuedEver(t, port), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	link.Hold()
	stderr.waitFor(t, "lost the connection to the NATS server", 60*time.Second)
	if want := fmt.Sprintf("(%d tasks submitted, 0 ended)", n); !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr does not say %q:\n%s", want, stderr.String())
	}
	link.Cut()
	stderr.waitFor(t, "reconnected to the NATS server", 60*time.Second)
	startAgent(t, port)
	checkRemoteResults(t, s, n)
}
