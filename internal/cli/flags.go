package cli

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/safepool/safepool/pool"
)

// commonFlags are the flags that run and map share. Their names are part of
// safepool's interface: scripts depend on them.
type commonFlags struct {
	jobs      int
	retries   int
	onDeath   string
	timeout   time.Duration
	memLimit  int64
	noData    bool // --no-data-limit
	mem       memoryFlags
	keepOrder bool
	argFiles  []string
	joblog    string
	journal   journalFlags
	progress  string // "auto", "on" or "off"; --progress and --no-progress set it, the last one wins
	quiet     bool
	grace     time.Duration
	metrics   string // --metrics ADDR, or ""

	// timeoutGrace is --timeout-grace: 0 means SIGKILL at once.
	timeoutGrace time.Duration
}

// register adds the shared flags to fs. Flags that only one subcommand has
// are added between the calls of registerPool and registerOutput by the
// subcommand itself, so the help lists related flags together.
func (f *commonFlags) registerPool(fs *pflag.FlagSet, retriesUsage string) {
	fs.VarP(jobsValue{&f.jobs}, "jobs", "j", "run up to `N` workers at once (default: the number of CPUs); the memory governor may start fewer until it has measured some tasks, and when memory is short (--no-governor: always N)")
	fs.VarP(jobsValue{&f.jobs}, "max-procs", "P", "same as -j, for xargs users")
	fs.MarkHidden("max-procs")
	fs.IntVar(&f.retries, "retries", 0, retriesUsage)
	fs.StringVar(&f.onDeath, "on-worker-death", "", "what to do when a worker dies during a task: `ACTION` is retry, skip or abort (default: retry when --retries > 0, else skip)")
	fs.DurationVar(&f.timeout, "timeout", 0, "end an attempt that runs longer than `DURATION`, such as 90s or 1h30m: SIGTERM, then SIGKILL after --timeout-grace")
	f.registerTimeoutGrace(fs, " (with --nats: the run's, in place of each agent's own)")
	fs.Var(newSizeValue(&f.memLimit).nonZero("0 would mean no memory at all; omit the flag for no limit").atLeast(pool.MinMemory), "mem-limit", "cap each worker's memory at `SIZE`, such as 512MiB or 2G; only that worker is killed when it goes over")
	boolVarP(fs, &f.noData, "no-data-limit", "", "without cgroups, hold workers to --mem-limit by sampling alone, without the data size limit (RLIMIT_DATA) that some runtimes cannot run under, such as Go built with -race")
	f.mem.register(fs)
	boolVarP(fs, &f.keepOrder, "keep-order", "k", "write outputs in input order, not as tasks finish")
}

func (f *commonFlags) registerInput(fs *pflag.FlagSet) {
	fs.StringArrayVarP(&f.argFiles, "arg-file", "a", nil, "read inputs from the lines of `FILE` instead of stdin (\"-\" is stdin); repeat to read several files one after the other")
}

func (f *commonFlags) registerOutput(fs *pflag.FlagSet) {
	fs.StringVar(&f.joblog, "joblog", "", "write one TSV row per attempt to `FILE`, each as its attempt ends")
	fs.StringVar(&f.journal.path, "journal", "", "record every task, attempt and memory sample in the SQLite database `FILE`, for --resume and safepool report")
	boolVarP(fs, &f.journal.resume, "resume", "", "skip the inputs that earlier runs of this command with this --journal finished, done or failed")
	boolVarP(fs, &f.journal.resumeFailed, "resume-failed", "", "skip the inputs that earlier runs of this command with this --journal did, and run failed ones again")
	f.progress = "auto"
	on := fs.VarPF(&choiceValue{p: &f.progress, v: "on"}, "progress", "", "show the progress bar (default: only when stderr is a terminal)")
	on.NoOptDefVal = "true"
	off := fs.VarPF(&choiceValue{p: &f.progress, v: "off"}, "no-progress", "", "never show the progress bar")
	off.NoOptDefVal = "true"
	boolVarP(fs, &f.quiet, "quiet", "q", "print no summary when every task succeeded")
	fs.DurationVar(&f.grace, "grace", 0, "give stopped workers `DURATION` between SIGTERM and SIGKILL (default 3s)")
}

// registerTimeoutGrace adds --timeout-grace, which run, map and agent
// share; more, in its usage, says whose it is with --nats.
func (f *commonFlags) registerTimeoutGrace(fs *pflag.FlagSet, more string) {
	fs.DurationVar(&f.timeoutGrace, "timeout-grace", pool.DefaultTimeoutGrace, "give an attempt that ran past --timeout `DURATION` between SIGTERM and SIGKILL to clean up"+more+"; 0: SIGKILL at once")
}

// config returns the pool configuration the flags ask for.
func (f *commonFlags) config(cmd string, protocol pool.Protocol, command []string) (pool.Config, error) {
	cfg := pool.Config{
		Command:     command,
		Protocol:    protocol,
		Workers:     f.jobs,
		Retries:     f.retries,
		Timeout:     f.timeout,
		MemLimit:    f.memLimit,
		NoDataLimit: f.noData,
		KeepOrder:   f.keepOrder,
		Grace:       f.grace,
	}
	cfg.TimeoutGrace = f.timeoutGrace
	if f.timeoutGrace == 0 {
		cfg.TimeoutGrace = -1 // the pool's way to say SIGKILL at once
	}
	if f.jobs < 0 {
		return cfg, usagef(cmd, "-j must be at least 0, not %d (GNU parallel's -j -N, the CPUs less N, is not supported)", f.jobs)
	}
	if f.retries < 0 {
		return cfg, usagef(cmd, "--retries must be at least 0, not %d", f.retries)
	}
	if f.timeout < 0 {
		return cfg, usagef(cmd, "--timeout must not be negative")
	}
	if f.grace < 0 {
		return cfg, usagef(cmd, "--grace must not be negative")
	}
	if f.timeoutGrace < 0 {
		return cfg, usagef(cmd, "--timeout-grace must not be negative")
	}
	if err := f.journal.check(cmd); err != nil {
		return cfg, err
	}
	if err := f.mem.apply(cmd, &cfg); err != nil {
		return cfg, err
	}
	if f.onDeath != "" {
		a, err := pool.ParseAction(f.onDeath)
		if err != nil {
			return cfg, usagef(cmd, "--on-worker-death must be retry, skip or abort, not %q", f.onDeath)
		}
		cfg.OnWorkerDeath = a
		if f.retries > 0 && a == pool.Skip {
			// Skip retries nothing: taken silently, --retries did nothing.
			// (Abort retries first, then stops the run, as GNU parallel's
			// --retries with --halt now,fail=1.)
			return cfg, usagef(cmd, "--retries %d and --on-worker-death skip: skip fails a task at its first failure, and no task would be retried (leave out --on-worker-death to retry)",
				f.retries)
		}
	}
	return cfg, nil
}

// progressOn decides whether to show the progress bar on stderr. typed:
// the inputs are read from the terminal, where the bar, redrawn five times
// a second, would wipe out the line being typed; it is then off unless
// --progress asks for it.
func (f *commonFlags) progressOn(stderr io.Writer, typed bool) bool {
	switch f.progress {
	case "on":
		return true
	case "off":
		return false
	}
	return !typed && isTerminal(stderr)
}

// jsonValue is --json FILE, the same in run and map. Its argument is
// required, so --json cannot mean two things; and it is never a flag, so
// that --json --worker cat is a mistake rather than a file named --worker.
// "-" (stdout) is a valid argument here; map refuses it.
type jsonValue struct{ p *string }

func (j jsonValue) Set(s string) error {
	switch {
	case s == "":
		return errors.New("want a FILE")
	case strings.HasPrefix(s, "-") && s != "-":
		return errors.New("want a FILE (or - for stdout in run), not a flag")
	}
	*j.p = s
	return nil
}

func (j jsonValue) String() string { return *j.p }
func (j jsonValue) Type() string   { return "FILE" }

// jobsValue is -j N, a number of jobs. GNU parallel's -j also takes +N
// (the CPUs plus N) and N% (of the CPUs): read as a number, +2 ran two
// jobs without a word, so those forms are refused. Its -N is refused by
// commonFlags.config, as any negative number.
type jobsValue struct{ p *int }

func (v jobsValue) Set(s string) error {
	switch {
	case strings.HasPrefix(s, "+"):
		return errors.New("GNU parallel's +N (the CPUs plus N) is not supported: give a number of jobs")
	case strings.HasSuffix(s, "%"):
		return errors.New("GNU parallel's N% (a share of the CPUs) is not supported: give a number of jobs")
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("want a number of jobs")
	}
	*v.p = n
	return nil
}

func (v jobsValue) String() string { return strconv.Itoa(*v.p) }
func (v jobsValue) Type() string   { return "int" }

// boolValue is a boolean flag that pflag's help shows as plain "--name",
// without the "[=true|false]" it adds to its own bool flags.
type boolValue struct{ p *bool }

func (b boolValue) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("want true or false")
	}
	*b.p = v
	return nil
}

func (b boolValue) String() string { return strconv.FormatBool(*b.p) }
func (b boolValue) Type() string   { return "bool" }

// boolVarP defines a boolean flag, false by default.
func boolVarP(fs *pflag.FlagSet, p *bool, name, short, usage string) {
	f := fs.VarPF(boolValue{p}, name, short, usage)
	f.NoOptDefVal = "true"
	f.DefValue = "false"
}

// choiceValue is a boolean-looking flag that stores v in *p when set, so
// that two flags such as --progress and --no-progress share one setting.
type choiceValue struct {
	p *string
	v string
}

func (c *choiceValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("want true or false")
	}
	if b {
		*c.p = c.v
	}
	return nil
}

func (c *choiceValue) String() string { return "" }
func (c *choiceValue) Type() string   { return "bool" }

// newFlagSet returns a flag set that reports errors instead of printing or
// exiting, and that stops at the first argument that is not a flag, so that
// the command's own flags (gzip -9) need no "--".
func newFlagSet(name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.SetInterspersed(false)
	fs.SortFlags = false
	return fs
}

// registerHelp adds -h/--help last, so the help lists it last.
func registerHelp(fs *pflag.FlagSet) {
	var help bool
	boolVarP(fs, &help, "help", "h", "show this help")
}

// parseFlags parses args and turns flag errors into usage errors. It
// returns errHelp when -h or --help was given.
func parseFlags(cmd string, fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return &usageError{cmd: cmd, err: unknownFlagHint(cmd, fs, err)}
	}
	if h := fs.Lookup("help"); h != nil && h.Value.String() == "true" {
		return errHelp
	}
	var err error
	fs.Visit(func(f *pflag.Flag) {
		if err == nil {
			err = dashArgument(f)
		}
	})
	if err != nil {
		return &usageError{cmd: cmd, err: err}
	}
	return nil
}

// unknownFlagHint adds to pflag's error about an unknown flag what to
// write instead: the flag meant, for a typo (--keep-ordr), or safepool's
// way to do what a flag of GNU parallel or xargs does (--halt, -I {}).
// Other errors are returned as they are.
func unknownFlagHint(cmd string, fs *pflag.FlagSet, err error) error {
	msg := err.Error()
	var hint string
	if name, ok := strings.CutPrefix(msg, "unknown flag: --"); ok {
		name, _, _ = strings.Cut(name, "=")
		hint = longFlagHints[name]
		if h, ok := longFlagHints[cmd+" "+name]; ok {
			hint = h
		}
		if hint == "" {
			if near := nearestFlag(fs, name); near != "" {
				hint = "did you mean --" + near + "?"
			}
		}
	} else if rest, ok := strings.CutPrefix(msg, "unknown shorthand flag: '"); ok && len(rest) > 0 {
		hint = shortFlagHints[cmd+" "+rest[:1]]
	}
	if hint == "" {
		return err
	}
	return fmt.Errorf("%s (%s)", msg, hint)
}

// longFlagHints say what to write instead of a flag of GNU parallel or
// xargs that safepool does not have, by its name, or by "run NAME" or
// "map NAME" where it depends on the command.
var longFlagHints = map[string]string{
	"halt":            "--on-worker-death abort stops at the first failure, as --halt now,fail=1",
	"retry":           "did you mean --retries?",
	"tmpdir":          "large outputs are kept in $TMPDIR: set it",
	"termseq":         "--timeout sends SIGTERM, then SIGKILL after --timeout-grace (0: SIGKILL at once)",
	"bar":             "--progress shows a progress bar",
	"eta":             "--progress shows the ETA",
	"max-args":        "each job takes one input",
	"max-lines":       "each job takes one input; map --pipe cuts blocks by --block bytes",
	"ungroup":         "a job's output is written whole when it ends",
	"line-buffer":     "a job's output is written whole when it ends",
	"tag":             "not supported: the job log and the summary name each task's input",
	"delimiter":       "inputs end with a newline, or with NUL with -0",
	"group":           "a job's output is written whole when it ends: leave --group out",
	"tagstring":       "not supported: the job log and the summary name each task's input",
	"colsep":          "not supported: each input is one value, {}; split it in a shell command line",
	"memfree":         "the memory governor starts a job only when its memory fits: see --mem-budget and --mem-reserve",
	"will-cite":       "safepool prints no citation notice: leave --will-cite out",
	"no-run-if-empty": "with no input, nothing runs: leave --no-run-if-empty out",
	"run replace":     "{} always stands for the input: leave --replace out",
	"run xargs":       "each job takes one input",
	"run verbose":     "--dry-run shows the commands",
	"run pipe":        "--pipe is safepool map's: safepool map --pipe CMD",
	"run block":       "--block is safepool map --pipe's",
	"run recend":      "--recend is safepool map --pipe's",
	"map null":        "-0 is safepool run's; map reads lines, and map --pipe cuts records at --recend '\\0'",
	"map dry-run":     "--dry-run is safepool run's",
}

// shortFlagHints are longFlagHints for one-letter flags, which xargs
// users bring, by "run L" or "map L".
var shortFlagHints = map[string]string{
	"run I": "{} always stands for the input: leave -I {} out",
	"run i": "{} always stands for the input: leave -i out",
	"run n": "each job takes one input: leave -n 1 out",
	"run L": "each job takes one input: leave -L 1 out",
	"run N": "each job takes one input: leave -N 1 out",
	"run d": "inputs end with a newline, or with NUL with -0",
	"run r": "with no input, nothing runs: leave -r out",
	"run t": "--dry-run shows the commands",
	"run v": "--dry-run shows the commands",
	"run X": "each job takes one input",
	"run m": "each job takes one input",
	"run u": "a job's output is written whole when it ends",
	"map N": "map --pipe cuts blocks by --block bytes, not by records",
	"map L": "map --pipe cuts blocks by --block bytes, not by lines",
	"map 0": "-0 is safepool run's; map reads lines, and map --pipe cuts records at --recend '\\0'",
}

// nearestFlag returns the name of fs's flag closest to name, or "": the
// only flag that name begins (--dry for --dry-run: GNU parallel takes a
// flag's unambiguous beginning for it), else the flag name is a typo of
// (one edit away for names of up to 4 bytes, two for longer ones).
func nearestFlag(fs *pflag.FlagSet, name string) string {
	var starts []string
	fs.VisitAll(func(f *pflag.Flag) {
		if !f.Hidden && strings.HasPrefix(f.Name, name) {
			starts = append(starts, f.Name)
		}
	})
	if len(starts) == 1 && len(name) >= 2 {
		return starts[0]
	}
	best, bestD := "", 3
	if len(name) <= 4 {
		bestD = 2
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		if d := editDistance(name, f.Name); d < bestD {
			best, bestD = f.Name, d
		}
	})
	return best
}

// editDistance is the number of edits between a and b, in bytes: a byte
// added, removed, changed, or two next to each other swapped.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// dashArgument refuses an argument of f that starts with '-': pflag takes
// the word after a flag as its argument whatever it is, so that in
// "--joblog -k echo" -k would be a file name, not the flag, and nothing
// would say so. "-" alone is stdin or stdout, where a flag takes it
// (stdinOK); --recend's argument is text, which may start with '-'.
func dashArgument(f *pflag.Flag) error {
	if f.Name == "recend" || f.Hidden {
		return nil
	}
	var values []string
	switch v := f.Value.(type) {
	case pflag.SliceValue:
		values = v.GetSlice()
	default:
		if f.Value.Type() != "string" {
			return nil // numbers, sizes, durations and --json check their own
		}
		values = []string{f.Value.String()}
	}
	for _, s := range values {
		if !strings.HasPrefix(s, "-") || s == "-" && dashOK[f.Name] {
			return nil
		}
		name, _ := pflag.UnquoteUsage(f)
		hint := ""
		if name == "FILE" || name == "DIR" || name == "OUT" {
			hint = fmt.Sprintf(" (write ./%s for a file named so)", s)
		}
		if s == "-" {
			return fmt.Errorf("--%s %s: - is not stdin or stdout here%s", f.Name, name, hint)
		}
		return fmt.Errorf("--%s %s: %s is a flag, where %s should be%s", f.Name, name, s, name, hint)
	}
	return nil
}

// dashOK are the flags that take "-" for stdin or stdout.
var dashOK = map[string]bool{"arg-file": true, "output": true}

// errHelp says that the user asked for help; the subcommand prints it and
// exits 0.
var errHelp = errors.New("help requested")

// helpWidth is the width the help text is wrapped to.
const helpWidth = 80

// writeHelp writes a subcommand's help: intro, the synopsis, its flags
// as pflag formats them, and the trailing sections.
func writeHelp(w io.Writer, intro string, synopsis []string, fs *pflag.FlagSet, outro string) {
	var b strings.Builder
	b.WriteString(intro)
	b.WriteString("\nUsage:\n")
	for _, s := range synopsis {
		fmt.Fprintf(&b, "  %s\n", s)
	}
	b.WriteString("\nFlags:\n")
	b.WriteString(fs.FlagUsagesWrapped(helpWidth))
	b.WriteString(outro)
	io.WriteString(w, b.String())
}

// memoryFlags are the memory governor's flags (docs/memory.md).
type memoryFlags struct {
	budget, perTask, reserve int64
	high, psi                float64 // percentages; 0 turns the trigger off
	off                      bool
}

func (m *memoryFlags) register(fs *pflag.FlagSet) {
	fs.Var(newSizeValue(&m.budget).nonZero("0 would leave the workers no memory at all; omit the flag for the default").atLeast(pool.MinMemory), "mem-budget", "let the workers use at most `SIZE` together (default: the host's memory or the enclosing cgroup's limit, less a reserve)")
	fs.Var(newSizeValue(&m.perTask).atLeast(pool.MinMemory), "mem-per-task", "expect each task to need `SIZE` at its peak until peaks are measured, and set that aside for its whole run")
	fs.Var(newSizeValue(&m.reserve), "mem-reserve", "hold `SIZE` of the host's memory and the cgroup's limit back for others (default: a tenth, 64MiB to 2GiB)")
	m.high, m.psi = 95, 40
	fs.Float64Var(&m.high, "mem-high", m.high, "stop the youngest task when more than `PERCENT` of the host's memory or the cgroup's limit is in use; 0: never")
	fs.Float64Var(&m.psi, "mem-psi", m.psi, "stop the youngest task when memory pressure (PSI full avg10) is over `PERCENT`; 0: never")
	boolVarP(fs, &m.off, "no-governor", "", "run -j tasks at once whatever memory they need: no admission, poison or preemption")
}

// apply sets the governor's fields of cfg.
func (m *memoryFlags) apply(cmd string, cfg *pool.Config) error {
	// Written so that NaN, which no comparison holds for, is refused too:
	// taken, it turned the trigger off without a word.
	if !(m.high >= 0 && m.high <= 100) {
		return usagef(cmd, "--mem-high must be a percentage from 0 to 100, not %v", m.high)
	}
	if m.high > 0 && m.high < 1 {
		// A fraction given for a percentage: 0.9 would stop the youngest
		// task whenever 0.9% of memory is in use, that is always.
		return usagef(cmd, "--mem-high is a percentage: %v would stop tasks whenever %v%% of memory is in use (for %v%%, give %v)", m.high, m.high, m.high*100, m.high*100)
	}
	if !(m.psi >= 0 && m.psi <= 100) {
		return usagef(cmd, "--mem-psi must be a percentage from 0 to 100, not %v", m.psi)
	}
	cfg.NoGovernor = m.off
	cfg.MemBudget, cfg.MemPerTask, cfg.MemReserve = m.budget, m.perTask, m.reserve
	cfg.PreemptAbove, cfg.PreemptPSI = m.high/100, m.psi
	if m.high == 0 {
		cfg.PreemptAbove = -1
	}
	if m.psi == 0 {
		cfg.PreemptPSI = -1
	}
	return nil
}
