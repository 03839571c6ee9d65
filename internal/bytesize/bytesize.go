// Package bytesize renders byte counts for people. Every message and
// summary of safepool's Go code that shows a size goes through Format, so
// that a size reads the same wherever it appears.
package bytesize

import (
	"math"
	"strconv"
)

// Format renders n bytes in binary units: "312 B", "800 KiB", "1.9 GiB",
// "64 MiB". One decimal is shown below 10 units unless the value is whole.
func Format(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	f := float64(n)
	suffixes := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := -1
	for f >= unit && i < len(suffixes)-1 {
		f /= unit
		i++
	}
	if f >= 10 || f == math.Trunc(f) {
		return strconv.FormatFloat(f, 'f', 0, 64) + " " + suffixes[i]
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + " " + suffixes[i]
}
