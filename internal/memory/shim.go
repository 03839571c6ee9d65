package memory

import (
	"os"
	"os/exec"
	"strings"
	"sync"
)

// Cgroup v1 cannot start a process inside a cgroup, so Prepare runs the
// worker through a /bin/sh shim that moves itself into the group and only
// then execs the worker. Worker code never runs outside the group: when
// the move fails the shim exits with shimExitCode.

// shimExitCode is the exit status of a shim that could not place itself in
// its cgroup or raise its oom_score_adj; the worker did not run.
const shimExitCode = 125

// workerOOMScoreAdj makes the kernel pick workers before the supervisor or
// an innocent process (DESIGN.md, invariant 6).
const workerOOMScoreAdj = "1000"

// shimJoin is the shim's common part. User data reaches the shell only as
// positional parameters, never inside the script text: $1 is the
// cgroup.procs file, then the worker's argv. Writing $$ moves the shell
// itself; the exec below keeps that pid for the worker.
const shimJoin = `echo $$ >"$1" || { echo "safepool: cannot move process $$ into cgroup (${1%/*})" >&2; exit 125; }
echo ` + workerOOMScoreAdj + ` >/proc/self/oom_score_adj || { echo "safepool: cannot set oom_score_adj of process $$" >&2; exit 125; }
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

// wrapInShim rewrites cmd to run its program through the shim that joins
// the cgroup whose cgroup.procs file is procs. bash is the shell to use
// when argv[0] must be kept ("" for none: the worker then sees its path as
// argv[0]).
//
// The shell passes the environment through, except variables whose names
// are not shell identifiers (such as "a.b"), which shells drop; bash also
// adds SHLVL=0 when the environment has no SHLVL.
func wrapInShim(cmd *exec.Cmd, procs, bash string) {
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
	script.WriteString(shimJoin)
	if !hasEnv(cmd.Environ(), "PWD") {
		script.WriteString(shimUnsetPWD)
	}
	var args []string
	if argv[0] != target && bash != "" {
		script.WriteString(shimExecArgv0)
		args = append([]string{"bash", "--posix", "-c", script.String(), "safepool", procs, argv[0], target}, argv[1:]...)
		cmd.Path = bash
	} else {
		script.WriteString(shimExec)
		args = append([]string{"sh", "-c", script.String(), "safepool", procs, target}, argv[1:]...)
		cmd.Path = "/bin/sh"
	}
	cmd.Args = args
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
