//go:build !linux

package memory

import "os"

// readSmall reads a small file whole.
func readSmall(path string) ([]byte, error) { return os.ReadFile(path) }
