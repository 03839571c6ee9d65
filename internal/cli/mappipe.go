package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
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
//
// With --journal, a block is a task keyed by its content: a rerun cuts the
// same input into the same blocks, and --resume skips those an earlier
// run finished, writing the output the journal kept of each done one in
// its place. A block's output is read into memory to be kept, up to
// maxJournalOutput; the journal's writer holds a bounded amount of such
// outputs until it commits them to its span file (journal.Writer).
func runMapPipe(ctx context.Context, e *env, a *mapArgs, command []string, viaShell bool, argv []string) error {
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
	// Outputs stay in memory up to 64 KiB and larger ones wait in a
	// temporary file, as GNU parallel keeps all of them: kept in memory up
	// to a block each, with their growth, they made the supervisor's peak
	// several times the blocks' (1.7 GB for blocks of 100 MB at -j 2,
	// where it was 0.66 GB with the pool's default of 1 MiB in memory).
	// A block's output is often about as large as the block: grown in
	// memory to 1 MiB first, it took the supervisor's peak from 52 to 86
	// MiB at --block 10M -j 2 (docs/benchmarks.md, streaming), for no gain
	// in speed. Its pipe is paced (Config.LargeOutput).
	cfg.MaxPending = 2 * workers
	cfg.OutputInMemory = 64 << 10
	cfg.LargeOutput = true
	blocks, err := openInterruptibly(ctx, func() (*blockReader, error) {
		src, err := newBlockReader(a.common.argFiles, e.stdin, int(a.block), []byte(a.recend))
		if err != nil {
			return nil, &statusError{status: exitUsage, err: err}
		}
		return src, nil
	})
	var src source = blocks
	if errors.Is(err, errNotOpened) {
		src, err = newUnopened(), nil // blocks is never read
	}
	if err != nil {
		return err
	}
	defer src.close()
	typed := terminalNotice(e, a.common.argFiles, "the input", "give -a FILE, or pipe it in")

	journaled := a.common.journal.path != ""
	toldUnkept := false
	slotted := slices.ContainsFunc(command, func(w string) bool { return strings.Contains(w, "{%}") })
	j := &job{
		mode: "map",
		cfg:  cfg,
		src:  src,
		// The feeder calls task, and journalInput, for the block that blocks
		// returned last.
		task: func(seq uint64, block []byte) pool.Task {
			args := blockArgs(command, seq)
			t := pool.Task{Input: blocks.label(), Args: args, Stdin: block, StdinDone: func() { blocks.recycle(block) }}
			if slotted {
				t.Args, t.SlotArgs = nil, func(slot int) []string { return slotArgs(args, slot) }
			}
			return t
		},
		emit: func(o *output, r *pool.Result) {
			// As in safepool map, a failed task writes nothing on stdout;
			// what its process said on stderr is passed on.
			switch {
			case r.State != pool.Done:
			case journaled && keepOutput(r):
				o.stdout(r.Output)
			default:
				if journaled && !toldUnkept {
					toldUnkept = true
					o.stderr(fmt.Appendf(nil, "safepool: a block's output is over %s: the journal does not keep it, and --resume runs such blocks again\n",
						formatSizeFlag(maxJournalOutput)))
				}
				o.stdoutFrom(r.OutputReader())
			}
			o.stderrFrom(r.StderrReader())
			r.Release()
		},
		joblog:       a.common.joblog,
		journal:      a.common.journal,
		metrics:      a.common.metrics,
		keyCommand:   command,
		argv:         argv,
		journalInput: func([]byte) []byte { return blocks.label() },
		// A done block whose output was not kept stays out of the
		// journal's done tasks.
		journaled:    func(r *pool.Result) bool { return r.State != pool.Done || r.Output != nil },
		rawReplay:    true,
		replayAhead:  workers,
		jsonPath:     a.json,
		progress:     a.common.progressOn(e.stderr, typed),
		quiet:        a.common.quiet,
		messages:     true,
		viaShell:     viaShell,
		notFoundHint: a.notFoundHint(),
		e:            e,
	}
	_, status := j.execute(ctx)
	if status != exitOK {
		return &statusError{status: status}
	}
	return nil
}

// blockArgs returns command with each {#} replaced by seq, the block's
// number counting from 1, as in GNU parallel ('cat > part{#}' writes each
// block to a file of its own). A number needs no shell quoting, so a
// command line under sh -c takes it as it is.
func blockArgs(command []string, seq uint64) []string {
	if !slices.ContainsFunc(command, func(w string) bool { return strings.Contains(w, "{#}") }) {
		return command
	}
	n := strconv.FormatUint(seq, 10)
	args := make([]string, len(command))
	for i, w := range command {
		args[i] = strings.ReplaceAll(w, "{#}", n)
	}
	return args
}

// slotArgs returns args with each {%} replaced by slot, the job slot that
// runs the block's attempt, from 1 to -j, as in GNU parallel; like {#}, a
// number needs no shell quoting.
func slotArgs(args []string, slot int) []string {
	n := strconv.Itoa(slot)
	out := make([]string, len(args))
	for i, w := range args {
		out[i] = strings.ReplaceAll(w, "{%}", n)
	}
	return out
}

// maxJournalOutput is the longest output of a block that the journal
// keeps: a longer one stays in the pool's temporary file, and --resume
// runs its block again.
const maxJournalOutput = 64 << 20

// keepOutput reads the output of r, a done block, into r.Output when the
// pool kept it in its temporary file, for the journal, and reports
// whether r.Output now holds the whole output (never nil then). An output
// over maxJournalOutput is left where it is.
func keepOutput(r *pool.Result) bool {
	if r.Output == nil {
		rd := r.OutputReader()
		b, err := io.ReadAll(io.LimitReader(rd, maxJournalOutput+1))
		if err != nil || len(b) > maxJournalOutput {
			return false
		}
		if len(b) > 0 {
			// Spilled: what was read is the whole output.
			r.Output = b
			return true
		}
		r.Output = []byte{}
	}
	return true
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
