package reaper

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safepool/safepool/internal/memory"
)

const (
	// envGuardian holds the pool's token in the guardian's environment, and
	// makes the executable a guardian (see init).
	envGuardian = "SAFEPOOL_GUARDIAN"
	// envGuardianCgroup holds the pool's cgroup parent directory, if any.
	envGuardianCgroup = "SAFEPOOL_GUARDIAN_CGROUP"
	// guardianFD is the guardian's read end of the supervisor's pipe.
	guardianFD = 3
	// guardianName is the guardian's name in ps and top.
	guardianName = "safepool-guard"

	// sweepTimeout bounds a sweep: how long SIGKILLed processes may take to
	// exit, and how long a process that forks faster than it is killed may
	// keep the sweep going.
	sweepTimeout = 5 * time.Second
	// sweepPollMax caps the pause between two rounds of a sweep where
	// pidfds are not available to wait on.
	sweepPollMax = 20 * time.Millisecond
)

// Guard marks one pool's processes and ends those that outlive the pool.
// Create it with Start. Close must be called once the pool's workers have
// ended.
type Guard struct {
	token string

	// guardian is the guardian process, nil when it could not start, and
	// guardErr says why. Only Close waits for it.
	guardian *exec.Cmd
	guardErr error
	// pipe is the write end of the guardian's pipe. Only this process
	// holds it (it is close-on-exec), so the guardian reads end of file
	// exactly when this process has closed it or exited.
	pipe *os.File

	closeOnce sync.Once
	closeErr  error // written once by Close
}

// Start makes a Guard with a new token and starts its guardian. cgroupDir
// is the pool's cgroup parent directory ([memory.Manager.Dir]), which the
// guardian removes if the supervisor dies, or "" for none. When the
// guardian cannot start, the Guard still marks processes and sweeps at
// Close, and GuardianErr says why.
func Start(cgroupDir string) *Guard {
	g := &Guard{token: newToken()}
	g.guardian, g.pipe, g.guardErr = startGuardian(g.token, cgroupDir)
	return g
}

// startGuardian starts the guardian of token, holding the read end of a new
// pipe, and returns it and the pipe's write end.
func startGuardian(token, cgroupDir string) (*exec.Cmd, *os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("reaper: guardian pipe: %w", err)
	}
	defer r.Close()
	// Its environment is unmarked: if this supervisor is itself a task of
	// another pool, that pool's sweep must not kill the guardian before it
	// has removed this pool's cgroups. The guardian ends by itself.
	env := append(unmark(os.Environ()), envGuardian+"="+token)
	if cgroupDir != "" {
		env = append(env, envGuardianCgroup+"="+cgroupDir)
	}
	cmd := &exec.Cmd{
		// /proc/self/exe runs this very executable even if its file was
		// replaced or removed since it started.
		Path:       "/proc/self/exe",
		Args:       []string{guardianName},
		Env:        env,
		Dir:        "/",
		ExtraFiles: []*os.File{r}, // guardianFD
		// Its only output is an error message if a sweep fails.
		Stderr: os.Stderr,
		// A session of its own: a signal to the user's process group or a
		// hangup of the terminal must not end it with the supervisor.
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, nil, fmt.Errorf("reaper: starting the guardian: %w", err)
	}
	return cmd, w, nil
}

// Env returns env (the supervisor's environment when nil) with the Guard's
// token added to EnvMarker, for a worker of the pool.
func (g *Guard) Env(env []string) []string { return mark(env, g.token) }

// GuardianErr returns nil when a guardian watches the pool, or why none
// does: then only Close ends the pool's leftover processes, and nothing
// does if the supervisor dies first.
func (g *Guard) GuardianErr() error { return g.guardErr }

// Close ends every process that carries the Guard's token (Sweep), then the
// guardian, which has nothing left to do. Call it once the pool's workers
// have ended. Later calls return the first call's result.
func (g *Guard) Close() error {
	g.closeOnce.Do(func() {
		skip := 0
		if g.guardian != nil {
			// Unmarked, and reading its environment would wait for its
			// exec to finish, in a pool that ends as soon as it began.
			skip = g.guardian.Process.Pid
		}
		g.closeErr = sweep([]string{g.token}, skip)
		if g.guardian != nil {
			// Killing it, rather than closing its pipe, saves it a sweep
			// of its own. Only now: had this process died during the
			// sweep above, the guardian would have finished it.
			_ = g.guardian.Process.Kill()
			_ = g.guardian.Wait()
		}
		if g.pipe != nil {
			g.pipe.Close()
		}
	})
	return g.closeErr
}

// Sweep sends SIGKILL to every process but this one whose environment marks
// it with token, waits for them to exit, and looks again until it finds
// none: a process may fork while it is being swept. It gives up after a few
// seconds with an error matching ErrSurvivors.
//
// It finds only the processes whose /proc/PID/environ it may read: those of
// its own user, or all as root.
func Sweep(token string) error { return sweep([]string{token}, 0) }

// SweepAny is Sweep for the processes marked with any of tokens, in one
// look at /proc for them all.
func SweepAny(tokens []string) error { return sweep(tokens, 0) }

// SweepAnyAmong is SweepAny that looks only at the processes that among
// lists, such as those of the memory cgroup that holds the pool and every
// process it starts, rather than at every process in /proc, whose
// environments it would read (an open each, charged to the caller's
// memory cgroup, which matters there: internal/memory/kept_linux.go). It
// looks at /proc when among fails.
func SweepAnyAmong(tokens []string, among func() ([]int, error)) error {
	return sweepAmong(tokens, 0, among)
}

// sweep is SweepAny, which also leaves process skip alone.
func sweep(tokens []string, skip int) error { return sweepAmong(tokens, skip, nil) }

// sweepAmong is sweep among the processes that among lists, when it is not
// nil.
func sweepAmong(tokens []string, skip int, among func() ([]int, error)) error {
	set := make(map[string]struct{}, len(tokens))
	for _, token := range tokens {
		if token == "" || strings.ContainsAny(token, ":\x00") {
			return fmt.Errorf("reaper: invalid token %q", token)
		}
		set[token] = struct{}{}
	}
	token := strings.Join(tokens, ",") // for messages
	s := sweeper{tokens: set, skip: skip, among: among, buf: make([]byte, 0, 64<<10)}
	deadline := time.Now().Add(sweepTimeout)
	for {
		n, err := s.round()
		if err != nil || n == 0 {
			s.closeAll()
			return err
		}
		left := s.waitExit(deadline)
		s.closeAll()
		if left > 0 {
			return fmt.Errorf("%w: %d processes marked %s", ErrSurvivors, left, token)
		}
		if time.Now().After(deadline) {
			// Processes that keep forking faster than they are killed.
			return fmt.Errorf("%w: %d processes marked %s in the last round", ErrSurvivors, n, token)
		}
	}
}

// sweeper is one Sweep's state.
type sweeper struct {
	tokens map[string]struct{}
	skip   int // a process not to look at, or 0
	// among, when not nil, lists the processes to look at (else /proc).
	among  func() ([]int, error)
	buf    []byte // reused for every environ read
	pidfds []int  // the processes the current round killed
	// blind reports whether the round killed a process by pid, without a
	// pidfd to wait on.
	blind bool
	delay time.Duration // the back-off after a blind round
}

// round sends SIGKILL to every marked process once, and returns how many
// it found alive.
func (s *sweeper) round() (int, error) {
	pids, err := s.markedPIDs(nil)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, pid := range pids {
		fd, err := unix.PidfdOpen(pid, 0)
		switch {
		case err == nil:
			// The pidfd pins the process. If the pid was reused before
			// it was opened, the environment read again is the new
			// process's, so a stranger is never signalled.
			if s.marked(pid) && unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) == nil {
				s.pidfds = append(s.pidfds, fd)
				n++
			} else {
				unix.Close(fd)
			}
		case errors.Is(err, unix.ESRCH):
			// Gone already.
		default:
			// Linux before 5.3 cannot pin a pid (ENOSYS), and a sweep of
			// more processes than it may open files (EMFILE) must still
			// kill them all.
			if unix.Kill(pid, unix.SIGKILL) == nil {
				s.blind = true
				n++
			}
		}
	}
	return n, nil
}

// markedPIDs returns the processes, but this one, s.skip and those in
// seen, whose environment carries one of s's tokens, from /proc.
func (s *sweeper) markedPIDs(seen map[int]struct{}) ([]int, error) {
	var listed []int
	if s.among != nil {
		if l, err := s.among(); err == nil {
			listed = l
		} else {
			s.among = nil // and from now on
		}
	}
	if s.among == nil {
		d, err := os.Open("/proc")
		if err != nil {
			return nil, fmt.Errorf("reaper: %w", err)
		}
		names, err := d.Readdirnames(-1)
		d.Close()
		if err != nil {
			return nil, fmt.Errorf("reaper: reading /proc: %w", err)
		}
		for _, name := range names {
			if pid, err := strconv.Atoi(name); err == nil {
				listed = append(listed, pid)
			}
		}
	}
	self := os.Getpid()
	var pids []int
	for _, pid := range listed {
		if pid == self || pid == s.skip {
			continue
		}
		if _, ok := seen[pid]; ok || !s.marked(pid) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// waitExit waits until every process the round killed has exited, or the
// deadline, and returns how many have not.
func (s *sweeper) waitExit(deadline time.Time) int {
	if s.blind {
		// Nothing to wait on: look again after a pause.
		s.delay = min(max(2*s.delay, time.Millisecond), sweepPollMax)
		time.Sleep(s.delay)
	}
	fds := make([]unix.PollFd, len(s.pidfds))
	for i, fd := range s.pidfds {
		fds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	}
	for len(fds) > 0 {
		wait := time.Until(deadline)
		if wait <= 0 {
			return len(fds)
		}
		n, err := unix.Poll(fds, int(wait.Milliseconds())+1)
		if err == unix.EINTR || n == 0 {
			continue
		}
		if err != nil {
			return len(fds)
		}
		// A pidfd is readable once its process has exited.
		left := fds[:0]
		for _, f := range fds {
			if f.Revents == 0 {
				left = append(left, f)
			}
		}
		fds = left
	}
	return 0
}

// closeAll closes the round's pidfds.
func (s *sweeper) closeAll() {
	for _, fd := range s.pidfds {
		unix.Close(fd)
	}
	s.pidfds = s.pidfds[:0]
	s.blind = false
}

// marked reports whether process pid is alive and marked with the token. A
// process that has exited, or is exiting, has no environment left to read.
func (s *sweeper) marked(pid int) bool {
	fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/environ", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false // gone, a kernel thread, or not ours to read
	}
	defer unix.Close(fd)
	b := s.buf[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		m, err := unix.Read(fd, b[len(b):cap(b)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			s.buf = b
			return false
		}
		if m == 0 {
			break
		}
		b = b[:len(b)+m]
	}
	s.buf = b
	return markedAny(b, s.tokens)
}

// init runs the guardian when Start started this executable as one. It
// is the package's only side effect in init, and the reason it has one:
// see the package comment.
func init() {
	token, ok := os.LookupEnv(envGuardian)
	if !ok {
		return
	}
	var st unix.Stat_t
	if unix.Fstat(guardianFD, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		// Not started by Start, but by someone who left the variable in
		// the environment: run the program as usual.
		os.Unsetenv(envGuardian)
		os.Unsetenv(envGuardianCgroup)
		return
	}
	os.Exit(guard(token, os.Getenv(envGuardianCgroup), guardianFD))
}

// guard is the guardian's main: it waits for end of file on fd, then ends
// the pool's processes and removes its cgroups, and returns the exit code.
func guard(token, cgroupDir string, fd int) int {
	// Nor does a signal that ends processes by the many before the
	// SIGKILL that may follow (pkill -f safepool, kill -TERM -1, a service
	// manager stopping the user's processes): the supervisor's SIGKILL
	// would then find no guardian. It ends by itself once the supervisor
	// has, and the supervisor's normal end kills it with SIGKILL.
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGPIPE,
		syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGALRM)
	// Its name in ps and top would be "exe", from /proc/self/exe.
	_ = os.WriteFile("/proc/self/comm", []byte(guardianName), 0)
	continueStarting(os.Getppid())
	var b [64]byte
	for {
		n, err := unix.Read(fd, b[:])
		if err == unix.EINTR || (err == nil && n > 0) {
			continue
		}
		break // end of file: the supervisor is gone
	}
	errs := []error{Sweep(token)}
	if cgroupDir != "" {
		// The cgroups hold the processes that cleared their environment;
		// a last sweep catches what was forked meanwhile outside them.
		errs = append(errs, memory.RemoveAbandoned(cgroupDir), Sweep(token))
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(os.Stderr, "safepool: guardian: %v\n", err)
		return 1
	}
	return 0
}

// suspendRounds bounds Suspend's looks at /proc: each finds the processes
// forked since the one before, by processes not yet stopped.
const suspendRounds = 10

// Suspend stops (SIGSTOP) every process but this one and the guardian that
// carries the Guard's token: the pool's workers and every process they
// started, whatever their process group or session. It looks again until
// a look finds no process it had not stopped, as a process may fork while
// it is being stopped. Resume continues them.
func (g *Guard) Suspend() error {
	seen := map[int]struct{}{}
	for range suspendRounds {
		n, err := g.signal(unix.SIGSTOP, seen)
		if err != nil || n == 0 {
			return err
		}
	}
	return nil
}

// Resume continues (SIGCONT) every process that carries the Guard's
// token, as Suspend stopped them.
func (g *Guard) Resume() error {
	_, err := g.signal(unix.SIGCONT, nil)
	return err
}

// signal sends sig to every process but this one and the guardian that
// carries the Guard's token and is not in seen, adds them to seen (when
// not nil), and returns how many it signalled.
func (g *Guard) signal(sig unix.Signal, seen map[int]struct{}) (int, error) {
	skip := 0
	if g.guardian != nil {
		skip = g.guardian.Process.Pid
	}
	s := sweeper{tokens: map[string]struct{}{g.token: {}}, skip: skip, buf: make([]byte, 0, 64<<10)}
	pids, err := s.markedPIDs(seen)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, pid := range pids {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			if !errors.Is(err, unix.ESRCH) && unix.Kill(pid, sig) == nil {
				n++ // no pidfd (Linux before 5.3, EMFILE): by pid
			}
		} else {
			// Read again through the pinned pid: never a stranger.
			if s.marked(pid) && unix.PidfdSendSignal(fd, sig, nil, 0) == nil {
				n++
			}
			unix.Close(fd)
		}
		if seen != nil {
			seen[pid] = struct{}{}
		}
	}
	return n, nil
}
