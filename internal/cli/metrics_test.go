package cli

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// lineWatcher is a writer that sends each line that matches re on found.
type lineWatcher struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	re    *regexp.Regexp
	found chan string
}

func (w *lineWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for _, m := range w.re.FindAllStringSubmatch(string(p), -1) {
		select {
		case w.found <- m[1]:
		default:
		}
	}
	return len(p), nil
}

func (w *lineWatcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// scrapeMetrics reads the metrics at url as name{labels} -> value.
func scrapeMetrics(client *http.Client, url string) (map[string]float64, error) {
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// TestMetricsFlag runs safepool run --metrics on a free port and scrapes
// it over HTTP while the jobs run: two at a time, six jobs of 0.4 s, one of
// which exits 3. When the run is over, nothing listens any more.
func TestMetricsFlag(t *testing.T) {
	stderr := &lineWatcher{re: regexp.MustCompile(`metrics at (\S+)`), found: make(chan string, 1)}
	done := make(chan int)
	go func() {
		done <- Run(context.Background(), []string{"run", "-j", "2", "--no-progress", "--metrics", "127.0.0.1:0",
			"--", "sh", "-c", "sleep 0.4; exit $1", "sh", "{}", ":::", "0", "0", "3", "0", "0", "0"},
			strings.NewReader(""), io.Discard, stderr)
	}()
	var url string
	select {
	case url = <-stderr.found:
	case code := <-done:
		t.Fatalf("run ended (%d) before saying where the metrics are: %s", code, stderr.String())
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	var last map[string]float64
	var maxRunning float64
	code := -1
	for code < 0 {
		select {
		case code = <-done:
		case <-time.After(50 * time.Millisecond):
			m, err := scrapeMetrics(client, url)
			if err != nil {
				continue // the run may have just ended
			}
			last = m
			maxRunning = max(maxRunning, m[`safepool_tasks{state="running"}`])
		}
	}
	if code != exitFailed {
		t.Errorf("run = %d, want %d (one job failed); stderr: %s", code, exitFailed, stderr.String())
	}
	if maxRunning != 2 {
		t.Errorf("at most %v jobs running at a scrape, want 2", maxRunning)
	}
	// The last scrape saw at least the failed job and most of the rest.
	if last[`safepool_attempts_total{cause="exit:3"}`] != 1 || last[`safepool_task_failures_total{cause="exit:3",state="failed"}`] != 1 ||
		last[`safepool_tasks{state="done"}`] < 3 || last["safepool_tasks_submitted_total"] != 6 || last["safepool_workers"] != 2 {
		t.Errorf("last scrape: %v", last)
	}
	if _, err := scrapeMetrics(client, url); err == nil {
		t.Errorf("metrics still served at %s after the run", url)
	}
}

// TestMetricsAddressInUse: an address that cannot be bound is a usage
// error, and nothing runs.
func TestMetricsAddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var stdout, stderr bytes.Buffer
	code := Run(context.Background(), []string{"run", "--metrics", ln.Addr().String(), "echo", ":::", "ran"},
		strings.NewReader(""), &stdout, &stderr)
	if code != exitUsage || stdout.Len() != 0 || !strings.Contains(stderr.String(), "cannot serve metrics") {
		t.Errorf("run --metrics %s (in use) = %d, stdout %q, stderr %q; want %d, nothing run", ln.Addr(), code, stdout.String(), stderr.String(), exitUsage)
	}
}

// TestMetricsSkipped resumes a run with --metrics: the inputs that the
// earlier run finished are counted as safepool_tasks_skipped_total, by
// the state it left them in, as the summary and --json count them; they
// used to be in no metric.
func TestMetricsSkipped(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "jobs.db")
	command := []string{"--", "sh", "-c", "case $1 in x) exit 1;; slow) sleep 1.5;; esac", "sh", "{}", ":::", "a", "b", "x"}
	args := append([]string{"run", "-j", "2", "--no-progress", "--journal", journal}, command...)
	if code := Run(context.Background(), args, strings.NewReader(""), io.Discard, io.Discard); code != exitFailed {
		t.Fatalf("the first run = %d, want %d", code, exitFailed)
	}
	stderr := &lineWatcher{re: regexp.MustCompile(`metrics at (\S+)`), found: make(chan string, 1)}
	done := make(chan int)
	go func() {
		args := append([]string{"run", "-j", "2", "--no-progress", "--journal", journal, "--resume", "--metrics", "127.0.0.1:0"}, command...)
		done <- Run(context.Background(), append(args, "slow"), strings.NewReader(""), io.Discard, stderr)
	}()
	var url string
	select {
	case url = <-stderr.found:
	case code := <-done:
		t.Fatalf("run ended (%d) before saying where the metrics are: %s", code, stderr.String())
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	var last map[string]float64
	code := -1
	for code < 0 {
		select {
		case code = <-done:
		case <-time.After(50 * time.Millisecond):
			if m, err := scrapeMetrics(client, url); err == nil {
				last = m
			}
		}
	}
	if code != exitFailed {
		t.Errorf("resumed run = %d, want %d (a skipped task had failed); stderr: %s", code, exitFailed, stderr.String())
	}
	for name, want := range map[string]float64{
		`safepool_tasks_skipped_total{state="done"}`:   2,
		`safepool_tasks_skipped_total{state="failed"}`: 1,
		`safepool_tasks_skipped_total{state="poison"}`: 0,
		"safepool_tasks_submitted_total":               1,
	} {
		if got, ok := last[name]; !ok || got != want {
			t.Errorf("last scrape: %s = %v (served: %v), want %v", name, got, ok, want)
		}
	}
}
