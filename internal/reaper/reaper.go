// Package reaper ends every process that a pool's workers leave behind,
// however the pool ends.
//
// A worker dies with its supervisor (Pdeathsig) and takes its process group
// with it, but a task may start processes that leave both: a daemon that
// calls setsid or forks twice, or the children of a worker that the task
// itself killed. Such processes are reparented to init and would outlive
// safepool. The reaper finds them by a marker that every worker carries in
// its environment and every descendant inherits: SAFEPOOL_RUN lists the
// random tokens of the pools a process descends from (a pool started by a
// task of another pool appends its own). [Sweep] SIGKILLs every process
// whose environment holds a token, and looks again until none is left.
//
// Two moments sweep:
//
//   - The end of the pool, synchronously, once its workers have ended
//     ([Guard.Close]), so that a daemon a task started does not outlive the
//     run.
//   - The death of the supervisor, however it dies (SIGKILL, the OOM killer,
//     SIGHUP, SIGPIPE): a guardian process, started with the pool, holds
//     the read end of a pipe whose write end only the supervisor holds. At
//     end of file it sweeps, kills what is left in the pool's worker cgroups
//     and removes them, and exits. The guardian has a session of its own,
//     so a signal to the user's process group or terminal does not reach it.
//
// The guardian is this same executable, re-executed through /proc/self/exe
// with SAFEPOOL_GUARDIAN set; this package's init runs it and exits before
// main. An init hook is the one way a library can give every program that
// links it a second entry point (runc's nsexec and os/exec's helper
// processes do the same): Go cannot fork without exec, and a separate
// helper binary could be missing or of another version.
//
// What the marker cannot find is a process that clears its environment (env
// -i) and also leaves its worker's process group. Where the pool has worker
// cgroups, the cgroup still holds it and is killed whole; without cgroups it
// survives.
//
// The supervisor is not made a child subreaper (PR_SET_CHILD_SUBREAPER),
// which would reparent escaped processes to it rather than to init. The
// attribute ends with the supervisor, so it does nothing for the case the
// guardian covers, and while the supervisor lives the marker already finds
// every escaped process that kept its environment. It would also change a Go
// program that uses the library: orphans of the program's other children
// would become its zombies, and reaping them with wait(-1) would take exit
// statuses that os/exec waits for.
package reaper

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"strings"
)

// EnvMarker names the environment variable that marks a pool's processes:
// a colon-separated list of the tokens of the pools a process descends
// from.
const EnvMarker = "SAFEPOOL_RUN"

// ErrSurvivors is returned when marked processes are still alive after
// they were sent SIGKILL and a bounded wait for them to exit ran out (a
// process stuck in uninterruptible sleep, say).
var ErrSurvivors = errors.New("reaper: processes survive SIGKILL")

// newToken returns a fresh random token: 26 characters of base32, 128 bits.
func newToken() string { return rand.Text() }

// mark returns env (the process's environment when nil) with token added
// to EnvMarker. When env sets EnvMarker more than once, the last setting
// counts, as it does for exec.Cmd.
func mark(env []string, token string) []string {
	if env == nil {
		env = os.Environ()
	}
	out := make([]string, 0, len(env)+1)
	prev := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, EnvMarker+"="); ok {
			prev = v
			continue
		}
		out = append(out, kv)
	}
	v := token
	if prev != "" {
		v = prev + ":" + token
	}
	return append(out, EnvMarker+"="+v)
}

// unmark returns env without EnvMarker.
func unmark(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, EnvMarker+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// Mark returns env (the process's environment when nil) with a new token
// added to EnvMarker, and the token. A pool marks each one-shot attempt so:
// what the attempt leaves behind can then be swept (SweepAny) once it has
// ended, while the pool's other processes run on.
func Mark(env []string) ([]string, string) {
	token := newToken()
	return mark(env, token), token
}

// markedAny reports whether environ, the NUL-separated contents of
// /proc/PID/environ, sets EnvMarker to a list that holds one of tokens.
func markedAny(environ []byte, tokens map[string]struct{}) bool {
	prefix := []byte(EnvMarker + "=")
	for len(environ) > 0 {
		kv := environ
		if i := bytes.IndexByte(environ, 0); i >= 0 {
			kv, environ = environ[:i], environ[i+1:]
		} else {
			environ = nil
		}
		v, ok := bytes.CutPrefix(kv, prefix)
		if !ok {
			continue
		}
		for t := range bytes.SplitSeq(v, []byte(":")) {
			if _, ok := tokens[string(t)]; ok {
				return true
			}
		}
	}
	return false
}

// marked reports whether environ, the NUL-separated contents of
// /proc/PID/environ, sets EnvMarker to a list that holds token.
func marked(environ []byte, token string) bool {
	return markedAny(environ, map[string]struct{}{token: {}})
}
