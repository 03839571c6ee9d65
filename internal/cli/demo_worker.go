package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"
)

// demoWorkerName is the hidden subcommand that safepool demo runs as its
// line worker. It is not part of the interface and may change.
const demoWorkerName = "__demo-worker"

// demoWorkerArgs are the flags of the demo worker.
type demoWorkerArgs struct {
	hog     int           // the task number that allocates memory
	hogOnce string        // if set, hog only when this file does not exist yet, and create it
	hogMax  int64         // stop growing here and wait to be killed
	sleep   time.Duration // how long the other tasks take
}

// runDemoWorker is a line worker: for each line N it sleeps and answers
// "N² = N*N", except for task --hog, which allocates memory until the
// supervisor or the kernel kills it.
func runDemoWorker(ctx context.Context, e *env, args []string) error {
	a := demoWorkerArgs{hogMax: 1 << 30, sleep: 100 * time.Millisecond}
	fs := newFlagSet(demoWorkerName)
	fs.IntVar(&a.hog, "hog", 0, "")
	fs.StringVar(&a.hogOnce, "hog-once", "", "")
	fs.Int64Var(&a.hogMax, "hog-max", a.hogMax, "")
	fs.DurationVar(&a.sleep, "sleep", a.sleep, "")
	registerHelp(fs)
	if err := parseFlags(demoWorkerName, fs, args); err != nil {
		return err
	}
	in := bufio.NewReader(e.stdin)
	for {
		line, err := in.ReadString('\n')
		if err == io.EOF && line == "" {
			return nil
		}
		if err != nil && err != io.EOF {
			return err
		}
		if line[len(line)-1] == '\n' {
			line = line[:len(line)-1]
		}
		n, _ := strconv.Atoi(line)
		if n == a.hog && n != 0 && a.shouldHog() {
			return hogMemory(ctx, e.stderr, a.hogMax)
		}
		select {
		case <-time.After(a.sleep):
		case <-ctx.Done():
			return nil
		}
		if _, err := fmt.Fprintf(e.stdout, "%d² = %d, by worker %d\n", n, n*n, os.Getpid()); err != nil {
			return err
		}
	}
}

// shouldHog reports whether to allocate memory now: always, or with
// --hog-once only the first time.
func (a *demoWorkerArgs) shouldHog() bool {
	if a.hogOnce == "" {
		return true
	}
	f, err := os.OpenFile(a.hogOnce, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return false // it exists: this is the retry
	}
	f.Close()
	return true
}

// hogMemory maps and touches 8 MiB every 5 ms up to max bytes, then holds
// it for 10 s, waiting to be killed. It maps its memory itself rather than
// through the Go heap: without a cgroup, its data size limit refuses a
// mapping, and it then says so in one line and exits 1, where the Go
// runtime would print the stacks of all its goroutines after "fatal error:
// runtime: out of memory".
func hogMemory(ctx context.Context, stderr io.Writer, max int64) error {
	const chunk = 8 << 20
	var held [][]byte
	defer func() {
		for _, b := range held {
			syscall.Munmap(b)
		}
	}()
	for size := int64(0); size < max; size += chunk {
		b, err := syscall.Mmap(-1, 0, chunk, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
		if err != nil {
			fmt.Fprintf(stderr, "demo worker: holding %d MiB: %v\n", size>>20, err)
			return &statusError{status: 1}
		}
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		held = append(held, b)
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case <-time.After(10 * time.Second):
	case <-ctx.Done():
	}
	return errors.New("demo worker: allocated the maximum and was not killed")
}
