package memory

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Cgroup v1 has no CLONE_INTO_CGROUP, but it lets each thread of a process
// sit in a memory cgroup of its own (the tasks file takes thread ids), and
// a forked child starts in the cgroups of the thread that forked it. So
// startFromThread moves one locked thread of the supervisor into the
// worker's group, forks and execs the worker from it (Go forks on the
// calling thread), and moves the thread back before the worker's program
// runs: the worker is in its group from its first instruction, with one
// exec instead of the shim's two. Home's tasks file stays open for the
// process's life, so that the way back needs no new file.
//
// The shim also raised the worker's oom_score_adj before the worker ran;
// a forked child instead starts with the supervisor's, and a worker that
// forks at once (sh -c) would hand that on to its children before the
// supervisor could raise it. So the child is started traced
// (PTRACE_TRACEME): it stops at its exec, before its program's first
// instruction, and the forking thread, its tracer, raises its
// oom_score_adj and detaches it (releaseTraced). A set-user-ID program
// run this way as the worker itself gains its privileges only when the
// supervisor has CAP_SYS_PTRACE (root); programs it runs later always do.
//
// The supervisor's memory stays charged where it was: v1 charges a
// process's pages to the memory cgroup of its mm's owner, the thread group
// leader, which never moves (the leader's thread is never the one used).
// Only kernel objects that the moved thread allocates while it is in the
// group, such as the child's task_struct, are charged to the group.

// homeTasks holds, for each home cgroup, its tasks file opened once and
// kept for the process's life, so that a start thread can always go back:
// going back must not need a new file descriptor, which a supervisor near
// its open-file limit may not get (a thread that stays would leave the
// supervisor in a worker's group).
var homeTasks sync.Map // home dir -> descriptor of its tasks file

// placeHome moves the calling thread back into the v1 cgroup home.
func placeHome(home string) error {
	v, ok := homeTasks.Load(home)
	if !ok {
		path := filepath.Join(home, "tasks")
		fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", path, err)
		}
		if v, ok = homeTasks.LoadOrStore(home, fd); ok {
			unix.Close(fd)
		} else {
			v = fd
		}
	}
	return placeThread(v.(int), home)
}

// placeThread moves the calling thread into the v1 cgroup dir through
// tasks, its tasks file opened for writing. It writes "0", which names the
// calling thread: the kernel then moves it without taking the lock that
// keeps a whole thread group still (a thread cannot exit or exec while it
// writes). Taking that lock can wait for an RCU grace period when it was
// idle, as it is between two starts: moves there and back one millisecond
// apart took up to 87 µs each with the thread's id written, under 20 µs
// with "0".
func placeThread(tasks int, dir string) error {
	if _, err := unix.Write(tasks, []byte("0")); err != nil {
		return fmt.Errorf("write thread %d to %s: %w", unix.Gettid(), filepath.Join(dir, "tasks"), err)
	}
	return nil
}

// beforeRelease, when set (by tests), is called by the start thread just
// before it lets the worker's program run, with the worker's group.
var beforeRelease func(dir string)

// supervisorPID is this process's id; Go never forks without exec.
var supervisorPID = os.Getpid()

// startFromThread starts cmd with start inside the v1 cgroup dir, whose tasks file
// is open for writing as tasks, by forking it from a thread of the
// supervisor that sits in dir for the time of the fork, then goes back to
// home, the supervisor's own memory cgroup, before the child's program
// runs. When the thread cannot go back, it stays out of the runtime's use
// and ends once the child has ended (not before: the child's Pdeathsig is
// tied to the thread that forked it); back reports that, so that later
// starts use the shim.
func startFromThread(cmd *exec.Cmd, start Spawner, tasks int, dir, home string) (pid int, back error, err error) {
	type result struct {
		pid       int
		back, err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == supervisorPID {
			// The leader's cgroup decides where the supervisor's memory
			// is charged: never move it. While this goroutine holds it,
			// the nested call runs on another thread.
			pid, back, err := startFromThread(cmd, start, tasks, dir, home)
			runtime.UnlockOSThread()
			done <- result{pid, back, err}
			return
		}
		if err := placeThread(tasks, dir); err != nil {
			// Where the write failed the thread did not move.
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		pid, err := start(cmd)
		// Home first: the child's place was fixed at the fork, and no
		// thread of the supervisor is in dir once the child's program runs,
		// so that nothing of the supervisor is in the group when the kernel
		// looks there for a process to kill.
		back := placeHome(home)
		if err == nil {
			if beforeRelease != nil {
				beforeRelease(dir)
			}
			if releaseTraced(pid, nil) != nil {
				// The score could not be raised: the worker runs
				// with the supervisor's, as it always did here.
				_ = unix.PtraceDetach(pid)
			}
		}
		if back == nil {
			runtime.UnlockOSThread()
			done <- result{pid: pid, err: err}
			return
		}
		back = fmt.Errorf("thread %d stays in %s: %w", unix.Gettid(), dir, back)
		done <- result{pid: pid, back: back, err: err}
		if err == nil {
			waitGone(pid)
		}
		// Returning while locked ends the thread, and with it its place
		// in dir.
	}()
	r := <-done
	return r.pid, r.back, r.err
}

// traced returns cmd set to stop at its exec, before the first instruction
// of its program, for releaseTraced, keeping its other SysProcAttr fields
// (on a copy).
func traced(cmd *exec.Cmd) {
	attr := syscall.SysProcAttr{}
	if cmd.SysProcAttr != nil {
		attr = *cmd.SysProcAttr
	}
	attr.Ptrace = true
	cmd.SysProcAttr = &attr
}

// releaseTraced raises the oom_score_adj of the child pid, which is
// stopping at its exec (PTRACE_TRACEME), calls atStop (if not nil) once it
// has stopped, and then lets it go on. It must run on the thread that
// started the child: that thread is its tracer. The child's program has
// not run yet, so that nothing it forks can inherit the supervisor's
// oom_score_adj, as with the shim (DESIGN.md, invariant 6). A child that
// ended before it stopped is left to its waiter, unreaped. When the score
// or atStop fails, it returns that error and leaves the child stopped, for
// the caller to end or let go.
//
// The score is written first, while the child finishes its exec, rather
// than once it has stopped: the write then costs the child no wait. The
// child has its own memory by then (exec.Cmd.Start returns once the exec
// has closed the child's close-on-exec descriptors, after the kernel gave
// it a new address space), so the kernel does not hand the score on to the
// supervisor, with which it shared its memory until then (vfork); and its
// pid cannot have been reused, because only its Process reaps it, and that
// starts after this returns.
func releaseTraced(pid int, atStop func(pid int) error) error {
	scoreErr := SetOOMScoreAdj(pid, 1000)
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WSTOPPED|unix.WEXITED|unix.WNOWAIT|unix.WALL, nil)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINTR) {
			return nil
		}
	}
	const cldTrapped = 4 // CLD_TRAPPED: a ptrace stop
	if info.Code != cldTrapped {
		return nil
	}
	// Consume the stop (only stops: an exit stays for the waiter), then
	// detach without delivering the SIGTRAP.
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WSTOPPED|unix.WALL, nil)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if scoreErr != nil {
		return scoreErr
	}
	if atStop != nil {
		if err := atStop(pid); err != nil {
			return err
		}
	}
	_ = unix.PtraceDetach(pid)
	return nil
}

// waitGone waits until process pid has ended (it may be a zombie still),
// without reaping it: its waiter does that. It needs no file descriptor,
// because it runs when the thread could not go back to its cgroup, which
// may be for want of one (EMFILE); and it must not return early, because
// the thread's end would SIGKILL the child (Pdeathsig).
func waitGone(pid int) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT|unix.WALL, nil)
		if !errors.Is(err, unix.EINTR) {
			return // ended, or already reaped (ECHILD)
		}
	}
}

// probeThreadStart reports whether workers can start from a thread in
// the v1 cgroup dir that then goes back to home, and if not, why: it
// starts /bin/true that way. PTRACE_TRACEME, which a seccomp filter may
// forbid, is part of the test.
func probeThreadStart(dir, home string) error {
	path := filepath.Join(dir, "tasks")
	tasks, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(tasks)
	cmd := exec.Command("/bin/true")
	traced(cmd)
	_, back, err := startFromThread(cmd, startProbe, tasks, dir, home)
	if err == nil {
		err = cmd.Wait()
	}
	return errors.Join(back, err)
}
