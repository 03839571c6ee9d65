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
	// Round as shown before choosing the form, so that 9.97 MiB reads
	// "10 MiB" like 10 MiB does, and 1023.7 KiB reads "1 MiB".
	r := math.Round(f*10) / 10
	if r >= 10 {
		r = math.Round(f)
	}
	if r >= unit && i < len(suffixes)-1 {
		r /= unit
		i++
	}
	if r == math.Trunc(r) {
		return strconv.FormatFloat(r, 'f', 0, 64) + " " + suffixes[i]
	}
	return strconv.FormatFloat(r, 'f', 1, 64) + " " + suffixes[i]
}
