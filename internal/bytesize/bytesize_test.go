package bytesize

import "testing"

func TestFormat(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{0, "0 B"},
		{312, "312 B"},
		{1024, "1 KiB"},
		{800 << 10, "800 KiB"},
		{1 << 20, "1 MiB"},
		{64 << 20, "64 MiB"},
		{256 << 20, "256 MiB"},
		{1932735283, "1.8 GiB"},
		{2040109465, "1.9 GiB"},
		{3 << 29, "1.5 GiB"},
		{15 << 30, "15 GiB"},
		// Rounded as shown: no "10.0 MiB" beside "10 MiB", no "1024 KiB".
		{10<<20 - 1<<10, "10 MiB"},
		{1<<20 - 100, "1 MiB"},
		{2<<20 - 1, "2 MiB"},
		{1<<30 + 1<<20, "1 GiB"},
		{9_900_000, "9.4 MiB"},
	}
	for _, tt := range tests {
		if got := Format(tt.in); got != tt.want {
			t.Errorf("Format(%d) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
