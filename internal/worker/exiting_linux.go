package worker

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// pfExiting is the kernel's PF_EXITING, a flag of /proc/PID/stat: the
// thread is in exit, its status already set.
const pfExiting = 0x4

// exiting reports whether the process has begun to exit: its status is set
// and no signal changes it any more, though wait does not see it until its
// exit is complete (its memory and files given back, which takes a
// fraction of a millisecond). false when it cannot tell.
func (p *Process) exiting() bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid))
	if err != nil {
		return false
	}
	// The fields after the command's ")": state, ppid, pgrp, session,
	// tty_nr, tpgid, flags.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 7 {
		return false
	}
	flags, err := strconv.ParseUint(string(f[6]), 10, 64)
	return err == nil && flags&pfExiting != 0
}
