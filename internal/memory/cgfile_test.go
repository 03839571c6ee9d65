package memory

import (
	"slices"
	"testing"
)

func TestParseLimit(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    int64
		wantOK  bool
		wantErr bool
	}{
		{name: "v2 max", in: "max"},
		{name: "v2 bytes", in: "67108864", want: 64 << 20, wantOK: true},
		{name: "v1 unlimited", in: "9223372036854771712"},
		{name: "v1 just below 2^62", in: "4611686018427387903", want: 1<<62 - 1, wantOK: true},
		{name: "garbage", in: "lots", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := parseLimit(tc.in)
			if got != tc.want || ok != tc.wantOK || (err != nil) != tc.wantErr {
				t.Errorf("parseLimit(%q) = %d, %v, %v, want %d, %v, error %v", tc.in, got, ok, err, tc.want, tc.wantOK, tc.wantErr)
			}
		})
	}
}

func TestParseKey(t *testing.T) {
	const events = "low 0\nhigh 3\nmax 17\noom 2\noom_kill 1\noom_group_kill 0\n"
	const oomControl = "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n"
	for _, tc := range []struct {
		name, file, key string
		want            uint64
		wantOK          bool
	}{
		{name: "v2 memory.events", file: events, key: "oom_kill", want: 1, wantOK: true},
		{name: "prefix is not the key", file: events, key: "oom", want: 2, wantOK: true},
		{name: "v1 memory.oom_control", file: oomControl, key: "oom_kill", want: 4, wantOK: true},
		{name: "v1 before 4.13", file: "oom_kill_disable 0\nunder_oom 0\n", key: "oom_kill"},
		{name: "empty", file: "", key: "oom_kill"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := parseKey([]byte(tc.file), tc.key)
			if got != tc.want || ok != tc.wantOK || err != nil {
				t.Errorf("parseKey(%q, %q) = %d, %v, %v, want %d, %v, nil", tc.file, tc.key, got, ok, err, tc.want, tc.wantOK)
			}
		})
	}
	if _, _, err := parseKey([]byte("oom_kill x\n"), "oom_kill"); err == nil {
		t.Errorf("parseKey(oom_kill x) = nil error, want one")
	}
}

func TestParseProcs(t *testing.T) {
	got, err := parseProcs([]byte("12\n345\n"))
	if err != nil || !slices.Equal(got, []int{12, 345}) {
		t.Errorf("parseProcs = %v, %v, want [12 345]", got, err)
	}
	if got, err := parseProcs(nil); err != nil || len(got) != 0 {
		t.Errorf("parseProcs(empty) = %v, %v, want none", got, err)
	}
}
