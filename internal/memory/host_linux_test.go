package memory

import (
	"errors"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/prometheus/procfs"
)

func TestLocateIn(t *testing.T) {
	v1Memory := &procfs.MountInfo{Root: "/", MountPoint: "/sys/fs/cgroup/memory", FSType: "cgroup", SuperOptions: map[string]string{"rw": "", "memory": ""}}
	v1CPU := &procfs.MountInfo{Root: "/", MountPoint: "/sys/fs/cgroup/cpu", FSType: "cgroup", SuperOptions: map[string]string{"rw": "", "cpu": ""}}
	unified := &procfs.MountInfo{Root: "/", MountPoint: "/sys/fs/cgroup/unified", FSType: "cgroup2"}
	v2Root := &procfs.MountInfo{Root: "/", MountPoint: "/sys/fs/cgroup", FSType: "cgroup2"}
	v1Sub := &procfs.MountInfo{Root: "/docker/abc", MountPoint: "/sys/fs/cgroup/memory", FSType: "cgroup", SuperOptions: map[string]string{"memory": ""}}
	hybrid := []procfs.Cgroup{
		{HierarchyID: 4, Controllers: []string{"memory"}, Path: "/process_api/x"},
		{HierarchyID: 1, Controllers: []string{"cpu"}, Path: "/"},
		{HierarchyID: 0, Path: "/"},
	}
	controllers := func(memory bool) func(string) (string, error) {
		return func(p string) (string, error) {
			if memory {
				return "cpu io memory pids", nil
			}
			return "", nil
		}
	}
	for _, tc := range []struct {
		name     string
		cgroups  []procfs.Cgroup
		mounts   []*procfs.MountInfo
		v2Memory bool
		want     location
		wantErr  bool
	}{
		{
			name:    "hybrid, memory on v1",
			cgroups: hybrid,
			mounts:  []*procfs.MountInfo{v1CPU, v1Memory, unified},
			want:    location{mode: ModeCgroupV1, mount: "/sys/fs/cgroup/memory", dir: "/sys/fs/cgroup/memory/process_api/x"},
		},
		{
			name:     "unified",
			cgroups:  []procfs.Cgroup{{HierarchyID: 0, Path: "/user.slice/session-1.scope"}},
			mounts:   []*procfs.MountInfo{v2Root},
			v2Memory: true,
			want:     location{mode: ModeCgroupV2, mount: "/sys/fs/cgroup", dir: "/sys/fs/cgroup/user.slice/session-1.scope"},
		},
		{
			name:    "v1 mount of a subtree",
			cgroups: []procfs.Cgroup{{HierarchyID: 3, Controllers: []string{"memory"}, Path: "/docker/abc/inner"}},
			mounts:  []*procfs.MountInfo{v1Sub},
			want:    location{mode: ModeCgroupV1, mount: "/sys/fs/cgroup/memory", dir: "/sys/fs/cgroup/memory/inner"},
		},
		{
			name:    "v1 memory not mounted",
			cgroups: hybrid,
			mounts:  []*procfs.MountInfo{v1CPU, unified},
			wantErr: true,
		},
		{
			name:    "unified without memory",
			cgroups: []procfs.Cgroup{{HierarchyID: 0, Path: "/"}},
			mounts:  []*procfs.MountInfo{v2Root},
			wantErr: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := locateIn(tc.cgroups, tc.mounts, controllers(tc.v2Memory), 1)
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Errorf("locateIn = %+v, %v, want %+v, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestOwnLimit(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"a/memory.max":     "1073741824\n",
		"a/b/memory.max":   "max\n",
		"a/b/c/memory.max": "2147483648\n",
		"u/memory.max":     "max\n",
	})
	for _, tc := range []struct {
		name   string
		loc    location
		want   int64
		wantOK bool
	}{
		{name: "v2 smallest ancestor", loc: location{mode: ModeCgroupV2, mount: root, dir: filepath.Join(root, "a/b/c")}, want: 1 << 30, wantOK: true},
		{name: "v2 unlimited", loc: location{mode: ModeCgroupV2, mount: root, dir: filepath.Join(root, "u")}},
		{name: "v2 root", loc: location{mode: ModeCgroupV2, mount: root, dir: root}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := ownLimit(tc.loc)
			if got != tc.want || ok != tc.wantOK || err != nil {
				t.Errorf("ownLimit(%+v) = %d, %v, %v, want %d, %v", tc.loc, got, ok, err, tc.want, tc.wantOK)
			}
		})
	}

	v1 := t.TempDir()
	writeFiles(t, v1, map[string]string{
		"limited/memory.stat":           "cache 0\nhierarchical_memory_limit 536870912\n",
		"limited/memory.limit_in_bytes": "9223372036854771712\n",
		"free/memory.stat":              "cache 0\nhierarchical_memory_limit 9223372036854771712\n",
		"old/memory.limit_in_bytes":     "268435456\n",
	})
	for _, tc := range []struct {
		dir    string
		want   int64
		wantOK bool
	}{
		{dir: "limited", want: 512 << 20, wantOK: true},
		{dir: "free"},
		{dir: "old", want: 256 << 20, wantOK: true},
	} {
		got, ok, err := ownLimit(location{mode: ModeCgroupV1, mount: v1, dir: filepath.Join(v1, tc.dir)})
		if got != tc.want || ok != tc.wantOK || err != nil {
			t.Errorf("ownLimit(v1 %s) = %d, %v, %v, want %d, %v", tc.dir, got, ok, err, tc.want, tc.wantOK)
		}
	}
}

func TestHostFacts(t *testing.T) {
	total, err := HostMemTotal()
	if err != nil || total <= 0 {
		t.Fatalf("HostMemTotal() = %d, %v", total, err)
	}
	avail, err := HostMemAvailable()
	if err != nil || avail <= 0 || avail > total {
		t.Errorf("HostMemAvailable() = %d, %v, want in (0, %d]", avail, err, total)
	}
	limit, ok, err := OwnCgroupLimit()
	if err != nil || ok && limit <= 0 {
		t.Errorf("OwnCgroupLimit() = %d, %v, %v", limit, ok, err)
	}
	full, err := PressureFull()
	if errors.Is(err, fs.ErrNotExist) {
		t.Logf("no PSI on this kernel: %v", err)
	} else if err != nil || full < 0 || full > 100 {
		t.Errorf("PressureFull() = %v, %v, want a percentage", full, err)
	}
	t.Logf("MemTotal %d MiB, MemAvailable %d MiB, own cgroup limit %d (%v), memory full avg10 %.2f", total/mib, avail/mib, limit, ok, full)
}
