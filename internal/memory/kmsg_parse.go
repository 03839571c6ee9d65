package memory

import (
	"bytes"
	"regexp"
	"strconv"
)

var (
	// killedRE matches the OOM killer's report of its victim, such as
	// "Out of memory: Killed process 1234 (python3) total-vm:..." or
	// "Memory cgroup out of memory: Killed process 1234 (python3) ...";
	// before Linux 5.1 also "Kill process 1234 (x) sharing same memory".
	killedRE = regexp.MustCompile(`(?:^|: )(?:Killed process (\d+) \(|Kill process (\d+) \(.*\) sharing same memory)`)
	// oomKillRE matches the summary line of Linux 4.19+:
	// "oom-kill:constraint=...,task=python3,pid=1234,uid=0". The task name
	// and cgroup paths before it may hold anything, so the pid is taken at
	// the end.
	oomKillRE = regexp.MustCompile(`^oom-kill:.*,pid=(\d+),uid=\d+$`)
)

// parseOOMRecord returns the pid of the process that a /dev/kmsg record
// reports killed by the OOM killer. A record is "prefix;message\n" with
// continuation lines; the prefix is "priority,sequence,usec,flags".
func parseOOMRecord(rec []byte) (pid int, ok bool) {
	prefix, msg, found := bytes.Cut(rec, []byte(";"))
	if !found {
		return 0, false
	}
	// Kernel messages have facility 0, so priority < 8; records written
	// to /dev/kmsg from user space have a facility of their own.
	pri, _, _ := bytes.Cut(prefix, []byte(","))
	if p, err := strconv.Atoi(string(pri)); err != nil || p >= 8 {
		return 0, false
	}
	msg, _, _ = bytes.Cut(msg, []byte("\n"))
	var m [][]byte
	if bytes.HasPrefix(msg, []byte("oom-kill:")) {
		m = oomKillRE.FindSubmatch(msg)
	} else {
		m = killedRE.FindSubmatch(msg)
	}
	for _, g := range m[min(1, len(m)):] {
		if len(g) > 0 {
			v, err := strconv.Atoi(string(g))
			return v, err == nil && v > 0
		}
	}
	return 0, false
}
