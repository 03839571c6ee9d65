package cli

import (
	"context"
	"fmt"

	"github.com/safepool/safepool/internal/cluster"
	"github.com/safepool/safepool/pool"
)

var agentSynopsis = []string{"safepool agent --nats URL [flags]"}

const agentIntro = `safepool agent runs the tasks of run and map --nats on this machine: a local
supervised pool that pulls tasks from the NATS server only as fast as it has
free slots and memory for them, and records each task's result once. Start
one on each machine. A task killed for memory goes on to an agent with more;
a machine that is lost hands its tasks on after a few seconds
(docs/cluster.md). SIGINT or SIGTERM stops it and hands its tasks back.
`

const agentOutro = `
-j, the memory flags, --mem-limit and --grace are this machine's: the agent
pulls only the memory classes that fit --mem-limit (or its memory budget).
--timeout and --timeout-grace are too, for runs that give none of their own.
--retries and --on-worker-death are the run's, given to run or map.

Examples:
  safepool agent --nats nats://queue.example:4222 -j 8 --mem-limit 4GiB
`

// agentArgs are the flags of safepool agent.
type agentArgs struct {
	url    string
	name   string
	common commonFlags
}

func runAgent(ctx context.Context, e *env, args []string) error {
	var a agentArgs
	fs := newFlagSet("agent")
	fs.StringVar(&a.url, "nats", "", "pull tasks from the NATS server at `URL` (required)")
	fs.StringVar(&a.name, "name", "", "name this agent `NAME` in results (default: host name and process id)")
	fs.IntVarP(&a.common.jobs, "jobs", "j", 0, "run up to `N` tasks at once (default: the number of CPUs); the memory governor may take fewer")
	fs.DurationVar(&a.common.timeout, "timeout", 0, "end an attempt that runs longer than `DURATION`, unless the run gives its own --timeout: SIGTERM, then SIGKILL after --timeout-grace")
	a.common.registerTimeoutGrace(fs, ", unless the run gives its own --timeout-grace")
	fs.Var(newSizeValue(&a.common.memLimit).nonZero("0 would mean no memory at all; omit the flag for no limit"), "mem-limit", "cap each worker's memory at `SIZE`; the agent takes only tasks whose need fits")
	boolVarP(fs, &a.common.noData, "no-data-limit", "", "without cgroups, hold workers to --mem-limit by sampling alone")
	a.common.mem.register(fs)
	fs.DurationVar(&a.common.grace, "grace", 0, "give stopped workers `DURATION` between SIGTERM and SIGKILL (default 3s)")
	registerHelp(fs)
	if err := parseFlags("agent", fs, args); err != nil {
		if err == errHelp {
			writeHelp(e.stdout, agentIntro, agentSynopsis, fs, agentOutro)
			return nil
		}
		return err
	}
	switch {
	case fs.NArg() > 0:
		return usagef("agent", "unexpected argument %q", fs.Arg(0))
	case a.url == "":
		return usagef("agent", "missing --nats URL")
	}
	cfg, err := a.common.config("agent", pool.OneShot, []string{"{}"})
	if err != nil {
		return err
	}
	ag, err := cluster.NewAgent(ctx, cluster.AgentConfig{URL: a.url, Name: a.name, Pool: cfg, Log: lossyWriter{e.stderr}, Version: version()})
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while it waited for the server, as a running agent stops
		}
		return &statusError{status: exitUsage, err: err}
	}
	if err := ag.Run(ctx); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}
