package cluster_test

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/safepool/safepool/internal/cluster"
)

// A second copy of a task is a second message for it on the stream, under
// another message id: a publish sent again after a single server restarted
// and forgot the ids of the messages already consumed, a submitter resumed
// after the de-duplication window, a copy moved up a class. The tests below
// publish it by hand.

// publishCopy queues a copy of task seq of run, whose input is input, as a
// new message; moved marks it as a copy moved up a class.
func publishCopy(t *testing.T, js jetstream.JetStream, run string, seq uint64, input string, moved int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	argv := append(helperCmd()[:len(helperCmd())-1], input)
	body, _ := json.Marshal(cluster.TaskMsg{Run: run, Seq: seq, Input: []byte(input), Args: argv, Moved: moved})
	if _, err := js.Publish(ctx, "safepool.task.0."+run, body); err != nil {
		t.Fatal(err)
	}
}

// watchAttempts collects every value written to the attempts record of
// task seq of run until the test ends; the returned function gives those
// seen so far.
func watchAttempts(t *testing.T, js jetstream.JetStream, run string, seq uint64) func() []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	kv, err := js.KeyValue(ctx, cluster.AttemptsBucket)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(ctx, run+"."+strconv.FormatUint(seq, 10))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	go func() {
		for e := range w.Updates() {
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				mu.Lock()
				seen = append(seen, string(e.Value()))
				mu.Unlock()
			}
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}

// resultOf reads the recorded result of task seq of run.
func resultOf(t *testing.T, js jetstream.JetStream, run string, seq uint64) cluster.ResultRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, cluster.ResultsBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, run+"."+strconv.FormatUint(seq, 10))
	if err != nil {
		t.Fatalf("task %d: no result: %v", seq, err)
	}
	var rec cluster.ResultRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

// waitQueueEmpty waits until the task stream holds no message: every copy
// was answered.
func waitQueueEmpty(t *testing.T, js jetstream.JetStream, limit time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for {
		st, err := js.Stream(ctx, cluster.StreamName)
		if err == nil {
			if info, err := st.Info(ctx); err == nil && info.State.Msgs == 0 {
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("the task stream still holds messages after %v", limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSecondCopyWhileRunning: two more copies of a task (one as if moved
// up a class) are queued while the task runs on agent1. The other agent,
// which takes them, runs neither: the task runs once, its result is
// recorded once with its one attempt, and agent1, alive, is never
// recorded lost. Both copies started on agent2 beside the first, and the
// copy marked moved took the other copy's live claim for a lost agent's.
func TestSecondCopyWhileRunning(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	first := startAgent(t, dir, "agent1", url, "-j", "1")
	sub := submit(t, dir, "run", url, []string{"sleep:5000"})
	run := runIDOf(t, sub)
	deadline := time.Now().Add(30 * time.Second)
	for startsOf(dir, "agent1") < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("agent1 started no task:\n%s", first.stderr())
		}
		time.Sleep(10 * time.Millisecond)
	}
	js := jetStreamOf(t, url)
	seen := watchAttempts(t, js, run, 1)
	other := startAgent(t, dir, "agent2", url, "-j", "2")
	publishCopy(t, js, run, 1, "sleep:5000", 0)
	publishCopy(t, js, run, 1, "sleep:5000", 1)
	if st := sub.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	waitQueueEmpty(t, js, 20*time.Second)
	time.Sleep(500 * time.Millisecond)
	if a, b := startsOf(dir, "agent1"), startsOf(dir, "agent2"); a != 1 || b != 0 {
		t.Errorf("task starts: agent1 %d, agent2 %d; want 1 and 0", a, b)
	}
	if !strings.Contains(other.stderr(), "is dropped") {
		t.Errorf("agent2 does not say it dropped the copies:\n%s", other.stderr())
	}
	checkRecorded(t, url, run, 1)
	rec := resultOf(t, js, run, 1)
	if rec.State != "done" || rec.Agent != "agent1" || len(rec.Attempts) != 1 || rec.Attempts[0].Cause != "" {
		t.Errorf("result = %s by %s with attempts %+v, want done by agent1 in one attempt", rec.State, rec.Agent, rec.Attempts)
	}
	for _, v := range seen() {
		var ar struct {
			Lost []cluster.AttemptRecord `json:"lost"`
		}
		json.Unmarshal([]byte(v), &ar)
		if len(ar.Lost) > 0 {
			t.Errorf("an agent was recorded lost: %s", v)
		}
	}
}

// TestSecondCopyAgentKilled: a copy of a task running on agent1 is dropped
// by agent2; then agent1 is SIGKILLed with its worker. The task is not
// lost with the dropped copy: its own message, delivered again after
// AckWait, runs it once on agent2, counting agent1's loss once, which its
// result shows.
func TestSecondCopyAgentKilled(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	first := startAgent(t, dir, "agent1", url, "-j", "1")
	sub := submit(t, dir, "run", url, []string{"sleep:8000"})
	run := runIDOf(t, sub)
	deadline := time.Now().Add(30 * time.Second)
	for startsOf(dir, "agent1") < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("agent1 started no task:\n%s", first.stderr())
		}
		time.Sleep(10 * time.Millisecond)
	}
	js := jetStreamOf(t, url)
	seen := watchAttempts(t, js, run, 1)
	other := startAgent(t, dir, "agent2", url, "-j", "1")
	publishCopy(t, js, run, 1, "sleep:8000", 0)
	other.waitLog(t, "is dropped", 10*time.Second)
	first.kill()
	if st := sub.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	waitQueueEmpty(t, js, 20*time.Second)
	if b := startsOf(dir, "agent2"); b != 1 {
		t.Errorf("%d task starts on agent2, want 1", b)
	}
	checkRecorded(t, url, run, 1)
	rec := resultOf(t, js, run, 1)
	// Its result shows agent1's lost attempt once, uncharged, then
	// agent2's.
	if rec.State != "done" || rec.Agent != "agent2" || len(rec.Attempts) != 2 ||
		rec.Attempts[0].Agent != "agent1" || rec.Attempts[0].Cause != cluster.CauseAgentLost || rec.Attempts[0].Number != 1 ||
		rec.Attempts[1].Agent != "agent2" || rec.Attempts[1].Cause != "" || rec.Attempts[1].Number != 1 {
		t.Errorf("result = %s by %s with attempts %+v, want done by agent2 after agent1's lost attempt, both attempt 1", rec.State, rec.Agent, rec.Attempts)
	}
	// agent1's loss was counted (toward MaxLost) by the delivery that ran
	// the task, and by no other.
	losses := 0
	for _, v := range seen() {
		var ar struct {
			Lost []cluster.AttemptRecord `json:"lost"`
		}
		json.Unmarshal([]byte(v), &ar)
		losses = max(losses, len(ar.Lost))
		if len(ar.Lost) > 0 && (ar.Lost[0].Agent != "agent1" || ar.Lost[0].Cause != cluster.CauseAgentLost) {
			t.Errorf("attempts record %s, want agent1 lost", v)
		}
	}
	if losses != 1 {
		t.Errorf("%d losses counted, want agent1's", losses)
	}
}
