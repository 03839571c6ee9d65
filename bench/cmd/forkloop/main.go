// Command forkloop is a lower floor than execloop for one-shot jobs: J
// goroutines each start, for one input line at a time, PROGRAM ARGS...
// LINE with syscall.ForkExec (its own process group, SIGKILL at the
// parent's death) and reap it with wait4, and nothing else: no os/exec,
// no cgroup, no oom_score_adj, no engine. By default the jobs' stdout and
// stderr are this program's /dev/null, as xargs leaves a job's streams
// where its own go; -pipes captures them through two pipes per job, read
// through the runtime's poller and then written out, as a supervisor that
// keeps each job's output whole must. -pidfd waits for each job through a
// pidfd in the poller before reaping it, instead of a blocking wait4.
//
//	forkloop -j 2 [-pipes] [-pidfd] -- /bin/echo < inputs
//
// It tells how far the cost of a Go supervisor's start of a process, and
// of capturing its output, is from xargs's fork and exec.
package main

import (
	"bufio"
	"flag"
	"io"
	"log"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

func main() {
	jobs := flag.Int("j", 2, "jobs at a time")
	pipes := flag.Bool("pipes", false, "capture each job's stdout and stderr through pipes")
	pidfd := flag.Bool("pidfd", false, "wait for each job through a pidfd in the runtime's poller")
	flag.Parse()
	argv := flag.Args()
	if len(argv) == 0 {
		log.Fatal("forkloop: no command")
	}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		log.Fatal(err)
	}
	env := os.Environ()
	lines := make(chan string)
	var (
		wg  sync.WaitGroup
		out sync.Mutex
	)
	for range *jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for l := range lines {
				run(append(argv[:len(argv):len(argv)], l), env, null, *pipes, *pidfd, &out)
			}
		}()
	}
	s := bufio.NewScanner(os.Stdin)
	for s.Scan() {
		lines <- s.Text()
	}
	close(lines)
	wg.Wait()
	if err := s.Err(); err != nil {
		log.Fatal(err)
	}
}

// run starts argv, captures its output if pipes, waits for it and reaps it.
func run(argv, env []string, null *os.File, pipes, pidfd bool, out *sync.Mutex) {
	files := []uintptr{null.Fd(), null.Fd(), null.Fd()}
	var outR, outW, errR, errW *os.File
	if pipes {
		var err error
		if outR, outW, err = os.Pipe(); err != nil {
			log.Fatal(err)
		}
		if errR, errW, err = os.Pipe(); err != nil {
			log.Fatal(err)
		}
		files[1], files[2] = outW.Fd(), errW.Fd()
	}
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	fd := -1
	if pidfd {
		attr.PidFD = &fd
	}
	pid, err := syscall.ForkExec(argv[0], argv, &syscall.ProcAttr{Env: env, Files: files, Sys: attr})
	if err != nil {
		log.Fatalf("forkloop: %s: %v", argv[0], err)
	}
	if pipes {
		outW.Close()
		errW.Close()
		var stderr []byte
		done := make(chan struct{})
		go func() {
			defer close(done)
			stderr, _ = io.ReadAll(errR)
		}()
		stdout, _ := io.ReadAll(outR)
		<-done
		outR.Close()
		errR.Close()
		out.Lock()
		os.Stdout.Write(stdout)
		os.Stderr.Write(stderr)
		out.Unlock()
	}
	if pidfd {
		waitPidfd(fd)
	}
	var ws syscall.WaitStatus
	for {
		if _, err := syscall.Wait4(pid, &ws, 0, nil); err != syscall.EINTR {
			break
		}
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		log.Fatalf("forkloop: %v ended with %v", argv, ws)
	}
}

// waitPidfd parks the goroutine in the runtime's poller until the process
// of pidfd fd has exited, then closes fd.
func waitPidfd(fd int) {
	if err := unix.SetNonblock(fd, true); err != nil {
		log.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		log.Fatal(err)
	}
	rc.Read(func(fd uintptr) bool {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOWAIT|unix.WNOHANG, nil)
		return err != nil || info.Signo != 0
	})
}
