package pool_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// TestOneShotStdinDone: a task's Stdin is copied once, as its first
// attempt starts, after which StdinDone tells the caller it may use the
// slice again; a retry still reads the whole of what was given, from its
// start, though the caller has since overwritten the slice. A task that
// never starts gives its slice back when it ends.
func TestOneShotStdinDone(t *testing.T) {
	dir := t.TempDir()
	cfg := config(pool.OneShot, 1)
	cfg.Retries = 1
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Abort(nil)

	data := bytes.Repeat([]byte("a line of the block\n"), 20_000) // 400 kB
	want := fmt.Sprintf("%x", md5.Sum(data))
	var done atomic.Int32
	// The first attempt reads all of its stdin, then dies; the second
	// prints the checksum of what it read.
	marker := filepath.Join(dir, "died")
	script := `sum=$(md5sum | cut -d" " -f1); [ -e "$1" ] || { touch "$1"; kill -9 $$; }; echo "$sum"`
	first := pool.Task{Args: []string{"/bin/sh", "-c", script, "sh", marker}, Stdin: data, StdinDone: func() {
		done.Add(1)
		clear(data) // the caller's next block
	}}
	if _, err := p.Submit(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	r := <-p.Results()
	if r.State != pool.Done || len(r.Attempts) != 2 || string(bytes.TrimSpace(r.Output)) != want {
		t.Fatalf("task = %s after %d attempts, output %q; want done on attempt 2 with the checksum %s of the given stdin", r.State, len(r.Attempts), r.Output, want)
	}
	if n := done.Load(); n != 1 {
		t.Errorf("StdinDone called %d times, want once", n)
	}

	// A task behind one that holds the only worker slot, cancelled before
	// it starts.
	block := pool.Task{Args: []string{"/bin/sh", "-c", "sleep 30"}, Stdin: []byte("x\n")}
	var queuedDone atomic.Int32
	queued := pool.Task{Args: []string{"/bin/cat"}, Stdin: []byte("y\n"), StdinDone: func() { queuedDone.Add(1) }}
	for _, task := range []pool.Task{block, queued} {
		if _, err := p.Submit(context.Background(), task); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); p.Stats().Running == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the first task did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := queuedDone.Load(); n != 0 {
		t.Fatalf("StdinDone of a queued task called %d times before it ended", n)
	}
	p.Abort(errors.New("test"))
	for r := range p.Results() {
		if r.State != pool.Cancelled {
			t.Errorf("task %d = %s, want cancelled", r.ID, r.State)
		}
	}
	if n := queuedDone.Load(); n != 1 {
		t.Errorf("StdinDone of a task cancelled before it started called %d times, want once", n)
	}
}
