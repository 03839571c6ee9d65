package bridge

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/protocol"
	"github.com/safepool/safepool/pool"
)

// The test binary doubles as a framed worker that runs batches the way the
// Python worker does: a task "N K" has N items; the worker records each item
// in its blame file and kills itself with SIGKILL on item K (-1: never). A
// task "sleep" sleeps for a minute.
func TestMain(m *testing.M) {
	if os.Getenv("SAFEPOOL_BRIDGE_TEST_WORKER") == "1" {
		os.Exit(helperWorker())
	}
	os.Exit(m.Run())
}

func helperWorker() int {
	in := protocol.NewReader(os.NewFile(3, "tasks"), 0)
	out := protocol.NewWriter(os.NewFile(4, "results"))
	send := func(f protocol.Frame) {
		out.WriteFrame(f)
		out.Flush()
	}
	send(protocol.Frame{Kind: protocol.KindReady, Payload: protocol.ReadyPayload()})
	blame := filepath.Join(os.Getenv(EnvBlameDir), strconv.Itoa(os.Getpid()))
	for {
		f, err := in.ReadFrame()
		if err != nil {
			return 0
		}
		send(protocol.Frame{Kind: protocol.KindStart, ID: f.ID})
		if string(f.Payload) == "sleep" {
			time.Sleep(time.Minute)
		}
		var n, k int
		fmt.Sscan(string(f.Payload), &n, &k)
		for i := 0; i < n; i++ {
			var b [blameFileSize]byte
			binary.LittleEndian.PutUint64(b[0:8], f.ID)
			binary.LittleEndian.PutUint64(b[8:16], uint64(i))
			if err := os.WriteFile(blame, b[:], 0o600); err != nil {
				return 1
			}
			if i == k {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				time.Sleep(time.Minute)
			}
		}
		send(protocol.Frame{Kind: protocol.KindResult, ID: f.ID, Payload: append([]byte("did "), f.Payload...)})
	}
}

// session runs Serve on pipes and returns the client's ends.
type session struct {
	t    *testing.T
	w    *os.File      // client → bridge
	r    *bufio.Reader // bridge → client
	rf   *os.File
	done chan error

	served  bool  // Serve has returned: err is its error
	serveEr error // what Serve returned
}

// serveErr waits for Serve to return and returns its error.
func (s *session) serveErr() error {
	if !s.served {
		s.serveEr = <-s.done
		s.served = true
	}
	return s.serveEr
}

func start(t *testing.T, h Hello) *session {
	t.Helper()
	t.Setenv("SAFEPOOL_BRIDGE_TEST_WORKER", "1")
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &session{t: t, w: inW, r: bufio.NewReader(outR), rf: outR, done: make(chan error, 1)}
	go func() {
		err := Serve(context.Background(), inR, outW, Options{Stdout: io.Discard, Stderr: io.Discard})
		inR.Close()
		outW.Close()
		s.done <- err
	}()
	t.Cleanup(func() {
		s.w.Close()
		if err := s.serveErr(); err != nil {
			t.Logf("Serve: %v", err)
		}
		s.rf.Close()
	})
	if h.Version == 0 {
		h.Version = Version
	}
	if h.Command == nil {
		h.Command = []string{os.Args[0]}
	}
	b, _ := json.Marshal(h)
	s.send(KindHello, 0, b)
	return s
}

func (s *session) send(k Kind, id uint64, payload []byte) {
	s.t.Helper()
	bw := bufio.NewWriter(s.w)
	if err := writeFrame(bw, k, id, payload); err != nil {
		s.t.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		s.t.Fatal(err)
	}
}

func (s *session) next() frame {
	s.t.Helper()
	f, err := readFrame(s.r)
	if err != nil {
		s.t.Fatalf("reading a frame from the bridge: %v", err)
	}
	return f
}

// result splits a result frame.
func result(t *testing.T, f frame) (Meta, string) {
	t.Helper()
	if f.kind != KindResult {
		t.Fatalf("frame kind = %d, want result", f.kind)
	}
	n := binary.BigEndian.Uint32(f.payload)
	var m Meta
	if err := json.Unmarshal(f.payload[4:4+n], &m); err != nil {
		t.Fatal(err)
	}
	return m, string(f.payload[4+n:])
}

func TestBatchesAndBlame(t *testing.T) {
	s := start(t, Hello{Workers: 2})
	if f := s.next(); f.kind != KindReady {
		t.Fatalf("first frame kind = %d, want ready", f.kind)
	}
	tasks := map[uint64]string{1: "3 -1", 2: "5 3", 3: "4 -1"}
	for id := uint64(1); id <= 3; id++ {
		s.send(KindTask, id, []byte(tasks[id]))
	}
	got := map[uint64]Meta{}
	outs := map[uint64]string{}
	for len(got) < 3 {
		f := s.next()
		got[f.id], outs[f.id] = result(t, f)
	}
	for _, id := range []uint64{1, 3} {
		if got[id].State != "done" || outs[id] != "did "+tasks[id] || got[id].Item != -1 {
			t.Errorf("task %d = %+v %q, want done with its output", id, got[id], outs[id])
		}
	}
	m := got[2]
	if m.State != "failed" || len(m.Attempts) != 1 || m.Attempts[0].Cause != "signal:SIGKILL" {
		t.Errorf("task 2 = %+v, want failed once with signal:SIGKILL", m)
	}
	if m.Item != 3 {
		t.Errorf("task 2 blamed item = %d, want 3", m.Item)
	}
	s.send(KindClose, 0, nil)
	f := s.next()
	if f.kind != KindEnd {
		t.Fatalf("last frame kind = %d, want end", f.kind)
	}
	var end End
	if err := json.Unmarshal(f.payload, &end); err != nil || end.Error != "" || end.Stats.Done != 2 {
		t.Errorf("end = %+v (%v), want no error and 2 done", end, err)
	}
}

func TestClientGoneKillsWorkers(t *testing.T) {
	s := start(t, Hello{Workers: 1, Grace: 30})
	s.next() // ready
	s.send(KindTask, 1, []byte("sleep"))
	s.w.Close() // the client dies without closing the session
	m, _ := result(t, s.next())
	if m.State != "cancelled" {
		t.Errorf("state = %q, want cancelled", m.State)
	}
	f := s.next()
	var end End
	if f.kind != KindEnd || json.Unmarshal(f.payload, &end) != nil || !strings.Contains(end.Error, "closed its pipe") {
		t.Errorf("end frame = %d %s, want an abort because the client closed its pipe", f.kind, f.payload)
	}
}

func TestClientGoneIsNotAnError(t *testing.T) {
	// A client that exits closes both its ends; the bridge's next write
	// then fails with EPIPE. That ends the session as end of file does,
	// without an error to print.
	s := start(t, Hello{Workers: 1, Grace: 30})
	s.next() // ready
	s.send(KindTask, 1, []byte("sleep"))
	s.rf.Close()
	s.w.Close()
	if err := s.serveErr(); err != nil {
		t.Errorf("Serve after the client went away = %v, want nil", err)
	}
}

func TestAbortReadWithQueueFull(t *testing.T) {
	// A client that has max_pending tasks without results (the pool's
	// queue is full: every task sleeps) still gets its abort frame read.
	s := start(t, Hello{Workers: 2, Pipeline: 2})
	f := s.next()
	var ready Ready
	if err := json.Unmarshal(f.payload, &ready); f.kind != KindReady || err != nil {
		t.Fatalf("first frame = %d %s (%v), want ready", f.kind, f.payload, err)
	}
	if ready.MaxPending < 2*2 {
		t.Fatalf("ready.max_pending = %d, want at least workers × pipeline = 4", ready.MaxPending)
	}
	for id := 1; id <= ready.MaxPending; id++ {
		s.send(KindTask, uint64(id), []byte("sleep"))
	}
	s.send(KindAbort, 0, nil)
	for i := 0; i < ready.MaxPending; i++ {
		if m, _ := result(t, s.next()); m.State != "cancelled" {
			t.Fatalf("state = %q, want cancelled", m.State)
		}
	}
	if f := s.next(); f.kind != KindEnd {
		t.Errorf("frame kind = %d, want end", f.kind)
	}
}

func TestAbortFrame(t *testing.T) {
	s := start(t, Hello{Workers: 1})
	s.next() // ready
	s.send(KindTask, 1, []byte("sleep"))
	s.send(KindTask, 2, []byte("1 -1"))
	s.send(KindAbort, 0, nil)
	for i := 0; i < 2; i++ {
		if m, _ := result(t, s.next()); m.State != "cancelled" {
			t.Errorf("state = %q, want cancelled", m.State)
		}
	}
	if f := s.next(); f.kind != KindEnd {
		t.Errorf("frame kind = %d, want end", f.kind)
	}
}

func TestBadHello(t *testing.T) {
	tests := []struct {
		name  string
		hello string
		want  string
	}{
		{"version", `{"version":9,"command":["true"]}`, "version 9"},
		{"json", `{`, "bad hello"},
		{"command", `{"version":1,"command":["/nonexistent/worker"]}`, "starting the pool"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := bufio.NewReader(strings.NewReader(""))
			var buf strings.Builder
			bw := bufio.NewWriter(&buf)
			writeFrame(bw, KindHello, 0, []byte(tt.hello))
			bw.Flush()
			in = bufio.NewReader(strings.NewReader(buf.String()))
			err := Serve(context.Background(), in, io.Discard, Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Serve(%s) = %v, want an error containing %q", tt.hello, err, tt.want)
			}
		})
	}
}

func TestReadBlame(t *testing.T) {
	dir := t.TempDir()
	write := func(pid int, id, item uint64) {
		var b [blameFileSize]byte
		binary.LittleEndian.PutUint64(b[0:8], id)
		binary.LittleEndian.PutUint64(b[8:16], item)
		if err := os.WriteFile(filepath.Join(dir, strconv.Itoa(pid)), b[:], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(10, 7, 4)
	write(11, 6, 4)
	if err := os.WriteFile(filepath.Join(dir, "12"), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		pid  int
		id   uint64
		want int64
	}{
		{"match", 10, 7, 4},
		{"other task", 11, 7, -1},
		{"short file", 12, 7, -1},
		{"no file", 13, 7, -1},
		{"no pid", 0, 7, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := readBlame(dir, tt.pid, tt.id); got != tt.want {
				t.Errorf("readBlame(pid %d, task %d) = %d, want %d", tt.pid, tt.id, got, tt.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "10")); !os.IsNotExist(err) {
		t.Errorf("blame file of a dead worker still there: %v", err)
	}
}

func TestConfigOfHello(t *testing.T) {
	// The members as the Python client sends them.
	const hello = `{"version": 1, "command": ["w"], "workers": 3, "mem_limit": 1024, "timeout": 1.5,
		"no_governor": true, "mem_budget": 2147483648, "mem_reserve": 1048576, "mem_per_task": 4096,
		"preempt_above": 0.9, "preempt_psi": -1, "backoff": 0.25, "max_backoff": 2.0, "task_error_retries": 2}`
	var h Hello
	if err := json.Unmarshal([]byte(hello), &h); err != nil {
		t.Fatal(err)
	}
	cfg := configOf(h)
	tests := []struct {
		name      string
		got, want any
	}{
		{"Workers", cfg.Workers, 3},
		{"MemLimit", cfg.MemLimit, int64(1024)},
		{"Timeout", cfg.Timeout, 1500 * time.Millisecond},
		{"NoGovernor", cfg.NoGovernor, true},
		{"MemBudget", cfg.MemBudget, int64(2 << 30)},
		{"MemReserve", cfg.MemReserve, int64(1 << 20)},
		{"MemPerTask", cfg.MemPerTask, int64(4096)},
		{"PreemptAbove", cfg.PreemptAbove, 0.9},
		{"PreemptPSI", cfg.PreemptPSI, -1.0},
		{"Backoff", cfg.Backoff, 250 * time.Millisecond},
		{"MaxBackoff", cfg.MaxBackoff, 2 * time.Second},
		{"TaskErrorRetries", cfg.TaskErrorRetries, 2},
		{"OnWorkerDeath", cfg.OnWorkerDeath, pool.Skip},
		{"MaxPending", cfg.MaxPending, maxPending(h)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("configOf(hello).%s = %v, want %v", tt.name, tt.got, tt.want)
			}
		})
	}
}

// TestTaskMetaTimeout: a task sent with options of its own is timed by its
// own timeout, in a pool with none, and the task beside it goes on.
func TestTaskMetaTimeout(t *testing.T) {
	s := start(t, Hello{Workers: 2})
	s.next() // ready
	meta := []byte(`{"timeout":0.5,"mem":1048576}`)
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(meta)))
	s.send(KindTaskMeta, 1, append(append(n[:], meta...), "sleep"...))
	s.send(KindTask, 2, []byte("2 -1"))
	got := map[uint64]Meta{}
	outs := map[uint64]string{}
	for len(got) < 2 {
		f := s.next()
		got[f.id], outs[f.id] = result(t, f)
	}
	if m := got[1]; m.State != "failed" || len(m.Attempts) != 1 || m.Attempts[0].Cause != "timeout" {
		t.Errorf("task 1 = %+v, want failed once with timeout", m)
	}
	if m := got[2]; m.State != "done" || outs[2] != "did 2 -1" {
		t.Errorf("task 2 = %+v %q, want done", m, outs[2])
	}
	s.send(KindClose, 0, nil)
	if f := s.next(); f.kind != KindEnd {
		t.Errorf("last frame kind = %d, want end", f.kind)
	}
}

// TestTaskMetaBad: task options that cannot be read abort the session with
// an error that says why.
func TestTaskMetaBad(t *testing.T) {
	s := start(t, Hello{Workers: 1})
	s.next() // ready
	s.send(KindTaskMeta, 1, []byte{0, 0, 0, 9, '{'})
	for {
		f := s.next()
		if f.kind != KindEnd {
			continue
		}
		var end End
		if err := json.Unmarshal(f.payload, &end); err != nil || !strings.Contains(end.Error, "task options") {
			t.Errorf("end = %+v (%v), want an error about the task options", end, err)
		}
		return
	}
}
