// Command pooldrive measures safepool's engine through its Go API: it runs N
// trivial tasks on a pool and prints the throughput as one line of JSON.
//
//	pooldrive -protocol line -n 100000 -j 2 -- bench/.bin/benchworker line
//
// Task inputs are the numbers 0 to N-1. Every task must end done.
//
// With -cpuprofile it writes a pprof CPU profile of the supervisor.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/safepool/safepool/pool"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("pooldrive: ")
	protocol := flag.String("protocol", "line", "oneshot, line or framed")
	n := flag.Int("n", 10000, "number of tasks")
	workers := flag.Int("j", 0, "workers (0: the number of CPUs)")
	pipeline := flag.Int("pipeline", 0, "framed tasks in flight per worker (0: the pool's default)")
	retries := flag.Int("retries", 0, "extra attempts after a worker death")
	backoff := flag.Duration("backoff", 0, "delay before a retry (0: the pool's default, 50ms)")
	serial := flag.Bool("serial", false, "submit each task only when the previous one has ended")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile to `FILE`")
	flag.Parse()
	if flag.NArg() == 0 {
		log.Fatal("usage: pooldrive [flags] -- WORKER ARGS...")
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	if err := run(pool.Config{
		Command:  flag.Args(),
		Protocol: pool.Protocol(*protocol),
		Workers:  *workers,
		Pipeline: *pipeline,
		Retries:  *retries,
		Backoff:  *backoff,
		Stderr:   os.Stderr,
	}, *n, *serial); err != nil {
		pprof.StopCPUProfile()
		log.Fatal(err)
	}
}

// run submits n tasks and prints how fast they completed. With serial, a
// task is submitted only when the previous one has ended, so the pool is
// otherwise idle whenever a task runs.
func run(cfg pool.Config, n int, serial bool) error {
	start := time.Now()
	p, err := pool.New(cfg)
	if err != nil {
		return fmt.Errorf("new pool: %w", err)
	}
	ctx := context.Background()
	done, failed := 0, 0
	count := func(r pool.Result) {
		if r.State == pool.Done {
			done++
		} else {
			failed++
		}
	}
	if serial {
		for i := range n {
			if _, err := p.Submit(ctx, pool.Task{Input: strconv.AppendInt(nil, int64(i), 10)}); err != nil {
				break
			}
			if r, ok := <-p.Results(); ok {
				count(r)
			}
		}
		p.Close()
	} else {
		go func() {
			defer p.Close()
			for i := range n {
				if _, err := p.Submit(ctx, pool.Task{Input: strconv.AppendInt(nil, int64(i), 10)}); err != nil {
					return
				}
			}
		}()
	}
	for r := range p.Results() {
		count(r)
	}
	elapsed := time.Since(start)
	if err := p.Err(); err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d tasks failed", failed, n)
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"protocol": cfg.Protocol, "tasks": done, "seconds": elapsed.Seconds(),
		"tasks_per_s": float64(done) / elapsed.Seconds(),
	})
}
