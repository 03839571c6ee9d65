package worker

import (
	"sync/atomic"
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
// id is read before and after the position, and the reading is taken only
// when both agree. ok is false when the page names no item.
func readPage(m []byte) (mark pageMark, ok bool) {
	if len(m) < protocol.PagePosOff+4 {
		return pageMark{}, false
	}
	id := (*uint64)(unsafe.Pointer(&m[protocol.PageIDOff]))
	pos := (*uint32)(unsafe.Pointer(&m[protocol.PagePosOff]))
	for range 4 {
		a := atomic.LoadUint64(id)
		p := atomic.LoadUint32(pos)
		if atomic.LoadUint64(id) == a {
			return pageMark{id: a, pos: p}, a != 0 && p != protocol.PageNone
		}
	}
	return pageMark{}, false
}
