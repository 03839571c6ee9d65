package memory

import (
	"testing"
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
			got, err := parseFullAvg10(tt.text)
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
