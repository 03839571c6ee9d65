// Package cli implements the safepool command line: the run, map, report
// and demo subcommands, their flags, inputs, output, progress bar, job log and
// summary. cmd/safepool is a thin main around Run.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
)

// Exit statuses of safepool. docs/cli.md documents them; scripts depend on
// them.
const (
	// exitOK: every task succeeded (or there was no input).
	exitOK = 0
	// exitFailed: the pool ran to the end but some tasks failed.
	exitFailed = 1
	// exitUsage: bad flags, sizes or arguments, or a command that cannot
	// start; no task was done (cannotStart).
	exitUsage = 2
	// exitAborted: the run was stopped before the end: by Ctrl-C (SIGINT),
	// SIGTERM or SIGHUP, by the reader of stdout going away (EPIPE), by
	// --on-worker-death abort, or by workers that can no longer start
	// after tasks were done.
	exitAborted = 3
)

// env is the standard I/O of one invocation.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

// usageError is a mistake on the command line. Run prints it on one line
// followed by the subcommand's usage, and exits 2.
type usageError struct {
	cmd string // the subcommand, or "" for the top level
	err error
}

func (e *usageError) Error() string { return e.err.Error() }

func usagef(cmd string, format string, args ...any) error {
	return &usageError{cmd: cmd, err: fmt.Errorf(format, args...)}
}

// statusError ends a subcommand with an exit status, printing err first
// unless it is nil.
type statusError struct {
	status int
	err    error
}

func (e *statusError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.status)
	}
	return e.err.Error()
}

// command is one subcommand.
type command struct {
	name     string
	synopsis []string // the usage lines, without "Usage: "
	short    string   // one line for the top-level help
	hidden   bool
	run      func(ctx context.Context, e *env, args []string) error
}

// commands returns the subcommands, in the order the help lists them.
func commands() []*command {
	return []*command{
		{name: "run", synopsis: runSynopsis, short: "run one process per input, like GNU parallel", run: runRun},
		{name: "map", synopsis: mapSynopsis, short: "stream stdin to stdout through persistent line workers", run: runMap},
		{name: "report", synopsis: reportSynopsis, short: "write an HTML page about a run from its --journal file", run: runReport},
		{name: "server", synopsis: serverSynopsis, short: "run a NATS server with JetStream for agents on many machines", run: runServer},
		{name: "agent", synopsis: agentSynopsis, short: "run tasks of run/map --nats on this machine", run: runAgent},
		{name: "demo", synopsis: demoSynopsis, short: "show an OOM-killed task, its cause and its retry (about 5 s)", run: runDemo},
		{name: "version", synopsis: versionSynopsis, short: "print the version of safepool", run: runVersion},
		{name: demoWorkerName, hidden: true, run: runDemoWorker},
		{name: bridgeName, hidden: true, run: runBridge},
	}
}

// unknownCommandHint says what was meant by name, which is no subcommand,
// or returns "": a flag given before the subcommand, a typo of one, or a
// program run as GNU parallel runs it (safepool gzip {} ::: a b).
func unknownCommandHint(name string) string {
	switch {
	case name == "-V" || name == "-v" || name == "-version":
		return " (safepool --version prints the version)"
	case strings.HasPrefix(name, "-"):
		return " (flags come after the command: safepool run " + name + " ...)"
	case name == "parallel" || name == "xargs":
		return " (safepool run takes the place of " + name + ": safepool run CMD ...)"
	}
	for _, c := range commands() {
		if !c.hidden && editDistance(name, c.name) <= 1+len(c.name)/4 {
			return " (did you mean safepool " + c.name + "?)"
		}
	}
	if _, err := exec.LookPath(name); err == nil {
		return " (to run it for each input, as GNU parallel does: safepool run " + name + " ...)"
	}
	return ""
}

// findCommand returns the subcommand called name, or nil.
func findCommand(name string) *command {
	for _, c := range commands() {
		if c.name == name {
			return c
		}
	}
	return nil
}

// Run runs the safepool command line with args (without the program name)
// and returns the process's exit status: 0 when every task succeeded, 1 when
// some failed, 2 for a usage error, 3 when the run was stopped before the
// end. Cancelling ctx is how the caller says the user pressed Ctrl-C (see
// NotifyContext): the pool stops its workers gracefully and Run returns 3
// after the summary; a further SIGINT, SIGTERM or SIGHUP kills the workers
// at once.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		writeTopUsage(stderr)
		return exitUsage
	}
	cmd := findCommand(args[0])
	switch {
	case cmd != nil:
	case args[0] == "--version":
		cmd = findCommand("version")
		args = append([]string{"version"}, args[1:]...)
	case args[0] == "help" || args[0] == "-h" || args[0] == "--help":
		if len(args) > 1 {
			return Run(ctx, []string{args[1], "--help"}, stdin, stdout, stderr)
		}
		writeTopUsage(stdout)
		return exitOK
	default:
		fmt.Fprintf(stderr, "safepool: unknown command %q%s\n", args[0], unknownCommandHint(args[0]))
		writeTopUsage(stderr)
		return exitUsage
	}
	return exitStatus(stderr, cmd.run(ctx, e, args[1:]))
}

// lineMapGOGC is the garbage collector's GOGC in map of lines or framed
// tasks (not --pipe), unless the environment sets GOGC. There the live
// heap is small and bounded (the lines in flight and their answers), and
// at Go's default of 100 the collector runs every few megabytes: in map of
// a million trivial lines it took about a third of the run, and the
// supervisor, not the workers, set the pace. 300 lets the heap grow to
// four times what is live before a collection, some 5 to 15 MB more at
// the peak, flat in the input's size (docs/benchmarks.md). Elsewhere the
// live heap can be large (map --pipe's blocks, run -k's outputs held for
// order, a Python client's batches), and four times it would be too
// much: those keep Go's default.
const lineMapGOGC = 300

// setLineMapGOGC sets GOGC to lineMapGOGC unless the environment sets it
// or the run resumes: a resumed map holds the keys of every task that
// earlier runs finished (journal.Resumer), a live heap that grows with
// the journal, and four times it would be too much (2 million keys, some
// 200 MiB, made a supervisor of 800 MiB).
func setLineMapGOGC(resuming bool) {
	if os.Getenv("GOGC") == "" && !resuming {
		debug.SetGCPercent(lineMapGOGC)
	}
}

// exitStatus prints err as Run does and returns its exit status.
func exitStatus(stderr io.Writer, err error) int {
	var ue *usageError
	var se *statusError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		cmd := findCommand(ue.cmd)
		if cmd == nil {
			fmt.Fprintf(stderr, "safepool: %v\n", ue.err)
			writeTopUsage(stderr)
			return exitUsage
		}
		fmt.Fprintf(stderr, "safepool %s: %v\n", cmd.name, ue.err)
		for i, s := range cmd.synopsis {
			if i == 0 {
				fmt.Fprintf(stderr, "Usage: %s\n", s)
			} else {
				fmt.Fprintf(stderr, "       %s\n", s)
			}
		}
		fmt.Fprintf(stderr, "Run 'safepool %s --help' for the flags.\n", cmd.name)
		return exitUsage
	case errors.As(err, &se):
		if se.err != nil {
			fmt.Fprintf(stderr, "safepool: %v\n", se.err)
		}
		return se.status
	default:
		fmt.Fprintf(stderr, "safepool: %v\n", err)
		return exitFailed
	}
}

func writeTopUsage(w io.Writer) {
	var b strings.Builder
	b.WriteString(`safepool runs commands over many inputs, like GNU parallel and xargs -P,
and survives the OOM killer: it says why each job died, caps memory per
worker and retries.

Usage:
  safepool COMMAND [flags] ...

Commands:
`)
	for _, c := range commands() {
		if !c.hidden {
			fmt.Fprintf(&b, "  %-8s %s\n", c.name, c.short)
		}
	}
	b.WriteString(`
Run 'safepool COMMAND --help' for a command's flags, and 'safepool --version'
for the version. docs/cli.md is the guide.
`)
	io.WriteString(w, b.String())
}
