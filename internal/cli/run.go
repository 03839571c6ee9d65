package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/safepool/safepool/internal/journal"
	"github.com/safepool/safepool/pool"
)

var runSynopsis = []string{
	"safepool run [flags] [--] CMD [ARGS...] < INPUTS",
	"safepool run [flags] -a FILE [--] CMD [ARGS...]",
	"safepool run [flags] [--] CMD [ARGS...] ::: INPUT...",
}

const runIntro = `safepool run runs CMD once for each input, up to -j jobs at a time, like
GNU parallel and xargs -P. Each job's stdout and stderr are written whole
when it ends, never mixed with another job's. When a job dies, the summary
on stderr says why (oom, memory-limit, signal:SIGKILL, segfault, exit:N,
timeout), after how many attempts, and its peak memory.
`

const runOutro = `
Replacement strings, in CMD and ARGS:
  {}     the input                              dir/song.wav
  {.}    the input without its extension        dir/song
  {/}    the basename                           song.wav
  {//}   the dirname ("." when there is none)   dir
  {/.}   the basename without its extension     song
  {#}    the job number, counting from 1        1
  {%}    the job slot, 1 to -j: the worker      2
         slot that runs the attempt (a retry's
         own); also $SAFEPOOL_SLOT in every job
  When CMD has none of them, the input is added as its last argument.
  Positional {1} {2}, and {0#} {0%} (padded), are not supported.
  CMD runs directly, without a shell. When CMD is a single argument that
  contains spaces, such as 'gzip -c {} > {}.gz', it runs under sh -c and each
  value is shell-quoted, as in GNU parallel. When that command line is a
  single command, sh runs it with exec, so that a job killed by a signal is
  reported as such; a shell that stays (pipes, lists) reports a killed child
  as its own exit status 128+N, which the summary shows as exit:N.

Inputs are the lines of stdin, or of the -a files, or the arguments after
":::". Empty lines are inputs too. With no input, safepool run does nothing
and exits 0. An input longer than 1MiB (a file without newlines, or find
-print0 without -0) stops the run: what was read before it runs to the end.

Exit status:
  0  every task succeeded, or there was no input
  1  some tasks failed, or the job log or JSON summary could not be written
  2  usage error, an output file that cannot be created, or CMD cannot
     start; nothing ran
  3  stopped before the end: Ctrl-C, SIGTERM, SIGHUP, stdout closed by its
     reader (| head), --on-worker-death abort, or an input that cannot be
     read
Ctrl-C, SIGTERM or SIGHUP stops the workers (SIGTERM, then SIGKILL after
--grace), writes the job log and the JSON summary, prints the summary of what
ran and exits 3. A second one kills the workers at once.

Examples:
  find . -name '*.wav' | safepool run -j 4 --mem-limit 2GiB ffmpeg -i {} {.}.mp3
  safepool run --retries 2 --joblog jobs.tsv python3 infer.py {} ::: a.jpg b.jpg
  safepool run -k -a files.txt 'gzip -c {} > {}.gz'
`

// runArgs are the flags and arguments of safepool run.
type runArgs struct {
	common commonFlags
	null   bool   // -0: inputs end with NUL, not newline
	json   string // --json FILE: a file, or "-" for stdout
	dryRun bool
	nats   natsFlags

	cmd       []string // CMD ARGS...
	colonArgs []string // the arguments after :::
	colons    bool     // whether ::: was given
}

func (a *runArgs) flagSet() *pflag.FlagSet {
	fs := newFlagSet("run")
	a.common.registerPool(fs, "give a job up to `N` more attempts when it fails: exits non-zero, is killed or crashes")
	a.common.registerInput(fs)
	boolVarP(fs, &a.null, "null", "0", "inputs end with a NUL byte, not a newline (find -print0)")
	a.common.registerOutput(fs)
	a.common.registerMetrics(fs)
	fs.Var(jsonValue{&a.json}, "json", "write a JSON summary to `FILE` at the end; - writes it to stdout, after the job output")
	boolVarP(fs, &a.dryRun, "dry-run", "", "print the commands that would run, one per line, and run nothing")
	a.nats.register(fs)
	registerHelp(fs)
	return fs
}

// parse parses the command line of safepool run.
func (a *runArgs) parse(e *env, args []string) error {
	fs := a.flagSet()
	if err := parseFlags("run", fs, args); err != nil {
		if err == errHelp {
			writeHelp(e.stdout, runIntro, runSynopsis, fs, runOutro)
		}
		return err
	}
	rest := fs.Args()
	for i, s := range rest {
		if s == "::::" || s == "::::+" {
			// Left in CMD, it would be an argument of every job, with the
			// file's name, while the inputs came from stdin.
			return usagef("run", "%s (GNU parallel's input file) is not supported: use -a FILE", s)
		}
		if s == ":::+" {
			return usagef("run", "%s (GNU parallel's linked input list) is not supported: give one ::: list", s)
		}
		if s == ":::" {
			a.cmd, a.colonArgs, a.colons = rest[:i], rest[i+1:], true
			break
		}
	}
	if !a.colons {
		a.cmd = rest
	}
	for _, s := range a.colonArgs {
		if isColons(s) {
			return usagef("run", "only one ::: list is supported (GNU parallel's combinations of several lists are not)")
		}
	}
	if len(a.cmd) == 0 {
		return usagef("run", "missing command")
	}
	if a.colons && len(a.common.argFiles) > 0 {
		return usagef("run", "give inputs with -a or with :::, not both")
	}
	return a.nats.check("run", fs)
}

// maxRunInput is the longest input run reads: eight times the longest
// argument Linux passes to a program (MAX_ARG_STRLEN, 128 KiB), so that
// inputs a replacement string shortens ({/}, {#}) still run, while one
// with no end in sight cannot fill the supervisor's memory.
const maxRunInput = 1 << 20

func runRun(ctx context.Context, e *env, args []string) error {
	var a runArgs
	if err := a.parse(e, args); err != nil {
		if err == errHelp {
			return nil
		}
		return err
	}
	tmpl, err := parseTemplate(a.cmd)
	if err != nil {
		return usagef("run", "%v", err)
	}
	if a.nats.url != "" && tmpl.slotted() {
		// The submitter makes each task's arguments; the slot is known
		// only on the agent that runs it.
		return usagef("run", "{%%} (the job slot) is not supported with --nats: each job has its slot on its agent, 1 to the agent's -j, in $SAFEPOOL_SLOT (for one GPU per job, a shell command line: 'CUDA_VISIBLE_DEVICES=$((SAFEPOOL_SLOT - 1)) cmd {}')")
	}
	cfg, err := a.common.config("run", pool.OneShot, tmpl.command())
	if err != nil {
		return err
	}
	sep := byte('\n')
	if a.null {
		sep = 0
	}
	src, err := openInterruptibly(ctx, func() (source, error) {
		src, err := newSource(a.colonArgs, a.colons, a.common.argFiles, e.stdin, sep, maxRunInput,
			"no program takes an argument that long (Linux allows 128 KiB per argument)")
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
	typed := !a.colons && terminalNotice(e, a.common.argFiles, "inputs", "give them after ::: or with -a FILE, or pipe them in")

	if a.dryRun {
		dryRunNotice(e, &a)
		// The slots of {%} are those the run would have: -j lowered to
		// what the limits leave room for, as the run says.
		workers, notices, err := pool.FitWorkers(cfg)
		if err != nil {
			workers = cfg.Workers // the run would say why it cannot start
		}
		for _, n := range notices {
			fmt.Fprintf(e.stderr, "safepool: dry run: %s\n", n)
		}
		return dryRun(ctx, e, tmpl, src, a.common.journal, a.cmd, workers)
	}
	slotted := tmpl.slotted()
	j := &job{
		mode: "run",
		cfg:  cfg,
		src:  src,
		task: func(seq uint64, input []byte) pool.Task {
			if slotted {
				// {%} is the slot of the worker that runs the attempt,
				// known only when it starts; a retry has its own.
				return pool.Task{Input: input, SlotArgs: func(slot int) []string { return tmpl.argv(input, seq, slot) }}
			}
			return pool.Task{Input: input, Args: tmpl.argv(input, seq, 0)}
		},
		emit: func(o *output, r *pool.Result) {
			// A job's output may be larger than memory: the pool keeps
			// what does not fit in a temporary file, copied out here.
			o.stdoutFrom(r.OutputReader())
			o.stderrFrom(r.StderrReader())
			r.Release()
		},
		joblog:     a.common.joblog,
		journal:    a.common.journal,
		metrics:    a.common.metrics,
		keyCommand: a.cmd,
		argv:       append([]string{"safepool", "run"}, args...),
		jsonPath:   a.json,
		progress:   a.common.progressOn(e.stderr, typed),
		quiet:      a.common.quiet,
		viaShell:   tmpl.viaShell(),
		e:          e,
	}
	if !tmpl.shell && strings.ContainsAny(a.cmd[0], " \t|;&<>()$`*?") {
		// 'gzip -9' {} or 'ls|wc': a shell command line cut in two, or
		// without spaces, taken for a program's name.
		j.notFoundHint = "a shell command line runs under sh -c when it is one argument with a space"
		if line := strings.Join(a.cmd, " "); strings.ContainsAny(line, " \t") && !strings.Contains(line, "'") {
			j.notFoundHint += ", such as '" + line + "'"
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

// dryRunNotice says on stderr which of a's outputs a dry run leaves
// unwritten, since it runs nothing: a user who adds --dry-run to the
// command line of a real run would otherwise find no job log or summary
// file and not know why (and, with --json -, commands where the summary
// was expected on stdout).
func dryRunNotice(e *env, a *runArgs) {
	var skipped []string
	if a.common.joblog != "" {
		skipped = append(skipped, "--joblog")
	}
	if a.json != "" {
		skipped = append(skipped, "--json")
	}
	if a.common.journal.path != "" && !a.common.journal.resume && !a.common.journal.resumeFailed {
		skipped = append(skipped, "--journal")
	}
	if a.common.metrics != "" {
		skipped = append(skipped, "--metrics")
	}
	if len(skipped) == 0 {
		return
	}
	fmt.Fprintf(e.stderr, "safepool: dry run: nothing runs, so %s writes nothing\n", strings.Join(skipped, ", "))
}

// dryRun prints the command of each input, one per line, quoted so that
// sh would run the same argument vector. Ctrl-C, SIGTERM or SIGHUP (ctx)
// stops it with exit 3, as it stops a run, also while it waits for an
// input that does not come. With --resume or --resume-failed (jf), it
// leaves out the inputs that run would skip, as the journal of keyCommand
// has them (dryResumer), and says on stderr how many. Nothing runs, so no
// job has a slot: {%} shows the one job number seq would have if jobs
// ended in turn, ((seq-1) mod workers) + 1, where workers is -j (0: the
// CPUs) as the run would lower it (pool.FitWorkers); GNU parallel's dry
// run shows a slot from 1 to -j too.
func dryRun(ctx context.Context, e *env, tmpl *cmdTemplate, src source, jf journalFlags, keyCommand []string, workers int) error {
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	rs, closeJournal, err := dryResumer(jf, keyCommand)
	if err != nil {
		return &statusError{status: exitUsage, err: err}
	}
	defer closeJournal()
	skipped := 0
	type item struct {
		in  []byte
		err error
	}
	items := make(chan item)
	stop := make(chan struct{})
	defer close(stop)
	// The reader ends at the input's end or first error, or at its next
	// read once dryRun has returned: a read of an idle stdin cannot be
	// interrupted, and the process ends without it.
	go func() {
		for {
			in, err := src.next()
			select {
			case items <- item{in, err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	var seq uint64
	for {
		var it item
		select {
		case it = <-items:
		case <-ctx.Done():
			err := error(errInterrupted)
			if s := interruptedBy(ctx); s != nil {
				err = &SignalError{Signal: s}
			}
			return &statusError{status: exitAborted, err: err}
		}
		if errors.Is(it.err, io.EOF) {
			if skipped > 0 {
				them := "them"
				if skipped == 1 {
					them = "it"
				}
				fmt.Fprintf(e.stderr, "safepool: dry run: %s left out, finished in an earlier run in the journal %s (a run with the same flags skips %s)\n",
					plural(skipped, "input"), shellQuote(jf.path), them)
			}
			return nil
		}
		if it.err != nil {
			// As for a run: an input that cannot be read stops it (exit 3).
			return &statusError{status: exitAborted, err: it.err}
		}
		seq++ // {#} counts the inputs skipped too, as in the run
		if rs != nil {
			_, done, err := rs.Lookup(journal.KeyOf(it.in))
			if err != nil {
				return &statusError{status: exitFailed, err: err}
			}
			if done {
				skipped++
				continue
			}
		}
		args := tmpl.expand(it.in, seq, int((seq-1)%uint64(workers))+1)
		line := args
		if tmpl.shell {
			// The command line sh -c would run, as GNU parallel shows it.
			line = args[2:3]
		} else {
			line = make([]string, len(args))
			for i, w := range args {
				line[i] = shellQuote(w)
			}
		}
		if _, err := fmt.Fprintln(e.stdout, strings.Join(line, " ")); err != nil {
			if errors.Is(err, syscall.EPIPE) {
				// The reader has gone (| head): stop, quietly.
				return &statusError{status: exitAborted}
			}
			// As for a run: stdout not writable (a full disk) stops it.
			return &statusError{status: exitAborted, err: fmt.Errorf("writing output: %w", nameStdout(e.stdout, err))}
		}
	}
}

// dryResumer returns what a run with jf would skip of the inputs, by the
// journal of safepool run's command cmd, or nil when it would skip nothing:
// no --resume or --resume-failed, or no journal yet (which a run would
// create, and a dry run does not). The journal is only read: no run is
// added to it and no lock taken.
// close closes the journal once the dry run is over.
func dryResumer(jf journalFlags, cmd []string) (rs *journal.Resumer, close func(), err error) {
	if !jf.resuming() {
		return nil, func() {}, nil
	}
	if _, err := os.Stat(jf.path); errors.Is(err, fs.ErrNotExist) {
		return nil, func() {}, nil
	}
	j, err := journal.OpenRead(jf.path)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot open the journal: %w", err)
	}
	if rs, err = j.Resumer("run", journal.CommandString(cmd), jf.resume); err != nil {
		j.Close()
		return nil, nil, err
	}
	return rs, func() { rs.Close(); j.Close() }, nil
}

// stdoutFrom appends what rd reads to the job's standard output.
func (o *output) stdoutFrom(rd io.Reader) {
	if o.err == nil {
		_, err := io.Copy(o.out, rd)
		o.fail(err)
	}
}

// stderrFrom writes what rd reads to the job's standard error, after what
// is buffered for standard output. A reader that says it is empty (a
// Result's readers do) leaves standard output buffered.
func (o *output) stderrFrom(rd io.Reader) {
	if l, ok := rd.(interface{ Len() int }); ok && l.Len() == 0 || o.err != nil {
		return
	}
	if o.fail(o.out.Flush()); o.err == nil {
		_, o.err = io.Copy(o.errw, rd)
	}
}
