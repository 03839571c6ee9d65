package pool

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// pidsRoom finds the pids cgroup, among this process's and those above it
// (v1 and v2), that leaves the least room for more processes and threads,
// and returns its pids.max, its pids.current and its directory. ok is
// false when no pids limit applies or none can be read.
func pidsRoom() (limit, inUse int64, dir string, ok bool) {
	fs, err := procfs.NewFS("/proc")
	if err != nil {
		return 0, 0, "", false
	}
	self, err := fs.Self()
	if err != nil {
		return 0, 0, "", false
	}
	cgroups, err := self.Cgroups()
	if err != nil {
		return 0, 0, "", false
	}
	mounts, err := self.MountInfo()
	if err != nil {
		return 0, 0, "", false
	}
	room := int64(-1)
	for _, cg := range cgroups {
		for _, m := range mounts {
			v2 := cg.HierarchyID == 0 && m.FSType == "cgroup2"
			_, pids := m.SuperOptions["pids"]
			v1 := cg.HierarchyID != 0 && m.FSType == "cgroup" && pids && slices.Contains(cg.Controllers, "pids")
			if !v1 && !v2 {
				continue
			}
			d, found := mountedDir(m, cg.Path)
			if !found {
				continue
			}
			// From the cgroup up to the mount, the lowest room wins: a
			// parent's limit holds its children's processes too.
			for {
				if l, u, has := readPids(d); has && (room < 0 || l-u < room) {
					room, limit, inUse, dir, ok = l-u, l, u, d, true
				}
				if d == m.MountPoint || !strings.HasPrefix(d, m.MountPoint+"/") {
					break
				}
				d = filepath.Dir(d)
			}
		}
	}
	return limit, inUse, dir, ok
}

// mountedDir returns the directory of cgroup path under mount m, when m
// shows it: m shows its hierarchy from m.Root down.
func mountedDir(m *procfs.MountInfo, path string) (string, bool) {
	switch {
	case m.Root == "/":
		return filepath.Join(m.MountPoint, path), true
	case path == m.Root || strings.HasPrefix(path, m.Root+"/"):
		return filepath.Join(m.MountPoint, strings.TrimPrefix(path, m.Root)), true
	}
	return "", false
}

// readPids reads pids.max and pids.current in cgroup directory dir; has is
// false when it has no limit ("max") or they cannot be read.
func readPids(dir string) (limit, inUse int64, has bool) {
	b, err := os.ReadFile(filepath.Join(dir, "pids.max"))
	if err != nil {
		return 0, 0, false
	}
	limit, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, 0, false // "max"
	}
	b, err = os.ReadFile(filepath.Join(dir, "pids.current"))
	if err != nil {
		return 0, 0, false
	}
	inUse, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, 0, false
	}
	return limit, inUse, true
}

// nprocRoom returns the soft RLIMIT_NPROC (`ulimit -u`) of this process,
// how many processes and threads of its real user it can see, and that
// user, when the limit applies to it. The kernel counts every thread of
// the user's against it, and lets through only root and processes with
// CAP_SYS_RESOURCE or CAP_SYS_ADMIN in the first user namespace; root of
// a container with a user namespace of its own is held to it. Processes of
// the same user outside this process's pid namespace count too, but are
// not seen here. Where every thread of the system together leaves the
// limit need to spare, none of the user's are counted, and ok is false.
func nprocRoom(need int64) (limit, inUse int64, uid int, ok bool) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NPROC, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY || rl.Cur > 1<<31 {
		return 0, 0, 0, false
	}
	uid = os.Getuid()
	if exemptFromNproc(uid) {
		return 0, 0, 0, false
	}
	if all, ok := systemThreads(); ok && int64(rl.Cur)-all >= need {
		return 0, 0, 0, false // the usual case: ulimit -u in the tens of thousands
	}
	inUse, ok = userThreads(uid)
	return int64(rl.Cur), inUse, uid, ok
}

// exemptFromNproc tells whether RLIMIT_NPROC does not hold this process,
// whose real user is uid: root, or a process with CAP_SYS_RESOURCE or
// CAP_SYS_ADMIN, in the first user namespace.
func exemptFromNproc(uid int) bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil || strings.Join(strings.Fields(string(b)), " ") != "0 0 4294967295" {
		return false
	}
	if uid == 0 {
		return true
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	const capSysAdmin, capSysResource = 21, 24
	eff, ok := statusField(status, "CapEff:")
	if !ok {
		return false
	}
	caps, err := strconv.ParseUint(eff, 16, 64)
	return err == nil && caps&(1<<capSysAdmin|1<<capSysResource) != 0
}

// userThreads counts the threads of the processes in /proc whose real user
// is uid. ok is false when /proc cannot be listed.
func userThreads(uid int) (n int64, ok bool) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, false
	}
	want := strconv.Itoa(uid)
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue // ended since the listing
		}
		ids, ok := statusField(status, "Uid:")
		if !ok || ids != want {
			continue
		}
		threads, ok := statusField(status, "Threads:")
		if t, err := strconv.ParseInt(threads, 10, 64); ok && err == nil {
			n += t
		}
	}
	return n, true
}

// systemThreads returns how many threads the system has, from the fourth
// field of /proc/loadavg ("2/345": 345).
func systemThreads() (int64, bool) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) < 4 {
		return 0, false
	}
	_, total, found := strings.Cut(f[3], "/")
	n, err := strconv.ParseInt(total, 10, 64)
	return n, found && err == nil
}

// statusField returns the first word of the line of /proc/PID/status that
// starts with key ("Uid:" gives the real user).
func statusField(status []byte, key string) (string, bool) {
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, found := strings.CutPrefix(line, key); found {
			if f := strings.Fields(rest); len(f) > 0 {
				return f[0], true
			}
			return "", false
		}
	}
	return "", false
}
