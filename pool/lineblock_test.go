package pool_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// blockOf is a line batch's input: each item a line, ended by a newline.
func blockOf(items []string) []byte { return []byte(strings.Join(items, "\n") + "\n") }

// runLineBlocks submits each block of lines as one line batch and returns
// every item's outcome by id, and the order in which the items' results
// came. It checks that each Result of done items carries their answer
// lines, in order, in its Output, and that the pool's Stats count lines
// throughout (checkItemStats).
func runLineBlocks(t *testing.T, cfg pool.Config, blocks ...[]string) (map[uint64]*itemOutcome, []uint64, *pool.Pool) {
	t.Helper()
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	defer checkItemStats(t, p)()
	go func() {
		defer p.Close()
		for _, b := range blocks {
			if _, err := p.Submit(context.Background(), pool.Task{Input: blockOf(b), Items: len(b)}); err != nil {
				return
			}
		}
	}()
	got := map[uint64]*itemOutcome{}
	var order []uint64
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case r, ok := <-p.Results():
			if !ok {
				return got, order, p
			}
			if r.Items == nil {
				t.Fatalf("result %d of a line batch has no items", r.ID)
			}
			var want strings.Builder
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
				order = append(order, it.ID)
				want.WriteString(string(it.Output) + "\n")
			}
			if r.State == pool.Done && string(r.Output) != want.String() {
				t.Errorf("result of items %d.. has output %q, want the items' lines %q", r.Items[0].ID, r.Output, want.String())
			}
		case <-timeout:
			p.Abort(nil)
			t.Fatal("the pool did not end within two minutes")
		}
	}
}

// checkItemStats samples p's Stats until the function it returns is called,
// when p has ended: in every sample, the tasks in each state (a batch's
// items each) add up to those submitted, and RunningAttempts, where a
// block's attempt counts once, is never above Running; at the end none is
// queued or running.
func checkItemStats(t *testing.T, p *pool.Pool) func() {
	t.Helper()
	stop, done := make(chan struct{}), make(chan string)
	go func() {
		wrong := ""
		for {
			select {
			case <-stop:
				done <- wrong
				return
			default:
			}
			st := p.Stats()
			sum := st.Queued + st.Running + st.Settling + st.Done + st.Failed + st.Cancelled + st.Poison
			if wrong == "" && (sum != st.Submitted || st.RunningAttempts > st.Running) {
				wrong = fmt.Sprintf("%+v", st)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	return func() {
		t.Helper()
		close(stop)
		if wrong := <-done; wrong != "" {
			t.Errorf("Stats %s: the states do not add up to Submitted, or count more attempts than tasks running", wrong)
		}
		if st := p.Stats(); st.Queued != 0 || st.Running != 0 || st.RunningAttempts != 0 || st.Settling != 0 {
			t.Errorf("Stats at the end = %+v, want none queued or running", st)
		}
	}
}

func TestLineBlockDone(t *testing.T) {
	items := []string{"a", "b", "c", "d", "e", "f", "g"}
	got, _, p := runLineBlocks(t, config(pool.Line, 2), items[:3], items[3:4], items[4:])
	checkDone(t, got, items)
	if st := p.Stats(); st.Submitted != 7 || st.Done != 7 {
		t.Errorf("stats = %+v, want 7 submitted and done", st)
	}
}

// TestLineBlockDeath: a worker that dies running line k of a block (the
// first, one in the middle, the last) is charged to line k alone, which
// runs again on its own; the lines it answered are done, and given once;
// the lines after k run once, uncharged.
func TestLineBlockDeath(t *testing.T) {
	for _, k := range []int{0, 2, 4} {
		t.Run(fmt.Sprint(k), func(t *testing.T) {
			dir := t.TempDir()
			items := make([]string, 5)
			for i := range items {
				// Each line counts its runs in a file of its own: "once"
				// answers "ok:x" at its first run only.
				items[i] = "once:" + filepath.Join(dir, fmt.Sprint("ran", i)) + ":x"
			}
			items[k] = "once:" + filepath.Join(dir, "killed") + ":kill"
			cfg := config(pool.Line, 1)
			cfg.OnWorkerDeath, cfg.Retries = pool.Retry, 1
			got, _, p := runLineBlocks(t, cfg, items)
			checkOutputs(t, got, items, func(string) string { return "ok:x" }, uint64(k+1))
			o := got[uint64(k+1)]
			if o == nil || o.state != pool.Done || len(o.attempts) != 2 || o.attempts[0].Cause != "signal:SIGKILL" ||
				o.attempts[0].Number != 1 || o.attempts[1].Number != 2 {
				t.Fatalf("killing line = %+v, want done at its second attempt after SIGKILL", o)
			}
			if st := p.Stats(); st.Done != 5 || st.WorkerDeaths != 1 {
				t.Errorf("stats = %+v, want 5 done and 1 worker death", st)
			}
		})
	}
}

// TestLineBlockExitZero: a line worker that exits 0 after reading a line
// of a block, without answering it, gets one uncharged run of that line
// elsewhere (it may have read the line ahead and ended between lines); the
// second time the line is charged, and it then fails after 1+Retries
// charged attempts, with one worker death for each run: one pass and two
// charges. The pass was not recorded for a line of a block: the line came
// back without it, got a second one as the head of its block and a third
// once it ran alone, five deaths instead of three.
func TestLineBlockExitZero(t *testing.T) {
	tests := []struct {
		name   string
		blocks [][]string
		bad    uint64 // the id of the line "exit:0"
	}{
		{"first", [][]string{{"exit:0", "b", "c", "d", "e"}}, 1},
		{"middle", [][]string{{"a", "b", "exit:0", "d", "e"}}, 3},
		{"alone", [][]string{{"a", "b"}, {"exit:0"}, {"d", "e"}}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config(pool.Line, 1)
			cfg.OnWorkerDeath, cfg.Retries = pool.Retry, 1
			got, _, p := runLineBlocks(t, cfg, tt.blocks...)
			var items []string
			for _, b := range tt.blocks {
				items = append(items, b...)
			}
			checkDone(t, got, items, tt.bad)
			o := got[tt.bad]
			if o == nil || o.state != pool.Failed || len(o.attempts) != 2 ||
				o.attempts[0].Cause != pool.ExitCause(0) || o.attempts[1].Number != 2 {
				t.Fatalf("exiting line = %+v, want failed after two attempts, each exit:0", o)
			}
			if m := o.attempts[1].Message; !strings.Contains(m, "already run once, uncharged") {
				t.Errorf("charged attempt's message = %q, want it to say the line had run once uncharged before", m)
			}
			if st := p.Stats(); st.Done != 4 || st.Failed != 1 || st.WorkerDeaths != 3 {
				t.Errorf("stats = %+v, want 4 done, 1 failed and 3 worker deaths (one uncharged run, two charged)", st)
			}
		})
	}
}

// TestLineBlockPoison: a line that kills every worker it runs on, in a
// block of a 100,000-line input, fails alone after its retries; every
// other line is done once, and the results come in input order.
func TestLineBlockPoison(t *testing.T) {
	const n, block, bad = 100000, 4096, 54321
	items := make([]string, n)
	for i := range items {
		items[i] = fmt.Sprint(i)
	}
	items[bad-1] = "kill"
	var blocks [][]string
	for i := 0; i < n; i += block {
		blocks = append(blocks, items[i:min(i+block, n)])
	}
	cfg := config(pool.Line, 2)
	cfg.OnWorkerDeath, cfg.Retries, cfg.KeepOrder = pool.Retry, 2, true
	got, order, p := runLineBlocks(t, cfg, blocks...)
	checkDone(t, got, items, bad)
	if o := got[bad]; o == nil || o.state != pool.Failed || len(o.attempts) != 3 || o.attempts[2].Cause != "signal:SIGKILL" {
		t.Fatalf("poison line = %+v, want failed after 3 attempts, each SIGKILL", o)
	}
	for i, id := range order {
		if id != uint64(i+1) {
			t.Fatalf("result %d is of item %d, want input order", i+1, id)
		}
	}
	if st := p.Stats(); st.Done != n-1 || st.Failed != 1 || st.WorkerDeaths != 3 {
		t.Errorf("stats = %+v, want %d done, 1 failed, 3 worker deaths", st, n-1)
	}
}

// TestLineBlockOOM: under the governor, a line of a block that the OOM
// killer takes while it runs alone ends poison; the other lines are done.
func TestLineBlockOOM(t *testing.T) {
	requireCgroups(t)
	items := []string{"a", "b", "hog", "c", "d"}
	cfg := config(pool.Line, 2)
	cfg.MemBudget = 100 << 20
	got, _, _ := runLineBlocks(t, cfg, items)
	checkDone(t, got, items, 3)
	if o := got[3]; o == nil || o.state != pool.Poison || o.attempts[len(o.attempts)-1].Cause != pool.CauseOOM {
		t.Fatalf("hog = %+v, want poison after an OOM kill", o)
	}
}

// TestLineBlockTimeout: the timeout bounds each line of a block, from the
// answer of the line before it: a block whose lines together run longer
// than it is done, and the one line that runs longer is charged.
func TestLineBlockTimeout(t *testing.T) {
	items := []string{"sleep:150", "sleep:150", "sleep:150", "hang", "sleep:150", "sleep:150"}
	cfg := config(pool.Line, 1)
	cfg.Timeout = 400 * time.Millisecond
	cfg.TimeoutGrace = -1 // when the clock runs out, not how the hanging item ends
	got, _, _ := runLineBlocks(t, cfg, items)
	checkDone(t, got, items, 4)
	o := got[4]
	if o == nil || o.state != pool.Failed || len(o.attempts) != 1 || o.attempts[0].Cause != pool.CauseTimeout {
		t.Fatalf("hanging line = %+v, want failed after a timeout", o)
	}
	if d := o.attempts[0].End.Sub(o.attempts[0].Start); d < 350*time.Millisecond || d > 2*time.Second {
		t.Errorf("hanging line ran %v, want about the timeout of 400ms from its own start", d)
	}
}

// TestLineBlockExtraLine: a worker that answers a line of a block with two
// lines is caught out of step once it has written more lines than the
// block has (Stats.OutOfStep); the line it runs then, if any, fails with a
// protocol error, and every line is settled once.
func TestLineBlockExtraLine(t *testing.T) {
	items := []string{"a", "twice", "c", "d"}
	cfg := config(pool.Line, 1)
	got, _, p := runLineBlocks(t, cfg, items)
	protocol := 0
	for id := uint64(1); id <= 4; id++ {
		o := got[id]
		if o == nil || o.results != 1 {
			t.Fatalf("line %d = %+v, want settled once", id, o)
		}
		if o.state == pool.Failed && o.attempts[len(o.attempts)-1].Cause == pool.CauseProtocol {
			protocol++
		}
	}
	// The extra line is caught when it is read: with a line unanswered,
	// that line fails; after the block's last answer, no line is left to
	// charge, and only the count of workers out of step says so.
	if protocol > 1 {
		t.Errorf("%d lines failed with a protocol error, want at most 1", protocol)
	}
	if st := p.Stats(); st.OutOfStep != 1 {
		t.Errorf("stats = %+v, want 1 worker out of step", st)
	}
}

// TestLineBlockMissingLine: a worker that answers a line of a block with
// nothing has one line unanswered at the end of the block, and waits for
// input: the stall check fails that line with a protocol error.
func TestLineBlockMissingLine(t *testing.T) {
	items := []string{"a", "mute", "c", "d"}
	cfg := config(pool.Line, 1)
	cfg.StallTimeout = time.Second
	got, _, _ := runLineBlocks(t, cfg, items)
	o := got[4]
	if o == nil || o.state != pool.Failed || o.attempts[0].Cause != pool.CauseProtocol ||
		!strings.Contains(o.attempts[0].Message, "without answering") {
		t.Fatalf("last line = %+v, want failed with a protocol error for the stall", o)
	}
	for id := uint64(1); id <= 3; id++ {
		if o := got[id]; o == nil || o.state != pool.Done || o.results != 1 {
			t.Errorf("line %d = %+v, want done once", id, o)
		}
	}
}

// TestLineBlockRefused: a line batch whose input does not hold its items,
// each ended by a newline, is refused.
func TestLineBlockRefused(t *testing.T) {
	p, err := pool.New(config(pool.Line, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		p.Close()
		for range p.Results() {
		}
	}()
	for _, in := range []string{"a\nb", "a\nb\n\n"} {
		if _, err := p.Submit(context.Background(), pool.Task{Input: []byte(in), Items: 2}); err == nil {
			t.Errorf("Submit(%q, 2 items) = nil, want an error", in)
		}
	}
}
