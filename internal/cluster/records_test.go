package cluster

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestArgvJSON(t *testing.T) {
	tests := []struct {
		name string
		argv Argv
		json string
	}{
		{"nil", nil, `null`},
		{"utf-8", Argv{"echo", "café", "\u2028"}, `["echo","café","\u2028"]`},
		{"latin-1", Argv{"cat", "caf\xe9"}, `["cat",{"bytes":"Y2Fm6Q=="}]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.argv)
			if err != nil || string(b) != tt.json {
				t.Fatalf("Marshal(%q) = %s, %v, want %s", tt.argv, b, err, tt.json)
			}
			var back Argv
			if err := json.Unmarshal(b, &back); err != nil || !slices.Equal(back, tt.argv) || (back == nil) != (tt.argv == nil) {
				t.Errorf("Unmarshal(%s) = %q, %v, want %q", b, back, err, tt.argv)
			}
		})
	}
}

// TestSettingsKeptTimeoutGrace: a run resumed with another --timeout-grace
// names the one it keeps, as --timeout-grace would say it: unset (the
// agents' own), 0s (SIGKILL at once) or a duration.
func TestSettingsKeptTimeoutGrace(t *testing.T) {
	tests := []struct {
		name       string
		was, asked time.Duration
		want       []string
	}{
		{"same", 5 * time.Second, 5 * time.Second, nil},
		{"unset", 0, 5 * time.Second, []string{"--timeout-grace unset (not 5s)"}},
		{"at once", -1, 0, []string{"--timeout-grace 0s (not unset)"}},
		{"longer", 30 * time.Second, -1, []string{"--timeout-grace 30s (not 0s)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RunSpec{TimeoutGrace: tt.was}.SettingsKept(RunSpec{TimeoutGrace: tt.asked})
			if !slices.Equal(got, tt.want) {
				t.Errorf("SettingsKept = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestRunSpecTimeoutGraceJSON: a run without a grace of its own records
// none, so that an agent of an earlier version reads the same record, and
// one with a grace keeps it, SIGKILL at once included.
func TestRunSpecTimeoutGraceJSON(t *testing.T) {
	for _, d := range []time.Duration{0, -1, 1500 * time.Millisecond} {
		b, err := json.Marshal(RunSpec{TimeoutGrace: d})
		if err != nil {
			t.Fatal(err)
		}
		var back RunSpec
		if err := json.Unmarshal(b, &back); err != nil || back.TimeoutGrace != d {
			t.Errorf("Unmarshal(%s).TimeoutGrace = %v, %v, want %v", b, back.TimeoutGrace, err, d)
		}
		if got, want := strings.Contains(string(b), `"timeout_grace"`), d != 0; got != want {
			t.Errorf("Marshal(TimeoutGrace %v) = %s: timeout_grace recorded %v, want %v", d, b, got, want)
		}
	}
}
