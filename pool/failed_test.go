package pool_test

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/safepool/safepool/pool"
)

// TestFailedIsBounded runs more failing tasks than Failed keeps: Failed
// holds the last ones, in the order they ended, while the observer and
// Stats see every failure.
func TestFailedIsBounded(t *testing.T) {
	defer pool.SetMaxFailed(3)()
	var mu sync.Mutex
	var seen []uint64
	p, err := pool.New(pool.Config{
		Command: []string{"sh", "-c", "exit 1", "{}"}, Workers: 1, OnWorkerDeath: pool.Skip,
		Observer: func(ev pool.Event) {
			if ev.Kind == pool.EventTaskEnded && ev.Result.State == pool.Failed {
				mu.Lock()
				seen = append(seen, ev.TaskID)
				mu.Unlock()
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer p.Close()
		for i := 1; i <= 5; i++ {
			if _, err := p.Submit(context.Background(), pool.Task{Input: []byte(strconv.Itoa(i))}); err != nil {
				return
			}
		}
	}()
	for range p.Results() {
	}
	var got []uint64
	for _, r := range p.Failed() {
		got = append(got, r.ID)
	}
	if want := []uint64{3, 4, 5}; !equalIDs(got, want) {
		t.Errorf("Failed() ids = %v, want %v", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 5 {
		t.Errorf("observer saw %d failures (%v), want 5", len(seen), seen)
	}
	if n := p.Stats().Failed; n != 5 {
		t.Errorf("Stats().Failed = %d, want 5", n)
	}
}

func equalIDs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
