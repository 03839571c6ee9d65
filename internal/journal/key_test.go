package journal

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/zeebo/xxh3"
)

// TestKeyOf checks KeyOf against github.com/zeebo/xxh3's Hash128 and
// that inputs of different lengths get different keys.
func TestKeyOf(t *testing.T) {
	for n := range 100 {
		b := bytes.Repeat([]byte{byte(n), 'x', 0xfe}, n)[:n]
		h := xxh3.Hash128(b).Bytes() // big endian: Hi, then Lo
		k := KeyOf(b)
		for i := range 8 {
			if k[i] != h[7-i] || k[8+i] != h[15-i] {
				t.Fatalf("KeyOf(%d bytes) = %x, want the halves of %x little endian", n, k, h)
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
// keys it alone, for lines of every length around XXH3's cases, and a
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

// FuzzKeyLines: whatever the block, each line's key from KeyLines (which
// hashes short lines with XXH3's steps inline) is KeyOf's for that line.
func FuzzKeyLines(f *testing.F) {
	for _, s := range []string{"", "\n", "a\nbb\n\nccc", "0123456789abcdef\n0123456789abcdefg\n", "\xff\x00\n\x01"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, block []byte) {
		lines := bytes.Split(block, []byte{'\n'})
		if len(block) > 0 && block[len(block)-1] == '\n' {
			lines = lines[:len(lines)-1]
		}
		keys := make([]Key, len(lines))
		KeyLines(block, keys)
		for i, line := range lines {
			if keys[i] != KeyOf(line) {
				t.Fatalf("key of line %d %q = %x, want KeyOf's %x", i, line, keys[i], KeyOf(line))
			}
		}
	})
}
