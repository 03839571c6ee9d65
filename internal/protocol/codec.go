package protocol

import "encoding/binary"

// The frame header codec, shared by every Go reader and writer of frames:
// the framed worker protocol (Reader, Writer, the pool's task encoding) and
// the client protocol of internal/bridge, whose kinds are its own. It knows
// nothing of kinds: checking them is the caller's business (see check for
// the worker protocol's rules).

// AppendHeader appends the 13-byte header of a frame of kind with id and a
// payload of n bytes to b. n must fit in 32 bits; callers check it against
// their limit first.
func AppendHeader(b []byte, kind uint8, id uint64, n int) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	b = append(b, kind)
	return binary.BigEndian.AppendUint64(b, id)
}

// AppendFrame appends a whole frame, header and payload, to b. The payload
// must fit in 32 bits.
func AppendFrame(b []byte, kind uint8, id uint64, payload []byte) []byte {
	return append(AppendHeader(b, kind, id, len(payload)), payload...)
}

// ParseHeader returns the payload length, kind and id of the header at the
// start of h, which must hold at least HeaderSize bytes.
func ParseHeader(h []byte) (n uint32, kind uint8, id uint64) {
	_ = h[HeaderSize-1]
	return binary.BigEndian.Uint32(h[0:4]), h[4], binary.BigEndian.Uint64(h[5:13])
}
