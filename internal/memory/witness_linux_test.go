package memory

import (
	"path/filepath"
	"testing"
)

func TestWitnessFiles(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mode  Mode
		files map[string]string
		want  string // the file read, "" for none
	}{
		{
			name:  "v1",
			mode:  ModeCgroupV1,
			files: map[string]string{"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"},
			want:  "memory.oom_control",
		},
		{
			name: "v2 local events first",
			mode: ModeCgroupV2,
			files: map[string]string{
				"memory.events":       "low 0\nhigh 0\nmax 0\noom 4\noom_kill 4\n",
				"memory.events.local": "low 0\nhigh 0\nmax 0\noom 3\noom_kill 3\n",
			},
			want: "memory.events.local",
		},
		{
			name:  "v2 before Linux 5.2",
			mode:  ModeCgroupV2,
			files: map[string]string{"memory.events": "low 0\nhigh 0\nmax 0\noom 3\noom_kill 3\n"},
			want:  "memory.events",
		},
		{
			name:  "v1 before Linux 4.13",
			mode:  ModeCgroupV1,
			files: map[string]string{"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\n"},
		},
		{name: "no files", mode: ModeCgroupV2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tc.files)
			w, err := witnessAt(location{mode: tc.mode, mount: dir, dir: dir})
			if tc.want == "" {
				if err == nil {
					t.Errorf("witnessAt = %s, want an error", w.File())
				}
				return
			}
			if err != nil || w.File() != filepath.Join(dir, tc.want) {
				t.Fatalf("witnessAt = %v, %v, want a witness of %s", w, err, tc.want)
			}
			if n, err := w.read(); n != 3 || err != nil {
				t.Errorf("counter = %d, %v, want 3", n, err)
			}
		})
	}
}
