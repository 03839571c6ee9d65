// Command benchworker is the trivial worker of safepool's benchmarks. It does
// as little as possible per task, so that a benchmark measures the pool and
// not the work.
//
//	benchworker line            line protocol: echo each stdin line
//	benchworker framed          framed protocol (serve SDK): echo each payload
//	benchworker recover DIR     line protocol: die by SIGKILL on the first
//	                            sight of each input, echo it on the retry
//	benchworker once DIR INPUT  one process per input, the same as recover
//	benchworker slow DURATION   line protocol: echo each line after DURATION
//
// For recover and once, DIR/INPUT.kill receives the wall clock (Unix
// nanoseconds) just before the worker SIGKILLs itself, and DIR/INPUT.rerun
// the wall clock when the task starts again, so recovery latency is the
// difference of the two whatever runs the worker.
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/safepool/safepool/serve"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("benchworker: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: benchworker line|framed|recover DIR|once DIR INPUT|slow DURATION")
	}
	var err error
	switch mode := os.Args[1]; {
	case mode == "line":
		err = echoLines(os.Stdin, os.Stdout, nil)
	case mode == "framed":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		err = serve.Run(ctx, func(_ context.Context, p []byte) ([]byte, error) { return p, nil })
	case mode == "recover" && len(os.Args) == 3:
		dir := os.Args[2]
		err = echoLines(os.Stdin, os.Stdout, func(line []byte) error { return killOnce(dir, string(line)) })
	case mode == "slow" && len(os.Args) == 3:
		var d time.Duration
		if d, err = time.ParseDuration(os.Args[2]); err == nil {
			err = echoLines(os.Stdin, os.Stdout, func([]byte) error { time.Sleep(d); return nil })
		}
	case mode == "once" && len(os.Args) == 4:
		if err = killOnce(os.Args[2], os.Args[3]); err == nil {
			_, err = fmt.Println(os.Args[3])
		}
	default:
		log.Fatalf("unknown mode %q", os.Args[1:])
	}
	if err != nil {
		log.Fatal(err)
	}
}

// echoLines copies r to w line by line, flushing after each line, and calls
// before (when not nil) with each line before echoing it.
func echoLines(r io.Reader, w io.Writer, before func([]byte) error) error {
	in := bufio.NewReaderSize(r, 64<<10)
	out := bufio.NewWriterSize(w, 64<<10)
	for {
		line, err := in.ReadSlice('\n')
		if len(line) > 0 {
			if before != nil {
				if err := before(line[:len(line)-1]); err != nil {
					return err
				}
			}
			if _, err := out.Write(line); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			// Flush only when no further line is already buffered: the line
			// protocol has one task in flight, so this is after every line.
			if in.Buffered() == 0 {
				if err := out.Flush(); err != nil {
					return fmt.Errorf("flush: %w", err)
				}
			}
		}
		if err == io.EOF {
			return out.Flush()
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
	}
}

// killOnce SIGKILLs the process on the first call for input, after writing
// the time to DIR/input.kill, and records the time in DIR/input.rerun on
// later calls.
func killOnce(dir, input string) error {
	now := strconv.FormatInt(time.Now().UnixNano(), 10)
	kill := filepath.Join(dir, filepath.Base(input)+".kill")
	if _, err := os.Stat(kill); os.IsNotExist(err) {
		if err := os.WriteFile(kill, []byte(now), 0o644); err != nil {
			return fmt.Errorf("mark: %w", err)
		}
		return syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
	if err := os.WriteFile(filepath.Join(dir, filepath.Base(input)+".rerun"), []byte(now), 0o644); err != nil {
		return fmt.Errorf("mark: %w", err)
	}
	return nil
}
