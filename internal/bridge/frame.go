package bridge

import (
	"bufio"
	"fmt"
	"io"

	"github.com/safepool/safepool/internal/protocol"
)

// Kind says what a bridge frame means. The header layout is the framed
// worker protocol's (4-byte length, 1-byte kind, 8-byte id, big-endian); the
// kinds are the bridge's own, specified in docs/protocol.md.
type Kind uint8

// The kinds of bridge/1. Kinds 1 to 15 go from the client to the bridge,
// kinds 16 and up from the bridge to the client.
const (
	// KindHello carries the pool's configuration as a JSON Hello. It is the
	// client's first frame.
	KindHello Kind = 1
	// KindTask submits one task; the id is the task's number and the
	// payload goes to a worker unchanged.
	KindTask Kind = 2
	// KindClose says that no more tasks will come.
	KindClose Kind = 3
	// KindAbort stops the pool: running tasks are killed, queued ones
	// cancelled.
	KindAbort Kind = 4
	// KindTaskMeta submits one task with options of its own, as KindTask
	// does: the payload is a 4-byte big-endian length, that many bytes of
	// JSON TaskMeta, then the worker's payload.
	KindTaskMeta Kind = 5
	// KindBatch submits a batch of items as one task (bridge/3): the
	// payload is a 4-byte big-endian item count N, a 4-byte big-endian
	// length, that many bytes of JSON TaskMeta (none: no options), then
	// the worker's payload, which holds the N items. The id is the first
	// item's number; the items take the numbers up to id+N-1.
	KindBatch Kind = 6
	// KindReady answers KindHello with a JSON Ready.
	KindReady Kind = 16
	// KindResult carries a task's outcome: a 4-byte big-endian length, that
	// many bytes of JSON Meta, then the worker's result payload.
	KindResult Kind = 17
	// KindEnd is the bridge's last frame: a JSON End.
	KindEnd Kind = 18
	// KindItems carries the outcome of items of a batch, all in one state
	// (bridge/3): a 4-byte big-endian length, that many bytes of JSON
	// Meta, a 4-byte big-endian count n, n entries of 24 bytes (the
	// item's index in its batch and its output's size, 4-byte big-endian
	// each, then the start and end of its last run, big-endian IEEE 754
	// Unix seconds, 0 if unknown), then the n outputs one after the other.
	// The id is the batch's, so an item's number is the id plus its index.
	// Since bridge/4 an entry is 28 bytes, with a span after the index: in
	// a done frame, a range of items answered together, in another state
	// (bridge/5), a run of items that each have the entry's output (writeItems).
	KindItems Kind = 19
	// KindNotice carries a notice for the client to show its user: UTF-8
	// text, one sentence or more, such as a worker over the max RSS after
	// its first task. A client that does not know the kind skips the
	// frame, so bridge/5 clients read a session with notices as one
	// without.
	KindNotice Kind = 20
)

// maxPayload bounds a frame's payload, as in the worker protocol.
const maxPayload = protocol.DefaultMaxPayload

// frame is one message between the client and the bridge.
type frame struct {
	kind    Kind
	id      uint64
	payload []byte
}

func readFrame(r *bufio.Reader) (frame, error) {
	var hdr [protocol.HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return frame{}, err // io.EOF between frames, io.ErrUnexpectedEOF inside one
	}
	n, kind, id := protocol.ParseHeader(hdr[:])
	f := frame{kind: Kind(kind), id: id}
	if n > maxPayload {
		return frame{}, fmt.Errorf("bridge: %d-byte payload is over the limit", n)
	}
	if n > 0 {
		f.payload = make([]byte, n)
		if _, err := io.ReadFull(r, f.payload); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return frame{}, fmt.Errorf("bridge: reading a payload: %w", err)
		}
	}
	return f, nil
}

// writeFrame writes a frame made of the concatenation of parts. The caller
// flushes w.
func writeFrame(w *bufio.Writer, kind Kind, id uint64, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > maxPayload {
		return fmt.Errorf("bridge: %d-byte payload is over the limit", n)
	}
	var hdr [protocol.HeaderSize]byte
	if _, err := w.Write(protocol.AppendHeader(hdr[:0], uint8(kind), id, n)); err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := w.Write(p); err != nil {
			return err
		}
	}
	return nil
}
