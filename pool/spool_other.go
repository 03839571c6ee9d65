//go:build !linux

package pool

import "os"

// createSpillFile makes a temporary file in dir and removes its name at
// once.
func createSpillFile(dir string) (*os.File, error) {
	f, err := os.CreateTemp(dir, "safepool-spill-*")
	if err != nil {
		return nil, unwrapPath(err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, unwrapPath(err)
	}
	return f, nil
}

// punchHole does nothing here: a block stays allocated until it is reused
// or the file is emptied.
func punchHole(f *os.File, off, n int64) {}
