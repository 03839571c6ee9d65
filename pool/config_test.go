package pool_test

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// refused returns the error of New for cfg, with "true" as its command;
// a pool it makes anyway is closed at once, and the error is nil.
func refused(t *testing.T, cfg pool.Config) error {
	t.Helper()
	cfg.Command = []string{"true"}
	p, err := pool.New(cfg)
	if err == nil {
		p.Close()
		for range p.Results() {
		}
	}
	return err
}

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
			err := refused(t, tt.cfg)
			if err == nil {
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

// TestDirCannotBeEntered: workers whose Config.Dir is missing, or is a
// file, fail to start with an error that names the directory. exec said
// "fork/exec /usr/bin/cat: no such file or directory", of a program that
// is there.
func TestDirCannotBeEntered(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		dir   string
		proto pool.Protocol
		want  string
	}{
		{"missing, line", filepath.Join(t.TempDir(), "gone"), pool.Line, "no such file or directory"},
		{"missing, one-shot", filepath.Join(t.TempDir(), "gone"), pool.OneShot, "no such file or directory"},
		{"a file", file, pool.Line, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := pool.New(pool.Config{Command: []string{"cat"}, Protocol: tt.proto, Workers: 1, Dir: tt.dir})
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				p.Submit(context.Background(), pool.Task{Input: []byte("x")})
				p.Close()
			}()
			var last pool.Result
			for r := range p.Results() {
				last = r
			}
			// A one-shot task that cannot start fails; a persistent worker
			// that cannot start aborts the pool.
			err = p.Err()
			if err == nil {
				err = last.Err()
			}
			msg := ""
			if err != nil {
				msg = err.Error()
			}
			if len(last.Attempts) > 0 {
				msg += " " + last.Attempts[len(last.Attempts)-1].Message
			}
			if !strings.Contains(msg, "working directory: ") || !strings.Contains(msg, tt.dir) || !strings.Contains(msg, tt.want) {
				t.Errorf("Dir %s: %q, want the directory named, and %q", tt.dir, msg, tt.want)
			}
		})
	}
}

// TestPercentagesForFractions: a PreemptAbove above 1, as a percentage
// would be, is refused, and so is a PreemptPSI above 100. Either turned
// its trigger off without a word: memory in use never passes 90 times the
// host's, and pressure never passes 100%.
func TestPercentagesForFractions(t *testing.T) {
	tests := []struct {
		name string
		cfg  pool.Config
		want string
	}{
		{"PreemptAbove 90", pool.Config{PreemptAbove: 90}, "Config.PreemptAbove of 90 is above 1: it is a fraction of memory (0.90 for 90%)"},
		{"PreemptPSI 400", pool.Config{PreemptPSI: 400}, "Config.PreemptPSI of 400 is above 100"},
		{"PreemptAbove NaN", pool.Config{PreemptAbove: math.NaN()}, "Config.PreemptAbove (NaN) and Config.PreemptPSI (0) must be numbers"},
		{"PreemptPSI NaN", pool.Config{PreemptPSI: math.NaN()}, "Config.PreemptAbove (0) and Config.PreemptPSI (NaN) must be numbers"},
		{"PreemptAbove of a percent", pool.Config{PreemptAbove: 0.009}, "Config.PreemptAbove of 0.009 is below 0.01: it is a fraction of memory (0.90 for 90%)"},
		{"MemPerTask in bytes", pool.Config{MemPerTask: 512}, "Config.MemPerTask of 512 bytes is below MinMemory (1 MiB)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := refused(t, tt.cfg)
			if err == nil {
				t.Fatalf("New(%s) = nil error, want one", tt.name)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New(%s) = %v, want an error saying %q", tt.name, err, tt.want)
			}
		})
	}
	// 1 and 100 are allowed: the CLI's --mem-high 100 is 1.
	p, err := pool.New(pool.Config{Command: []string{"true"}, PreemptAbove: 1, PreemptPSI: 100})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	for range p.Results() {
	}
}
