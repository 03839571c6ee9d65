package worker

import (
	"encoding/binary"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/safepool/safepool/internal/protocol"
)

// pageMark is what a running-item page says: the batch task running and
// the position, in its index list, of the item running.
type pageMark struct {
	id  uint64
	pos uint32
}

// readPage reads the mark in page m, which the worker may be writing: the
// id is read before and after the mark and the bias (one 8-byte load), and
// the reading is taken only when both agree. The position is the mark
// minus the bias. ok is false when the page names no item.
func readPage(m []byte) (mark pageMark, ok bool) {
	if len(m) < protocol.PageBiasOff+4 {
		return pageMark{}, false
	}
	id := (*uint64)(unsafe.Pointer(&m[protocol.PageIDOff]))
	word := (*uint64)(unsafe.Pointer(&m[protocol.PagePosOff]))
	for range 4 {
		a := atomic.LoadUint64(id)
		var w [8]byte
		binary.NativeEndian.PutUint64(w[:], atomic.LoadUint64(word))
		if atomic.LoadUint64(id) == a {
			p := binary.NativeEndian.Uint32(w[:])
			bias := binary.NativeEndian.Uint32(w[protocol.PageBiasOff-protocol.PagePosOff:])
			return pageMark{id: a, pos: p - bias}, a != 0 && p != protocol.PageNone
		}
	}
	return pageMark{}, false
}

// addPaused adds d to the time paused in page m (protocol.PagePausedOff),
// which the worker reads once it is continued.
func addPaused(m []byte, d time.Duration) {
	if len(m) < protocol.PagePausedOff+8 || d <= 0 {
		return
	}
	atomic.AddUint64((*uint64)(unsafe.Pointer(&m[protocol.PagePausedOff])), uint64(d))
}
