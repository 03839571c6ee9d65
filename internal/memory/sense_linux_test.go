package memory

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/procfs"
)

func TestSensor(t *testing.T) {
	s := NewSensor()
	total, err := s.HostTotal()
	if err != nil || total <= 0 {
		t.Fatalf("HostTotal() = %d, %v", total, err)
	}
	used, err := s.HostUsed()
	if err != nil || used <= 0 || used > total {
		t.Errorf("HostUsed() = %d, %v, want in (0, %d]", used, err, total)
	}
	if _, err := locate(); err == nil {
		ws, err := s.CgroupUsed()
		if err != nil || ws <= 0 {
			t.Errorf("CgroupUsed() = %d, %v, want the working set of this process's cgroup", ws, err)
		}
	}
	t.Logf("host %d MiB, used %d MiB", total/mib, used/mib)
}

func TestParseFullAvg10(t *testing.T) {
	tests := []struct {
		name string
		text string
		want float64
		ok   bool
	}{
		{"psi", "some avg10=1.50 avg60=0.00 avg300=0.00 total=1\nfull avg10=0.75 avg60=0.00 avg300=0.00 total=2\n", 0.75, true},
		{"no full line", "some avg10=1.50 avg60=0.00 avg300=0.00 total=1\n", 0, false},
		{"empty", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFullAvg10([]byte(tt.text))
			if (err == nil) != tt.ok || got != tt.want {
				t.Errorf("parseFullAvg10(%q) = %v, %v, want %v (ok %v)", tt.text, got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestGroupWorkingSet(t *testing.T) {
	m := requireCgroups(t)
	g, err := m.NewGroup("ws", 0)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := g.WorkingSet()
	if err != nil || ws < 0 {
		t.Errorf("WorkingSet() of an empty group = %d, %v", ws, err)
	}
}

// TestCgroupUsedWalls runs CgroupUsed on fake cgroupfs trees where a
// cgroup above the supervisor's has a limit, and processes beside the
// supervisor's cgroup (the program that started it, in a cgroup of its
// own) use memory under it: what is left under the smallest limit must be
// the least room any limited cgroup leaves, not what the supervisor's own
// cgroup alone leaves.
func TestCgroupUsedWalls(t *testing.T) {
	n := func(v int64) string { return fmt.Sprintf("%d\n", v) }
	v2 := t.TempDir()
	writeFiles(t, v2, map[string]string{
		// The container: 1 GiB, of which the client beside the supervisor
		// holds most.
		"pod/memory.max":     n(1024 * mib),
		"pod/memory.current": n(900 * mib),
		"pod/memory.stat":    "anon 1\ninactive_file " + n(100*mib),
		// The supervisor's cgroup, not limited: 100 MiB.
		"pod/sup/memory.max":     "max\n",
		"pod/sup/memory.current": n(110 * mib),
		"pod/sup/memory.stat":    "inactive_file " + n(10*mib),
		// Its own limit, larger than the pod's, which binds later.
		"lim/memory.max":         n(2048 * mib),
		"lim/memory.current":     n(300 * mib),
		"lim/memory.stat":        "inactive_file 0\n",
		"lim/sup/memory.max":     n(512 * mib),
		"lim/sup/memory.current": n(200 * mib),
		"lim/sup/memory.stat":    "inactive_file 0\n",
		"alone/memory.max":       n(256 * mib),
		"alone/memory.current":   n(64 * mib),
		"alone/memory.stat":      "inactive_file 0\n",
	})
	v1 := t.TempDir()
	writeFiles(t, v1, map[string]string{
		"c/memory.limit_in_bytes":      n(600 * mib),
		"c/memory.use_hierarchy":       "1\n",
		"c/memory.usage_in_bytes":      n(450 * mib),
		"c/memory.stat":                "total_inactive_file " + n(50*mib),
		"c/s/memory.limit_in_bytes":    "9223372036854771712\n",
		"c/s/memory.use_hierarchy":     "1\n",
		"c/s/memory.usage_in_bytes":    n(40 * mib),
		"c/s/memory.stat":              "total_inactive_file 0\nhierarchical_memory_limit " + n(600*mib),
		"flat/memory.limit_in_bytes":   n(600 * mib),
		"flat/memory.use_hierarchy":    "0\n",
		"flat/memory.usage_in_bytes":   n(450 * mib),
		"flat/memory.stat":             "total_inactive_file 0\n",
		"flat/s/memory.limit_in_bytes": n(300 * mib),
		"flat/s/memory.use_hierarchy":  "0\n",
		"flat/s/memory.usage_in_bytes": n(40 * mib),
		"flat/s/memory.stat":           "total_inactive_file 0\nhierarchical_memory_limit " + n(300*mib),
	})
	tests := []struct {
		name  string
		loc   location
		walls int
		limit int64
		used  int64
	}{
		// 1 GiB less the pod's 224 MiB of room: the client's 700 MiB count.
		{"v2 limit above", location{mode: ModeCgroupV2, mount: v2, dir: filepath.Join(v2, "pod/sup")}, 1, 1024 * mib, 800 * mib},
		// The own limit leaves 312 MiB, the larger one above 1748 MiB.
		{"v2 own limit binds", location{mode: ModeCgroupV2, mount: v2, dir: filepath.Join(v2, "lim/sup")}, 1, 512 * mib, 200 * mib},
		{"v2 no cgroup above", location{mode: ModeCgroupV2, mount: v2, dir: filepath.Join(v2, "alone")}, 0, 256 * mib, 64 * mib},
		{"v1 limit above", location{mode: ModeCgroupV1, mount: v1, dir: filepath.Join(v1, "c/s")}, 1, 600 * mib, 400 * mib},
		// A parent that does not count its children's memory is no wall.
		{"v1 no hierarchy", location{mode: ModeCgroupV1, mount: v1, dir: filepath.Join(v1, "flat/s")}, 0, 300 * mib, 40 * mib},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Sensor{loc: tt.loc, hasCg: true, walls: wallsAbove(tt.loc)}
			if len(s.walls) != tt.walls {
				t.Errorf("wallsAbove(%s) = %q, want %d", tt.loc.dir, s.walls, tt.walls)
			}
			limit, ok, err := s.CgroupLimit()
			if err != nil || !ok || limit != tt.limit {
				t.Errorf("CgroupLimit() = %d MiB, %v, %v, want %d MiB", limit/mib, ok, err, tt.limit/mib)
			}
			used, err := s.CgroupUsed()
			if err != nil || used != tt.used {
				t.Errorf("CgroupUsed() = %d MiB, %v, want %d MiB", used/mib, err, tt.used/mib)
			}
		})
	}
}

func TestParseMeminfo(t *testing.T) {
	tests := []struct {
		name         string
		text         string
		total, avail int64
		ok           bool
	}{
		{"meminfo", "MemTotal:       16314228 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\nBuffers:  1 kB\n", 16314228 << 10, 8000000 << 10, true},
		{"no MemAvailable", "MemTotal:       16314228 kB\nMemFree:         1000000 kB\n", 0, 0, false},
		{"not kB", "MemTotal:       16314228 MB\nMemAvailable:    8000000 kB\n", 0, 0, false},
		{"not a number", "MemTotal:       16x14228 kB\nMemAvailable:    8000000 kB\n", 0, 0, false},
		{"empty", "", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			total, avail, err := parseMeminfo([]byte(tt.text))
			if (err == nil) != tt.ok || total != tt.total || avail != tt.avail {
				t.Errorf("parseMeminfo(%q) = %d, %d, %v, want %d, %d (ok %v)", tt.text, total, avail, err, tt.total, tt.avail, tt.ok)
			}
		})
	}
	// The machine's own file, against the procfs library's reading of it
	// (MemTotal does not move between the two reads).
	mi, err := procfs.NewDefaultFS()
	if err != nil {
		t.Fatal(err)
	}
	want, err := mi.Meminfo()
	if err != nil {
		t.Fatal(err)
	}
	total, avail, err := meminfo()
	if err != nil || want.MemTotalBytes == nil || total != int64(*want.MemTotalBytes) || avail <= 0 || avail > total {
		t.Errorf("meminfo() = %d, %d, %v; procfs says MemTotal %v", total, avail, err, want.MemTotalBytes)
	}
}

// TestSamplingLeavesNoGarbage: what the governor's sampler reads ten times
// a second (the host's meminfo and PSI, a cgroup's memory.stat) is read
// into reused buffers. Each sample used to leave some 17 KB of garbage
// (179 allocations for HostUsed, 30 for PressureFull).
func TestSamplingLeavesNoGarbage(t *testing.T) {
	var s Sensor
	if _, err := s.HostUsed(); err != nil {
		t.Fatal(err)
	}
	check := func(name string, f func()) {
		t.Helper()
		if n := testing.AllocsPerRun(50, f); n > 2 {
			t.Errorf("%s: %.0f allocations per call, want at most 2", name, n)
		}
	}
	check("HostUsed", func() { s.HostUsed() })
	if _, err := PressureFull(); err == nil {
		check("PressureFull", func() { PressureFull() })
	} else {
		t.Logf("no PSI here: %v", err)
	}
	stat := filepath.Join(t.TempDir(), "memory.stat")
	text := strings.Repeat("cache 0\nrss 0\n", 60) + "total_inactive_file 4096\n"
	if err := os.WriteFile(stat, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := readKey(stat, "total_inactive_file"); err != nil || !ok || v != 4096 {
		t.Fatalf("readKey = %d, %v, %v, want 4096", v, ok, err)
	}
	check("readKey", func() { readKey(stat, "total_inactive_file") })
}
