package cluster

import (
	"encoding/json"
	"slices"
	"testing"
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
