//go:build !linux

package memory

import "os"

// readSmall reads a small file whole.
func readSmall(path string) ([]byte, error) { return os.ReadFile(path) }

// withScratch reads the file path whole and calls parse with it.
func withScratch[T any](path string, parse func([]byte) (T, error)) (T, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var zero T
		return zero, err
	}
	return parse(b)
}
