package metrics_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/metrics"
	"github.com/safepool/safepool/internal/testenv"
	"github.com/safepool/safepool/pool"
)

// The test binary is also the line workers: TestMain turns it into one
// when workerEnv is set.
const workerEnv = "SAFEPOOL_METRICS_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) != "" {
		lineWorker()
		return
	}
	goleak.VerifyTestMain(m)
}

// lineWorker answers each line of stdin: "work:MB:MS" after holding MB MiB
// for MS milliseconds, "hog" never, as it allocates until it is killed,
// and "die:PATH" at once, but the first time (PATH does not exist yet), when
// it makes PATH and exits 1 instead.
func lineWorker() {
	in := bufio.NewReader(os.Stdin)
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(strings.TrimSpace(line), ":")
		switch verb {
		case "work":
			mb, ms, _ := strings.Cut(arg, ":")
			n, _ := strconv.Atoi(mb)
			d, _ := strconv.Atoi(ms)
			b := touch(n << 20)
			time.Sleep(time.Duration(d) * time.Millisecond)
			syscall.Munmap(b)
		case "hog":
			for {
				touch(16 << 20)
				time.Sleep(5 * time.Millisecond)
			}
		case "die":
			if _, err := os.Stat(arg); err != nil {
				os.WriteFile(arg, nil, 0o644)
				os.Exit(1)
			}
		}
		fmt.Println("ok")
	}
}

// touch maps n bytes of anonymous memory and touches every page. The
// memory is outside the Go heap, so that a worker built with -race (this
// test binary) holds what it is asked to, without the race detector's
// shadow of it.
func touch(n int) []byte {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		panic(err)
	}
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	return b
}

func requireCgroups(t *testing.T) {
	t.Helper()
	m, err := memory.NewManager()
	if err != nil {
		testenv.SkipOrFail(t, "memory cgroups: "+err.Error())
		return
	}
	mode, reason := m.Mode(), m.Reason()
	m.Close()
	if !mode.PerWorker() {
		testenv.SkipOrFail(t, reason)
	}
}

// scrape reads the metrics at url as name{labels} -> value.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	return parse(t, resp.Body)
}

// parse reads Prometheus's text format, enough for these tests.
func parse(t *testing.T, r io.Reader) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}

// TestScrapeDuringRun serves the metrics of a real run and scrapes them
// over HTTP while it goes on and at its end: four workers, a 120 MiB
// budget and tasks that need 40 MiB and more (50 MiB expected at first),
// so that the governor allows two at once and the others wait for
// memory; ten tasks end, and one allocates until the kernel OOM-kills it
// and is poison.
func TestScrapeDuringRun(t *testing.T) {
	requireCgroups(t)
	c := metrics.New()
	srv, err := metrics.Listen("127.0.0.1:0", c.Handler())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	defer c.Close()

	before := scrape(t, srv.URL())
	if _, ok := before[`safepool_tasks{state="done"}`]; ok {
		t.Errorf("tasks are served before the pool is attached")
	}

	cfg := pool.Config{
		Command:    []string{os.Args[0], "-test.run=^$"},
		Env:        append(os.Environ(), workerEnv+"=1"),
		Protocol:   pool.Line,
		Workers:    4,
		MemBudget:  120 << 20,
		MemPerTask: 50 << 20,
		Observer:   c.Observe,
	}
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Attach(p)
	inputs := []string{"hog"}
	for i := 0; i < 10; i++ {
		inputs = append(inputs, "work:40:300")
	}
	go func() {
		defer p.Close()
		for _, in := range inputs {
			if _, err := p.Submit(context.Background(), pool.Task{Input: []byte(in)}); err != nil {
				return
			}
		}
	}()

	// Scrape while the run goes on.
	results := p.Results()
	var maxRunning, maxAllowed, sawBlocked, scrapes float64
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for results != nil {
		select {
		case _, ok := <-results:
			if !ok {
				results = nil
			}
		case <-tick.C:
			m := scrape(t, srv.URL())
			scrapes++
			maxRunning = max(maxRunning, m[`safepool_tasks{state="running"}`])
			maxAllowed = max(maxAllowed, m["safepool_memory_allowed_attempts"])
			sawBlocked = max(sawBlocked, m["safepool_admission_blocked"])
		}
	}
	if err := p.Err(); err != nil {
		t.Fatalf("pool: %v", err)
	}
	t.Logf("%v scrapes during the run: at most %v running, %v allowed", scrapes, maxRunning, maxAllowed)
	if maxAllowed > 2 || maxAllowed < 1 || maxRunning > 2 || maxRunning < 1 {
		t.Errorf("during the run: at most %v allowed and %v running, want 1 or 2 of each", maxAllowed, maxRunning)
	}
	if sawBlocked != 1 {
		t.Errorf("safepool_admission_blocked was never 1 while 11 tasks waited for 2 places")
	}

	// At the end: every count is the pool's.
	m := scrape(t, srv.URL())
	st := p.Stats()
	want := map[string]float64{
		`safepool_tasks{state="done"}`:                             10,
		`safepool_tasks{state="poison"}`:                           1,
		`safepool_tasks{state="failed"}`:                           0,
		`safepool_tasks{state="running"}`:                          0,
		`safepool_tasks{state="queued"}`:                           0,
		`safepool_tasks_submitted_total`:                           11,
		`safepool_attempts_total{cause="success"}`:                 10,
		`safepool_attempts_total{cause="oom"}`:                     float64(st.Attempts - 10),
		`safepool_task_failures_total{cause="oom",state="poison"}`: 1,
		`safepool_workers`:                                         4,
		`safepool_workers_started_total`:                           float64(st.WorkersStarted),
		`safepool_worker_deaths_total`:                             float64(st.WorkerDeaths),
		`safepool_preemptions_total`:                               float64(st.Preempted),
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("%s = %v (served: %v), want %v", k, got, ok, v)
		}
	}
	if st.Attempts < 11 {
		t.Errorf("%d attempts, want the hog's besides the ten", st.Attempts)
	}
	if b := m["safepool_memory_budget_bytes"]; b <= 0 || b > 120<<20 {
		t.Errorf("safepool_memory_budget_bytes = %v, want at most the 120 MiB budget", b)
	}
	if _, ok := m["safepool_memory_in_use_bytes"]; !ok {
		t.Errorf("safepool_memory_in_use_bytes is not served")
	}
	t.Logf("admission: %v waits, %v s", m["safepool_admission_waits_total"], m["safepool_admission_wait_seconds_total"])
	if m["safepool_admission_waits_total"] < 1 || m["safepool_admission_wait_seconds_total"] < 0.3 {
		t.Errorf("admission: %v waits, %v s; want at least one wait of a task's length (0.3 s)",
			m["safepool_admission_waits_total"], m["safepool_admission_wait_seconds_total"])
	}
}

// TestServerErrors: a port in use is refused at Listen, and other paths
// than /metrics are not found.
func TestServerErrors(t *testing.T) {
	c := metrics.New()
	defer c.Close()
	srv, err := metrics.Listen("127.0.0.1:0", c.Handler())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if s, err := metrics.Listen(srv.Addr().String(), c.Handler()); err == nil {
		s.Close()
		t.Errorf("Listen(%s) twice succeeded", srv.Addr())
	}
	resp, err := http.Get("http://" + srv.Addr().String() + "/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nothing = %s, want 404", resp.Status)
	}
}

// TestURLOnEveryInterface: a server on every interface (":0") names
// itself by localhost, an address a scraper on this machine can open,
// and is scraped there; it used to say "http://[::]:PORT/metrics".
func TestURLOnEveryInterface(t *testing.T) {
	c := metrics.New()
	defer c.Close()
	srv, err := metrics.Listen(":0", c.Handler())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	u := srv.URL()
	if !strings.HasPrefix(u, "http://localhost:") || !strings.HasSuffix(u, "/metrics") {
		t.Fatalf("URL() = %q, want http://localhost:PORT/metrics", u)
	}
	scrape(t, u)
}

// TestBatchAttemptsCounted: the items of a line batch are tasks of their
// own, each with its attempt, as the summary and --json count them
// (Stats.Attempts). A batch whose lines are all answered ends in one
// Result, with no attempt event of its own per line: attempts_total
// counted it as nothing, so that a map of 400 lines in blocks served a
// handful of successful attempts for 400 done tasks.
func TestBatchAttemptsCounted(t *testing.T) {
	c := metrics.New()
	srv, err := metrics.Listen("127.0.0.1:0", c.Handler())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	defer c.Close()
	p, err := pool.New(pool.Config{
		Command:  []string{os.Args[0], "-test.run=^$"},
		Env:      append(os.Environ(), workerEnv+"=1"),
		Protocol: pool.Line,
		Workers:  2,
		Observer: c.Observe,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.Attach(p)
	const blocks, lines = 20, 20
	go func() {
		defer p.Close()
		for b := 0; b < blocks; b++ {
			in := strings.Repeat("work:1:0\n", lines)
			if _, err := p.Submit(context.Background(), pool.Task{Input: []byte(in), Items: lines}); err != nil {
				return
			}
		}
		// And one plain task, counted once.
		p.Submit(context.Background(), pool.Task{Input: []byte("work:1:0")})
	}()
	for range p.Results() {
	}
	if err := p.Err(); err != nil {
		t.Fatalf("pool: %v", err)
	}
	m := scrape(t, srv.URL())
	st := p.Stats()
	const tasks = blocks*lines + 1
	if st.Done != tasks || st.Attempts != tasks {
		t.Fatalf("pool: %d done in %d attempts, want %d of each", st.Done, st.Attempts, tasks)
	}
	if got := m[`safepool_attempts_total{cause="success"}`]; got != tasks {
		t.Errorf(`safepool_attempts_total{cause="success"} = %v, want %d: one per task done, as --json's attempts`, got, tasks)
	}
	if got := m[`safepool_tasks{state="done"}`]; got != tasks {
		t.Errorf(`safepool_tasks{state="done"} = %v, want %d`, got, tasks)
	}
}

// TestTasksSumToSubmitted scrapes the metrics over and over while many
// short tasks run, and checks that every scrape has each submitted task in
// exactly one state: sum(safepool_tasks) == safepool_tasks_submitted_total.
// Besides scrapes at any time, the pool's Observer has one taken as each
// attempt ends, and waits for it: the moment a task whose attempt ended
// used to have left running but not reached its next state (queued again,
// or terminal). A one-shot task whose job ended also left running as its
// runner took the next task, until the loop settled it. map's blocks of
// lines (Task.Items) count a line as a task in every state: a block's
// lines that its dead worker answered are done, the line it ran is
// charged and the rest requeued, each part in its own step, with a scrape
// after each (EventTaskEnded); queued and running used to count blocks.
func TestTasksSumToSubmitted(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   pool.Config
		in    func(i int) string
		n     int // tasks: lines, with block
		block int // lines in a task (Task.Items); 0: a task is a line
	}{
		{"line", pool.Config{Command: []string{os.Args[0], "-test.run=^$"}, Env: append(os.Environ(), workerEnv+"=1"), Protocol: pool.Line},
			func(int) string { return "work:1:0" }, 1000, 0},
		// Blocks of 10 lines, as map sends them; a worker dies once in
		// the middle of two blocks, which are answered in part.
		{"line-blocks", pool.Config{Command: []string{os.Args[0], "-test.run=^$"}, Env: append(os.Environ(), workerEnv+"=1"), Protocol: pool.Line,
			Retries: 1},
			func(i int) string {
				if i == 305 || i == 1234 {
					return "die:" + filepath.Join(t.TempDir(), "died")
				}
				return "work:1:0"
			}, 2000, 10},
		// Every third task fails once and is retried, so that tasks go
		// back to the queue as well as to a terminal state.
		{"one-shot", pool.Config{Command: []string{"sh", "-c", `[ -e "$0" ] || { : > "$0"; exit 1; }`, "{}"}, Retries: 1},
			func(i int) string {
				if i%3 == 0 {
					return filepath.Join(t.TempDir(), "ran")
				}
				return "/"
			}, 600, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := metrics.New()
			defer c.Close()
			stop := make(chan struct{})
			asks := make(chan chan struct{})
			cfg := tc.cfg
			cfg.Workers, cfg.Stderr = 2, io.Discard
			cfg.Observer = func(e pool.Event) {
				c.Observe(e)
				if e.Kind != pool.EventAttemptEnded && e.Kind != pool.EventTaskEnded {
					return
				}
				// The scraper scrapes while the pool's loop waits here.
				done := make(chan struct{})
				select {
				case asks <- done:
					<-done
				case <-stop:
				}
			}
			p, err := pool.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			c.Attach(p)
			go func() {
				defer p.Close()
				if tc.block == 0 {
					for i := 0; i < tc.n; i++ {
						if _, err := p.Submit(context.Background(), pool.Task{Input: []byte(tc.in(i))}); err != nil {
							return
						}
					}
					return
				}
				for i := 0; i < tc.n; i += tc.block {
					var b strings.Builder
					for k := i; k < i+tc.block; k++ {
						b.WriteString(tc.in(k) + "\n")
					}
					if _, err := p.Submit(context.Background(), pool.Task{Input: []byte(b.String()), Items: tc.block}); err != nil {
						return
					}
				}
			}()
			type report struct{ scrapes, asked, wrong int }
			reports := make(chan report)
			go func() {
				var r report
				h := c.Handler()
				for {
					var done chan struct{}
					select {
					case <-stop:
						reports <- r
						return
					case done = <-asks:
						r.asked++
					default:
					}
					w := httptest.NewRecorder()
					h.ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
					if done != nil {
						close(done)
					}
					m := parse(t, w.Body)
					sum := 0.0
					for _, s := range []string{"queued", "running", "settling", "done", "failed", "cancelled", "poison"} {
						sum += m[`safepool_tasks{state="`+s+`"}`]
					}
					if sub := m["safepool_tasks_submitted_total"]; sum != sub {
						if r.wrong == 0 {
							t.Errorf("a scrape has %v tasks in a state and %v submitted:\n%s", sum, sub, tasksOf(m))
						}
						r.wrong++
					}
					r.scrapes++
				}
			}()
			parts := map[uint64]int{} // Results by block (the id of its first line)
			for r := range p.Results() {
				parts[r.ID]++
			}
			close(stop)
			r := <-reports
			t.Logf("%d scrapes (%d as an attempt or task ended), %d with the tasks' states not summing to those submitted", r.scrapes, r.asked, r.wrong)
			st := p.Stats()
			if st.Done != tc.n || st.Submitted != tc.n {
				t.Errorf("%d done of %d submitted, want %d", st.Done, st.Submitted, tc.n)
			}
			if tc.block > 0 {
				// The blocks of lines 305 and 1234 (ids from 1): lines
				// done, the line charged, then done on its retry, and the
				// rest requeued, then done.
				for _, id := range []uint64{301, 1231} {
					if parts[id] < 3 {
						t.Errorf("the block of line %d ended in %d Results, want 3 or more: answered in part when its worker died", id, parts[id])
					}
				}
				if st.WorkerDeaths != 2 {
					t.Errorf("%d worker deaths, want 2", st.WorkerDeaths)
				}
			}
		})
	}
}

// tasksOf formats the safepool_tasks metrics of m.
func tasksOf(m map[string]float64) string {
	var b strings.Builder
	for k, v := range m {
		if strings.HasPrefix(k, "safepool_tasks") {
			fmt.Fprintf(&b, "%s %v\n", k, v)
		}
	}
	return b.String()
}

// TestUnwrittenNotDone: the tasks whose output the CLI could not write out
// (AddUnwritten) are served as state "unwritten", not "done", and the
// states still add up to the tasks submitted, as in --json.
func TestUnwrittenNotDone(t *testing.T) {
	c := metrics.New()
	srv, err := metrics.Listen("127.0.0.1:0", c.Handler())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	defer c.Close()
	p, err := pool.New(pool.Config{
		Command:  []string{os.Args[0], "-test.run=^$"},
		Env:      append(os.Environ(), workerEnv+"=1"),
		Protocol: pool.Line,
		Workers:  2,
		Observer: c.Observe,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.Attach(p)
	const tasks, unwritten = 6, 2
	go func() {
		defer p.Close()
		for range tasks {
			if _, err := p.Submit(context.Background(), pool.Task{Input: []byte("work:1:0")}); err != nil {
				return
			}
		}
	}()
	for range p.Results() {
	}
	if err := p.Err(); err != nil {
		t.Fatalf("pool: %v", err)
	}
	c.AddUnwritten(unwritten)
	m := scrape(t, srv.URL())
	for state, want := range map[string]float64{"done": tasks - unwritten, "unwritten": unwritten} {
		if got := m[`safepool_tasks{state="`+state+`"}`]; got != want {
			t.Errorf(`safepool_tasks{state=%q} = %v, want %v`, state, got, want)
		}
	}
	sum := 0.0
	for k, v := range m {
		if strings.HasPrefix(k, "safepool_tasks{") {
			sum += v
		}
	}
	if sub := m["safepool_tasks_submitted_total"]; sum != sub {
		t.Errorf("the states of safepool_tasks add up to %v, want safepool_tasks_submitted_total, %v", sum, sub)
	}
}
