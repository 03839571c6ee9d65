package memory

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
)

// Cgroup v1 cannot start a process inside a cgroup, so Prepare runs the
// worker through a /bin/sh shim that moves itself into the group and only
// then execs the worker. Worker code never runs outside the group: when
// the move fails the shim exits with shimExitCode. Workers without a
// cgroup of their own start through the same shim ([Shim]), for their
// oom_score_adj and data size limit.

// shimExitCode is the exit status of a shim that could not place itself in
// its cgroup, raise its oom_score_adj or set its data size limit; the
// worker did not run.
const shimExitCode = 125

// workerOOMScoreAdj makes the kernel pick workers before the supervisor or
// an innocent process (DESIGN.md, invariant 6).
const workerOOMScoreAdj = "1000"

// The shim's parts. User data reaches the shell only as positional
// parameters, never inside the script text; each part that takes one
// shifts it away, so the worker's argv is what is left.

// shimJoin moves the shell into the cgroup whose cgroup.procs file is $1.
// Writing $$ moves the shell itself; the exec at the end keeps that pid
// for the worker.
const shimJoin = `echo $$ >"$1" || { echo "safepool: cannot move process $$ into cgroup (${1%/*})" >&2; exit 125; }
shift
`

// shimOOMScore raises the shell's oom_score_adj before it forks or execs
// anything, so that every process of the worker inherits it.
const shimOOMScore = `echo ` + workerOOMScoreAdj + ` >/proc/self/oom_score_adj || { echo "safepool: cannot set oom_score_adj of process $$" >&2; exit 125; }
`

// shimDataLimit sets RLIMIT_DATA, soft and hard, to $1 KiB.
const shimDataLimit = `ulimit -d "$1" || { echo "safepool: cannot limit the data size of process $$ to $1 KiB" >&2; exit 125; }
shift
`

// The shells add PWD to the environment when it is missing; take it out
// again so that the worker sees the environment exec.Cmd would give it.
const shimUnsetPWD = "unset PWD\n"

// shimExec runs "$@" as is: argv[0] is the program path.
const shimExec = `exec "$@"`

// shimExecArgv0 (bash) takes $1 as argv[0] and runs "${@:2}".
const shimExecArgv0 = `exec -a "$1" "${@:2}"`

// bashPath finds a shell whose exec takes -a, so that a worker whose
// argv[0] differs from its path (exec.Command("python3") runs
// /usr/bin/python3 with argv[0] "python3") keeps it. dash, Debian's
// /bin/sh, has no exec -a.
var bashPath = sync.OnceValue(func() string {
	for _, p := range []string{"/bin/bash", "/usr/bin/bash"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
})

// shimSpec says what the shim does before it execs the worker.
type shimSpec struct {
	procs   string // the cgroup.procs file to join, or ""
	dataKiB int64  // RLIMIT_DATA in KiB, or 0 for none
}

// wrapInShim rewrites cmd to run its program through the shim that does
// what spec says and raises its oom_score_adj. bash is the shell to use
// when argv[0] must be kept ("" for none: the worker then sees its path as
// argv[0]).
//
// The shell passes the environment through, except variables whose names
// are not shell identifiers (such as "a.b"), which shells drop; bash also
// adds SHLVL=0 when the environment has no SHLVL.
func wrapInShim(cmd *exec.Cmd, spec shimSpec, bash string) {
	argv := cmd.Args
	if len(argv) == 0 {
		argv = []string{cmd.Path}
	}
	// exec.Cmd runs a path without a slash from the working directory; a
	// shell would look it up in PATH.
	target := cmd.Path
	if !strings.Contains(target, "/") {
		target = "./" + target
	}

	var script strings.Builder
	params := []string{"safepool"} // $0
	if spec.procs != "" {
		script.WriteString(shimJoin)
		params = append(params, spec.procs)
	}
	script.WriteString(shimOOMScore)
	if spec.dataKiB > 0 {
		script.WriteString(shimDataLimit)
		params = append(params, strconv.FormatInt(spec.dataKiB, 10))
	}
	if !hasEnv(cmd.Environ(), "PWD") {
		script.WriteString(shimUnsetPWD)
	}
	var args []string
	if argv[0] != target && bash != "" {
		script.WriteString(shimExecArgv0)
		args = append(append([]string{"bash", "--posix", "-c", script.String()}, params...), argv[0], target)
		cmd.Path = bash
	} else {
		script.WriteString(shimExec)
		args = append(append([]string{"sh", "-c", script.String()}, params...), target)
		cmd.Path = "/bin/sh"
	}
	cmd.Args = append(args, argv[1:]...)
}

// hasEnv reports whether env sets key.
func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if k, _, ok := strings.Cut(kv, "="); ok && k == key {
			return true
		}
	}
	return false
}
