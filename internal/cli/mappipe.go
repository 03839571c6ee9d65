package cli

import (
	"context"
	"errors"
	"runtime"
	"strings"

	"github.com/safepool/safepool/pool"
)

// defaultBlock is --block's default, GNU parallel's.
const defaultBlock = 1 << 20

// maxBlock bounds --block: a block is held in memory, a few of them at once.
const maxBlock = 1 << 30

// runMapPipe runs safepool map --pipe: each block of whole records is a
// one-shot task whose process reads the block on its stdin, and whose
// stdout, when it succeeds, is the block's output. A block whose process
// dies or fails is retried or failed whole, with its cause, as any task.
func runMapPipe(ctx context.Context, e *env, a *mapArgs, command []string, viaShell bool) error {
	cfg, err := a.common.config("map", pool.OneShot, command)
	if err != nil {
		return err
	}
	workers := cfg.Workers
	if workers == 0 {
		workers = runtime.NumCPU()
	}
	// The supervisor holds the blocks that run, one more waiting per
	// worker so that a worker that ends finds the next block read, and the
	// block being read: memory is a few blocks, whatever the input size.
	// Outputs up to a block each stay in memory; the pool spills larger
	// ones to a temporary file.
	cfg.MaxPending = 2 * workers
	cfg.OutputInMemory = a.block
	src, err := newBlockReader(a.common.argFiles, e.stdin, int(a.block), []byte(a.recend))
	if err != nil {
		return &statusError{status: exitUsage, err: err}
	}
	defer src.close()

	var off int64 // the input offset of the next block; the feeder's
	j := &job{
		mode: "map",
		cfg:  cfg,
		src:  src,
		task: func(_ uint64, block []byte) pool.Task {
			t := pool.Task{Input: blockLabel(off, len(block)), Args: command, Stdin: block}
			off += int64(len(block))
			return t
		},
		emit: func(o *output, r *pool.Result) {
			// As in safepool map, a failed task writes nothing on stdout;
			// what its process said on stderr is passed on.
			if r.State == pool.Done {
				o.stdoutFrom(r.OutputReader())
			}
			o.stderrFrom(r.StderrReader())
			r.Release()
		},
		joblog:   a.common.joblog,
		metrics:  a.common.metrics,
		jsonPath: a.json,
		progress: a.common.progressOn(e.stderr),
		quiet:    a.common.quiet,
		messages: true,
		viaShell: viaShell,
		e:        e,
	}
	_, status := j.execute(ctx)
	if status != exitOK {
		return &statusError{status: status}
	}
	return nil
}

// unescapeRecend undoes the escapes --recend understands: \n, \t, \r, \0
// and \\.
func unescapeRecend(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 == len(s) {
			return "", errors.New(`a lone \ at the end (write \\ for a backslash)`)
		}
		i++
		switch s[i] {
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case '0':
			b.WriteByte(0)
		case '\\':
			b.WriteByte('\\')
		default:
			return "", errors.New(`unknown escape \` + string(s[i]) + ` (want \n, \t, \r, \0 or \\)`)
		}
	}
	return b.String(), nil
}
