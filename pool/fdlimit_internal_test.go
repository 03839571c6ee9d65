package pool

import "testing"

func TestFitWorkers(t *testing.T) {
	tests := []struct {
		name         string
		workers, per int
		limit, inUse int64
		want         int
	}{
		{"room to spare", 8, 9, 1 << 20, 10, 8},
		{"exactly", 10, 9, 10*9 + 10 + fileReserve, 10, 10},
		{"one short", 10, 9, 10*9 + 10 + fileReserve - 1, 10, 9},
		{"1024 and -j 250", 250, 9, 1024, 9, 109},
		{"at least one", 4, 9, 20, 15, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fitWorkers(tt.workers, tt.per, tt.limit, tt.inUse); got != tt.want {
				t.Errorf("fitWorkers(%d, %d, %d, %d) = %d, want %d", tt.workers, tt.per, tt.limit, tt.inUse, got, tt.want)
			}
		})
	}
}
