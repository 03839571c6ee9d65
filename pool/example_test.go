package pool_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"time"

	"github.com/safepool/safepool/pool"
)

// A pool of four persistent line workers, each in a 1 GiB memory cgroup,
// that retries a task twice after a worker death. The inputs are submitted
// from a goroutine, because Submit blocks while too many results are
// pending; the results are read as they come.
func Example() {
	ctx := context.Background()
	inputs := []string{"a.csv", "b.csv", "c.csv"}

	p, err := pool.New(pool.Config{
		Command:  []string{"python3", "worker.py"},
		Protocol: pool.Line,
		Workers:  4,
		Retries:  2,
		MemLimit: 1 << 30,
		Timeout:  time.Minute,
	})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		defer p.Close()
		for _, in := range inputs {
			if _, err := p.Submit(ctx, pool.Task{Input: []byte(in)}); err != nil {
				return // the pool was aborted
			}
		}
	}()
	for r := range p.Results() {
		if r.State != pool.Done {
			log.Printf("task %d (%s): %s after %d attempts", r.ID, r.Input, r.Cause(), len(r.Attempts))
			continue
		}
		fmt.Printf("%s\n", r.Output)
	}
	for _, r := range p.Failed() {
		for _, a := range r.Attempts {
			log.Printf("task %d attempt %d on worker %d: %s, peak %d bytes", r.ID, a.Number, a.WorkerPID, a.Cause, a.PeakRSS)
		}
	}
}

// One-shot jobs whose output may be larger than memory: the pool keeps
// what outgrows Config.OutputInMemory in a temporary file, and
// OutputReader reads it back whatever its size. Release gives the room
// back once the output is consumed.
func ExampleResult_OutputReader() {
	p, err := pool.New(pool.Config{Command: []string{"seq", "{}"}, Workers: 2, KeepOrder: true})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		defer p.Close()
		for _, n := range []string{"10", "1000000"} {
			if _, err := p.Submit(context.Background(), pool.Task{Input: []byte(n)}); err != nil {
				return
			}
		}
	}()
	for r := range p.Results() {
		n, err := io.Copy(io.Discard, r.OutputReader())
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("task %d: %d bytes, %d of them in Output\n", r.ID, n, len(r.Output))
		r.Release()
	}
	// Output:
	// task 1: 21 bytes, 21 of them in Output
	// task 2: 6888896 bytes, 0 of them in Output
}
