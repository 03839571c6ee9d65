//go:build race

package journal

// raceEnabled reports whether the race detector is on: it makes the
// writer several times slower.
const raceEnabled = true
