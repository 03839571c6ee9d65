package journal

import (
	"bytes"
	"crypto/sha256"
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
