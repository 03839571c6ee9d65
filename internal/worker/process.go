// Package worker starts and ends one worker process: exec (never fork), its
// own process group, death of the parent signalled to it, its pipes, and the
// single goroutine that waits for it.
package worker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/protocol"
)

// Cgroup places a process in a control group before any of its code runs.
// *memory.Group implements it.
type Cgroup interface {
	// Prepare changes cmd so that the process starts inside the group.
	Prepare(cmd *exec.Cmd) error
	// Started releases what Prepare held, after cmd.Start returned.
	Started()
}

// Starter is a Cgroup that starts the process itself, inside the group
// and with oom_score_adj 1000, in place of Prepare, the start, Started and
// Start's own write of the score. *memory.Group implements it: under
// cgroup v1 it forks from a thread placed in the group. It forks through
// start, on the calling thread, and returns the process's id.
type Starter interface {
	Spawn(cmd *exec.Cmd, start memory.Spawner) (pid int, err error)
}

// IO says which pipes a worker gets.
type IO int

const (
	// IONone gives the worker /dev/null as stdin.
	IONone IO = iota
	// IOLine gives the worker a pipe as stdin for tasks and a pipe as stdout
	// for results.
	IOLine
	// IOFramed gives the worker a task pipe as fd 3 and a result pipe as
	// fd 4; its stdin is /dev/null and its stdout goes to Spec.Stdout.
	IOFramed
)

// Spec describes a worker process to start.
type Spec struct {
	// Args is the argument vector; Args[0] is looked up in PATH unless
	// Path is set.
	Args []string
	// Path, if not empty, is the program to run, Args[0] as the caller
	// found it already (exec.LookPath).
	Path string
	// Env is the environment; nil means the supervisor's.
	Env []string
	// EnvUnique says that Env names no variable twice: a process started
	// without exec.Cmd gets it as it is, rather than a de-duplicated copy
	// made for every process (a pool's slots make theirs once).
	EnvUnique bool
	// Dir is the working directory; empty means the supervisor's.
	Dir string
	// IO selects the pipes.
	IO IO
	// Stdout receives the worker's stdout when IO is not IOLine; nil
	// discards it. An *os.File is handed to the worker directly.
	Stdout io.Writer
	// LargeStdout says that Stdout, neither nil nor a file, may come in
	// megabytes (a block's output): past its first 64 KiB, the pipe is
	// read in large pieces, a few hundred times a second, rather than at
	// every write the worker makes (paced.go). It saves the supervisor
	// most of its CPU on such outputs; a small one is read as any.
	LargeStdout bool
	// StdoutPipe, with LargeStdout, is the size of pipe to ask for, at
	// most 1 MiB; zero asks 1 MiB. Pipes count against a user's
	// /proc/sys/fs/pipe-user-pages-soft (64 MiB), past which an
	// unprivileged user's new pipes get a page each: many workers should
	// ask less each.
	StdoutPipe int
	// Stderr receives the worker's stderr; nil discards it. The last few
	// KiB are also kept for StderrTail.
	Stderr io.Writer
	// EndStderrLine, when set, ends with a newline the last line that the
	// worker left unfinished on Stderr when its stderr closes (it was
	// killed while writing it), so that what is written to the same
	// stream next (another worker's line, the supervisor's own message)
	// starts a line of its own. Set it only for a stream the worker shares
	// with others: a job's captured output is kept as it was written.
	EndStderrLine bool
	// Stdin, with IONone, is what the worker reads on its stdin: the
	// memory file that holds it, or, where the system makes none, a pipe
	// that exec.Cmd fills and Wait ends (at the latest stdinDelay after
	// the worker's death); nil gives it /dev/null.
	Stdin *Stdin
	// Cgroup, if not nil, is the group the worker starts in.
	Cgroup Cgroup
}

// Exit says how a worker process ended.
type Exit struct {
	// Code is the exit status, or -1 when a signal ended the process.
	Code int
	// Signal is the signal that ended the process, or 0.
	Signal syscall.Signal
	// MaxRSS is the peak resident set size of the process itself in bytes,
	// from wait4's rusage.
	MaxRSS int64
	// Time is when the supervisor saw the process end.
	Time time.Time
}

// Process is one running worker. Exactly one goroutine, started by Start,
// waits for it; Done is closed when it has been reaped.
type Process struct {
	// Pid is the worker's process id; it also names its process group.
	Pid int
	// Tasks is the supervisor's end of the task pipe (stdin for IOLine, fd 3
	// for IOFramed), or nil.
	Tasks *os.File
	// Results is the supervisor's end of the result pipe (stdout for IOLine,
	// fd 4 for IOFramed), or nil.
	Results *os.File

	// page is the supervisor's mapping of a framed worker's running-item
	// page (protocol.PageVersion), or nil. The supervisor writes only its
	// time paused (addPaused).
	page []byte

	// cmd describes the process; its Process is nil unless exec.Cmd
	// started it (forkExec).
	cmd  *exec.Cmd
	done chan struct{}
	exit Exit // written before done is closed

	// taskPipe identifies the task pipe, so that Observe can tell the
	// worker's threads that read it; nil without one.
	taskPipe *syscall.Stat_t

	// copiers counts the goroutines copying the worker's stdout/stderr; they
	// end when the pipe reaches EOF or CloseIO closes the read end. The
	// last one to end sends on copied (which may hold a token from a
	// copier that ended before the next one started: CloseIO checks the
	// count again).
	copiers  atomic.Int32
	copied   chan struct{}
	tail     tailBuffer
	closeIO  sync.Once
	readEnds []*os.File // supervisor-side read ends closed by CloseIO
	paced    *pacedPipe // the read end of a Spec.LargeStdout pipe, stopped by CloseIO

	stopOnce sync.Once
}

// stdinDelay bounds how long Wait lets exec.Cmd's copier of Spec.Stdin go
// on after the worker died, for a descendant that escaped its process
// group and holds the pipe without reading it.
const stdinDelay = time.Second

// ShortOfFiles reports whether err says that the supervisor or the
// system has no file descriptor to spare: EMFILE (ulimit -n) or ENFILE
// (the system's table).
func ShortOfFiles(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// checkDir returns why a process of the supervisor's cannot make dir its
// working directory, or nil.
func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return &os.PathError{Op: "chdir", Path: dir, Err: syscall.ENOTDIR}
	}
	if err := syscall.Access(dir, 1); err != nil { // X_OK: may search it
		return &os.PathError{Op: "chdir", Path: dir, Err: err}
	}
	return nil
}

// ErrStart wraps every error from Start.
var ErrStart = errors.New("worker: cannot start")

// Start starts the worker described by spec. The process gets its own process
// group, SIGKILL when the supervisor dies (Pdeathsig), and oom_score_adj
// 1000 so that the kernel picks workers before the supervisor.
func Start(spec Spec) (_ *Process, err error) {
	if len(spec.Args) == 0 {
		return nil, fmt.Errorf("%w: empty command", ErrStart)
	}
	path := spec.Path
	if path == "" {
		var err error
		if path, err = exec.LookPath(spec.Args[0]); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrStart, err)
		}
	}
	cmd := &exec.Cmd{Path: path, Args: spec.Args, Env: spec.Env, Dir: spec.Dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &Process{cmd: cmd, done: make(chan struct{})}

	// childEnds are closed in the supervisor once the child has them.
	childEnds, err := p.connect(spec, cmd)
	defer func() {
		for _, f := range childEnds {
			f.Close()
		}
		if err != nil {
			p.closeReadEnds()
			if p.Tasks != nil {
				p.Tasks.Close()
			}
			if p.page != nil {
				freePage(p.page)
				p.page = nil
			}
		}
	}()
	if err != nil {
		return nil, err
	}
	start := forkExec
	if spec.EnvUnique && spec.Env != nil {
		start = forkExecEnvAsIs
	}
	pid, scored, err := launch(spec.Cgroup, cmd, start)
	if errors.Is(err, syscall.E2BIG) {
		// Name the worker's own command, not the program that exec ran (a
		// cgroup shim's shell), and say which limit it broke.
		return nil, fmt.Errorf("%w: %s: %w (%s)", ErrStart, spec.Args[0], syscall.E2BIG, argSizes(spec.Args, cmd.Environ()))
	}
	if errors.Is(err, syscall.EINVAL) {
		if i := nulArg(spec.Args); i >= 0 {
			// exec's own words are "invalid argument", after the path of
			// whatever it ran (a cgroup shim's shell): say which.
			return nil, fmt.Errorf("%w: %s: %w (argument %d holds a NUL byte, which no program can be given: its arguments are C strings, which end at it)", ErrStart, spec.Args[0], syscall.EINVAL, i)
		}
	}
	if err != nil && spec.Dir != "" {
		// The child's chdir failing is reported by exec as the program
		// it was to run: "fork/exec /usr/bin/cat: no such file or
		// directory", of a program that is there. Name the directory.
		if derr := checkDir(spec.Dir); derr != nil {
			return nil, fmt.Errorf("%w: %s: working directory: %w", ErrStart, spec.Args[0], derr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.Pid = pid
	if p.Tasks != nil {
		p.taskPipe = pipeStat(p.Tasks)
	}
	// The kernel should pick a worker, never the supervisor. A Starter
	// has set this already, before the worker's code ran.
	if !scored {
		_ = os.WriteFile("/proc/"+strconv.Itoa(p.Pid)+"/oom_score_adj", []byte("1000"), 0)
	}
	go p.wait()
	return p, nil
}

// launch starts cmd in group, if any: through it when it is a Starter
// (scored: the process has its oom_score_adj already), else readied by
// its Prepare. It returns the process's id.
func launch(group Cgroup, cmd *exec.Cmd, start memory.Spawner) (pid int, scored bool, err error) {
	if s, ok := group.(Starter); ok {
		pid, err := s.Spawn(cmd, start)
		return pid, true, err
	}
	if group != nil {
		if err := group.Prepare(cmd); err != nil {
			return 0, false, fmt.Errorf("cgroup: %w", err)
		}
		defer group.Started()
	}
	pid, err = start(cmd)
	return pid, false, err
}

// forkExec starts cmd on the calling thread and returns its pid. When
// all of cmd's streams are files (or nil) and nothing of it needs
// exec.Cmd's goroutines (no WaitDelay, no Cancel), it forks and execs
// through syscall.ForkExec with cmd's own SysProcAttr, and leaves
// cmd.Process nil (wait then reaps it with wait4): exec.Cmd would copy and
// de-duplicate the environment again, and build its own and os.Process's
// records (and a pidfd where the runtime uses them), for every process
// (docs/benchmarks.md, one-shot start). Otherwise it calls cmd.Start.
func forkExec(cmd *exec.Cmd) (int, error) { return forkExecEnv(cmd, false) }

// forkExecEnvAsIs is forkExec for a cmd whose Env names no variable twice
// (Spec.EnvUnique): it passes Env as it is.
func forkExecEnvAsIs(cmd *exec.Cmd) (int, error) { return forkExecEnv(cmd, true) }

// forkExecEnv is forkExec; with envAsIs, cmd.Env (not nil) is passed as it
// is rather than through cmd.Environ's de-duplicated copy.
func forkExecEnv(cmd *exec.Cmd, envAsIs bool) (int, error) {
	in, okIn := stream(cmd.Stdin)
	out, okOut := stream(cmd.Stdout)
	errs, okErr := stream(cmd.Stderr)
	if !okIn || !okOut || !okErr || cmd.WaitDelay != 0 || cmd.Cancel != nil || cmd.Err != nil || cmd.Process != nil {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	}
	files := make([]uintptr, 3, 3+len(cmd.ExtraFiles))
	for i, f := range [3]*os.File{in, out, errs} {
		if f == nil {
			// As exec.Cmd does for an unset stream (a typed nil file
			// never gets here: stream leaves it to exec.Cmd).
			null, err := devNullRW()
			if err != nil {
				return 0, fmt.Errorf("open %s: %w", os.DevNull, err)
			}
			f = null
		}
		files[i] = f.Fd()
	}
	for _, f := range cmd.ExtraFiles {
		files = append(files, f.Fd()) // a nil *os.File gives a closed fd
	}
	env := cmd.Env
	if envAsIs && env != nil {
		// Free of duplicate names already; exec.Cmd adds PWD for Dir only
		// to the supervisor's own environment.
	} else if env == nil && cmd.Dir == "" {
		// Already free of duplicate names (syscall's copy keeps the first).
		env = syscall.Environ()
	} else {
		env = cmd.Environ() // with PWD for Dir, and de-duplicated
	}
	pid, err := syscall.ForkExec(cmd.Path, cmd.Args, &syscall.ProcAttr{Dir: cmd.Dir, Env: env, Files: files, Sys: cmd.SysProcAttr})
	runtime.KeepAlive(cmd)
	if err != nil {
		return 0, &os.PathError{Op: "fork/exec", Path: cmd.Path, Err: err}
	}
	return pid, nil
}

// stream returns the file for one of cmd's standard streams: nil when
// the stream is unset, the file itself (maybe a nil *os.File) when it is
// an *os.File; ok is false for any other reader or writer.
func stream(v any) (f *os.File, ok bool) {
	if v == nil {
		return nil, true
	}
	f, ok = v.(*os.File)
	if ok && f == nil {
		return nil, false // leave exec.Cmd's handling of a typed nil to it
	}
	return f, ok
}

// devNullRW is /dev/null opened for reading and writing once, for a
// stream left unset.
var devNullRW = sync.OnceValues(func() (*os.File, error) { return os.OpenFile(os.DevNull, os.O_RDWR, 0) })

// connect gives cmd its standard streams and pipes as spec.IO says. It
// returns the child's ends, which the caller closes once the child has
// them (or has failed to start); the supervisor's ends are p's.
func (p *Process) connect(spec Spec, cmd *exec.Cmd) (childEnds []*os.File, err error) {
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("%w: pipe: %w", ErrStart, err)
		}
		return r, w, nil
	}
	if spec.IO != IONone {
		taskR, taskW, err := pipe()
		if err != nil {
			return childEnds, err
		}
		childEnds = append(childEnds, taskR)
		p.Tasks = taskW
		resR, resW, err := pipe()
		if err != nil {
			return childEnds, err
		}
		childEnds = append(childEnds, resW)
		p.Results = resR
		p.readEnds = append(p.readEnds, resR)
		if spec.IO == IOLine {
			cmd.Stdin, cmd.Stdout = taskR, resW
		} else {
			cmd.ExtraFiles = []*os.File{taskR, resW} // fd 3 and fd 4
			if f, m, err := newPage(); err == nil {
				// fd 5; a worker without it sends a start frame per item.
				childEnds = append(childEnds, f)
				p.page = m
				cmd.ExtraFiles = append(cmd.ExtraFiles, f)
				if cmd.Env == nil {
					cmd.Env = os.Environ()
				}
				cmd.Env = append(cmd.Env[:len(cmd.Env):len(cmd.Env)], protocol.EnvPageFD+"=5")
			}
		}
	} else if spec.Stdin != nil {
		f, owned, r, err := spec.Stdin.forProcess()
		switch {
		case err != nil:
			return childEnds, fmt.Errorf("%w: stdin: %w", ErrStart, err)
		case f != nil:
			if owned {
				childEnds = append(childEnds, f)
			}
			cmd.Stdin = f
		default:
			cmd.Stdin = r
			cmd.WaitDelay = stdinDelay
		}
	} else if f, err := devNull(); err == nil {
		// exec.Cmd would open and close /dev/null for every process.
		cmd.Stdin = f
	}
	if spec.IO != IOLine {
		var w *os.File
		var err error
		if _, file := spec.Stdout.(*os.File); spec.LargeStdout && spec.Stdout != nil && !file {
			w, err = p.pacedOutput(spec.Stdout, spec.StdoutPipe)
		} else {
			w, err = p.output(spec.Stdout, nil)
		}
		if err != nil {
			return childEnds, err
		}
		if w != nil {
			childEnds = append(childEnds, w)
		}
		cmd.Stdout = w
	}
	dst := spec.Stderr
	if dst != nil && spec.EndStderrLine {
		dst = &lineEnder{w: dst}
	}
	w, err := p.output(dst, &p.tail)
	if err != nil {
		return childEnds, err
	}
	cmd.Stderr = w
	return append(childEnds, w), nil
}

// outputPipe returns a pipe for a child's output stream: the read end r,
// the supervisor's, is read through the runtime's poller; the write end w,
// only ever handed to the child, is blocking and never registered with the
// poller. (os.Pipe would register both, and exec.Cmd's Fd would then make
// w blocking again: some ten system calls per process for nothing.)
func outputPipe() (r, w *os.File, err error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, os.NewSyscallError("pipe2", err)
	}
	// The flags of a new read end are known: set them in one call.
	if _, err := unix.FcntlInt(uintptr(fds[0]), unix.F_SETFL, unix.O_RDONLY|unix.O_NONBLOCK); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, os.NewSyscallError("fcntl", err)
	}
	// NewFile registers a non-blocking descriptor with the poller.
	return os.NewFile(uintptr(fds[0]), "|0"), os.NewFile(uintptr(fds[1]), "|1"), nil
}

// devNull returns /dev/null opened for reading, once for the life of the
// supervisor and shared by every process started with IONone and no
// Spec.Stdin: exec.Cmd hands an *os.File to the child as it is, and never
// closes one it was given. Reading /dev/null has no position to share.
var devNull = sync.OnceValues(func() (*os.File, error) { return os.Open(os.DevNull) })

// nulArg returns the index of the first of args that holds a NUL byte, or
// -1.
func nulArg(args []string) int {
	for i, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			return i
		}
	}
	return -1
}

// maxArgLen is the longest argument or environment string Linux passes to
// a program (MAX_ARG_STRLEN), its terminating NUL included.
const maxArgLen = 32 * 4096

// argSizes says how big args and env are, against the limit they broke.
func argSizes(args, env []string) string {
	longest, total := 0, 0
	for _, s := range append(args[:len(args):len(args)], env...) {
		longest = max(longest, len(s))
		total += len(s) + 1
	}
	if longest >= maxArgLen {
		return fmt.Sprintf("one argument is %d bytes; Linux allows %d bytes per argument", longest, maxArgLen-1)
	}
	s := fmt.Sprintf("the arguments and environment take %d bytes", total)
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_STACK, &lim) == nil && lim.Cur != unix.RLIM_INFINITY {
		s += fmt.Sprintf("; Linux allows about %d, a quarter of the stack limit (ulimit -s)", lim.Cur/4)
	}
	return s
}

// output returns the write end to hand the child for one of its output
// streams, starting a copier into dst (and tail) where needed. It returns nil
// when the stream is discarded and there is no tail to keep.
func (p *Process) output(dst io.Writer, tail *tailBuffer) (*os.File, error) {
	if tail == nil {
		if dst == nil {
			return nil, nil
		}
		if f, ok := dst.(*os.File); ok {
			// Handing our own file over costs no copying. exec.Cmd dups
			// it, so the child's copy is separate from ours; returning nil
			// would make exec.Cmd start a copier of its own.
			return dupFile(f)
		}
	}
	r, w, err := outputPipe()
	if err != nil {
		return nil, fmt.Errorf("%w: pipe: %w", ErrStart, err)
	}
	p.readEnds = append(p.readEnds, r)
	var sink io.Writer = io.Discard
	switch {
	case dst != nil && tail != nil:
		sink = io.MultiWriter(tail, dst)
	case tail != nil:
		sink = tail
	case dst != nil:
		sink = dst
	}
	p.copy(func() {
		copyOut(sink, r)
		if le, ok := dst.(*lineEnder); ok {
			le.end()
		}
	})
	return w, nil
}

// pacedOutput is output for a Spec.LargeStdout stream: a paced pipe of
// about size bytes whose copier writes dst.
func (p *Process) pacedOutput(dst io.Writer, size int) (*os.File, error) {
	pp, w, err := newPacedPipe(size)
	if err != nil {
		return nil, fmt.Errorf("%w: pipe: %w", ErrStart, err)
	}
	p.paced = pp
	p.copy(func() { pp.copyTo(dst, p.done) })
	return w, nil
}

// copy runs an output copier, counted in p.copiers.
func (p *Process) copy(f func()) {
	if p.copied == nil {
		p.copied = make(chan struct{}, 1)
	}
	p.copiers.Add(1)
	go func() {
		f()
		if p.copiers.Add(-1) == 0 {
			select {
			case p.copied <- struct{}{}:
			default:
			}
		}
	}()
}

// copyBufs holds the buffers of the output copiers: io.Copy would allocate
// 32 KiB per stream, two per one-shot process, and the garbage collector
// would then run every few hundred processes.
var copyBufs = sync.Pool{New: func() any { return new([32 << 10]byte) }}

// copyOut copies r to dst until EOF or an error, through a pooled buffer.
func copyOut(dst io.Writer, r *os.File) {
	buf := copyBufs.Get().(*[32 << 10]byte)
	defer copyBufs.Put(buf)
	// Hide r's WriteTo, which would copy through a buffer of its own.
	io.CopyBuffer(dst, struct{ io.Reader }{r}, buf[:])
}

// lineEnder passes what is written to w through, and remembers whether
// the last byte ended a line.
type lineEnder struct {
	w    io.Writer
	open bool // something was written, and its last byte is not '\n'
}

func (l *lineEnder) Write(b []byte) (int, error) {
	n, err := l.w.Write(b)
	if n > 0 {
		l.open = b[n-1] != '\n'
	}
	return n, err
}

// end ends the line left open, if any. Only the copier calls it, after
// its last Write.
func (l *lineEnder) end() {
	if l.open {
		l.open = false
		l.w.Write([]byte{'\n'})
	}
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: dup %s: %w", ErrStart, f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// wait is the only place that waits for the process. It first observes the
// death without reaping, so that the process group id cannot be reused while
// it kills what is left of the group (grandchildren), then reaps.
func (p *Process) wait() {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, p.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			break
		}
	}
	_ = unix.Kill(-p.Pid, unix.SIGKILL)
	if p.cmd.Process == nil {
		p.exit = reap(p.Pid)
		close(p.done)
		return
	}
	err := p.cmd.Wait()
	e := Exit{Code: -1, Time: time.Now()}
	st := p.cmd.ProcessState
	if st != nil {
		if ws, ok := st.Sys().(syscall.WaitStatus); ok {
			if ws.Signaled() {
				e.Signal = ws.Signal()
			} else {
				e.Code = ws.ExitStatus()
			}
		}
		if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
			e.MaxRSS = ru.Maxrss * 1024
		}
	} else if err != nil {
		e.Code = -1
	}
	p.exit = e
	close(p.done)
}

// reap reaps pid, started by forkExec, and says how it ended.
func reap(pid int) Exit {
	var ws syscall.WaitStatus
	var ru syscall.Rusage
	for {
		_, err := syscall.Wait4(pid, &ws, 0, &ru)
		if err != syscall.EINTR {
			if err != nil {
				return Exit{Code: -1, Time: time.Now()}
			}
			break
		}
	}
	e := Exit{Code: -1, Time: time.Now(), MaxRSS: ru.Maxrss * 1024}
	if ws.Signaled() {
		e.Signal = ws.Signal()
	} else {
		e.Code = ws.ExitStatus()
	}
	return e
}

// Exited reports whether the process has ended, whether or not wait has
// seen it yet. It looks without blocking and without reaping.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
	}
	var info unix.Siginfo // Signo stays 0 while the process lives
	err := unix.Waitid(unix.P_PID, p.Pid, &info, unix.WEXITED|unix.WNOWAIT|unix.WNOHANG, nil)
	// ECHILD: wait has reaped it already, and is about to close done.
	return err == unix.ECHILD || (err == nil && info.Signo == int32(unix.SIGCHLD))
}

// Done is closed once the process has ended and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exit returns how the process ended. It is valid only after Done is closed.
func (p *Process) Exit() Exit { return p.exit }

// Signal sends sig to the worker's whole process group.
func (p *Process) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	if err := unix.Kill(-p.Pid, sig); err != nil && err != unix.ESRCH {
		return fmt.Errorf("worker: signal %d to group %d: %w", sig, p.Pid, err)
	}
	return nil
}

// Terminate sends SIGTERM to the worker's process group, then SIGCONT, as
// kill(1) does for a stopped job: a stopped process (one that read the
// terminal from the background, or got SIGSTOP) takes SIGTERM only once it
// goes on, and would otherwise wait for the SIGKILL after the grace, its
// handler never run.
func (p *Process) Terminate() {
	_ = p.Signal(syscall.SIGTERM)
	_ = p.Signal(syscall.SIGCONT)
}

// Kill sends SIGKILL to the worker's process group.
func (p *Process) Kill() { _ = p.Signal(syscall.SIGKILL) }

// Stop ends the worker without blocking: it closes the task pipe (a worker
// at EOF should exit), sends SIGTERM to the process group, and SIGKILL after
// grace unless the process is gone by then. Calling Stop again does nothing;
// call Kill to escalate at once.
func (p *Process) Stop(grace time.Duration) {
	p.stopOnce.Do(func() {
		if p.Tasks != nil {
			p.Tasks.Close()
		}
		p.Terminate()
		go func() {
			t := time.NewTimer(grace)
			defer t.Stop()
			select {
			case <-p.done:
			case <-t.C:
				p.Kill()
			}
		}()
	})
}

// Retire closes the task pipe so that a well-behaved worker exits by itself,
// and escalates to Stop after patience.
func (p *Process) Retire(patience, grace time.Duration) {
	if p.Tasks != nil {
		p.Tasks.Close()
	}
	go func() {
		t := time.NewTimer(patience)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
			p.Stop(grace)
		}
	}()
}

// drainLimit bounds how long CloseIO waits, past its linger, for output
// copiers whose pipes still hold what has not been read.
const drainLimit = 10 * time.Second

// CloseIO closes the supervisor's ends of the worker's pipes, after waiting up
// to linger for its output to drain. Call it after Done: a grandchild that
// still holds the pipes must not keep readers blocked.
//
// Past linger, a pipe that still holds unread bytes is not closed yet: what
// the process wrote before it died is in its pipes by the time it is done,
// and a copier that has not read it all is slow (its writes block, or the
// machine is too busy to run it), not waiting for a grandchild; closing the
// pipe would cut the output, and nothing would tell. It waits while a pipe
// holds bytes, for at most drainLimit more, so that a grandchild that goes
// on writing cannot hold the worker's end for ever.
func (p *Process) CloseIO(linger time.Duration) {
	p.closeIO.Do(func() {
		p.awaitCopiers(linger)
		for end := time.Now().Add(drainLimit); p.copiers.Load() > 0 && p.unread() && time.Now().Before(end); {
			p.awaitCopiers(linger / 10)
		}
		if p.Tasks != nil {
			p.Tasks.Close()
		}
		p.closeReadEnds()
		p.awaitCopiers(-1)
	})
}

// awaitCopiers waits until the output copiers have ended, for at most
// limit when limit >= 0. Copiers that ended already cost no goroutine and
// no timer, as with a one-shot process whose output has been read by the
// time it is reaped.
func (p *Process) awaitCopiers(limit time.Duration) {
	var timeout <-chan time.Time
	for p.copiers.Load() > 0 {
		if timeout == nil && limit >= 0 {
			t := time.NewTimer(limit)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-p.copied:
		case <-timeout:
			return
		}
	}
}

// readPage reads the mark in the process's running-item page; ok is false
// when it has none, or the page names no item.
func (p *Process) readPage() (pageMark, bool) {
	if p.page == nil {
		return pageMark{}, false
	}
	return readPage(p.page)
}

// addPaused adds d to the time paused in the process's running-item page,
// if it has one.
func (p *Process) addPaused(d time.Duration) {
	if p.page != nil {
		addPaused(p.page, d)
	}
}

// freePage unmaps the running-item page. Only the Session's owner
// calls it, once it has read the page for the last time.
func (p *Process) freePage() {
	if p.page != nil {
		freePage(p.page)
		p.page = nil
	}
}

// unread reports whether a pipe that CloseIO closes holds bytes not read
// yet.
func (p *Process) unread() bool {
	if p.paced != nil && p.paced.unread() {
		return true
	}
	for _, f := range p.readEnds {
		if pipeHolds(f) {
			return true
		}
	}
	return false
}

// pipeHolds reports whether the pipe whose read end is f holds bytes.
func pipeHolds(f *os.File) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	rc.Control(func(fd uintptr) { n = pipeBytes(int(fd)) })
	return n > 0
}

// pipeBytes returns the bytes that the pipe whose read end is fd holds
// (TIOCINQ, which is FIONREAD).
func pipeBytes(fd int) int {
	n, _ := unix.IoctlGetInt(fd, unix.TIOCINQ)
	return n
}

func (p *Process) closeReadEnds() {
	if p.paced != nil {
		p.paced.stopIO()
	}
	for _, f := range p.readEnds {
		f.Close()
	}
}

// StderrTail returns the last few KiB the worker wrote to stderr.
func (p *Process) StderrTail() string { return p.tail.String() }

// StderrCrash returns the first line of the last crash dump of the Go
// runtime in the worker's stderr ("fatal error: ...", "panic: ..." or, for
// a fatal signal, its name: "SIGSEGV: segmentation violation"), or "". A
// Go program that dies writes that line first and then the stacks of its
// goroutines, often more than StderrTail keeps: without it, a Go worker
// refused memory by its data size limit ("fatal error: runtime: out of
// memory") read as any exit 2, and its message was three lines of a stack
// (or, after a fatal signal, of its register dump).
func (p *Process) StderrCrash() string { return p.tail.crashLine() }

// tailBuffer keeps the last tailSize bytes written to it, and the first
// line of the last Go crash dump among them or before them.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	// line holds the start of the line being written (at most
	// crashLineMax bytes), to find crash headers in whatever chunks the
	// stream arrives.
	line  []byte
	crash string // the last crash header seen, or ""
	// relay says a dump's separator of a relayed SIGQUIT ("-----") was
	// seen since crash was recorded (see crashHeader).
	relay bool
}

const (
	tailSize = 4096
	// crashLineMax is how much of a crash header line is kept.
	crashLineMax = 512
)

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.scanLines(b)
	n := len(b)
	if len(b) >= tailSize {
		t.buf = append(t.buf[:0], b[len(b)-tailSize:]...)
		return n, nil
	}
	t.buf = append(t.buf, b...)
	if over := len(t.buf) - tailSize; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return n, nil
}

// scanLines follows b line by line, keeping the start of each line long
// enough to tell a crash header.
func (t *tailBuffer) scanLines(b []byte) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		part := b
		if i >= 0 {
			part = b[:i]
		}
		if room := crashLineMax - len(t.line); room > 0 {
			t.line = append(t.line, part[:min(room, len(part))]...)
		}
		if i < 0 {
			return
		}
		t.endLine()
		b = b[i+1:]
	}
}

// endLine records the line in t.line if it heads a crash dump, and starts
// the next line.
func (t *tailBuffer) endLine() {
	if h := crashHeader(t.line); h != "" && !(t.relay && h == goQuitHeader) {
		t.crash, t.relay = h, false
	} else if t.crash != "" && string(t.line) == goRelaySeparator {
		t.relay = true
	}
	t.line = t.line[:0]
}

// crashHeader returns the part of line that heads a Go runtime crash dump,
// or "". "fatal error: " may follow text the program left on the line
// unfinished, and so may the name of a fatal signal (goSignalHeaders);
// "panic: " must start it.
func crashHeader(line []byte) string {
	if i := bytes.Index(line, []byte("fatal error: ")); i >= 0 {
		return strings.TrimSpace(string(line[i:]))
	}
	if bytes.HasPrefix(line, []byte("panic: ")) {
		return strings.TrimSpace(string(line))
	}
	for _, h := range goSignalHeaders {
		if bytes.HasSuffix(line, []byte(h)) {
			return h
		}
	}
	return ""
}

// goSignalHeaders are the lines that head a Go runtime crash dump after a
// signal it does not turn into a panic (a fault in the runtime's own code
// or in C code, SIGQUIT, SIGABRT): the signal's name in the runtime's
// table (sigtable in runtime/sigtab_linux_generic.go), which the runtime
// prints alone on its line, before "PC=... m=... sigcode=...", the stacks
// and the registers, and exits 2. A fault the runtime caught as a panic in
// its own code is "fatal error: unexpected signal during runtime
// execution" instead, and one in the program's code a panic.
var goSignalHeaders = []string{
	"SIGSEGV: segmentation violation",
	"SIGBUS: bus error",
	"SIGFPE: floating-point exception",
	"SIGILL: illegal instruction",
	"SIGTRAP: trace trap",
	"SIGABRT: abort",
	"SIGSTKFLT: stack fault",
	"SIGSYS: bad system call",
	goQuitHeader,
}

const (
	// goQuitHeader heads the dump of a Go program sent SIGQUIT.
	goQuitHeader = "SIGQUIT: quit"
	// goRelaySeparator is the line that a Go runtime crashing with
	// GOTRACEBACK=crash writes before it sends itself SIGQUIT, for every
	// thread to dump its stack under a goQuitHeader of its own: the dump
	// is the first header's, not those.
	goRelaySeparator = "-----"
)

func (t *tailBuffer) crashLine() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if h := crashHeader(t.line); h != "" && !(t.relay && h == goQuitHeader) {
		return h // the last line, unfinished
	}
	return t.crash
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
