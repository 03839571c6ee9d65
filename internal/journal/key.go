package journal

import (
	"bytes"
	"encoding/binary"
	"math/bits"
)

// Key is a task's key: what resume matches inputs by. Resume compares
// keys only among runs of the same kind and command, so a key is made of
// the input alone.
type Key [16]byte

// Seeds of the key's two halves.
const keySeed1, keySeed2 = 0x73616665706f6f6c, 0x6a6f75726e616c32

// KeyOf returns the key of a task's input: its 64-bit xxHash (XXH64) with
// two different seeds, 128 bits. A key of a short line costs several
// times less than its SHA-256 (BenchmarkKeyOf, BenchmarkKeySHA256), and
// map keys every line. Two different inputs share a key by chance with a probability of
// about 2^-128 per pair: about 3e-27 for a million done tasks against a
// million inputs. The hash is not cryptographic: inputs crafted to collide
// could make resume skip one of them.
func KeyOf(input []byte) Key {
	var k Key
	binary.LittleEndian.PutUint64(k[:8], xxh64(input, keySeed1))
	binary.LittleEndian.PutUint64(k[8:], xxh64(input, keySeed2))
	return k
}

const (
	prime1 uint64 = 11400714785074694791
	prime2 uint64 = 14029467366897019727
	prime3 uint64 = 1609587929392839161
	prime4 uint64 = 9650029242287828579
	prime5 uint64 = 2870177450012600261
)

// xxh64 is XXH64 of b with seed, as github.com/cespare/xxhash computes it
// (which has no one-shot function with a seed: its Digest costs several
// times as much on short inputs).
func xxh64(b []byte, seed uint64) uint64 {
	n := len(b)
	var h uint64
	if n >= 32 {
		v1, v2, v3, v4 := seed+prime1+prime2, seed+prime2, seed, seed-prime1
		for len(b) >= 32 {
			v1 = round(v1, binary.LittleEndian.Uint64(b[0:8:len(b)]))
			v2 = round(v2, binary.LittleEndian.Uint64(b[8:16:len(b)]))
			v3 = round(v3, binary.LittleEndian.Uint64(b[16:24:len(b)]))
			v4 = round(v4, binary.LittleEndian.Uint64(b[24:32:len(b)]))
			b = b[32:len(b):len(b)]
		}
		h = bits.RotateLeft64(v1, 1) + bits.RotateLeft64(v2, 7) + bits.RotateLeft64(v3, 12) + bits.RotateLeft64(v4, 18)
		h = mergeRound(h, v1)
		h = mergeRound(h, v2)
		h = mergeRound(h, v3)
		h = mergeRound(h, v4)
	} else {
		h = seed + prime5
	}
	h += uint64(n)
	for ; len(b) >= 8; b = b[8:] {
		h ^= round(0, binary.LittleEndian.Uint64(b[:8]))
		h = bits.RotateLeft64(h, 27)*prime1 + prime4
	}
	if len(b) >= 4 {
		h ^= uint64(binary.LittleEndian.Uint32(b[:4])) * prime1
		h = bits.RotateLeft64(h, 23)*prime2 + prime3
		b = b[4:]
	}
	for ; len(b) > 0; b = b[1:] {
		h ^= uint64(b[0]) * prime5
		h = bits.RotateLeft64(h, 11) * prime1
	}
	h ^= h >> 33
	h *= prime2
	h ^= h >> 29
	h *= prime3
	h ^= h >> 32
	return h
}

func round(acc, input uint64) uint64 {
	acc += input * prime2
	acc = bits.RotateLeft64(acc, 31)
	return acc * prime1
}

func mergeRound(acc, val uint64) uint64 {
	val = round(0, val)
	acc ^= val
	return acc*prime1 + prime4
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
		h1, h2 := xxh64Pair(block[:k])
		binary.LittleEndian.PutUint64(keys[i][:8], h1)
		binary.LittleEndian.PutUint64(keys[i][8:], h2)
		block = block[min(k+1, len(block)):]
	}
}

// xxh64Pair is xxh64 of b with keySeed1 and with keySeed2, in one pass.
func xxh64Pair(b []byte) (uint64, uint64) {
	n := len(b)
	if n >= 32 {
		return xxh64(b, keySeed1), xxh64(b, keySeed2)
	}
	h, g := uint64(keySeed1+prime5)+uint64(n), uint64(keySeed2+prime5)+uint64(n)
	for ; len(b) >= 8; b = b[8:] {
		r := round(0, binary.LittleEndian.Uint64(b[:8]))
		h = bits.RotateLeft64(h^r, 27)*prime1 + prime4
		g = bits.RotateLeft64(g^r, 27)*prime1 + prime4
	}
	if len(b) >= 4 {
		r := uint64(binary.LittleEndian.Uint32(b[:4])) * prime1
		h = bits.RotateLeft64(h^r, 23)*prime2 + prime3
		g = bits.RotateLeft64(g^r, 23)*prime2 + prime3
		b = b[4:]
	}
	for ; len(b) > 0; b = b[1:] {
		r := uint64(b[0]) * prime5
		h = bits.RotateLeft64(h^r, 11) * prime1
		g = bits.RotateLeft64(g^r, 11) * prime1
	}
	return avalanche(h), avalanche(g)
}

func avalanche(h uint64) uint64 {
	h ^= h >> 33
	h *= prime2
	h ^= h >> 29
	h *= prime3
	h ^= h >> 32
	return h
}
