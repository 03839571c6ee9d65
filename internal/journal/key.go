package journal

import (
	"bytes"
	"encoding/binary"

	"github.com/zeebo/xxh3"
)

// Key is a task's key: what resume matches inputs by. Resume compares
// keys only among runs of the same kind and command, so a key is made of
// the input alone.
type Key [16]byte

// KeyOf returns the key of a task's input: its 128-bit XXH3 hash
// (github.com/zeebo/xxh3's Hash128), high half first, both halves little
// endian. A key of a short line costs several times less than its
// SHA-256, and less than the two XXH64 of schema version 2
// (BenchmarkKeyOf, BenchmarkKeySHA256), and map keys every line. Two
// different inputs share a key by chance with a probability of about
// 2^-128 per pair: about 3e-27 for a million done tasks against a million
// inputs. The hash is not cryptographic: inputs crafted to collide could
// make resume skip one of them.
func KeyOf(input []byte) Key {
	var k Key
	h := xxh3.Hash128(input)
	binary.LittleEndian.PutUint64(k[:8], h.Hi)
	binary.LittleEndian.PutUint64(k[8:], h.Lo)
	return k
}

// KeyLines keys the lines of block, each ended by a newline, at once:
// keys[i] is KeyOf of the i-th line without its newline, for as many lines
// as keys holds (a last line may lack its newline).
func KeyLines(block []byte, keys []Key) {
	for i := range keys {
		k := bytes.IndexByte(block, '\n')
		if k < 0 {
			k = len(block)
		}
		h := xxh3.Hash128(block[:k])
		binary.LittleEndian.PutUint64(keys[i][:8], h.Hi)
		binary.LittleEndian.PutUint64(keys[i][8:], h.Lo)
		block = block[min(k+1, len(block)):]
	}
}
