package pool

import "testing"

func TestFitPidWorkers(t *testing.T) {
	tests := []struct {
		name         string
		workers      int
		limit, inUse int64
		want         int
	}{
		{"room to spare", 8, 4096, 10, 8},
		{"exactly", 10, 10*pidsPerWorker + 10 + pidsReserve, 10, 10},
		{"one short", 10, 10*pidsPerWorker + 10 + pidsReserve - 1, 10, 9},
		{"40 and -j 64", 64, 40, 10, 7},
		{"at least one", 4, 20, 15, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fitPidWorkers(tt.workers, tt.limit, tt.inUse); got != tt.want {
				t.Errorf("fitPidWorkers(%d, %d, %d) = %d, want %d", tt.workers, tt.limit, tt.inUse, got, tt.want)
			}
		})
	}
}
