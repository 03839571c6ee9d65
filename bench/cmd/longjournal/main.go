// Command longjournal writes the journal of a synthetic long run, to
// measure `safepool report` on it: by default a run of 10 hours at -j16
// whose memory governor sampled every 100 ms (each worker's memory, their
// total, the budget, what it allowed and the per-worker limit: 20 samples
// a tick, 7.2 million in all), with the running attempts sampled at each
// commit (every second), about 57,000 tasks of 5 to 15 s, most done at
// their first attempt (in span rows, as the journal writes them) and one in 200
// killed for OOM and retried (task, attempt and event rows), each kill
// replacing its worker.
//
//	longjournal -o /tmp/long.db                 # 10 h, -j16
//	longjournal -o /tmp/short.db -hours 1 -j 8
//
// It writes the database through internal/journal's schema, row by row
// as the journal's writer does, one transaction a simulated minute; not
// the span file, which `safepool report` does not read. The run is the
// same for the same flags: its values come from a fixed seed.
package main

import (
	"database/sql"
	"encoding/binary"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"github.com/safepool/safepool/internal/journal"

	_ "modernc.org/sqlite"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("longjournal: ")
	out := flag.String("o", "", "the journal to write (must not exist)")
	hours := flag.Float64("hours", 10, "the run's length in hours")
	workers := flag.Int("j", 16, "workers")
	tick := flag.Duration("tick", 100*time.Millisecond, "the memory governor's sampling interval")
	taskTime := flag.Duration("task", 10*time.Second, "each task's time")
	oomEvery := flag.Int("oom-every", 200, "one task in N is killed for OOM at its first attempt, and retried")
	flag.Parse()
	if *out == "" || flag.NArg() > 0 {
		log.Fatal("usage: longjournal -o FILE [-hours H] [-j N] [-tick D] [-task D] [-oom-every N]")
	}
	if _, err := os.Lstat(*out); err == nil {
		log.Fatalf("%s exists", *out)
	}
	// The journal's own Open makes the file with its schema and page
	// size, in WAL mode.
	j, err := journal.Open(*out)
	if err != nil {
		log.Fatal(err)
	}
	if err := j.Close(); err != nil {
		log.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+*out+"?_pragma=synchronous(OFF)&_pragma=journal_mode(WAL)")
	if err != nil {
		log.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	g := &gen{db: db, workers: *workers, tick: *tick, taskTime: *taskTime, oomEvery: *oomEvery,
		length: time.Duration(*hours * float64(time.Hour)), rnd: rand.New(rand.NewPCG(1, 2))}
	t0 := time.Now()
	if err := g.run(); err != nil {
		log.Fatal(err)
	}
	if _, err := db.Exec("PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		log.Fatal(err)
	}
	if err := db.Close(); err != nil {
		log.Fatal(err)
	}
	fi, err := os.Stat(*out)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s: %d samples, %d tasks (%d with rows), %d span rows, %d events, %.0f MiB, in %.1f s\n",
		*out, g.samples, g.tasks, g.taskRows, g.spanRows, g.events, float64(fi.Size())/(1<<20), time.Since(t0).Seconds())
}

type gen struct {
	db       *sql.DB
	tx       *sql.Tx
	workers  int
	tick     time.Duration
	taskTime time.Duration
	oomEvery int
	length   time.Duration
	rnd      *rand.Rand

	runID                                      int64
	samples, tasks, taskRows, spanRows, events int
	// done are the tasks done at their first attempt since the last
	// commit, for its span row.
	done []doneTask
	// sampleRows buffers the rows of one multi-row INSERT.
	sampleRows []any
}

type doneTask struct {
	id             uint64
	started, ended int64
	peak           int64
	worker         int
}

// slot is one worker: its pid, and the task it runs.
type slot struct {
	pid     int
	task    uint64
	attempt int
	started int64
	ends    int64
	base    int64 // the task's memory, bytes
	oom     bool  // this attempt is killed for OOM at its end
	peak    int64
}

const (
	budget = 48 << 30
	limit  = 4 << 30
)

func (g *gen) run() error {
	start := time.Date(2026, 11, 1, 20, 0, 0, 0, time.UTC).UnixNano()
	end := start + int64(g.length)
	argv := fmt.Sprintf(`["safepool","run","-j","%d","--mem-limit","4GiB","--retries","1","--journal","jobs.db","./infer","{}",":::","..."]`, g.workers)
	res, err := g.db.Exec(`INSERT INTO run (started, ended, kind, command, argv, workers, memory_mode, mem_budget, mem_limit, exit_status)
		VALUES (?, ?, 'run', './infer {}', ?, ?, 'cgroup-v2', ?, ?, 0)`, start, end, argv, g.workers, budget, limit)
	if err != nil {
		return err
	}
	if g.runID, err = res.LastInsertId(); err != nil {
		return err
	}
	if err := g.begin(); err != nil {
		return err
	}
	nextPID := 10000
	var nextTask uint64
	slots := make([]slot, g.workers)
	startTask := func(s *slot, at int64, id uint64, attempt int) {
		s.task, s.attempt, s.started = id, attempt, at
		s.ends = at + int64(g.taskTime)/2 + g.rnd.Int64N(int64(g.taskTime))
		s.base = 200<<20 + g.rnd.Int64N(1<<30)
		s.oom = attempt == 1 && id%uint64(g.oomEvery) == 0
		s.peak = 0
	}
	for i := range slots {
		slots[i].pid = nextPID
		nextPID++
		if err := g.event(start, "worker-started", 0, slots[i].pid, ""); err != nil {
			return err
		}
		nextTask++
		startTask(&slots[i], start, nextTask, 1)
	}
	// retries wait for a worker.
	var retries []uint64
	lastCommit := start
	spike := start + int64(g.length)*3/5 // one tick of one worker far above the rest
	for at := start; at < end; at += int64(g.tick) {
		var total int64
		for i := range slots {
			s := &slots[i]
			if at >= s.ends {
				if err := g.finish(s, at); err != nil {
					return err
				}
				if s.oom {
					if err := g.event(at, "worker-exited", 0, s.pid, "signal: killed"); err != nil {
						return err
					}
					s.pid = nextPID
					nextPID++
					if err := g.event(at, "worker-started", 0, s.pid, ""); err != nil {
						return err
					}
					retries = append(retries, s.task)
				}
				if len(retries) > 0 {
					id := retries[0]
					retries = retries[1:]
					startTask(s, at, id, 2)
					if err := g.event(at, "retry", id, s.pid, "attempt 2"); err != nil {
						return err
					}
				} else {
					nextTask++
					startTask(s, at, nextTask, 1)
				}
			}
			// Memory rises through the task; an attempt killed for OOM
			// climbs to the limit.
			frac := float64(at-s.started) / float64(max(s.ends-s.started, 1))
			v := s.base/2 + int64(float64(s.base)*frac/2) + g.rnd.Int64N(16<<20)
			if s.oom {
				v = int64(float64(limit) * min(1, 0.5+frac))
			}
			if i == 0 && at <= spike && spike < at+int64(g.tick) {
				v = 3 << 30
			}
			s.peak = max(s.peak, v)
			total += v
			g.sample(at, s.pid, "worker", v)
		}
		g.sample(at, 0, "total", total)
		g.sample(at, 0, "budget", budget)
		g.sample(at, 0, "allowed", int64(g.workers))
		g.sample(at, 0, "limit", limit)
		if err := g.flushSamples(); err != nil {
			return err
		}
		if at-lastCommit >= int64(time.Second) {
			// A commit: the tasks done since the last, and the running
			// attempts.
			g.sample(at, 0, "running", int64(g.workers))
			if err := g.flushSamples(); err != nil {
				return err
			}
			if err := g.span(); err != nil {
				return err
			}
			lastCommit = at
			if (at-start)%int64(time.Minute) < int64(time.Second) {
				if err := g.commit(); err != nil {
					return err
				}
				if err := g.begin(); err != nil {
					return err
				}
			}
		}
	}
	// The run ends: what still runs is stopped as done at the end.
	for i := range slots {
		if err := g.finish(&slots[i], end); err != nil {
			return err
		}
	}
	if err := g.span(); err != nil {
		return err
	}
	return g.commit()
}

func (g *gen) begin() (err error) {
	g.tx, err = g.db.Begin()
	return err
}

func (g *gen) commit() error { return g.tx.Commit() }

// finish ends the attempt of s at at.
func (g *gen) finish(s *slot, at int64) error {
	g.tasks += boolInt(s.attempt == 1)
	if !s.oom && s.attempt == 1 {
		g.done = append(g.done, doneTask{id: s.task, started: s.started, ended: at, peak: s.peak, worker: s.pid})
		return nil
	}
	cause, state, msg := "", "done", any(nil)
	if s.oom {
		cause, msg = "oom", "killed by the OOM killer"
	}
	if _, err := g.tx.Exec(`INSERT INTO attempt (run_id, task_id, number, worker_pid, started, ended, cause, exit_code, signal, peak, message)
		VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)`, g.runID, s.task, s.attempt, s.pid, s.started, at, cause,
		map[bool]any{true: "SIGKILL", false: nil}[s.oom], s.peak, msg); err != nil {
		return err
	}
	if s.oom {
		if err := g.event(at, "oom", s.task, s.pid, "killed by the OOM killer"); err != nil {
			return err
		}
		state = "pending"
	}
	key := make([]byte, 16)
	binary.BigEndian.PutUint64(key, s.task)
	// The task's row: pending after the OOM kill, done after its retry.
	_, err := g.tx.Exec(`INSERT INTO task (run_id, id, key, input, state, attempts, cause, peak, ended)
		VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
		ON CONFLICT (run_id, id) DO UPDATE SET state = ?5, attempts = ?6, cause = ?7, peak = MAX(peak, ?8), ended = ?9`,
		g.runID, s.task, key, fmt.Sprintf("inputs/batch-%07d.tar", s.task), state, s.attempt,
		map[bool]any{true: "oom", false: nil}[s.oom], s.peak, at)
	g.taskRows += boolInt(s.attempt == 1)
	return err
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// span writes the tasks done since the last commit as one span row.
func (g *gen) span() error {
	if len(g.done) == 0 {
		return nil
	}
	// Ids in ascending order, in runs of consecutive ids.
	ts := g.done
	for i := 1; i < len(ts); i++ {
		for k := i; k > 0 && ts[k].id < ts[k-1].id; k-- {
			ts[k], ts[k-1] = ts[k-1], ts[k]
		}
	}
	first := ts[0].id
	var ids, parts []byte
	expect := first
	for i := 0; i < len(ts); {
		n := 1
		for i+n < len(ts) && ts[i+n].id == ts[i].id+uint64(n) {
			n++
		}
		ids = binary.AppendVarint(ids, int64(ts[i].id-expect))
		ids = binary.AppendUvarint(ids, uint64(n))
		expect = ts[i].id + uint64(n)
		i += n
	}
	started, ended, peak, worker := ts[0].started, ts[0].ended, int64(0), any(ts[0].worker)
	for _, t := range ts {
		parts = binary.AppendUvarint(parts, 1)
		parts = binary.AppendUvarint(parts, uint64((t.ended-t.started)/1000))
		parts = binary.AppendUvarint(parts, uint64(t.peak>>10))
		started, ended, peak = min(started, t.started), max(ended, t.ended), max(peak, t.peak)
		if worker != nil && t.worker != ts[0].worker {
			worker = nil
		}
	}
	_, err := g.tx.Exec(`INSERT INTO span (run_id, first, count, ids, parts, started, ended, worker_pid, peak, data_at, data_size, data_crc)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0)`, g.runID, first, len(ts), ids, parts, started, ended, worker, peak)
	g.spanRows++
	g.done = g.done[:0]
	return err
}

func (g *gen) event(at int64, kind string, task uint64, pid int, detail string) error {
	var t, d any
	if task != 0 {
		t = int64(task)
	}
	if detail != "" {
		d = detail
	}
	g.events++
	_, err := g.tx.Exec(`INSERT INTO event (run_id, at, kind, task_id, worker_pid, detail) VALUES (?, ?, ?, ?, ?, ?)`,
		g.runID, at, kind, t, pid, d)
	return err
}

func (g *gen) sample(at int64, pid int, series string, v int64) {
	g.sampleRows = append(g.sampleRows, g.runID, at, pid, series, v)
	g.samples++
}

func (g *gen) flushSamples() error {
	n := len(g.sampleRows) / 5
	if n == 0 {
		return nil
	}
	q := "INSERT INTO sample (run_id, at, worker_pid, series, value) VALUES " +
		strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?),", n), ",")
	_, err := g.tx.Exec(q, g.sampleRows...)
	g.sampleRows = g.sampleRows[:0]
	return err
}
