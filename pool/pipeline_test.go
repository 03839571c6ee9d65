package pool_test

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// linePipeline returns a line pool configuration with depth lines in flight
// per worker.
func linePipeline(workers, depth int) pool.Config {
	cfg := config(pool.Line, workers)
	cfg.Pipeline = depth
	return cfg
}

// TestLinePipelineBlame kills line workers that have many lines in flight:
// only the line each was running is charged, with the right cause; the
// lines sent behind it run again elsewhere with no attempt charged.
func TestLinePipelineBlame(t *testing.T) {
	tests := []struct {
		name, input string
		want        pool.Cause
	}{
		{"sigkill", "kill", "signal:SIGKILL"},
		{"segfault", "segv", pool.CauseSegfault},
		{"exit code", "exit:3", "exit:3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var inputs []string
			for i := 0; i < 80; i++ {
				in := "sleep:1"
				if i == 20 || i == 47 {
					in = tt.input
				}
				inputs = append(inputs, in)
			}
			got, p := run(t, linePipeline(2, 16), inputs...)
			if len(got) != len(inputs) {
				t.Fatalf("got %d results, want %d", len(got), len(inputs))
			}
			for id, r := range got {
				if inputs[id-1] == tt.input {
					if r.State != pool.Failed || len(r.Attempts) != 1 || r.Attempts[0].Cause != tt.want {
						t.Errorf("faulty task %d = %s %+v, want failed once with %s", id, r.State, r.Attempts, tt.want)
					}
					continue
				}
				if r.State != pool.Done || len(r.Attempts) != 1 || string(r.Output) != "ok:sleep:1" {
					t.Errorf("bystander task %d = %s %q with attempts %+v, want done %q with exactly one attempt",
						id, r.State, r.Output, r.Attempts, "ok:sleep:1")
				}
			}
			if s := p.Stats(); s.Attempts != len(inputs) || s.Done != len(inputs)-2 || s.Failed != 2 {
				t.Errorf("Stats() = %+v, want %d attempts, %d done, 2 failed", s, len(inputs), len(inputs)-2)
			}
		})
	}
}

// TestLinePipelineAttemptTimes: with lines sent ahead, each line's attempt
// starts when the line before it was answered, on the same worker.
func TestLinePipelineAttemptTimes(t *testing.T) {
	var inputs []string
	for i := 0; i < 30; i++ {
		inputs = append(inputs, "pid")
	}
	got, _ := run(t, linePipeline(1, 8), inputs...)
	var prev pool.Attempt
	for id := uint64(1); id <= uint64(len(inputs)); id++ {
		r := got[id]
		if r.State != pool.Done || len(r.Attempts) != 1 {
			t.Fatalf("task %d = %s %+v, want done once", id, r.State, r.Attempts)
		}
		a := r.Attempts[0]
		if a.End.Before(a.Start) {
			t.Errorf("task %d ran from %v to %v", id, a.Start, a.End)
		}
		if id > 1 && prev.WorkerPID == a.WorkerPID && a.Start.Before(prev.End) {
			t.Errorf("task %d started at %v, before task %d was answered at %v", id, a.Start, id-1, prev.End)
		}
		prev = a
	}
}

// TestLinePipelineKeepOrder: with KeepOrder, lines in flight behind a line
// that killed its worker run again and the results still come in input
// order.
func TestLinePipelineKeepOrder(t *testing.T) {
	dir := t.TempDir()
	cfg := linePipeline(2, 8)
	cfg.KeepOrder = true
	cfg.Retries = 1
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const n = 120
	inputs := make([]string, n)
	for i := range inputs {
		inputs[i] = "sleep:" + strconv.Itoa(i%3)
		if i%25 == 10 {
			// Kills its worker the first time, answers when retried.
			inputs[i] = "once:" + filepath.Join(dir, strconv.Itoa(i)) + ":kill"
		}
	}
	go func() {
		defer p.Close()
		for _, in := range inputs {
			p.Submit(context.Background(), pool.Task{Input: []byte(in)})
		}
	}()
	var ids []uint64
	for r := range p.Results() {
		ids = append(ids, r.ID)
		in := inputs[r.ID-1]
		if r.State != pool.Done || string(r.Output) != "ok:"+in {
			t.Errorf("task %d (%s) = %s %q, want done %q", r.ID, in, r.State, r.Output, "ok:"+in)
		}
		want := 1
		if strings.HasPrefix(in, "once:") {
			want = 2
		}
		if len(r.Attempts) != want {
			t.Errorf("task %d (%s) has %d attempts, want %d: %+v", r.ID, in, len(r.Attempts), want, r.Attempts)
		}
	}
	if len(ids) != n {
		t.Fatalf("got %d results, want %d", len(ids), n)
	}
	for i, id := range ids {
		if id != uint64(i+1) {
			t.Fatalf("results came in order %v, want 1..%d", ids, n)
		}
	}
}

// TestLinePipelineTimeout: a line's timeout runs from when the line before
// it was answered, not from when it was sent; a hanging line is charged
// alone and the lines behind it run again uncharged.
func TestLinePipelineTimeout(t *testing.T) {
	defer pool.SetPipelineAhead(time.Hour)()
	cfg := linePipeline(1, 8)
	cfg.Timeout = 3 * time.Second
	// Sent together, the four sleeps take 4 s in all, each 1 s: a clock
	// started at sending would kill the last ones.
	inputs := []string{"sleep:1000", "sleep:1000", "sleep:1000", "sleep:1000", "hang", "a", "b", "c"}
	got, _ := run(t, cfg, inputs...)
	if len(got) != len(inputs) {
		t.Fatalf("got %d results, want %d", len(got), len(inputs))
	}
	for id, r := range got {
		if inputs[id-1] == "hang" {
			if r.State != pool.Failed || len(r.Attempts) != 1 || r.Attempts[0].Cause != pool.CauseTimeout {
				t.Errorf("hanging task = %s %+v, want failed once with timeout", r.State, r.Attempts)
			}
			continue
		}
		if r.State != pool.Done || len(r.Attempts) != 1 {
			t.Errorf("task %d (%s) = %s %+v, want done once", id, inputs[id-1], r.State, r.Attempts)
		}
	}
}

// TestLinePipelineExitBetweenTasks: a line worker that exits 0 after an
// answer, with lines sent behind it, is replaced; no line is charged.
func TestLinePipelineExitBetweenTasks(t *testing.T) {
	inputs := []string{"a", "bye", "b", "c", "bye", "d", "e", "f", "g", "h"}
	got, p := run(t, linePipeline(1, 8), inputs...)
	for id, r := range got {
		if r.State != pool.Done || len(r.Attempts) != 1 || string(r.Output) != "ok:"+inputs[id-1] {
			t.Errorf("task %d (%s) = %s %q %+v, want done once", id, inputs[id-1], r.State, r.Output, r.Attempts)
		}
	}
	if len(got) != len(inputs) {
		t.Fatalf("got %d results, want %d", len(got), len(inputs))
	}
	if s := p.Stats(); s.WorkersStarted < 3 {
		t.Errorf("WorkersStarted = %d, want at least 3", s.WorkersStarted)
	}
}

// TestLinePipelineGarbage: a line worker that prints more lines than it is
// given cannot be caught while lines are in flight (the extra line is taken
// for the next answer), but every task still ends once, the pool ends, and
// the lines answered before it are right. An extra line that comes with no
// line in flight is a protocol error that ends the worker.
func TestLinePipelineGarbage(t *testing.T) {
	tests := []struct {
		name   string
		inputs []string
	}{
		{"last", []string{"a", "b", "garbage"}},
		{"middle", []string{"a", "b", "garbage", "c", "d", "e", "f", "g"}},
		{"alone", []string{"garbage"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := run(t, linePipeline(1, 8), tt.inputs...)
			if len(got) != len(tt.inputs) {
				t.Fatalf("got %d results, want %d", len(got), len(tt.inputs))
			}
			for id, r := range got {
				in := tt.inputs[id-1]
				if len(r.Attempts) == 0 && r.State != pool.Cancelled {
					t.Errorf("task %d (%s) = %s with no attempt", id, in, r.State)
				}
				if (in == "a" || in == "b") && (r.State != pool.Done || string(r.Output) != "ok:"+in) {
					t.Errorf("task %d (%s) = %s %q, want done %q", id, in, r.State, r.Output, "ok:"+in)
				}
				if in == "garbage" && r.State == pool.Done && string(r.Output) != "unsolicited line 1" {
					t.Errorf("garbage task output = %q, want the first line it printed", r.Output)
				}
			}
		})
	}
}

// TestLinePipelineSlowLines: lines that take long are not sent ahead to a
// busy worker while others are idle. Until a worker has answered, it holds
// one line; the four lines run on four workers.
func TestLinePipelineSlowLines(t *testing.T) {
	cfg := linePipeline(4, 16)
	cfg.NoGovernor = true // its cold start admits unknown tasks one by one
	got, _ := run(t, cfg, "sleep:1000", "sleep:1000", "sleep:1000", "sleep:1000")
	pids := map[int]bool{}
	for id, r := range got {
		if r.State != pool.Done || len(r.Attempts) != 1 {
			t.Fatalf("task %d = %s %+v, want done once", id, r.State, r.Attempts)
		}
		pids[r.Attempts[0].WorkerPID] = true
	}
	if len(pids) != 4 {
		t.Errorf("4 slow lines ran on %d workers, want 4", len(pids))
	}
}

// TestPipelineShare submits as many long tasks as there are workers to
// pipelined pools whose workers become ready at different times: each task
// runs on a worker of its own, at once, instead of queueing behind another
// on the first worker ready.
func TestPipelineShare(t *testing.T) {
	for _, proto := range []pool.Protocol{pool.Framed, pool.Line} {
		t.Run(string(proto), func(t *testing.T) {
			cfg := config(proto, 4)
			cfg.Pipeline = 8
			inputs := []string{"sleep:1500", "sleep:1500", "sleep:1500", "sleep:1500"}
			got, _ := run(t, cfg, inputs...)
			pids := map[int]bool{}
			for id, r := range got {
				if r.State != pool.Done || len(r.Attempts) != 1 {
					t.Fatalf("task %d = %s with %d attempts, want done with 1", id, r.State, len(r.Attempts))
				}
				pids[r.Attempts[0].WorkerPID] = true
				// A task queued behind another on its worker starts when
				// that one ends, 1.5 s after it started.
				if wait := r.Attempts[0].Start.Sub(got[1].Attempts[0].Start); wait > time.Second {
					t.Errorf("task %d started %v after task 1", id, wait.Round(time.Millisecond))
				}
			}
			if len(pids) != len(inputs) {
				t.Errorf("%d tasks ran on %d workers, want one each", len(inputs), len(pids))
			}
		})
	}
}

// TestIdleWorkerFirst runs a long task and three short ones on two
// pipelined workers: the short ones run on the worker the long one leaves
// free, one after another, and none waits behind the long one. A task goes
// to an idle worker while there is one; a busy worker is sent a task behind
// its own only while its items are known to be short, and not behind one
// that has run long. Cold: the workers have answered nothing (the short
// tasks come with the long one). Warm: after many tiny tasks, one short
// task comes with the long one, the others once it has run a while.
func TestIdleWorkerFirst(t *testing.T) {
	const long, short = "sleep:3000", "sleep:100"
	for _, proto := range []pool.Protocol{pool.Framed, pool.Line} {
		for _, warm := range []bool{false, true} {
			name := string(proto) + "/cold"
			if warm {
				name = string(proto) + "/warm"
			}
			t.Run(name, func(t *testing.T) {
				cfg := config(proto, 2)
				cfg.Pipeline = 8
				p, err := pool.New(cfg)
				if err != nil {
					t.Fatalf("New() = %v", err)
				}
				defer p.Abort(nil)
				ctx := context.Background()
				submit := func(in string) {
					if _, err := p.Submit(ctx, pool.Task{Input: []byte(in)}); err != nil {
						t.Fatalf("Submit(%q) = %v", in, err)
					}
				}
				if warm {
					// Tiny tasks until both workers have answered some: both
					// are ready, and know their items are short.
					pids := map[int]bool{}
					for round := 0; len(pids) < 2; round++ {
						if round == 100 {
							t.Fatalf("tiny tasks ran on %d workers after %d rounds, want 2", len(pids), round)
						}
						for i := range 20 {
							submit("tiny" + strconv.Itoa(i))
						}
						for range 20 {
							r := <-p.Results()
							if r.State != pool.Done {
								t.Fatalf("tiny task %d = %s, want done", r.ID, r.State)
							}
							pids[r.Attempts[0].WorkerPID] = true
						}
						time.Sleep(10 * time.Millisecond)
					}
				}
				start := time.Now()
				submit(long)
				submit(short)
				if warm {
					time.Sleep(50 * time.Millisecond)
				}
				submit(short)
				submit(short)
				p.Close()
				n := 0
				for r := range p.Results() {
					n++
					in, took := string(r.Input), time.Since(start)
					if r.State != pool.Done {
						t.Errorf("task %d (%s) = %s, want done", r.ID, in, r.State)
					}
					// 3 short tasks one after another take 0.3 s; one sent
					// behind the long task ends after 3 s.
					if in == short && took > 1500*time.Millisecond {
						t.Errorf("short task %d ended %v after the start, want under 1.5 s (it waited behind %s)",
							r.ID, took.Round(time.Millisecond), long)
					}
				}
				if n != 4 {
					t.Errorf("%d results, want 4", n)
				}
			})
		}
	}
}
