package reaper_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/testenv"
)

// testToken is the variable that marks every process a test starts (the
// supervisor and, through it, everything below it that keeps its
// environment), so that the test looks only at its own processes.
const testToken = "REAPER_TEST_TOKEN"

// user is whom a test's supervisor runs as.
type user string

const (
	self   user = ""       // the user running the tests
	nobody user = "nobody" // uid 65534, through setpriv: no cgroups
)

// users returns the users to run a scenario as: this one, and nobody when
// this one is root.
func users() []user {
	if os.Getuid() == 0 {
		return []user{self, nobody}
	}
	return []user{self}
}

// name is the user's name in subtest names.
func (u user) name() string {
	if u == nobody {
		return "nobody"
	}
	if os.Getuid() == 0 {
		return "root"
	}
	return "user"
}

// scene is one test's world: its token, a directory anyone may write, and
// the processes its tasks reported.
type scene struct {
	t     *testing.T
	u     user
	token string
	dir   string
	pids  string // the file tasks append pids to
	exe   string // the test binary, as u can run it

	reported []proc // what waitPIDs last returned, for the cleanup
}

func newScene(t *testing.T, u user) *scene {
	t.Helper()
	dir, err := os.MkdirTemp("", "reaper-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	s := &scene{t: t, u: u, token: rand.Text(), dir: dir, pids: filepath.Join(dir, "pids"), exe: os.Args[0]}
	if u == nobody {
		s.exe = publicExe(t)
		if _, err := exec.LookPath("setpriv"); err != nil {
			testenv.SkipOrFail(t, "setpriv is not installed")
		}
	}
	// Whatever the outcome, leave nothing running.
	t.Cleanup(func() {
		for _, p := range s.live(s.reported) {
			syscall.Kill(p.pid, syscall.SIGKILL)
		}
		os.RemoveAll(dir)
	})
	return s
}

var public struct {
	once sync.Once
	path string
	err  error
}

// publicExe returns a copy of the test binary that nobody can run: the
// go tool's build directory is private to its user. It is removed when the
// test binary exits (see TestMain's caller, removePublic).
func publicExe(t *testing.T) string {
	public.once.Do(func() {
		dir, err := os.MkdirTemp("", "reaper-exe-")
		if err != nil {
			public.err = err
			return
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			public.err = err
			return
		}
		src, err := os.Open(os.Args[0])
		if err != nil {
			public.err = err
			return
		}
		defer src.Close()
		path := filepath.Join(dir, "reaper.test")
		dst, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o755)
		if err != nil {
			public.err = err
			return
		}
		_, err = io.Copy(dst, src)
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
		public.path, public.err = path, err
	})
	if public.err != nil {
		t.Fatalf("copying the test binary: %v", public.err)
	}
	return public.path
}

// removePublic removes publicExe's copy.
func removePublic() {
	if public.path != "" {
		os.RemoveAll(filepath.Dir(public.path))
	}
}

// command returns a command that runs the test binary in role as the
// scene's user, marked with its token.
func (s *scene) command(role string, args ...string) *exec.Cmd {
	argv := append([]string{s.exe, role}, args...)
	if s.u == nobody {
		argv = append([]string{"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), testToken+"="+s.token, "PIDS="+s.pids)
	if _, ok := os.LookupEnv("GORACE"); !ok {
		// Under -race, a process sleeps a second at exit by default.
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=0")
	}
	// A helper that misbehaves must not hang the test.
	cmd.WaitDelay = 30 * time.Second
	return cmd
}

// proc names one process across pid reuse: its pid and its start time.
type proc struct {
	pid   int
	start uint64
}

func (p proc) String() string { return strconv.Itoa(p.pid) }

// stat is what the tests read from /proc/PID/stat.
type stat struct {
	state   byte
	session int
	flags   uint64
	start   uint64
}

// pfExiting is the kernel's PF_EXITING flag: the process has begun to exit
// and can do nothing more.
const pfExiting = 0x4

// ended reports whether the process has exited or is exiting.
func (st stat) ended() bool { return st.state == 'Z' || st.state == 'X' || st.flags&pfExiting != 0 }

// readStat reads /proc/pid/stat.
func readStat(pid int) (stat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return stat{}, false
	}
	// The command name, in parentheses, may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return stat{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); session is field 6, flags field 9,
	// starttime field 22.
	if len(f) < 20 {
		return stat{}, false
	}
	sess, _ := strconv.Atoi(f[3])
	flags, _ := strconv.ParseUint(f[6], 10, 64)
	start, _ := strconv.ParseUint(f[19], 10, 64)
	return stat{state: f[0][0], session: sess, flags: flags, start: start}, true
}

// waitPIDs waits until the tasks have reported n processes, and returns
// them.
func (s *scene) waitPIDs(n int) []proc {
	s.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		b, _ := os.ReadFile(s.pids)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(b) > 0 && len(lines) >= n {
			var ps []proc
			for _, l := range lines {
				var p proc
				if _, err := fmt.Sscan(l, &p.pid, &p.start); err != nil {
					s.t.Fatalf("pid file holds %q: %v", l, err)
				}
				ps = append(ps, p)
			}
			s.reported = ps
			return ps
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the tasks reported %d processes in a minute, want %d", len(lines), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// live returns the scene's processes that are alive and not exiting: those
// whose environment holds the scene's token, and those of reported, except
// the pids in except.
func (s *scene) live(reported []proc, except ...int) []proc {
	var out []proc
	seen := make(map[int]bool)
	skip := func(pid int) bool {
		for _, e := range except {
			if e == pid {
				return true
			}
		}
		return seen[pid]
	}
	for _, p := range reported {
		if st, ok := readStat(p.pid); ok && st.start == p.start && !st.ended() && !skip(p.pid) {
			out = append(out, p)
			seen[p.pid] = true
		}
	}
	entries, _ := os.ReadDir("/proc")
	needle := []byte(testToken + "=" + s.token + "\x00")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || skip(pid) {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !bytes.Contains(env, needle) {
			continue
		}
		if st, ok := readStat(pid); ok && !st.ended() {
			out = append(out, proc{pid, st.start})
			seen[pid] = true
		}
	}
	return out
}

// assertNoneLeft waits, a bounded time, until none of the scene's
// processes (see live) is alive, and fails the test otherwise.
func (s *scene) assertNoneLeft(reported []proc, except ...int) {
	s.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		left := s.live(reported, except...)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			s.t.Errorf("%d processes outlived the pool: %s", len(left), describe(left))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// describe lists processes with their command lines.
func describe(ps []proc) string {
	var b strings.Builder
	for _, p := range ps {
		cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(p.pid) + "/cmdline")
		fmt.Fprintf(&b, "\n\t%d %s", p.pid, strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " "))
	}
	return b.String()
}

// cgroupDirOf returns the memory cgroup directory that the supervisor pid
// made for its workers (safepool-<pid> under its own cgroup, v1 or v2), or
// "" if there is none.
func cgroupDirOf(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return ""
	}
	name := "safepool-" + strconv.Itoa(pid)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		var dir string
		switch {
		case f[0] == "0" && f[1] == "":
			dir = filepath.Join("/sys/fs/cgroup", f[2], name)
		case strings.Contains(","+f[1]+",", ",memory,"):
			dir = filepath.Join("/sys/fs/cgroup/memory", f[2], name)
		default:
			continue
		}
		if _, err := os.Stat(dir); err == nil {
			return dir
		}
	}
	return ""
}

// waitGone waits, a bounded time, until path no longer exists.
func waitGone(path string) bool {
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(path); os.IsNotExist(err) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
