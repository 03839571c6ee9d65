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

// AppendBatch appends a batch frame (KindBatch) for task id to b: the
// items at indexes, of payload. The whole must fit in 32 bits.
func AppendBatch(b []byte, id uint64, indexes []uint32, payload []byte) []byte {
	b = AppendHeader(b, uint8(KindBatch), id, 4+4*len(indexes)+len(payload))
	b = binary.BigEndian.AppendUint32(b, uint32(len(indexes)))
	for _, i := range indexes {
		b = binary.BigEndian.AppendUint32(b, i)
	}
	return append(b, payload...)
}

// BatchRange, set in the count of a batch frame (PageVersion), says that
// the frame's items are a range: the count's other bits are the number of
// items m, and one index follows, the first; the items are first to
// first+m-1.
const BatchRange = 1 << 31

// AppendBatchRange appends a batch frame for task id whose items are the m
// items from first on, in the compact form of PageVersion (BatchRange).
func AppendBatchRange(b []byte, id uint64, first, m uint32, payload []byte) []byte {
	b = AppendHeader(b, uint8(KindBatch), id, 8+len(payload))
	b = binary.BigEndian.AppendUint32(b, BatchRange|m)
	b = binary.BigEndian.AppendUint32(b, first)
	return append(b, payload...)
}

// ParseBatch splits the payload of a batch frame into its item indexes and
// the task's payload, in either form. It reports false when p is too short
// for its count.
func ParseBatch(p []byte) (indexes []uint32, payload []byte, ok bool) {
	if len(p) < 4 {
		return nil, nil, false
	}
	if c := binary.BigEndian.Uint32(p); c&BatchRange != 0 {
		if len(p) < 8 {
			return nil, nil, false
		}
		first := binary.BigEndian.Uint32(p[4:])
		indexes = make([]uint32, c&^BatchRange)
		for i := range indexes {
			indexes[i] = first + uint32(i)
		}
		return indexes, p[8:], true
	}
	m := uint64(binary.BigEndian.Uint32(p))
	if 4+4*m > uint64(len(p)) {
		return nil, nil, false
	}
	indexes = make([]uint32, m)
	for i := range indexes {
		indexes[i] = binary.BigEndian.Uint32(p[4+4*i:])
	}
	return indexes, p[4+4*m:], true
}

// ItemIndex splits the payload of a start frame of a batch, an item frame
// or an item-error frame into the item index and the rest. It reports false
// when p has no index.
func ItemIndex(p []byte) (index uint32, rest []byte, ok bool) {
	if len(p) < 4 {
		return 0, nil, false
	}
	return binary.BigEndian.Uint32(p), p[4:], true
}

// ParseItems splits the payload of an items frame (KindItems) into the
// index of its range's first item, the range's item count and the output.
// It reports false when p is too short or the count is 0.
func ParseItems(p []byte) (first, count uint32, output []byte, ok bool) {
	if len(p) < 8 {
		return 0, 0, nil, false
	}
	first, count = binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])
	return first, count, p[8:], count > 0
}

// AppendItems appends an items frame for task id: the results, as one
// output, of the count items from first on.
func AppendItems(b []byte, id uint64, first, count uint32, output []byte) []byte {
	b = AppendHeader(b, uint8(KindItems), id, 8+len(output))
	b = binary.BigEndian.AppendUint32(b, first)
	b = binary.BigEndian.AppendUint32(b, count)
	return append(b, output...)
}
