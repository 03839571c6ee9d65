package reaper

import (
	"slices"
	"strings"
	"testing"
)

func TestMark(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		want []string
	}{
		{"unmarked", []string{"A=1"}, []string{"A=1", "SAFEPOOL_RUN=tok"}},
		{"empty", []string{}, []string{"SAFEPOOL_RUN=tok"}},
		{"nested", []string{"SAFEPOOL_RUN=outer", "A=1"}, []string{"A=1", "SAFEPOOL_RUN=outer:tok"}},
		{"last setting counts", []string{"SAFEPOOL_RUN=a", "SAFEPOOL_RUN=b"}, []string{"SAFEPOOL_RUN=b:tok"}},
		{"empty value", []string{"SAFEPOOL_RUN="}, []string{"SAFEPOOL_RUN=tok"}},
		{"similar name", []string{"SAFEPOOL_RUNS=x"}, []string{"SAFEPOOL_RUNS=x", "SAFEPOOL_RUN=tok"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mark(tt.env, "tok"); !slices.Equal(got, tt.want) {
				t.Errorf("mark(%q, tok) = %q, want %q", tt.env, got, tt.want)
			}
		})
	}
	t.Run("nil is the process's environment", func(t *testing.T) {
		t.Setenv("REAPER_MARK_TEST", "1")
		got := mark(nil, "tok")
		if !slices.Contains(got, "REAPER_MARK_TEST=1") || got[len(got)-1] != "SAFEPOOL_RUN=tok" {
			t.Errorf("mark(nil, tok) = %q, want the environment and SAFEPOOL_RUN=tok", got)
		}
	})
}

func TestMarked(t *testing.T) {
	tests := []struct {
		environ string
		want    bool
	}{
		{"A=1\x00SAFEPOOL_RUN=tok\x00B=2\x00", true},
		{"SAFEPOOL_RUN=tok", true},
		{"SAFEPOOL_RUN=outer:tok:inner\x00", true},
		{"SAFEPOOL_RUN=outer\x00SAFEPOOL_RUN=tok\x00", true},
		{"SAFEPOOL_RUN=toke\x00", false},
		{"SAFEPOOL_RUN=xtok\x00", false},
		{"SAFEPOOL_RUN=\x00", false},
		{"X_SAFEPOOL_RUN=tok\x00", false},
		{"A=SAFEPOOL_RUN=tok\x00", false},
		{"A=1\x00tok\x00", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := marked([]byte(tt.environ), "tok"); got != tt.want {
			t.Errorf("marked(%q, tok) = %v, want %v", strings.ReplaceAll(tt.environ, "\x00", `\0`), got, tt.want)
		}
	}
}

func TestUnmark(t *testing.T) {
	env := []string{"A=1", "SAFEPOOL_RUN=x:y", "B=2", "SAFEPOOL_RUNS=z"}
	want := []string{"A=1", "B=2", "SAFEPOOL_RUNS=z"}
	if got := unmark(env); !slices.Equal(got, want) {
		t.Errorf("unmark(%q) = %q, want %q", env, got, want)
	}
}
