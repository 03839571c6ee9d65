package pool_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// TestNegativeConfig: New refuses a negative count, size or duration and
// names the field. Workers, Grace, Backoff and MaxBackoff used to be taken
// as if they were zero (Workers: -1 ran one worker per CPU) or as no wait
// at all, while Retries or Timeout of the same sign were refused.
func TestNegativeConfig(t *testing.T) {
	tests := []struct {
		field string
		cfg   pool.Config
	}{
		{"Workers", pool.Config{Workers: -1}},
		{"Grace", pool.Config{Grace: -time.Second}},
		{"Backoff", pool.Config{Backoff: -time.Millisecond, Retries: 1}},
		{"MaxBackoff", pool.Config{MaxBackoff: -time.Second, Retries: 1}},
		{"Retries", pool.Config{Retries: -1}},
		{"Timeout", pool.Config{Timeout: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Command = []string{"true"}
			p, err := pool.New(cfg)
			if err == nil {
				p.Close()
				for range p.Results() {
				}
				t.Fatalf("New(%s < 0) = nil error, want one", tt.field)
			}
			if want := "Config." + tt.field + " is negative"; !strings.Contains(err.Error(), want) {
				t.Errorf("New(%s < 0) = %v, want an error saying %q", tt.field, err, want)
			}
		})
	}
}

// TestMaxPipeline: New refuses a Pipeline above MaxPipeline with an error
// that names it. A Pipeline of 1<<40 used to pass, and the program then
// died ("fatal error: runtime: out of memory") as the first worker started,
// sizing its queue of tasks sent ahead by it.
func TestMaxPipeline(t *testing.T) {
	for _, n := range []int{pool.MaxPipeline + 1, 1 << 40} {
		p, err := pool.New(pool.Config{Command: []string{"cat"}, Protocol: pool.Line, Workers: 1, Pipeline: n})
		if err == nil {
			p.Close()
			for range p.Results() {
			}
			t.Fatalf("New(Pipeline %d) = nil error, want one", n)
		}
		if !strings.Contains(err.Error(), "MaxPipeline") {
			t.Errorf("New(Pipeline %d) = %v, want an error that names MaxPipeline", n, err)
		}
	}
	// The most it may be works.
	p, err := pool.New(pool.Config{Command: []string{"cat"}, Protocol: pool.Line, Workers: 1, Pipeline: pool.MaxPipeline})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		p.Submit(context.Background(), pool.Task{Input: []byte("x")})
		p.Close()
	}()
	for r := range p.Results() {
		if r.State != pool.Done || string(r.Output) != "x" {
			t.Errorf("task with Pipeline %d: %s %q, want done \"x\"", pool.MaxPipeline, r.State, r.Output)
		}
	}
}
