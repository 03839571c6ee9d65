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
	// The name is taken up to the first ") " or the final ")": a name
	// that holds ") " is cut short, in messages only.
	killedRE = regexp.MustCompile(`(?:^|: )(?:Killed process (\d+) \((.*?)\)(?: |$)|Kill process (\d+) \((.*)\) sharing same memory)`)
	// oomKillRE matches the summary line of Linux 4.19+:
	// "oom-kill:constraint=...,task=python3,pid=1234,uid=0". The task name
	// and cgroup paths before it may hold anything, so the pid is taken at
	// the end, and the name from the first ",task=".
	oomKillRE = regexp.MustCompile(`^oom-kill:.*?,task=(.*),pid=(\d+),uid=\d+$`)
)

// parseOOMRecord returns the process that a /dev/kmsg record reports
// killed by the OOM killer. A record is "prefix;message\n" with
// continuation lines; the prefix is "priority,sequence,usec,flags".
func parseOOMRecord(rec []byte) (v Victim, ok bool) {
	prefix, msg, found := bytes.Cut(rec, []byte(";"))
	if !found {
		return Victim{}, false
	}
	// Kernel messages have facility 0, so priority < 8; records written
	// to /dev/kmsg from user space have a facility of their own.
	pri, _, _ := bytes.Cut(prefix, []byte(","))
	if p, err := strconv.Atoi(string(pri)); err != nil || p >= 8 {
		return Victim{}, false
	}
	msg, _, _ = bytes.Cut(msg, []byte("\n"))
	var pid, comm []byte
	if bytes.HasPrefix(msg, []byte("oom-kill:")) {
		if m := oomKillRE.FindSubmatch(msg); m != nil {
			comm, pid = m[1], m[2]
		}
	} else if m := killedRE.FindSubmatch(msg); m != nil {
		pid, comm = m[1], m[2]
		if len(pid) == 0 {
			pid, comm = m[3], m[4]
		}
	}
	n, err := strconv.Atoi(string(pid))
	if err != nil || n <= 0 {
		return Victim{}, false
	}
	return Victim{PID: n, Comm: string(comm)}, true
}
