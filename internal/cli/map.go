package cli

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/safepool/safepool/pool"
)

var mapSynopsis = []string{
	"safepool map [flags] --worker 'CMD' < INPUT > OUTPUT",
	"safepool map [flags] [--] CMD [ARGS...] < INPUT > OUTPUT",
}

const mapIntro = `safepool map streams stdin to stdout through persistent workers. Each input
line is one task: it is written to a worker's stdin, and the worker answers
with one line on its stdout, which safepool writes to its stdout. Workers are
started once and reused, so a model or a dictionary is loaded once, not once
per line. Input is read only as fast as workers take it, so memory stays flat
for inputs of any size. When a worker dies, only the task it was running is
charged; the summary on stderr says why it died.
`

const mapOutro = `
The worker:
  --worker 'CMD' is a shell command line: pipes, quotes and variables work.
  A simple command (words and quotes only) runs directly, without a shell;
  a single command with variables or redirections runs under sh -c with
  exec; anything else under sh -c. A worker killed by a signal is then
  reported as such, except where a shell stays (pipes, lists): its exit
  status 128+N is shown as exit:N. CMD ARGS given after the flags run
  directly, without a shell.
  A line worker reads a line from stdin and writes exactly one line to
  stdout for it, in order, and writes each line out at once, unbuffered:
  python3 -u, or print(..., flush=True); in awk, fflush() after print, and
  mawk (Debian's awk) also needs -W interactive to read lines as they come.
  Its stderr goes to safepool's stderr.
  A worker gets its first line once it reads its stdin; anything it writes
  on stdout before, or a line too many, fails with cause protocol. One that
  has read its lines and only waits for more without answering does not
  flush: safepool says so, and fails the line after --stall-timeout.
  safepool writes lines to a worker in blocks, up to 1024 lines or 64 KiB
  and about 5 ms of work by the time lines take (a line at a time when they
  take long), or up to --pipeline lines ahead when it is given; they wait
  in the worker's stdin. The oldest line not yet answered is the one the
  worker is running, and only it is charged if the worker dies: the lines
  it answered are kept, the lines after it run again, uncharged.
  With --framed the worker speaks the framed protocol of docs/protocol.md on
  fds 3 and 4 instead, and its own stdout also goes to safepool's stderr.

Output: one line for each task that succeeded, the worker's answer, as tasks
finish or, with --keep-order, in input order. A failed task writes no line;
the summary on stderr, --joblog and --json list it. Lines may be up to
--max-line long and hold any byte but newline; an input line longer than
that and 64MiB stops the run: the lines before it run to the end. With no
input, safepool map does nothing and exits 0. Since stdout carries the
data, --json takes a FILE.

Block mode, for commands that read their input to EOF (sort, wc, gzip, a
transform that does not flush per line): --pipe cuts the input into blocks
of whole lines, each up to --block bytes (default 1MiB, as GNU parallel's
--pipe), or of records ending with --recend. Each block is one task, run by
a process of its own that reads the block on its stdin ({#} in the
command is the block's number: 'cat > part{#}'); when it succeeds,
its whole stdout is the block's output, as blocks finish or, with
--keep-order, in input order. A block whose process dies or fails is
retried (--retries) or failed whole, and writes nothing on stdout; the
summary names it by its bytes in the input and says why. safepool holds a
few blocks per worker in memory, whatever the input size. With --journal,
a block is a task keyed by its content: --resume skips the blocks done
before, writing the outputs the journal kept of them, and runs the rest.

Exit status:
  0  every task succeeded, or there was no input
  1  some tasks failed (the summary on stderr lists each one), a worker got
     out of step (answers it gave may belong to other lines), or the job log
     or JSON summary could not be written
  2  usage error, an output file that cannot be created, or the worker cannot
     start or keeps failing before it takes a task
  3  stopped before the end: Ctrl-C, SIGTERM, SIGHUP, stdout closed by its
     reader (| head), --on-worker-death abort, or an input that cannot be
     read
Ctrl-C, SIGTERM or SIGHUP stops the workers (SIGTERM, then SIGKILL after
--grace), writes the job log and the JSON summary, prints the summary of what
ran and exits 3. A second one kills the workers at once.

Examples:
  safepool map -j 8 -k --worker 'python3 -u embed.py' < texts.txt > vectors.txt
  safepool map --worker "mawk -W interactive '{ print toupper(\$0) }'" < in.txt
  zcat reads.fa.gz | safepool map --mem-limit 4GiB --max-tasks 10000 ./classify
  safepool map --retries 1 --json summary.json -- ./classify < in.txt > out.txt
  safepool map -j 2 -k --pipe --block 10M python3 tr.py < in.csv > out.csv
`

// mapArgs are the flags and arguments of safepool map.
type mapArgs struct {
	common   commonFlags
	worker   string // --worker, a shell command line (workerCommand)
	framed   bool
	maxTasks int
	maxRSS   int64
	pipeline int    // --pipeline; 0 when not given
	json     string // --json FILE
	nats     natsFlags

	pipe   bool   // --pipe: blocks of records to one-shot processes
	block  int64  // --block SIZE
	recend string // --recend STR, escapes undone

	maxLine int64         // --max-line; 0 when not given
	stall   time.Duration // --stall-timeout; 0: never
	start   time.Duration // --start-timeout; 0: the pool's default

	argv []string // CMD ARGS... after the flags
}

func (a *mapArgs) flagSet() *pflag.FlagSet {
	fs := newFlagSet("map")
	fs.StringVar(&a.worker, "worker", "", "run the shell command line `CMD` as the worker, such as 'python3 -u model.py'")
	boolVarP(fs, &a.framed, "framed", "", "the worker speaks the framed protocol (docs/protocol.md), not lines")
	a.common.registerPool(fs, "give a task up to `N` more attempts when its worker dies during it: killed, crashed or exited")
	fs.IntVar(&a.maxTasks, "max-tasks", 0, "replace a worker after it has done `N` tasks (default: never)")
	fs.Var(newSizeValue(&a.maxRSS), "max-rss", "replace a worker whose memory is over `SIZE` after a task (default: never)")
	fs.IntVar(&a.pipeline, "pipeline", 0, "send up to `N` tasks to a worker before it answers the first, one line a task (default: lines in blocks; 32 lines with --max-tasks; 8 tasks with --framed)")
	fs.Var(newSizeValue(&a.maxLine), "max-line", "fail a task whose answer line is longer than `SIZE` (default 64MiB)")
	fs.DurationVar(&a.stall, "stall-timeout", defaultStall, "fail a line (or --framed task) the worker has read and holds unanswered while it only waits for more input (it does not flush) after `DURATION`; 0: never")
	fs.DurationVar(&a.start, "start-timeout", 0, "give a new worker `DURATION` to be ready, more while it computes: a --framed worker's ready frame, a line worker's first read (default 30s)")
	boolVarP(fs, &a.pipe, "pipe", "", "cut the input into blocks of whole lines (see --block, --recend) and run the command once per block, the block on its stdin, its whole stdout the block's output; for commands that read to EOF, such as sort, wc or gzip")
	a.block = defaultBlock
	block := newSizeValue(&a.block).nonZero("a block must hold at least one byte")
	block.set = "1MiB"
	fs.Var(block, "block", "with --pipe, make blocks of up to `SIZE`, such as 10M, ending at a record end; a longer record makes a block of its own")
	a.recend = "\\n"
	fs.StringVar(&a.recend, "recend", a.recend, "with --pipe, records end with `STR` (\\n, \\t, \\r, \\0 and \\\\ are understood); \"\" cuts blocks at --block bytes exactly (default \\n)")
	fs.Lookup("recend").DefValue = "" // "\\n" quoted again would read "\\\\n"
	a.common.registerInput(fs)
	a.common.registerOutput(fs)
	a.common.registerMetrics(fs)
	fs.Var(jsonValue{&a.json}, "json", "write a JSON summary to `FILE` at the end")
	a.nats.register(fs)
	registerHelp(fs)
	return fs
}

// parse parses the command line of safepool map.
func (a *mapArgs) parse(e *env, args []string) error {
	fs := a.flagSet()
	if err := parseFlags("map", fs, args); err != nil {
		if err == errHelp {
			writeHelp(e.stdout, mapIntro, mapSynopsis, fs, mapOutro)
		}
		return err
	}
	a.argv = fs.Args()
	switch {
	case slices.ContainsFunc(a.argv, isColons):
		// Left in CMD, it would be an argument of every worker, while the
		// input came from stdin. Said before the worker given twice:
		// after --worker 'CMD', the list is what GNU parallel's habit adds.
		return usagef("map", "%s (an input list of GNU parallel) is not map's: map reads its input from stdin or -a FILE", a.argv[slices.IndexFunc(a.argv, isColons)])
	case a.worker != "" && len(a.argv) > 0:
		return usagef("map", "give the worker with --worker or after the flags, not both")
	case a.worker == "" && len(a.argv) == 0:
		return usagef("map", "missing worker command (--worker 'CMD')")
	case slices.ContainsFunc(a.words(), a.unreplaced):
		// map starts each worker once, with no input of its own: the
		// word would reach every worker as it is ('cat {}' failed per
		// block, 'echo {}' broke the line protocol).
		tok := a.words()[slices.IndexFunc(a.words(), a.unreplaced)]
		if tok == "{%}" {
			return usagef("map", "{%%} is not replaced by map: a worker serves many inputs and finds its slot, 1 to -j, in $SAFEPOOL_SLOT (for one GPU per worker: --worker 'CUDA_VISIBLE_DEVICES=$((SAFEPOOL_SLOT - 1)) worker.py'); with --pipe, {%%} is the slot of the block's process")
		}
		if a.pipe {
			return usagef("map", "%s is not replaced by map: each block reaches the worker on its stdin (GNU parallel's --cat and --fifo are not supported); safepool run runs a command per input with %s in it", tok, tok)
		}
		return usagef("map", "%s is not replaced by map: a worker reads its inputs on stdin, one line each; safepool run runs a command per input with %s in it", tok, tok)
	case a.maxTasks < 0:
		return usagef("map", "--max-tasks must be at least 0, not %d", a.maxTasks)
	case fs.Changed("pipeline") && a.pipeline < 1:
		return usagef("map", "--pipeline must be at least 1, not %d", a.pipeline)
	case a.pipeline > pool.MaxPipeline:
		return usagef("map", "--pipeline must be at most %d, not %d", pool.MaxPipeline, a.pipeline)
	case fs.Changed("max-line") && a.maxLine < 1:
		return usagef("map", "--max-line must be at least 1 byte")
	case a.stall < 0 || a.start < 0:
		return usagef("map", "--stall-timeout and --start-timeout must not be negative")
	case a.json == "-":
		return usagef("map", "--json needs a FILE: stdout carries the data")
	}
	if err := a.nats.check("map", fs); err != nil {
		return err
	}
	if !a.pipe {
		for _, name := range []string{"block", "recend"} {
			if fs.Changed(name) {
				return usagef("map", "--%s needs --pipe", name)
			}
		}
		return nil
	}
	if a.nats.url != "" {
		return usagef("map", "--pipe does not work with --nats")
	}
	for _, name := range []string{"framed", "pipeline", "max-tasks", "max-rss", "max-line", "stall-timeout", "start-timeout"} {
		if fs.Changed(name) {
			return usagef("map", "--%s is for persistent workers, not --pipe", name)
		}
	}
	recend, err := unescapeRecend(a.recend)
	if err != nil {
		return usagef("map", "--recend: %v", err)
	}
	a.recend = recend
	if a.block > maxBlock {
		return usagef("map", "--block must be at most %s", formatSizeFlag(maxBlock))
	}
	return nil
}

func runMap(ctx context.Context, e *env, args []string) error {
	var a mapArgs
	if err := a.parse(e, args); err != nil {
		if err == errHelp {
			return nil
		}
		return err
	}
	command, viaShell := a.argv, false
	if a.worker != "" {
		command, viaShell = workerCommand(a.worker)
	}
	if a.pipe {
		return runMapPipe(ctx, e, &a, command, viaShell, append([]string{"safepool", "map"}, args...))
	}
	setLineMapGOGC(a.common.journal.resuming())
	protocol := pool.Line
	if a.framed {
		protocol = pool.Framed
	}
	cfg, err := a.common.config("map", protocol, command)
	if err != nil {
		return err
	}
	cfg.MaxTasksPerWorker = a.maxTasks
	cfg.MaxRSS = a.maxRSS
	cfg.Pipeline = a.pipeline
	cfg.MaxLine = a.maxLine
	cfg.StartTimeout = a.start
	cfg.StallTimeout = a.stall
	if a.stall == 0 {
		cfg.StallTimeout = -1 // never
	}
	if cfg.Pipeline == 0 && protocol == pool.Line {
		cfg.Pipeline = defaultLinePipeline
	}
	// Input lines are bounded as answer lines are, so that a line with no
	// end in sight cannot fill the supervisor's memory.
	maxInput := int(max(a.maxLine, pool.DefaultMaxLine))
	src, err := openInterruptibly(ctx, func() (source, error) {
		src, err := newSource(nil, false, a.common.argFiles, e.stdin, '\n', maxInput, "a longer line needs a larger --max-line")
		if err != nil {
			return nil, &statusError{status: exitUsage, err: err}
		}
		return src, nil
	})
	if errors.Is(err, errNotOpened) {
		src, err = newUnopened(), nil
	}
	if err != nil {
		return err
	}
	defer src.close()
	typed := terminalNotice(e, a.common.argFiles, "input lines", "give -a FILE, or pipe them in")

	j := &job{
		mode: "map",
		cfg:  cfg,
		src:  src,
		task: func(_ uint64, input []byte) pool.Task { return pool.Task{Input: input} },
		emit: func(o *output, r *pool.Result) {
			switch {
			case r.State != pool.Done:
			case r.Items != nil:
				o.stdout(r.Output) // a block's answer lines, each with its newline
			default:
				o.stdout(r.Output, newline)
			}
		},
		joblog:       a.common.joblog,
		journal:      a.common.journal,
		metrics:      a.common.metrics,
		keyCommand:   command,
		argv:         append([]string{"safepool", "map"}, args...),
		jsonPath:     a.json,
		progress:     a.common.progressOn(e.stderr, typed),
		quiet:        a.common.quiet,
		messages:     true,
		viaShell:     viaShell,
		notFoundHint: a.notFoundHint(),
		e:            e,
	}
	// Line workers get the input in blocks of lines, unless something
	// needs a task per line: --max-tasks counts a worker's tasks exactly,
	// and --pipeline N asks for at most N lines ahead. The journal keys,
	// skips and records lines one by one inside blocks (feedBlocks).
	if protocol == pool.Line && a.nats.url == "" && a.maxTasks == 0 && a.pipeline == 0 {
		if fs, ok := src.(*fileSource); ok {
			j.blocks = newLineBlocks(fs)
			workers := cfg.Workers
			if workers == 0 {
				workers = runtime.NumCPU()
			}
			// A few blocks per worker: the one it runs, one or two that
			// wait in its stdin, and results on their way out.
			j.cfg.MaxPending = 4*workers + 4
		}
	}
	var status int
	if a.nats.url != "" {
		status = j.executeRemote(ctx, &a.nats)
	} else {
		_, status = j.execute(ctx)
	}
	if status != exitOK {
		return &statusError{status: status}
	}
	return nil
}

var newline = []byte{'\n'}

// defaultStall is --stall-timeout's default, the pool's own.
const defaultStall = 10 * time.Second

// defaultLinePipeline is how many tasks safepool map may send to a line
// worker ahead of its answers: blocks of lines, or lines where each line is
// a task (--max-tasks). The pool's own default is 1, for workers
// that may not flush each answer; safepool map asks its workers to flush,
// and short lines run several times faster with a few dozen in flight.
// The pool sends fewer to a worker whose lines take long.
const defaultLinePipeline = 32

// isColons reports whether s is one of GNU parallel's input list markers.
func isColons(s string) bool {
	return s == ":::" || s == "::::" || s == ":::+" || s == "::::+"
}

// unreplaced reports whether the word s of CMD is one of run's
// replacement strings ({} {.} {/} {//} {/.} {#} {%}) that map would pass
// on as it is: all of them, but {#} and {%} with --pipe (the block's number,
// the job slot). Only a whole word is taken for one, so that a program such
// as jq or awk keeps its braces.
// words returns the words of the worker's command: CMD after the flags,
// or those of the --worker command line between blanks (a quoted '{}' is
// no word of its own there, and is left alone).
func (a *mapArgs) words() []string {
	if a.worker != "" {
		return strings.Fields(a.worker)
	}
	return a.argv
}

func (a *mapArgs) unreplaced(s string) bool {
	if a.pipe && (s == "{#}" || s == "{%}") {
		return false
	}
	for _, r := range replacementTokens {
		if s == r.tok {
			return true
		}
	}
	return false
}

// notFoundHint says how to give a shell command line, for a CMD after the
// flags that is one: 'tr a-z A-Z' or 'sort|uniq' taken for a program's
// name. CMD after the flags runs without a shell; --worker takes a
// command line.
func (a *mapArgs) notFoundHint() string {
	if a.worker != "" || len(a.argv) == 0 || !strings.ContainsAny(a.argv[0], " \t|;&<>()$`*?") {
		return ""
	}
	hint := "a shell command line is given with --worker"
	if line := strings.Join(a.argv, " "); !strings.Contains(line, "'") {
		hint += ", such as --worker '" + line + "'"
	}
	return hint
}
