package cli

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/procfs"
)

// ttyStopEvery is how often watchTerminalReads looks for stopped jobs.
const ttyStopEvery = time.Second

// watchTerminalReads says, once for each, which processes of the run are
// stopped by the terminal: each worker has a process group of its own, in
// the terminal's background, and the kernel stops a process of such a
// group that reads the terminal or changes its settings (SIGTTIN,
// SIGTTOU), such as a password prompt. Nothing else would tell why the run
// does not go on. It looks only while safepool has a controlling terminal
// and the run is not paused (Ctrl-Z stops the workers too). say writes a
// notice; the returned function stops watching.
func watchTerminalReads(paused *atomic.Bool, say func(string)) (stop func()) {
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() { // ends when stop is called
		defer close(ended)
		self := os.Getpid()
		me, ok := readProcStat(self)
		if !ok || me.tty == 0 {
			return // no terminal to be stopped by
		}
		// A process is told of once it is seen stopped twice in a row, the
		// run not paused either time: not one that a pause (or the
		// resume after it) caught stopped for a moment.
		told := map[int]bool{}
		var seen map[int]bool
		t := time.NewTicker(ttyStopEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
			case <-done:
				return
			}
			if paused.Load() {
				seen = nil
				continue
			}
			now := map[int]bool{}
			for _, pid := range terminalStopped(self, me) {
				now[pid] = true
			}
			if paused.Load() {
				seen = nil
				continue
			}
			last := seen
			seen = now
			for pid := range now {
				if told[pid] || !last[pid] {
					continue
				}
				told[pid] = true
				say(fmt.Sprintf("process %d (%s) of a job is stopped, most likely by the terminal: a job runs in the terminal's background, and the kernel stops it when it reads the terminal (a password prompt) or changes its settings; the run waits for it until --timeout or Ctrl-C ends it", pid, quoteMessage(procComm(pid))))
			}
		}
	}()
	return func() {
		close(done)
		<-ended
	}
}

// procStat is what watchTerminalReads reads of /proc/PID/stat.
type procStat struct {
	state      byte
	ppid, pgrp int
	sid, tty   int
	tpgid      int // the terminal's foreground process group
}

// readProcStat reads /proc/PID/stat.
func readProcStat(pid int) (procStat, bool) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return procStat{}, false
	}
	st, err := p.Stat()
	if err != nil || st.State == "" {
		return procStat{}, false
	}
	return procStat{state: st.State[0], ppid: st.PPID, pgrp: st.PGRP, sid: st.Session, tty: st.TTY, tpgid: st.TPGID}, true
}

// terminalStopped returns the descendants of self (whose stat is me) that
// are stopped in a background process group of its terminal.
func terminalStopped(self int, me procStat) []int {
	dir, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	parents := map[int]int{}
	var stopped []int
	for _, e := range dir {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, ok := readProcStat(pid)
		if !ok || st.sid != me.sid {
			continue
		}
		parents[pid] = st.ppid
		if st.state == 'T' && st.tty == me.tty && st.pgrp != st.tpgid && st.pgrp != me.pgrp {
			stopped = append(stopped, pid)
		}
	}
	var ours []int
	for _, pid := range stopped {
		for p, n := parents[pid], 0; p > 1 && n < 64; p, n = parents[p], n+1 {
			if p == self {
				ours = append(ours, pid)
				break
			}
		}
	}
	return ours
}

// procComm is the command name of pid, or "?".
func procComm(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}
