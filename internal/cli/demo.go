package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/safepool/safepool/internal/bytesize"
	"github.com/safepool/safepool/pool"
)

var demoSynopsis = []string{"safepool demo [flags]"}

const demoIntro = `safepool demo shows what safepool is for, in a few seconds. It runs 40
tasks on 4 persistent line workers, which are this program itself in a hidden
worker mode, each worker capped at --mem-limit. Task 7 allocates memory until
the kernel kills its worker; the others sleep 100ms and answer. The first pass
shows the summary naming task 7's cause; the second pass, with --retries 1,
where task 7 misbehaves only on its first attempt, completes all 40.
`

const demoOutro = `
Exit status: 0 when the demo behaved as designed, 1 otherwise (it says why).
`

// demoArgs are the flags of safepool demo.
type demoArgs struct {
	jobs     int
	tasks    int
	hog      int
	memLimit int64
	progress string
}

func (a *demoArgs) flagSet() *pflag.FlagSet {
	fs := newFlagSet("demo")
	fs.IntVarP(&a.jobs, "jobs", "j", 4, "run `N` workers")
	fs.IntVar(&a.tasks, "tasks", 40, "run `N` tasks")
	fs.IntVar(&a.hog, "hog", 7, "make task `N` the one that allocates memory until it is killed")
	a.memLimit = 256 << 20
	limit := newSizeValue(&a.memLimit)
	limit.set = "256MiB" // the default as help shows it
	fs.Var(limit, "mem-limit", "cap each worker's memory at `SIZE`")
	a.progress = "auto"
	on := fs.VarPF(&choiceValue{p: &a.progress, v: "on"}, "progress", "", "show the progress bar (default: only when stderr is a terminal)")
	on.NoOptDefVal = "true"
	off := fs.VarPF(&choiceValue{p: &a.progress, v: "off"}, "no-progress", "", "never show the progress bar")
	off.NoOptDefVal = "true"
	registerHelp(fs)
	return fs
}

func runDemo(ctx context.Context, e *env, args []string) error {
	var a demoArgs
	fs := a.flagSet()
	if err := parseFlags("demo", fs, args); err != nil {
		if err == errHelp {
			writeHelp(e.stdout, demoIntro, demoSynopsis, fs, demoOutro)
			return nil
		}
		return err
	}
	switch {
	case fs.NArg() > 0:
		return usagef("demo", "unexpected argument %q", fs.Arg(0))
	case a.jobs < 1:
		return usagef("demo", "-j must be at least 1")
	case a.tasks < 1 || a.hog < 1 || a.hog > a.tasks:
		return usagef("demo", "--hog must be between 1 and --tasks")
	case a.memLimit <= 0:
		return usagef("demo", "--mem-limit must be more than 0")
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("demo: cannot find this program: %w", err)
	}
	dir, err := os.MkdirTemp("", "safepool-demo-")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer os.RemoveAll(dir)
	progressOn := a.progress == "on" || a.progress == "auto" && isTerminal(e.stderr)

	fmt.Fprintf(e.stdout, "safepool demo: %d tasks on %d line workers, each capped at %s.\n", a.tasks, a.jobs, bytesize.Format(a.memLimit))
	fmt.Fprintf(e.stdout, "Task %d allocates memory until it is killed; the others sleep 100ms and answer.\n", a.hog)

	// The hog stops growing at 4× the limit, so that a host where the
	// limit is not enforced at all does not run out of memory.
	hogMax := strconv.FormatInt(4*a.memLimit, 10)
	passes := []struct {
		title   string
		retries int
		worker  []string
	}{
		{"pass 1: --retries 0", 0, []string{exe, demoWorkerName, "--hog", strconv.Itoa(a.hog), "--hog-max", hogMax}},
		{fmt.Sprintf("pass 2: --retries 1, and task %d hogs only on its first attempt", a.hog), 1,
			[]string{exe, demoWorkerName, "--hog", strconv.Itoa(a.hog), "--hog-max", hogMax, "--hog-once", filepath.Join(dir, "hogged")}},
	}
	var outcomes [2]map[uint64]pool.Result
	for i, ps := range passes {
		fmt.Fprintf(e.stdout, "\n== %s\n", ps.title)
		fmt.Fprintf(e.stdout, "$ seq %d | safepool map -j %d --mem-limit %s --retries %d --worker 'safepool %s --hog %d'\n",
			a.tasks, a.jobs, formatSizeFlag(a.memLimit), ps.retries, demoWorkerName, a.hog)
		inputs := make([]string, a.tasks)
		for n := range inputs {
			inputs[n] = strconv.Itoa(n + 1)
		}
		got := map[uint64]pool.Result{} // written by emit, on the results loop

		j := &job{
			mode: "demo",
			cfg: pool.Config{
				Command:  ps.worker,
				Protocol: pool.Line,
				Workers:  a.jobs,
				MemLimit: a.memLimit,
				Retries:  ps.retries,
			},
			src:  &argSource{args: inputs},
			task: func(_ uint64, input []byte) pool.Task { return pool.Task{Input: input} },
			emit: func(o *output, r *pool.Result) {
				got[r.ID] = pool.Result{ID: r.ID, State: r.State, Attempts: r.Attempts}
				if r.State == pool.Done {
					o.stdout([]byte(fmt.Sprintf("task %2d: %s\n", r.ID, r.Output)))
				} else {
					o.stdout([]byte(fmt.Sprintf("task %2d: %s (%s)\n", r.ID, r.State, r.Cause())))
				}
			},
			progress: progressOn,
			messages: true,
			e:        e,
		}
		_, status := j.execute(ctx)
		if status == exitAborted || status == exitUsage {
			return &statusError{status: status}
		}
		outcomes[i] = got
	}
	if err := checkDemo(a, outcomes); err != nil {
		return &statusError{status: exitFailed, err: err}
	}
	fmt.Fprintf(e.stdout, "\nAs designed: pass 1 lost only task %d, killed for memory with its cause named; pass 2 retried it and completed all %d.\n", a.hog, a.tasks)
	return nil
}

// checkDemo reports whether the two passes went as designed.
func checkDemo(a demoArgs, passes [2]map[uint64]pool.Result) error {
	hog := uint64(a.hog)
	for id := uint64(1); id <= uint64(a.tasks); id++ {
		r1, ok := passes[0][id]
		if !ok {
			return fmt.Errorf("demo: pass 1 has no result for task %d", id)
		}
		if id == hog {
			switch c := r1.Cause(); c {
			case pool.CauseOOM, pool.CauseMemoryLimit, pool.SignalCause(syscall.SIGKILL):
			default:
				return fmt.Errorf("demo: pass 1: task %d ended %s (cause %q), want it killed for memory", id, r1.State, c)
			}
			continue
		}
		if r1.State != pool.Done {
			return fmt.Errorf("demo: pass 1: task %d ended %s (%s), want done", id, r1.State, r1.Cause())
		}
	}
	for id := uint64(1); id <= uint64(a.tasks); id++ {
		r2, ok := passes[1][id]
		if !ok || r2.State != pool.Done {
			return fmt.Errorf("demo: pass 2: task %d ended %s (%s), want done", id, r2.State, r2.Cause())
		}
	}
	return nil
}
