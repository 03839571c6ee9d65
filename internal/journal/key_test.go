package journal

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// TestXXH64 checks xxh64 against github.com/cespare/xxhash's Digest with
// a seed, for inputs of every length around its blocks.
func TestXXH64(t *testing.T) {
	for n := range 100 {
		b := bytes.Repeat([]byte{byte(n), 'x', 0xfe}, n)[:n]
		for _, seed := range []uint64{0, keySeed1, keySeed2} {
			d := xxhash.NewWithSeed(seed)
			d.Write(b)
			if got, want := xxh64(b, seed), d.Sum64(); got != want {
				t.Errorf("xxh64(%d bytes, %#x) = %#x, want %#x", n, seed, got, want)
			}
		}
	}
	if KeyOf([]byte("a")) == KeyOf([]byte("a\x00")) || KeyOf(nil) == KeyOf([]byte{0}) {
		t.Errorf("KeyOf gives inputs of different lengths the same key")
	}
}

func BenchmarkKeyOf(b *testing.B) {
	in := []byte("1000000")
	for range b.N {
		KeyOf(in)
	}
}

// BenchmarkKeySHA256 is the key of schema version 1, for comparison.
func BenchmarkKeySHA256(b *testing.B) {
	in := []byte("1000000")
	for range b.N {
		sha256.Sum256(in)
	}
}

// TestKeyLines checks that KeyLines keys each line of a block as KeyOf
// keys it alone, for lines of every length around xxh64's blocks, and a
// last line without its newline.
func TestKeyLines(t *testing.T) {
	var block []byte
	var want [][]byte
	for n := range 80 {
		line := bytes.Repeat([]byte{byte(n + 1), 'y', 0xfd}, n)[:n]
		line = bytes.ReplaceAll(line, []byte{'\n'}, []byte{'z'})
		want = append(want, line)
		block = append(append(block, line...), '\n')
	}
	block = append(block, "last"...)
	want = append(want, []byte("last"))
	keys := make([]Key, len(want))
	KeyLines(block, keys)
	for i, line := range want {
		if keys[i] != KeyOf(line) {
			t.Errorf("key of line %d (%d bytes) = %x, want KeyOf's %x", i, len(line), keys[i], KeyOf(line))
		}
	}
}

func BenchmarkKeyLines(b *testing.B) {
	var block []byte
	for i := range 1024 {
		block = fmt.Appendf(block, "%d\n", 1000000+i)
	}
	keys := make([]Key, 1024)
	b.SetBytes(int64(len(block)))
	for range b.N {
		KeyLines(block, keys)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1024), "ns/line")
}
