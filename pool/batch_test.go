package pool_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// batchConfig is a pool of framed/2 workers that take batches.
func batchConfig(workers int) pool.Config {
	cfg := config(pool.Framed, workers)
	cfg.Command, cfg.Env = workerCmd("framed-batch"), workerEnvFor("framed-batch")
	return cfg
}

// itemOutcome is what became of one item of a batch.
type itemOutcome struct {
	state    pool.State
	output   string
	attempts []pool.Attempt
	results  int // how many Results settled it
}

// runBatches submits each batch of items as one task and returns every
// item's outcome by item id. Each Result must settle items of one batch,
// and the pool's Stats count items throughout (checkItemStats).
func runBatches(t *testing.T, cfg pool.Config, batches ...[]string) map[uint64]*itemOutcome {
	t.Helper()
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	defer checkItemStats(t, p)()
	go func() {
		defer p.Close()
		for _, b := range batches {
			if _, err := p.Submit(context.Background(), pool.Task{Input: []byte(strings.Join(b, "\n")), Items: len(b)}); err != nil {
				return
			}
		}
	}()
	got := map[uint64]*itemOutcome{}
	timeout := time.After(time.Minute)
	for {
		select {
		case r, ok := <-p.Results():
			if !ok {
				return got
			}
			if r.Items == nil {
				t.Fatalf("result %d of a batch has no items", r.ID)
			}
			for _, it := range r.Items {
				if it.ID != r.ID+uint64(it.Index) {
					t.Errorf("item %d has index %d in the result of batch %d", it.ID, it.Index, r.ID)
				}
				o := got[it.ID]
				if o == nil {
					o = &itemOutcome{}
					got[it.ID] = o
				}
				o.state, o.output, o.attempts = r.State, string(it.Output), r.Attempts
				o.results++
			}
		case <-timeout:
			p.Abort(nil)
			t.Fatal("the pool did not end within a minute")
		}
	}
}

// checkDone checks that every item but those in except is done once,
// answered by its first attempt, with the output the worker gives.
func checkDone(t *testing.T, got map[uint64]*itemOutcome, items []string, except ...uint64) {
	t.Helper()
	checkOutputs(t, got, items, func(in string) string { return "ok:" + in }, except...)
}

// checkOutputs is checkDone with the output want gives for each item.
func checkOutputs(t *testing.T, got map[uint64]*itemOutcome, items []string, want func(string) string, except ...uint64) {
	t.Helper()
	skip := map[uint64]bool{}
	for _, id := range except {
		skip[id] = true
	}
	for i, in := range items {
		id := uint64(i + 1)
		o := got[id]
		switch {
		case o == nil:
			t.Errorf("item %d (%s) has no result", id, in)
		case o.results != 1:
			t.Errorf("item %d settled %d times", id, o.results)
		case skip[id]:
		case o.state != pool.Done || o.output != want(in):
			t.Errorf("item %d = %s %q (attempts %+v), want done %q", id, o.state, o.output, o.attempts, want(in))
		case len(o.attempts) != 1 || o.attempts[0].Number != 1:
			t.Errorf("item %d has attempts %+v, want one", id, o.attempts)
		}
	}
}

func TestBatchDone(t *testing.T) {
	items := []string{"a", "b", "c", "d", "e", "f", "g"}
	got := runBatches(t, batchConfig(2), items[:3], items[3:])
	checkDone(t, got, items)
}

// TestBatchDeath: a worker that dies running item k of a batch (the first,
// one in the middle, the last) is charged to item k alone, which runs again
// on its own; the items it answered are done and never run again, and the
// items after k run once, uncharged.
func TestBatchDeath(t *testing.T) {
	for _, k := range []int{0, 2, 4} {
		t.Run(string(rune('0'+k)), func(t *testing.T) {
			dir := t.TempDir()
			items := make([]string, 5)
			for i := range items {
				// Each item counts its runs in a file of its own.
				items[i] = "once:" + filepath.Join(dir, "ran"+string(rune('0'+i))) + ":x"
			}
			items[k] = "once:" + filepath.Join(dir, "killed") + ":kill"
			cfg := batchConfig(1)
			cfg.OnWorkerDeath, cfg.Retries = pool.Retry, 1
			got := runBatches(t, cfg, items)
			// "once" answers "ok:x" at its first run only.
			checkOutputs(t, got, items, func(string) string { return "ok:x" }, uint64(k+1))
			o := got[uint64(k+1)]
			if o == nil || o.state != pool.Done || len(o.attempts) != 2 || o.attempts[0].Cause != "signal:SIGKILL" ||
				o.attempts[0].Number != 1 || o.attempts[1].Number != 2 {
				t.Fatalf("killing item = %+v, want done at its second attempt after SIGKILL", o)
			}
		})
	}
}

// TestBatchItemError: an item that fails is settled on its own (retried
// under TaskErrorRetries, then failed); the others are done.
func TestBatchItemError(t *testing.T) {
	items := []string{"a", "fail", "c", "d"}
	cfg := batchConfig(1)
	cfg.TaskErrorRetries = 1
	got := runBatches(t, cfg, items)
	checkDone(t, got, items, 2)
	o := got[2]
	if o.state != pool.Failed || len(o.attempts) != 2 || o.attempts[1].Cause != pool.CauseTaskError ||
		o.attempts[1].Message != "this task fails" {
		t.Fatalf("failing item = %+v, want failed after 2 task errors", o)
	}
}

// TestBatchTimeout: the timeout bounds each item of a batch, from its start
// frame: a batch whose items together run longer than it is done, and the
// one item that runs longer is charged.
func TestBatchTimeout(t *testing.T) {
	items := []string{"sleep:150", "sleep:150", "sleep:150", "hang", "sleep:150", "sleep:150"}
	cfg := batchConfig(1)
	cfg.Timeout = 400 * time.Millisecond
	cfg.TimeoutGrace = -1 // when the clock runs out, not how the hanging item ends
	got := runBatches(t, cfg, items)
	checkDone(t, got, items, 4)
	o := got[4]
	if o.state != pool.Failed || len(o.attempts) != 1 || o.attempts[0].Cause != pool.CauseTimeout {
		t.Fatalf("hanging item = %+v, want failed after a timeout", o)
	}
	if d := o.attempts[0].End.Sub(o.attempts[0].Start); d < 350*time.Millisecond || d > 2*time.Second {
		t.Errorf("hanging item ran %v, want about the timeout of 400ms from its own start", d)
	}
}

// TestBatchOldWorker: a framed/1 worker given a batch is a clear error.
func TestBatchOldWorker(t *testing.T) {
	cfg := config(pool.Framed, 1)
	cfg.StartupFailures = 1
	got := runBatches(t, cfg, []string{"a", "b"})
	if o := got[1]; o == nil || o.state == pool.Done {
		t.Fatalf("item 1 = %+v, want it not done", o)
	}
	if o := got[1]; len(o.attempts) == 0 || !strings.Contains(o.attempts[0].Message, "no batch tasks") {
		t.Errorf("item 1 attempts = %+v, want a message about batches", o.attempts)
	}
}

// TestBatchOOM: under the governor, an item of a batch that the OOM killer
// takes beside 3 other tasks runs again on its own with more memory and is
// done; one that the OOM killer takes while alone ends poison. The other
// items of the batch are done, once.
func TestBatchOOM(t *testing.T) {
	requireCgroups(t)
	t.Run("beside", func(t *testing.T) {
		cfg := batchConfig(4)
		cfg.MemBudget = 200 << 20
		grow := "once:" + filepath.Join(t.TempDir(), "grew") + ":hog"
		got := runBatches(t, cfg, []string{"sleep:1500"}, []string{"sleep:1500"}, []string{"sleep:1500"},
			[]string{"sleep:100", grow, "sleep:10"})
		o := got[5]
		if o == nil || o.state != pool.Done || len(o.attempts) != 2 || o.attempts[0].Cause != pool.CauseOOM {
			t.Fatalf("hog once = %+v, want done at its second attempt after an OOM kill", o)
		}
		for _, id := range []uint64{1, 2, 3, 4, 6} {
			if o := got[id]; o == nil || o.state != pool.Done || len(o.attempts) != 1 || o.results != 1 {
				t.Errorf("item %d = %+v, want done at once", id, o)
			}
		}
	})
	t.Run("alone", func(t *testing.T) {
		cfg := batchConfig(4)
		cfg.MemBudget = 100 << 20
		got := runBatches(t, cfg, []string{"sleep:10", "hog", "sleep:10"})
		if o := got[2]; o == nil || o.state != pool.Poison || o.attempts[len(o.attempts)-1].Cause != pool.CauseOOM {
			t.Fatalf("hog = %+v, want poison after an OOM kill", o)
		}
		for _, id := range []uint64{1, 3} {
			if o := got[id]; o == nil || o.state != pool.Done || len(o.attempts) != 1 {
				t.Errorf("item %d = %+v, want done at once", id, o)
			}
		}
	})
}

// TestBatchAbort: an abort settles every item of the batches running and
// queued, once each: those answered done, the others cancelled.
func TestBatchAbort(t *testing.T) {
	cfg := batchConfig(1)
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The abort comes once the second item hangs (the marker file says so,
	// and the first item's answer was flushed before it started), not
	// after a fixed delay that a slow start under load could outlast.
	marker := filepath.Join(t.TempDir(), "hanging")
	for _, b := range []string{"a\nonce:" + marker + ":hang\nb", "c\nd"} {
		if _, err := p.Submit(context.Background(), pool.Task{Input: []byte(b), Items: strings.Count(b, "\n") + 1}); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(marker); err == nil {
				break
			}
		}
		p.Abort(nil)
		p.Abort(nil)
	}()
	state := map[uint64]pool.State{}
	for r := range p.Results() {
		for _, it := range r.Items {
			if _, dup := state[it.ID]; dup {
				t.Errorf("item %d settled twice", it.ID)
			}
			state[it.ID] = r.State
		}
	}
	want := map[uint64]pool.State{1: pool.Done, 2: pool.Cancelled, 3: pool.Cancelled, 4: pool.Cancelled, 5: pool.Cancelled}
	for id, st := range want {
		if state[id] != st {
			t.Errorf("item %d = %s, want %s", id, state[id], st)
		}
	}
	if st := p.Stats(); st.Submitted != 5 || st.Done != 1 || st.Cancelled != 4 {
		t.Errorf("stats = %+v, want 5 submitted, 1 done, 4 cancelled", st)
	}
}
