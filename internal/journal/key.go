package journal

import (
	"bytes"
	"encoding/binary"
	"math/bits"

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
		k := lineEnd(block)
		var hi, lo uint64
		if k <= 16 {
			hi, lo = hash128Short(block[:k])
		} else {
			h := xxh3.Hash128(block[:k])
			hi, lo = h.Hi, h.Lo
		}
		binary.LittleEndian.PutUint64(keys[i][:8], hi)
		binary.LittleEndian.PutUint64(keys[i][8:], lo)
		block = block[min(k+1, len(block)):]
	}
}

// lineEnd returns the index of block's first newline, or its length when
// it has none. A short line's newline is found in the first 8 or 16 bytes
// a word at a time, which costs less than a call of bytes.IndexByte.
func lineEnd(block []byte) int {
	const ones, highs, newlines = 0x0101010101010101, 0x8080808080808080, 0x0a0a0a0a0a0a0a0a
	if len(block) >= 16 {
		x := binary.LittleEndian.Uint64(block) ^ newlines
		if t := (x - ones) &^ x & highs; t != 0 {
			return bits.TrailingZeros64(t) / 8
		}
		x = binary.LittleEndian.Uint64(block[8:]) ^ newlines
		if t := (x - ones) &^ x & highs; t != 0 {
			return 8 + bits.TrailingZeros64(t)/8
		}
	}
	if k := bytes.IndexByte(block, '\n'); k >= 0 {
		return k
	}
	return len(block)
}

// Constants of XXH3 (its primes, and words of its default secret).
const (
	prime32_2 = 2246822519
	prime64_1 = 11400714785074694791
	prime64_2 = 14029467366897019727
	prime64_3 = 1609587929392839161
	secret16  = 0xdb979083e96dd4de
	secret24  = 0x1f67b3b7a4a44072
	secret32  = 0x78e5c0cc4ee679cb
	secret40  = 0x2172ffcc7dd05a82
	secret48  = 0x8e2443f7744608b8
	secret56  = 0x4c263a81e69035e0
	secret32x = 0xbe4ba423 ^ 0x396cfeb8 // the secret's first two 32-bit words
	secret32y = 0x1cad21f7 ^ 0x2c81017c // and the next two
)

// hash128Short is XXH3-128 of b, at most 16 bytes long, as xxh3.Hash128
// computes it (TestKeyOf checks every length): the same steps, inlined
// into KeyLines, which keys every line of map's input. It returns the
// high half, then the low.
func hash128Short(b []byte) (hi, lo uint64) {
	l := len(b)
	switch {
	case l > 8:
		inLo := binary.LittleEndian.Uint64(b)
		inHi := binary.LittleEndian.Uint64(b[l-8:])
		mh, ml := bits.Mul64(inLo^inHi^(secret32^secret40), prime64_1)
		ml += uint64(l-1) << 54
		inHi ^= secret48 ^ secret56
		mh += inHi + uint64(uint32(inHi))*(prime32_2-1)
		ml ^= bits.ReverseBytes64(mh)
		hi, lo = bits.Mul64(ml, prime64_2)
		hi += mh * prime64_2
		return avalanche3(hi), avalanche3(lo)
	case l > 3:
		in64 := uint64(binary.LittleEndian.Uint32(b)) + uint64(binary.LittleEndian.Uint32(b[l-4:]))<<32
		hi, lo = bits.Mul64(in64^(secret16^secret24), prime64_1+uint64(l)<<2)
		hi += lo << 1
		lo ^= hi >> 3
		lo ^= lo >> 35
		lo *= 0x9fb21c651e98df25
		lo ^= lo >> 28
		return avalanche3(hi), lo
	case l == 3:
		lo = (uint64(b[0])|uint64(b[1])<<8)<<16 + uint64(b[2]) + 3<<8
	case l == 2:
		lo = (uint64(b[0])|uint64(b[1])<<8)*(1<<24+1)>>8 + 2<<8
	case l == 1:
		lo = uint64(b[0])*(1<<24+1<<16+1) + 1<<8
	default:
		return 0x99aa06d3014798d8, 0x6001c324468d497f
	}
	hi = uint64(bits.RotateLeft32(bits.ReverseBytes32(uint32(lo)), 13))
	lo ^= secret32x
	hi ^= secret32y
	return avalancheSmall(hi), avalancheSmall(lo)
}

func avalanche3(x uint64) uint64 {
	x ^= x >> 37
	x *= 0x165667919e3779f9
	x ^= x >> 32
	return x
}

func avalancheSmall(x uint64) uint64 {
	x *= prime64_2
	x ^= x >> 29
	x *= prime64_3
	x ^= x >> 32
	return x
}
