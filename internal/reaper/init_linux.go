package reaper

import (
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// InitShim, in a program that is process 1 of its pid namespace (a
// container started without an init, such as docker run IMAGE safepool
// ..., or unshare --pid --fork), runs the program again as its child under
// a minimal init, and returns the exit code to exit with; ran is then
// true. Anywhere else, or when the child cannot start, ran is false and the
// program goes on as usual.
//
// Process 1 inherits every orphan of its namespace: the daemons and
// double-forked processes that tasks leave, and the processes a sweep
// kills. Only a wait for any child collects their exit statuses, which a
// supervisor cannot do: os/exec and the pool wait for their own children
// by pid, and a wait for any child would take their statuses. Each orphan
// would stay a zombie for the rest of the run, one more for every task that
// leaves a daemon, until the namespace ran out of pids.
//
// The init starts the child in a process group of its own, in the
// terminal's foreground when stdin is one (so that Ctrl-C reaches the
// child once, not through the init as well), passes on to it the signals
// it receives (docker stop sends SIGTERM to process 1 alone), and reaps
// every process that ends. Once the child has ended it waits a few seconds
// for the rest (a guardian finishing its sweep), then exits as the child
// did: its exit status, or 128+N when signal N killed it.
func InitShim() (code int, ran bool) {
	if os.Getpid() != 1 {
		return 0, false
	}
	sigs := make(chan os.Signal, 16)
	// Before the child starts, so that no signal meant for it is lost.
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH, syscall.SIGCONT, syscall.SIGTSTP,
		syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGALRM)
	pid, err := startChild()
	if err != nil {
		signal.Stop(sigs)
		return 0, false
	}
	go func() { // ends with the process
		for s := range sigs {
			_ = syscall.Kill(pid, s.(syscall.Signal))
		}
	}()
	var ws unix.WaitStatus
	for {
		wpid, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// No child left, though ours was not seen to end: cannot
			// happen, as nothing else here waits.
			return 1, true
		}
		if wpid == pid {
			break
		}
	}
	code = ws.ExitStatus()
	if ws.Signaled() {
		code = 128 + int(ws.Signal())
	}
	reapRest(time.Now().Add(sweepTimeout + time.Second))
	return code, true
}

// startChild starts this program again, with the same arguments,
// environment and inherited descriptors, in a process group of its own,
// made the terminal's foreground group when stdin is the terminal.
func startChild() (int, error) {
	attr := &syscall.ProcAttr{Env: os.Environ(), Files: inheritedFiles(), Sys: &syscall.SysProcAttr{Setpgid: true}}
	if _, err := unix.IoctlGetTermios(0, unix.TCGETS); err == nil {
		attr.Sys = &syscall.SysProcAttr{Setpgid: true, Foreground: true, Ctty: 0}
		if pid, err := syscall.ForkExec("/proc/self/exe", os.Args, attr); err == nil {
			return pid, nil
		}
		// Not the controlling terminal: without the foreground.
		attr.Sys = &syscall.SysProcAttr{Setpgid: true}
	}
	return syscall.ForkExec("/proc/self/exe", os.Args, attr)
}

// inheritedFiles returns the descriptors this process was started with
// (those without close-on-exec, which Go sets on its own), each at its
// number, for the child; closed numbers in between are -1.
func inheritedFiles() []uintptr {
	files := []uintptr{0, 1, 2}
	names, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return files
	}
	for _, e := range names {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue
		}
		for len(files) <= fd {
			files = append(files, ^uintptr(0))
		}
		files[fd] = uintptr(fd)
	}
	return files
}

// reapRest reaps the children left until there are none, or the deadline.
func reapRest(deadline time.Time) {
	var ws unix.WaitStatus
	for time.Now().Before(deadline) {
		wpid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		switch {
		case err == unix.EINTR:
		case err != nil:
			return // no child left
		case wpid == 0:
			time.Sleep(10 * time.Millisecond)
		}
	}
}
