package bridge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safepool/safepool/internal/protocol"
	"github.com/safepool/safepool/pool"
)

// The test binary doubles as a framed worker that runs one item per task,
// as the Python worker does: a task "die" kills the worker with SIGKILL
// after its start frame, "fail" answers with an error frame whose payload
// is a text, a NUL and a record, "sleep" sleeps for a minute, "tick:FILE"
// appends the worker's pid to FILE tickCount times, 50 ms apart, and any other
// task is answered "did " and the task.
func TestMain(m *testing.M) {
	switch os.Getenv("SAFEPOOL_BRIDGE_TEST_WORKER") {
	case "1":
		os.Exit(helperWorker())
	case "page":
		os.Exit(pageWorker(0))
	case "pagebias":
		os.Exit(pageWorker(1000))
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
	send(protocol.Frame{Kind: protocol.KindReady, Payload: []byte(`{"version":2}`)})
	for {
		f, err := in.ReadFrame()
		if err != nil {
			return 0
		}
		if f.Kind == protocol.KindBatch {
			// A batch's items are its payload's, comma-separated.
			indexes, payload, _ := protocol.ParseBatch(f.Payload)
			items := strings.Split(string(payload), ",")
			for _, i := range indexes {
				ix := binary.BigEndian.AppendUint32(nil, i)
				send(protocol.Frame{Kind: protocol.KindStart, ID: f.ID, Payload: ix})
				switch items[i] {
				case "die":
					syscall.Kill(os.Getpid(), syscall.SIGKILL)
					time.Sleep(time.Minute)
				case "fail":
					send(protocol.Frame{Kind: protocol.KindItemError, ID: f.ID, Payload: append(ix, "it failed\x00rec"...)})
					continue
				}
				send(protocol.Frame{Kind: protocol.KindItem, ID: f.ID, Payload: append(ix, "did "+items[i]...)})
			}
			continue
		}
		send(protocol.Frame{Kind: protocol.KindStart, ID: f.ID})
		if file, ok := strings.CutPrefix(string(f.Payload), "tick:"); ok {
			// tickCount lines of the worker's pid, one each 50 ms.
			for range tickCount {
				t, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
				if err != nil {
					return 2
				}
				fmt.Fprintln(t, os.Getpid())
				t.Close()
				time.Sleep(50 * time.Millisecond)
			}
		}
		switch string(f.Payload) {
		case "sleep":
			time.Sleep(time.Minute)
		case "die":
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			time.Sleep(time.Minute)
		case "fail":
			send(protocol.Frame{Kind: protocol.KindError, ID: f.ID, Payload: []byte("it failed\x00\xff\x01record")})
			continue
		}
		send(protocol.Frame{Kind: protocol.KindResult, ID: f.ID, Payload: append([]byte("did "), f.Payload...)})
	}
}

// pageWorker is a framed/3 worker that answers a batch's items in ranges,
// as the Python worker does: it marks each item in its running-item page
// before it runs it, and sends the answers it holds (one items frame,
// "did x" for each, comma-separated) when an item is "flush", before an
// item "fail" (which it answers with an item-error frame), and at the end
// of the batch. An item "die" kills it with SIGKILL, its answers unsent;
// an item "hang" sleeps for a minute. With a bias (framed/4), it marks
// each item by its position plus the bias, and writes the bias in the page.
func pageWorker(bias uint32) int {
	in := protocol.NewReader(os.NewFile(3, "tasks"), 0)
	out := protocol.NewWriter(os.NewFile(4, "results"))
	send := func(f protocol.Frame) {
		out.WriteFrame(f)
		out.Flush()
	}
	fd, err := strconv.Atoi(os.Getenv(protocol.EnvPageFD))
	if err != nil {
		return 2
	}
	page, err := unix.Mmap(fd, 0, protocol.PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return 2
	}
	version := protocol.PageVersion
	if bias != 0 {
		version = protocol.BiasVersion
	}
	send(protocol.Frame{Kind: protocol.KindReady, Payload: fmt.Appendf(nil, `{"version":%d}`, version)})
	for {
		f, err := in.ReadFrame()
		if err != nil || f.Kind != protocol.KindBatch {
			return 0
		}
		indexes, payload, _ := protocol.ParseBatch(f.Payload)
		items := strings.Split(string(payload), ",")
		binary.NativeEndian.PutUint32(page[protocol.PagePosOff:], protocol.PageNone)
		binary.NativeEndian.PutUint32(page[protocol.PageBiasOff:], bias)
		binary.NativeEndian.PutUint64(page[protocol.PageIDOff:], f.ID)
		binary.NativeEndian.PutUint32(page[protocol.PagePosOff:], bias)
		send(protocol.Frame{Kind: protocol.KindStart, ID: f.ID, Payload: binary.BigEndian.AppendUint32(nil, indexes[0])})
		var held []string
		first := 0
		flush := func() {
			if len(held) > 0 {
				send(protocol.Frame{Kind: protocol.KindItems, ID: f.ID, Payload: protocol.AppendItems(nil, 0,
					indexes[first], uint32(len(held)), []byte(strings.Join(held, ",")))[protocol.HeaderSize:]})
			}
			held = nil
		}
		for pos, i := range indexes {
			binary.NativeEndian.PutUint32(page[protocol.PagePosOff:], bias+uint32(pos))
			switch items[i] {
			case "die":
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				time.Sleep(time.Minute)
			case "hang":
				time.Sleep(time.Minute)
			case "fail":
				flush()
				send(protocol.Frame{Kind: protocol.KindItemError, ID: f.ID,
					Payload: append(binary.BigEndian.AppendUint32(nil, i), "it failed\x00rec"...)})
				first = pos + 1
				continue
			}
			if len(held) == 0 {
				first = pos
			}
			held = append(held, "did "+items[i])
			if items[i] == "flush" {
				flush()
			}
		}
		flush()
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
	return startWith(t, h, "1")
}

// startWith starts a session whose workers are the helper named worker.
func startWith(t *testing.T, h Hello, worker string) *session {
	t.Helper()
	return startOpts(t, h, worker, Options{})
}

// startOpts starts a session whose workers are the helper named worker,
// with opt's Client.
func startOpts(t *testing.T, h Hello, worker string, opt Options) *session {
	t.Helper()
	if h.Version == 0 {
		h.Version = Version
	}
	if h.Command == nil {
		h.Command = []string{os.Args[0]}
	}
	b, _ := json.Marshal(h)
	return startHello(t, b, worker, opt)
}

// startHello starts a session whose workers are the helper named worker,
// with opt's Client and, when not nil, its Stderr, and sends it hello.
func startHello(t *testing.T, hello []byte, worker string, opt Options) *session {
	t.Helper()
	t.Setenv("SAFEPOOL_BRIDGE_TEST_WORKER", worker)
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &session{t: t, w: inW, r: bufio.NewReader(outR), rf: outR, done: make(chan error, 1)}
	stderr := opt.Stderr
	if stderr == nil {
		stderr = io.Discard
	}
	go func() {
		err := Serve(context.Background(), inR, outW, Options{Stdout: io.Discard, Stderr: stderr, Client: opt.Client})
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
	s.send(KindHello, 0, hello)
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

// results reads n result frames.
func (s *session) results(n int) (map[uint64]Meta, map[uint64]string) {
	s.t.Helper()
	got := map[uint64]Meta{}
	outs := map[uint64]string{}
	for len(got) < n {
		f := s.next()
		got[f.id], outs[f.id] = result(s.t, f)
	}
	return got, outs
}

// TestPipelinedDeathBlame: tasks pipelined to one worker, which dies on
// the third. Only the third is charged; the two it answered stay done, and
// the two sent behind it run again, uncharged, on the next worker.
func TestPipelinedDeathBlame(t *testing.T) {
	s := start(t, Hello{Workers: 1, Pipeline: 5, OnWorkerDeath: "skip"})
	if f := s.next(); f.kind != KindReady {
		t.Fatalf("first frame kind = %d, want ready", f.kind)
	}
	tasks := []string{"", "a", "b", "die", "c", "d"}
	for id := 1; id < len(tasks); id++ {
		s.send(KindTask, uint64(id), []byte(tasks[id]))
	}
	got, outs := s.results(5)
	for id := 1; id < len(tasks); id++ {
		m := got[uint64(id)]
		if tasks[id] == "die" {
			if m.State != "failed" || len(m.Attempts) != 1 || m.Attempts[0].Cause != "signal:SIGKILL" {
				t.Errorf("task %d = %+v, want failed once with signal:SIGKILL", id, m)
			}
			continue
		}
		if m.State != "done" || outs[uint64(id)] != "did "+tasks[id] || len(m.Attempts) != 1 || m.Attempts[0].Number != 1 {
			t.Errorf("task %d = %+v %q, want done at its first attempt", id, m, outs[uint64(id)])
		}
	}
	if got[1].Attempts[0].PID != got[3].Attempts[0].PID || got[4].Attempts[0].PID == got[3].Attempts[0].PID {
		t.Errorf("pids: answered %d, died %d, behind %d: want the first two equal, the last another",
			got[1].Attempts[0].PID, got[3].Attempts[0].PID, got[4].Attempts[0].PID)
	}
	s.send(KindClose, 0, nil)
	f := s.next()
	var end End
	if f.kind != KindEnd || json.Unmarshal(f.payload, &end) != nil || end.Error != "" || end.Stats.Done != 4 {
		t.Errorf("end = %d %s, want no error and 4 done", f.kind, f.payload)
	}
}

// itemsOf splits an items frame into its meta and its items' outputs by id;
// the items of a range each get the range's output.
func itemsOf(t *testing.T, f frame) (Meta, map[uint64]string) {
	t.Helper()
	if f.kind != KindItems {
		t.Fatalf("frame kind = %d, want items", f.kind)
	}
	p := f.payload
	n := binary.BigEndian.Uint32(p)
	var m Meta
	if err := json.Unmarshal(p[4:4+n], &m); err != nil {
		t.Fatal(err)
	}
	p = p[4+n:]
	count := int(binary.BigEndian.Uint32(p))
	entries, data := p[4:4+28*count], p[4+28*count:]
	outs := map[uint64]string{}
	for i := 0; i < count; i++ {
		e := entries[28*i:]
		index, span, size := binary.BigEndian.Uint32(e), binary.BigEndian.Uint32(e[4:]), binary.BigEndian.Uint32(e[8:])
		for k := range max(span, 1) {
			outs[f.id+uint64(index+k)] = string(data[:size])
		}
		data = data[size:]
	}
	return m, outs
}

// TestBatchPageBlame: a framed/3 worker answers a batch in ranges and
// marks the item it runs in its page, and dies on "die". The items whose
// answers it had sent are done, once; "die" alone is charged (skip:
// failed); "b", which it ran but had not answered, and the items after
// "die" run again, uncharged, on the next worker; the item that fails is
// settled on its own. The same with a framed/4 worker whose marks are the
// positions plus a bias: the supervisor subtracts it.
func TestBatchPageBlame(t *testing.T) {
	for _, worker := range []string{"page", "pagebias"} {
		t.Run(worker, func(t *testing.T) { testBatchPageBlame(t, worker) })
	}
}

func testBatchPageBlame(t *testing.T, worker string) {
	s := startWith(t, Hello{Workers: 1, OnWorkerDeath: "skip"}, worker)
	if f := s.next(); f.kind != KindReady {
		t.Fatalf("first frame kind = %d, want ready", f.kind)
	}
	items := "a,flush,b,die,c,fail,d"
	payload := binary.BigEndian.AppendUint32(nil, 7)
	payload = binary.BigEndian.AppendUint32(payload, 0) // no options
	s.send(KindBatch, 1, append(payload, items...))
	state := map[uint64]string{}
	outs := map[uint64]string{}
	pids := map[uint64]int{}
	for len(state) < 7 {
		m, o := itemsOf(t, s.next())
		for id, out := range o {
			if _, dup := state[id]; dup {
				t.Errorf("item %d settled twice", id)
			}
			state[id], outs[id] = m.State, out
			pids[id] = m.Attempts[len(m.Attempts)-1].PID
			if m.State == "failed" && id == 4 && (len(m.Attempts) != 1 || m.Attempts[0].Cause != "signal:SIGKILL") {
				t.Errorf("item 4 = %+v, want failed once with signal:SIGKILL", m)
			}
			if m.State == "done" && (len(m.Attempts) != 1 || m.Attempts[0].Number != 1) {
				t.Errorf("item %d = %+v, want done at its first charged attempt", id, m)
			}
		}
	}
	for id, want := range map[uint64]string{1: "done", 2: "done", 3: "done", 4: "failed", 5: "done", 6: "failed", 7: "done"} {
		if state[id] != want {
			t.Errorf("item %d = %s, want %s", id, state[id], want)
		}
	}
	if outs[1] != "did a,did flush" || outs[3] != "did b" || outs[5] != "did c" || outs[7] != "did d" {
		t.Errorf("outputs %v: want the range a..flush, then b, c and d each in a range of their own", outs)
	}
	if pids[1] != pids[4] || pids[3] == pids[4] || pids[5] != pids[3] {
		t.Errorf("pids %v: want a, flush and die on the first worker, b and the items after die on the next", pids)
	}
	s.send(KindClose, 0, nil)
	f := s.next()
	var end End
	if f.kind != KindEnd || json.Unmarshal(f.payload, &end) != nil || end.Error != "" || end.Stats.Done != 5 {
		t.Errorf("end = %d %s, want no error and 5 done", f.kind, f.payload)
	}
}

// TestBatchRangeBeforeEnd: the items of a range that a framed/3 worker
// answers before its batch ends reach the client at once, done, while the
// worker runs the rest; after an abort, the batch's other items are
// settled, and none of the range's again.
func TestBatchRangeBeforeEnd(t *testing.T) {
	s := startWith(t, Hello{Workers: 1}, "page")
	if f := s.next(); f.kind != KindReady {
		t.Fatalf("first frame kind = %d, want ready", f.kind)
	}
	payload := binary.BigEndian.AppendUint32(nil, 4)
	payload = binary.BigEndian.AppendUint32(payload, 0) // no options
	s.send(KindBatch, 1, append(payload, "a,flush,hang,b"...))
	// "hang" runs for a minute: the range must not wait for it.
	if err := s.rf.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	m, outs := itemsOf(t, s.next())
	if m.State != "done" || len(m.Attempts) != 1 || len(outs) != 2 || outs[1] != "did a,did flush" ||
		outs[2] != "did a,did flush" {
		t.Fatalf("first frame = %+v %v, want items 1 and 2 done, in one range", m, outs)
	}
	if err := s.rf.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	s.send(KindAbort, 0, nil)
	settled := map[uint64]string{}
	for {
		f := s.next()
		if f.kind == KindEnd {
			var end End
			if err := json.Unmarshal(f.payload, &end); err != nil {
				t.Fatalf("end frame %q: %v", f.payload, err)
			}
			checkEndStats(t, end.Stats, 4)
			break
		}
		m, o := itemsOf(t, f)
		for id := range o {
			if _, dup := settled[id]; dup || id < 3 {
				t.Errorf("item %d settled again (%s)", id, m.State)
			}
			settled[id] = m.State
		}
	}
	if len(settled) != 2 || settled[3] == "" || settled[4] == "" || settled[3] == "done" || settled[4] == "done" {
		t.Errorf("after the abort, items settled %v, want 3 and 4 once each, not done", settled)
	}
}

// TestAbortCancelsBatchesInRuns: an abort cancels the items of batches
// that did not run as runs, one entry each in the items frames (bridge/5),
// not an entry per item: a client's terminate() of millions of items would
// otherwise read and settle millions of entries. Every item is settled
// once, none done.
func TestAbortCancelsBatchesInRuns(t *testing.T) {
	const n = 5000 // items a batch
	s := startWith(t, Hello{Workers: 1}, "page")
	if f := s.next(); f.kind != KindReady {
		t.Fatalf("first frame kind = %d, want ready", f.kind)
	}
	for b := range 3 {
		items := make([]string, n)
		for i := range items {
			items[i] = "x"
		}
		if b == 0 {
			items[0] = "hang" // the one worker's: the other batches wait in the queue
		}
		payload := binary.BigEndian.AppendUint32(nil, n)
		payload = binary.BigEndian.AppendUint32(payload, 0) // no options
		s.send(KindBatch, uint64(1+b*n), append(payload, strings.Join(items, ",")...))
	}
	s.send(KindAbort, 0, nil)
	settled := map[uint64]string{}
	entries := 0
	for {
		f := s.next()
		if f.kind == KindEnd {
			var end End
			if err := json.Unmarshal(f.payload, &end); err != nil {
				t.Fatalf("end frame %q: %v", f.payload, err)
			}
			checkEndStats(t, end.Stats, 3*n)
			break
		}
		m, o := itemsOf(t, f)
		k := 4 + binary.BigEndian.Uint32(f.payload)
		entries += int(binary.BigEndian.Uint32(f.payload[k:]))
		for id := range o {
			if _, dup := settled[id]; dup {
				t.Errorf("item %d settled twice", id)
			}
			settled[id] = m.State
		}
	}
	if len(settled) != 3*n {
		t.Errorf("%d items settled, want %d", len(settled), 3*n)
	}
	for id, st := range settled {
		if st == "done" {
			t.Errorf("item %d is done, want cancelled by the abort", id)
		}
	}
	// The hanging item and the rest of its batch, and the two batches that
	// never ran: a few runs, whatever the abort found running.
	if entries > 6 {
		t.Errorf("the abort's items frames hold %d entries for %d items, want a few runs", entries, 3*n)
	}
}

// TestBatchBlame: a batch of items is one task; its worker dies on the
// third. The two items answered are done at once, in one frame; the third
// alone is charged (skip: failed); the items after it run once, uncharged,
// on the next worker. An item that fails is settled on its own.
func TestBatchBlame(t *testing.T) {
	s := start(t, Hello{Workers: 1, OnWorkerDeath: "skip"})
	if f := s.next(); f.kind != KindReady {
		t.Fatalf("first frame kind = %d, want ready", f.kind)
	}
	items := "a,b,die,c,fail,d"
	payload := binary.BigEndian.AppendUint32(nil, 6)
	payload = binary.BigEndian.AppendUint32(payload, 0) // no options
	s.send(KindBatch, 1, append(payload, items...))
	state := map[uint64]string{}
	outs := map[uint64]string{}
	pids := map[uint64]int{}
	for len(state) < 6 {
		m, o := itemsOf(t, s.next())
		for id, out := range o {
			if _, dup := state[id]; dup {
				t.Errorf("item %d settled twice", id)
			}
			state[id], outs[id] = m.State, out
			pids[id] = m.Attempts[len(m.Attempts)-1].PID
			if m.State == "failed" && id == 3 && (len(m.Attempts) != 1 || m.Attempts[0].Cause != "signal:SIGKILL") {
				t.Errorf("item 3 = %+v, want failed once with signal:SIGKILL", m)
			}
			if id == 5 && (m.State != "failed" || m.Attempts[0].Cause != "task-error" || out != "it failed\x00rec" ||
				m.Attempts[0].Message != "it failed") {
				t.Errorf("item 5 = %+v %q, want failed with a task error and its record", m, out)
			}
		}
	}
	for id, want := range map[uint64]string{1: "done", 2: "done", 3: "failed", 4: "done", 5: "failed", 6: "done"} {
		if state[id] != want {
			t.Errorf("item %d = %s, want %s", id, state[id], want)
		}
	}
	if outs[1] != "did a" || outs[6] != "did d" || pids[1] != pids[3] || pids[4] == pids[3] {
		t.Errorf("outputs %v, pids %v: want the answers, and the items after the death on another worker", outs, pids)
	}
	s.send(KindClose, 0, nil)
	f := s.next()
	var end End
	if f.kind != KindEnd || json.Unmarshal(f.payload, &end) != nil || end.Error != "" || end.Stats.Done != 4 {
		t.Errorf("end = %d %s, want no error and 4 done", f.kind, f.payload)
	}
	checkEndStats(t, end.Stats, 6)
}

// checkEndStats checks the counts of a pool that has ended, with items
// submitted in batches: each item counted once in a terminal state, none
// left queued or running, as the parts of a batch each moved on.
func checkEndStats(t *testing.T, st pool.Stats, items int) {
	t.Helper()
	if st.Submitted != items || st.Done+st.Failed+st.Cancelled+st.Poison != items ||
		st.Queued != 0 || st.Running != 0 || st.RunningAttempts != 0 || st.Settling != 0 {
		t.Errorf("stats at the end = %+v, want the %d items each in a terminal state", st, items)
	}
}

// TestPolicyIsThePools: the hello's retries and on_worker_death apply to
// every task, and a task error's whole payload comes back as the output.
func TestPolicyIsThePools(t *testing.T) {
	s := start(t, Hello{Workers: 1, Retries: 2, OnWorkerDeath: "retry", Backoff: 0.001,
		TaskErrorRetries: 1})
	s.next() // ready
	s.send(KindTask, 1, []byte("die"))
	s.send(KindTask, 2, []byte("fail"))
	got, outs := s.results(2)
	if m := got[1]; m.State != "failed" || len(m.Attempts) != 3 {
		t.Errorf("task 1 = %+v, want failed after 3 attempts", m)
	}
	m := got[2]
	if m.State != "failed" || len(m.Attempts) != 2 || m.Attempts[1].Message != "it failed" {
		t.Errorf("task 2 = %+v, want failed after 2 attempts with the message before the NUL", m)
	}
	if outs[2] != "it failed\x00\xff\x01record" {
		t.Errorf("task 2 output = %q, want the whole error payload", outs[2])
	}
	s.send(KindClose, 0, nil)
}

// TestAbortPolicy: on_worker_death "abort" aborts the session on the first
// death; the end frame says why.
func TestAbortPolicy(t *testing.T) {
	s := start(t, Hello{Workers: 1, OnWorkerDeath: "abort"})
	s.next() // ready
	s.send(KindTask, 1, []byte("die"))
	s.send(KindTask, 2, []byte("sleep"))
	got, _ := s.results(2)
	if got[1].State != "failed" || got[2].State != "cancelled" {
		t.Errorf("states = %q, %q, want failed, cancelled", got[1].State, got[2].State)
	}
	f := s.next()
	var end End
	if f.kind != KindEnd || json.Unmarshal(f.payload, &end) != nil || end.Error == "" {
		t.Errorf("end = %d %s, want an error", f.kind, f.payload)
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
	s.send(KindTask, 2, []byte("x"))
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
		{"version", `{"version":9,"command":["true"]}`, "the binary is older than the client"},
		{"old client", `{"version":1,"command":["true"]}`, "the client is older than the binary"},
		{"json", `{`, "bad hello"},
		{"policy", `{"version":5,"command":["true"],"on_worker_death":"maybe"}`, "on_worker_death"},
		{"timeout grace", `{"version":5,"command":["true"],"timeout_grace":-1}`, "negative timeout_grace"},
		{"command", `{"version":5,"command":["/nonexistent/worker"]}`, "/nonexistent/worker"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := bufio.NewReader(strings.NewReader(""))
			var buf strings.Builder
			bw := bufio.NewWriter(&buf)
			writeFrame(bw, KindHello, 0, []byte(tt.hello))
			bw.Flush()
			in = bufio.NewReader(strings.NewReader(buf.String()))
			var out bytes.Buffer
			err := Serve(context.Background(), in, &out, Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Serve(%s) = %v, want an error containing %q", tt.hello, err, tt.want)
			}
			// Told to the client, it is not to be printed again (ToldError).
			var told *ToldError
			if got, want := errors.As(err, &told), tt.name != "json"; got != want {
				t.Errorf("Serve(%s) = %v, a ToldError: %v, want %v", tt.hello, err, got, want)
			}
			if tt.name == "json" || tt.name == "command" {
				return
			}
			// The client is told why, in an end frame.
			f, ferr := readFrame(bufio.NewReader(&out))
			var end End
			if ferr != nil || f.kind != KindEnd || json.Unmarshal(f.payload, &end) != nil ||
				!strings.Contains(end.Error, tt.want) {
				t.Errorf("Serve(%s) wrote %q, want an end frame with an error containing %q", tt.hello, out.String(), tt.want)
			}
		})
	}
}

func TestConfigOfHello(t *testing.T) {
	// The members as the Python client sends them.
	const hello = `{"version": 5, "command": ["w"], "workers": 3, "mem_limit": 1024, "timeout": 1.5,
		"retries": 4, "on_worker_death": "retry",
		"no_governor": true, "mem_budget": 2147483648, "mem_reserve": 1048576, "mem_per_task": 4096,
		"preempt_above": 0.9, "preempt_psi": -1, "backoff": 0.25, "max_backoff": 2.0, "task_error_retries": 2,
		"timeout_grace": 0.5}`
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
		{"TimeoutGrace", cfg.TimeoutGrace, 500 * time.Millisecond},
		{"NoGovernor", cfg.NoGovernor, true},
		{"MemBudget", cfg.MemBudget, int64(2 << 30)},
		{"MemReserve", cfg.MemReserve, int64(1 << 20)},
		{"MemPerTask", cfg.MemPerTask, int64(4096)},
		{"PreemptAbove", cfg.PreemptAbove, 0.9},
		{"PreemptPSI", cfg.PreemptPSI, -1.0},
		{"Backoff", cfg.Backoff, 250 * time.Millisecond},
		{"MaxBackoff", cfg.MaxBackoff, 2 * time.Second},
		{"TaskErrorRetries", cfg.TaskErrorRetries, 2},
		{"OnWorkerDeath", cfg.OnWorkerDeath, pool.Retry},
		{"Retries", cfg.Retries, 4},
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

// TestHelloTimeoutGrace: a hello without timeout_grace (an older client's)
// leaves the pool's default grace, and timeout_grace 0 asks for SIGKILL at
// once, which pool.Config spells as a negative TimeoutGrace.
func TestHelloTimeoutGrace(t *testing.T) {
	tests := []struct {
		hello string
		want  time.Duration
	}{
		{`{"version": 5, "command": ["w"], "timeout": 1}`, 0},
		{`{"version": 5, "command": ["w"], "timeout": 1, "timeout_grace": 0}`, -1},
		{`{"version": 5, "command": ["w"], "timeout": 1, "timeout_grace": 2.5}`, 2500 * time.Millisecond},
		{`{"version": 5, "command": ["w"], "timeout": 1, "timeout_grace": 1e-12}`, time.Nanosecond},
	}
	for _, tt := range tests {
		var h Hello
		if err := json.Unmarshal([]byte(tt.hello), &h); err != nil {
			t.Fatal(err)
		}
		if got := configOf(h).TimeoutGrace; got != tt.want {
			t.Errorf("configOf(%s).TimeoutGrace = %v, want %v", tt.hello, got, tt.want)
		}
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
	s.send(KindTask, 2, []byte("x"))
	got := map[uint64]Meta{}
	outs := map[uint64]string{}
	for len(got) < 2 {
		f := s.next()
		got[f.id], outs[f.id] = result(t, f)
	}
	if m := got[1]; m.State != "failed" || len(m.Attempts) != 1 || m.Attempts[0].Cause != "timeout" {
		t.Errorf("task 1 = %+v, want failed once with timeout", m)
	}
	if m := got[2]; m.State != "done" || outs[2] != "did x" {
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

// TestProcsFor: a bridge process runs with one P per 8 workers, at least 1
// and at most one per CPU; a pool of one worker per CPU counts its CPUs.
func TestProcsFor(t *testing.T) {
	tests := []struct{ workers, cpus, want int }{
		{2, 2, 1},
		{8, 2, 1},
		{9, 2, 2},
		{64, 2, 2},
		{64, 16, 8},
		{200, 16, 16},
		{0, 2, 1},
		{0, 16, 2},
		{4, 0, 1},
	}
	for _, tt := range tests {
		if got := procsFor(tt.workers, tt.cpus); got != tt.want {
			t.Errorf("procsFor(%d, %d) = %d, want %d", tt.workers, tt.cpus, got, tt.want)
		}
	}
}

// TestItemEntries: runs of consecutive items without output, with the
// same times, in a state other than done, become one entry each; items
// with an output or other times, gaps, and done ranges stay as they are.
func TestItemEntries(t *testing.T) {
	t0 := time.Unix(100, 0)
	items := []pool.Item{{Index: 0}, {Index: 1}, {Index: 2}, {Index: 4}, {Index: 5, Start: t0, End: t0},
		{Index: 6}, {Index: 7}, {Index: 8, Output: []byte("x")}, {Index: 9}}
	type entry struct{ index, span int }
	entriesOf := func(r *pool.Result) []entry {
		var out []entry
		for _, it := range itemEntries(r) {
			out = append(out, entry{it.Index, it.Span})
		}
		return out
	}
	got := entriesOf(&pool.Result{State: pool.Cancelled, Items: items})
	want := []entry{{0, 3}, {4, 0}, {5, 0}, {6, 2}, {8, 0}, {9, 0}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("cancelled entries = %v, want %v", got, want)
	}
	done := &pool.Result{State: pool.Done, Items: []pool.Item{{Index: 0}, {Index: 1}}}
	if got := entriesOf(done); len(got) != 2 {
		t.Errorf("done entries = %v, want both items as they are", got)
	}
}
