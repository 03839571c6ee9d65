package pool_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safepool/safepool/internal/testenv"
	"github.com/safepool/safepool/pool"
)

// patternSum returns the length and SHA-256 of n bytes of spewPattern.
func patternSum(n int64) (int64, [32]byte) {
	h := sha256.New()
	spewPattern(h, n)
	var sum [32]byte
	h.Sum(sum[:0])
	return n, sum
}

// readSum returns the length and SHA-256 of what rd reads.
func readSum(t *testing.T, rd io.Reader) (int64, [32]byte) {
	t.Helper()
	h := sha256.New()
	n, err := io.Copy(h, rd)
	if err != nil {
		t.Errorf("reading the output: %v", err)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return n, sum
}

// heapWatch samples the heap in use until stop is called, which returns
// how far it rose above where it was when the watch began.
func heapWatch() (stop func() uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapInuse, ms.HeapInuse
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-done:
				return
			case <-tk.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak - base
	}
}

// TestOneShotOutputSpills: a one-shot job that writes 200 MB to stdout does
// not grow the supervisor's heap by as much: its output goes to a
// temporary file without a name, and comes back whole and in order through
// OutputReader.
func TestOneShotOutputSpills(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	const size = 200 << 20
	cfg := config(pool.OneShot, 1)
	stop := heapWatch()
	got, _ := run(t, cfg, fmt.Sprintf("spew:%d:3000:0", size))
	grew := stop()
	r := got[1]
	defer r.Release()
	if r.State != pool.Done {
		t.Fatalf("task = %s %s %q, want done", r.State, r.Cause(), r.Attempts[len(r.Attempts)-1].Message)
	}
	if r.Output != nil {
		t.Errorf("Output holds %d bytes, want nil: the output went beyond memory", len(r.Output))
	}
	if n, sum := readSum(t, r.OutputReader()); n != size || sum != must(patternSum(size)) {
		t.Errorf("OutputReader gave %d bytes (sha256 %x), want %d bytes of the pattern", n, sum[:8], size)
	}
	if n, sum := readSum(t, r.StderrReader()); n != 3000 || sum != must(patternSum(3000)) || !bytes.Equal(r.Stderr, spewBytes(3000)) {
		t.Errorf("StderrReader gave %d bytes, Stderr %d: want the 3000 bytes of the pattern in both", n, len(r.Stderr))
	}
	if grew > 64<<20 {
		t.Errorf("the heap grew by %d MiB while the job wrote %d MiB, want less than 64", grew>>20, size>>20)
	}
	if names, _ := os.ReadDir(tmp); len(names) > 0 {
		t.Errorf("%s holds %v, want nothing: the spill file has no name", tmp, names[0].Name())
	}
	t.Logf("heap grew by %.1f MiB", float64(grew)/(1<<20))
}

func must(_ int64, sum [32]byte) [32]byte { return sum }

func spewBytes(n int64) []byte {
	var b bytes.Buffer
	spewPattern(&b, n)
	return b.Bytes()
}

// TestOneShotSpillKeepOrder: many jobs on several workers spill at once
// into the pool's one temporary file, each result is read back whole, in
// submission order, while the blocks of the results released before are
// reused; small outputs stay in Output. After Release a reader fails.
func TestOneShotSpillKeepOrder(t *testing.T) {
	cfg := config(pool.OneShot, 4)
	cfg.KeepOrder = true
	cfg.OutputInMemory = 64 << 10
	var sizes [][2]int64
	var inputs []string
	for i := 0; i < 16; i++ {
		out, errs := int64(i)*300_000+int64(i%3)*10, int64(i%4)*40_000
		sizes = append(sizes, [2]int64{out, errs})
		inputs = append(inputs, fmt.Sprintf("spew:%d:%d:%d", out, errs, i%2))
	}
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer p.Close()
		for _, in := range inputs {
			p.Submit(context.Background(), pool.Task{Input: []byte(in)})
		}
	}()
	next := uint64(1)
	var last pool.Result
	for r := range p.Results() {
		if r.ID != next {
			t.Errorf("result %d delivered when %d was due", r.ID, next)
		}
		next = r.ID + 1
		want := sizes[r.ID-1]
		if n, sum := readSum(t, r.OutputReader()); n != want[0] || sum != must(patternSum(want[0])) {
			t.Errorf("task %d stdout: %d bytes (sha256 %x), want %d bytes of the pattern", r.ID, n, sum[:8], want[0])
		}
		if n, sum := readSum(t, r.StderrReader()); n != want[1] || sum != must(patternSum(want[1])) {
			t.Errorf("task %d stderr: %d bytes, want %d bytes of the pattern", r.ID, n, want[1])
		}
		if small := want[0] <= cfg.OutputInMemory; small != (r.Output != nil || want[0] == 0) {
			t.Errorf("task %d: Output holds %d of %d bytes; want it all when it fits %d bytes, nil otherwise", r.ID, len(r.Output), want[0], cfg.OutputInMemory)
		}
		if code := (r.ID - 1) % 2; code == 0 && r.State != pool.Done || code == 1 && r.Cause() != pool.ExitCause(1) {
			t.Errorf("task %d = %s %s", r.ID, r.State, r.Cause())
		}
		if r.ID < uint64(len(inputs)) {
			r.Release()
		}
		last = r
	}
	if _, err := io.ReadAll(last.OutputReader()); err != nil {
		t.Errorf("reading the last output after the pool ended: %v", err)
	}
	last.Release()
	if _, err := io.ReadAll(last.OutputReader()); err == nil {
		t.Errorf("reading an output after Release succeeded, want an error")
	}
	if next != uint64(len(inputs))+1 {
		t.Errorf("got results up to %d, want %d", next-1, len(inputs))
	}
}

// TestOneShotTMPDIRFull: when $TMPDIR is full, a job whose stdout goes
// beyond memory fails with CauseOutputLost and a message that says so,
// and the supervisor goes on with the others.
func TestOneShotTMPDIRFull(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "mounting a small tmpfs needs root")
	}
	tmp := t.TempDir()
	if err := unix.Mount("tmpfs", tmp, "tmpfs", 0, "size=1m"); err != nil {
		testenv.SkipOrFail(t, "mounting a tmpfs: "+err.Error())
	}
	t.Cleanup(func() { unix.Unmount(tmp, unix.MNT_DETACH) })
	t.Setenv("TMPDIR", tmp)
	// One job at a time: the third job's 500 kB fit only once the first
	// job's spool file, which filled the tmpfs, is gone; beside it, the
	// third would find the tmpfs full too.
	cfg := config(pool.OneShot, 1)
	cfg.OutputInMemory = 64 << 10
	got, p := run(t, cfg, "spew:8000000:0:0", "small", "spew:500000:0:0")
	r := got[1]
	if r.State != pool.Failed || r.Cause() != pool.CauseOutputLost {
		t.Fatalf("task 1 = %s %s, want failed %s", r.State, r.Cause(), pool.CauseOutputLost)
	}
	msg := r.Attempts[0].Message
	if !strings.Contains(msg, "stdout") || !strings.Contains(msg, "no space left on device") || !strings.Contains(msg, tmp) {
		t.Errorf("message = %q, want it to say that stdout could not be kept in %s, which is full", msg, tmp)
	}
	if r.Output != nil || len(r.Stderr) > 0 {
		t.Errorf("a lost output gave Output %d bytes, Stderr %q; want none", len(r.Output), r.Stderr)
	}
	for id := uint64(2); id <= 3; id++ {
		if r := got[id]; r.State != pool.Done {
			t.Errorf("task %d = %s %s %q, want done", id, r.State, r.Cause(), r.Attempts[0].Message)
		}
	}
	if r := got[3]; must(readSum(t, r.OutputReader())) != must(patternSum(500000)) {
		t.Errorf("task 3 did not give its 500000 bytes of the pattern")
	}
	if err := p.Err(); err != nil {
		t.Errorf("Err() = %v", err)
	}
	t.Logf("message: %s", msg)
}

// TestOneShotOutputReaderInMemory: an output that fits in memory is in
// Output and reads the same through OutputReader, before and after
// Release, which may be called twice.
func TestOneShotOutputReaderInMemory(t *testing.T) {
	got, _ := run(t, config(pool.OneShot, 1), "hello")
	r := got[1]
	b, err := io.ReadAll(r.OutputReader())
	if err != nil || string(b) != "ok:hello\n" || string(r.Output) != "ok:hello\n" {
		t.Errorf("OutputReader gave %q, %v; Output %q; want both ok:hello", b, err, r.Output)
	}
	r.Release()
	r.Release()
	if b, err := io.ReadAll(r.OutputReader()); err != nil || string(b) != "ok:hello\n" {
		t.Errorf("after Release, an output in memory reads %q, %v; want it unchanged", b, err)
	}
}
