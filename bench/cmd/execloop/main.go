// Command execloop is the floor of a Go supervisor for one-shot jobs: J
// goroutines each run, for one input line at a time, PROGRAM ARGS... LINE
// through os/exec (its own process group, SIGKILL at the parent's death,
// stdout and stderr captured through pipes, then written out), and nothing
// else: no cgroup, no oom_score_adj, no engine.
//
//	execloop -j 2 -- /bin/echo < inputs
//
// bench/oneshot/run runs it beside `safepool run` and `xargs -P`, so that
// the part of safepool's cost that Go's process start accounts for is seen.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"log"
	"os"
	"os/exec"
	"sync"
	"syscall"
)

func main() {
	jobs := flag.Int("j", 2, "jobs at a time")
	flag.Parse()
	argv := flag.Args()
	if len(argv) == 0 {
		log.Fatal("execloop: no command")
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		log.Fatal(err)
	}
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
				var stdout, stderr bytes.Buffer
				c := exec.Command(argv[0], append(argv[1:len(argv):len(argv)], l)...)
				c.Stdin, c.Stdout, c.Stderr = null, &stdout, &stderr
				c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
				if err := c.Run(); err != nil {
					log.Fatalf("execloop: %s: %v", l, err)
				}
				out.Lock()
				os.Stdout.Write(stdout.Bytes())
				os.Stderr.Write(stderr.Bytes())
				out.Unlock()
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
