package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// orderedBytes is a writer that checks that it receives want[0].n bytes of
// want[0].c, then want[1].n of want[1].c, and so on.
type orderedBytes struct {
	want []struct {
		c byte
		n int64
	}
	at  int64 // bytes received of want[0]
	bad string
}

func (w *orderedBytes) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 && w.bad == "" {
		if len(w.want) == 0 {
			w.bad = fmt.Sprintf("%d bytes more than expected", len(p))
			break
		}
		k := min(int64(len(p)), w.want[0].n-w.at)
		if c := bytes.Count(p[:k], []byte{w.want[0].c}); int64(c) != k {
			w.bad = fmt.Sprintf("at byte %d of the %q part, other bytes", w.at, w.want[0].c)
		}
		w.at += k
		p = p[k:]
		if w.at == w.want[0].n {
			w.want, w.at = w.want[1:], 0
		}
	}
	return n, nil
}

// TestRunLargeOutput: jobs that write 100 MB each reach stdout whole and
// in order with -k, while the heap of safepool run stays small: what does
// not fit in memory waits in a temporary file.
func TestRunLargeOutput(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	const size = 100_000_000
	out := &orderedBytes{}
	for _, c := range []byte("abc") {
		out.want = append(out.want, struct {
			c byte
			n int64
		}{c, size})
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapInuse, ms.HeapInuse
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	var stderr strings.Builder
	// Job b is the quickest: with -k its output waits for a's.
	code := Run(context.Background(), []string{"run", "-k", "-j", "3", "--", "sh", "-c",
		fmt.Sprintf(`[ {} = b ] || sleep 0.3; head -c %d /dev/zero | tr '\0' {}; echo {} >&2`, size), ":::", "a", "b", "c"},
		strings.NewReader(""), out, &stderr)
	close(done)
	wg.Wait()
	if code != 0 {
		t.Fatalf("exit status %d; stderr:\n%s", code, stderr.String())
	}
	if out.bad != "" || len(out.want) > 0 {
		t.Errorf("stdout: %s; %d parts missing", out.bad, len(out.want))
	}
	if got := stderr.String(); !strings.HasPrefix(got, "a\nb\nc\n") {
		t.Errorf("stderr = %q, want a, b and c in order", got)
	}
	if grew := peak - base; grew > 64<<20 {
		t.Errorf("the heap grew by %d MiB for %d MB of output, want less than 64 MiB", grew>>20, 3*size/1_000_000)
	} else {
		t.Logf("the heap grew by %.1f MiB", float64(grew)/(1<<20))
	}
	if names, _ := os.ReadDir(tmp); len(names) > 0 {
		t.Errorf("%s holds %s, want nothing", tmp, names[0].Name())
	}
}
