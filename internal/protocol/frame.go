// Package protocol implements safepool's framed wire format: length-prefixed
// frames that carry a kind, a task id and a payload over a pair of pipes
// (fd 3 for tasks, fd 4 for results). docs/protocol.md is the specification
// for worker authors; this package is the reference implementation.
//
// Every frame is a 13-byte header followed by the payload:
//
//	offset  size  field
//	0       4     payload length, big-endian uint32
//	4       1     kind
//	5       8     id, big-endian uint64
//	13      n     payload
package protocol

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
)

// Version is the version of the framed protocol that every worker may
// speak, and that ReadyPayload announces. Workers announce theirs in the
// ready payload.
const Version = 1

// BatchVersion is the version that adds batch tasks to Version: a worker
// that announces it takes batch frames (KindBatch) and answers them item by
// item (KindStart with an item index, KindItem, KindItemError). A
// supervisor accepts Version and BatchVersion, and sends batch frames only
// to a worker that announced BatchVersion.
const BatchVersion = 2

// PageVersion is the version that adds answer ranges and the running-item
// page to BatchVersion: a worker that announces it may answer the items of
// a batch in ranges (KindItems), one frame for many items, and mark the
// item it runs in the page (EnvPageFD) instead of sending a start frame for
// each. A supervisor accepts it as it does BatchVersion.
const PageVersion = 3

// BiasVersion is the version that adds the page's bias word (PageBiasOff)
// to PageVersion: a worker that announces it may mark an item by a number
// of its own that differs from the item's position by the bias, which it
// changes in the same 8-byte store as the mark. A supervisor reads the bias
// of every page (a worker of PageVersion leaves it 0).
const BiasVersion = 4

// HeaderSize is the size in bytes of a frame header.
const HeaderSize = 13

// DefaultMaxPayload is the payload limit a Reader uses when it is given none:
// 1 GiB.
const DefaultMaxPayload = 1 << 30

// Environment variables that the supervisor sets for framed workers.
const (
	// EnvProtocol names the protocol a worker must speak. For framed
	// workers its value is Framed.
	EnvProtocol = "SAFEPOOL_PROTOCOL"
	// EnvTaskFD is the file descriptor the worker reads task frames from,
	// "3" unless the supervisor says otherwise.
	EnvTaskFD = "SAFEPOOL_TASK_FD"
	// EnvResultFD is the file descriptor the worker writes its frames to,
	// "4" unless the supervisor says otherwise.
	EnvResultFD = "SAFEPOOL_RESULT_FD"
	// EnvPageFD is the file descriptor of the running-item page
	// (PageVersion): a memory file of PageSize bytes that the worker maps
	// shared and the supervisor reads. Unset when there is none.
	EnvPageFD = "SAFEPOOL_PAGE_FD"
)

// The running-item page (PageVersion). Its words are in the machine's own
// byte order (the worker and the supervisor share one machine):
//
//	offset  size  field
//	0       8     id of the batch task running, uint64 (0: none yet)
//	8       4     the mark of the item running, uint32 (PageNone: none)
//	12      4     the bias, uint32 (BiasVersion; 0 before)
//	16      8     the time paused, uint64 nanoseconds, written by the supervisor
//
// The position of the item running, in the batch frame's index list, is
// the mark minus the bias, modulo 2^32. Before it starts a batch the worker
// writes PageNone at offset 8 and 0 at 12, then the id, then the mark of
// its first item; before each further item, the item's mark. A worker that
// changes the bias writes it and the mark in one aligned 8-byte store, and
// the supervisor reads them in one 8-byte load. A write to memory, it costs
// no system call, and it is still there when the worker is killed.
//
// The time paused is the only word the supervisor writes: the time for
// which it has stopped the worker's process group (Pool.Pause) in all,
// to which it adds each pause before it continues the worker (SIGCONT).
// A worker that keeps clocks of its own (the Python worker's soft time
// limit) takes it off their time, as the supervisor does for its
// deadlines.
const (
	PageSize      = 4096
	PageIDOff     = 0
	PagePosOff    = 8
	PageBiasOff   = 12
	PagePausedOff = 16
	PageNone      = ^uint32(0)
)

// Framed is the value of EnvProtocol for workers that speak this version of
// the framed protocol.
const Framed = "framed/1"

// Kind says what a frame means.
type Kind uint8

// The kinds of frame. Frames of any other kind are malformed.
const (
	// KindReady is the worker's first frame. Its id is 0 and its payload is
	// a JSON object with the worker's protocol version (see ReadyPayload).
	KindReady Kind = 1
	// KindTask carries one task from the supervisor to the worker.
	KindTask Kind = 2
	// KindStart tells the supervisor that the worker is starting the task
	// with the frame's id. Its payload is empty.
	KindStart Kind = 3
	// KindResult carries a task's result from the worker.
	KindResult Kind = 4
	// KindError reports that a task failed; the payload is a UTF-8 message.
	KindError Kind = 5
	// KindHeartbeat tells the supervisor that the worker is alive. Its id is
	// 0 and its payload is empty.
	KindHeartbeat Kind = 6
	// KindBatch carries a batch task (BatchVersion): the payload is a
	// 4-byte big-endian count m, m 4-byte big-endian item indexes, then the
	// task's payload, which holds the items in a format of the worker's
	// own. The worker runs the items the indexes name, in that order. For
	// each it sends a start frame whose payload is the 4-byte index, then
	// an item or item-error frame; a result or error frame does not answer
	// a batch. See AppendBatch and ParseBatch.
	KindBatch Kind = 7
	// KindItem carries the result of one item of a batch: the 4-byte
	// big-endian item index, then the result.
	KindItem Kind = 8
	// KindItemError reports that one item of a batch failed: the 4-byte
	// big-endian item index, then a UTF-8 message.
	KindItemError Kind = 9
	// KindItems carries the results of a range of items of a batch
	// (PageVersion): the 4-byte big-endian index of the range's first
	// item, the 4-byte big-endian count c, then one output for the c
	// items, in a format of the worker's own. The range is the next c items
	// of the batch's index list. See ParseItems.
	KindItems Kind = 10
)

var kindNames = [...]string{
	KindReady:     "ready",
	KindTask:      "task",
	KindStart:     "start",
	KindResult:    "result",
	KindError:     "error",
	KindHeartbeat: "heartbeat",
	KindBatch:     "batch",
	KindItem:      "item",
	KindItemError: "item-error",
	KindItems:     "items",
}

// String returns the kind's name as the specification spells it, such as
// "ready" or "task", or "kind(N)" for an unknown kind.
func (k Kind) String() string {
	if k.Valid() {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Valid reports whether k is one of the kinds this version defines.
func (k Kind) Valid() bool {
	return k >= KindReady && k <= KindItems
}

// Frame is one message on the wire.
type Frame struct {
	// Kind says what the frame means.
	Kind Kind
	// ID is the task id for task, start, result and error frames, chosen
	// by the supervisor and echoed by the worker. It is 0 for ready and
	// heartbeat frames.
	ID uint64
	// Payload is the frame's data. Nil and empty are the same on the wire.
	Payload []byte
}

// ErrFrameTooLarge is wrapped by the *FormatError for a frame whose payload
// is over the limit, and by the error WriteFrame returns for a payload that
// does not fit the 32-bit length field.
var ErrFrameTooLarge = errors.New("protocol: frame too large")

// FormatError reports a malformed frame: an unknown kind, an oversized
// payload, or fields that the frame's kind does not allow. The stream cannot
// be resynchronized after one.
type FormatError struct {
	// Offset is the position in the stream of the first byte of the bad
	// frame's header.
	Offset int64
	// Reason says what is wrong with the frame.
	Reason string

	err error // wrapped sentinel, such as ErrFrameTooLarge; may be nil
}

// Error returns "protocol: bad frame at byte N: " followed by the reason.
func (e *FormatError) Error() string {
	return "protocol: bad frame at byte " + strconv.FormatInt(e.Offset, 10) + ": " + e.Reason
}

// Unwrap returns the sentinel error behind e, such as ErrFrameTooLarge, or
// nil.
func (e *FormatError) Unwrap() error { return e.err }

// check reports what is wrong with a frame header, or returns nil. It is
// shared by Reader and Writer so that a Writer never produces a frame that a
// Reader with the same limit rejects. The rules on ids and payloads of the
// kinds that have none are strict on purpose: in a stream that is out of
// step they catch a bad header early, before its length is believed.
func check(off int64, k Kind, id uint64, n uint64, maxPayload uint64) *FormatError {
	switch {
	case !k.Valid():
		return &FormatError{Offset: off, Reason: "unknown kind " + strconv.Itoa(int(k))}
	case n > maxPayload:
		return &FormatError{
			Offset: off,
			Reason: fmt.Sprintf("%s payload of %d bytes is over the limit of %d", k, n, maxPayload),
			err:    ErrFrameTooLarge,
		}
	case (k == KindReady || k == KindHeartbeat) && id != 0:
		return &FormatError{Offset: off, Reason: fmt.Sprintf("%s frame with id %d, want 0", k, id)}
	case k == KindHeartbeat && n != 0:
		return &FormatError{Offset: off, Reason: fmt.Sprintf("heartbeat frame with a %d-byte payload, want none", n)}
	case k == KindStart && n != 0 && n != 4:
		return &FormatError{Offset: off, Reason: fmt.Sprintf("start frame with a %d-byte payload, want none or an item index", n)}
	case (k == KindItem || k == KindItemError || k == KindBatch) && n < 4:
		return &FormatError{Offset: off, Reason: fmt.Sprintf("%s frame with a %d-byte payload, want at least 4", k, n)}
	case k == KindItems && n < 8:
		return &FormatError{Offset: off, Reason: fmt.Sprintf("items frame with a %d-byte payload, want at least 8", n)}
	}
	return nil
}

// Writer encodes frames onto a stream. It buffers: call Flush to push the
// frames written so far to the underlying writer. A Writer is not safe for
// concurrent use.
type Writer struct {
	w   *bufio.Writer
	off int64 // bytes accepted so far, for the Offset of a FormatError
	hdr [HeaderSize]byte
}

// NewWriter returns a Writer that writes frames to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: bufio.NewWriter(w)}
}

// WriteFrame encodes f into the Writer's buffer, which goes to the
// underlying writer when it fills up or on Flush. It returns a *FormatError,
// and writes nothing, when f is not a valid frame: an unknown kind, a payload
// longer than the 32-bit length field allows (wrapping ErrFrameTooLarge), or
// a non-zero id or a payload where its kind allows none. Errors from the
// underlying writer are sticky, as with bufio.Writer.
func (w *Writer) WriteFrame(f Frame) error {
	n := uint64(len(f.Payload))
	if err := check(w.off, f.Kind, f.ID, n, math.MaxUint32); err != nil {
		return err
	}
	if _, err := w.w.Write(AppendHeader(w.hdr[:0], uint8(f.Kind), f.ID, int(n))); err != nil {
		return err
	}
	if _, err := w.w.Write(f.Payload); err != nil {
		return err
	}
	w.off += HeaderSize + int64(n)
	return nil
}

// Flush writes any buffered frames to the underlying writer.
func (w *Writer) Flush() error {
	return w.w.Flush()
}

// initialChunk bounds the buffer ReadFrame allocates before any payload byte
// has arrived.
const initialChunk = 64 << 10

// Reader decodes frames from a stream. It buffers, so it may read past the
// frame it returns; nothing else should read the underlying stream. A Reader
// is not safe for concurrent use.
type Reader struct {
	r          *bufio.Reader
	maxPayload uint64
	chunk      int   // size of the first payload buffer; initialChunk except in tests
	off        int64 // bytes consumed so far: the offset of the next frame
	err        error // sticky: once set, ReadFrame returns it forever
	hdr        [HeaderSize]byte
}

// NewReader returns a Reader that decodes frames from r and rejects payloads
// longer than maxPayload bytes. A maxPayload of zero or less means
// DefaultMaxPayload.
func NewReader(r io.Reader, maxPayload int) *Reader {
	if maxPayload <= 0 {
		maxPayload = DefaultMaxPayload
	}
	return &Reader{r: bufio.NewReader(r), maxPayload: uint64(maxPayload), chunk: initialChunk}
}

// Whole reports whether the next frame is already buffered whole, so that
// ReadFrame returns it without reading from the stream.
func (r *Reader) Whole() bool {
	n := r.r.Buffered()
	if r.err != nil || n < HeaderSize {
		return false
	}
	h, _ := r.r.Peek(HeaderSize)
	size, _, _ := ParseHeader(h)
	return uint64(n) >= HeaderSize+uint64(size)
}

// ReadFrame reads the next frame. Its Payload is a fresh slice that the
// caller may keep, or nil when the payload is empty.
//
// ReadFrame returns io.EOF only when the stream ends cleanly between two
// frames, and io.ErrUnexpectedEOF when it ends inside one. It returns a
// *FormatError for a frame with an unknown kind, a payload over the limit
// (wrapping ErrFrameTooLarge) or fields its kind does not allow. Other errors
// come from the underlying reader. Errors are sticky: the stream is out of
// step after one, so every later call returns the same error.
func (r *Reader) ReadFrame() (Frame, error) {
	if r.err != nil {
		return Frame{}, r.err
	}
	f, err := r.readFrame()
	if err != nil {
		r.err = err
		return Frame{}, err
	}
	return f, nil
}

func (r *Reader) readFrame() (Frame, error) {
	start := r.off
	n, err := io.ReadFull(r.r, r.hdr[:])
	r.off += int64(n)
	if err != nil {
		return Frame{}, err // io.EOF at a boundary, io.ErrUnexpectedEOF inside a header
	}
	n32, kind, id := ParseHeader(r.hdr[:])
	size := uint64(n32)
	f := Frame{Kind: Kind(kind), ID: id}
	if ferr := check(start, f.Kind, f.ID, size, r.maxPayload); ferr != nil {
		quoteText(ferr, r.hdr[:])
		return Frame{}, ferr
	}
	f.Payload, err = r.readPayload(int(size))
	if err != nil {
		return Frame{}, err
	}
	return f, nil
}

// quoteText adds to ferr, the error of the frame header hdr, the text that
// hdr begins with, if it begins with four printable characters or more: a
// length field of text is a length of 538 MB or more, most likely a
// message printed on the wrong descriptor.
func quoteText(ferr *FormatError, hdr []byte) {
	if t := textPrefix(hdr); len(t) >= 4 {
		ferr.Reason += fmt.Sprintf(" (the header's bytes begin with text, %q: not a frame; "+
			"text belongs on stdout or stderr, never with the frames)", t)
	}
}

// textPrefix returns the printable ASCII at the start of b: a line of
// text, up to its end.
func textPrefix(b []byte) []byte {
	for i, c := range b {
		if c < ' ' || c > '~' {
			return b[:i]
		}
	}
	return b
}

// readPayload reads exactly n payload bytes. n has been checked against the
// limit but is still only the sender's claim, so the buffer starts at most
// r.chunk bytes long and grows only as data actually arrives: a lying header
// costs at most r.chunk bytes. The buffer doubles until a quarter
// of n has arrived, then jumps to n. So a real payload costs less than 2n in
// total, and past the first chunk the buffer is never larger than 4 times
// the bytes received.
func (r *Reader) readPayload(n int) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	p := make([]byte, min(n, r.chunk))
	got := 0
	for {
		k, err := io.ReadFull(r.r, p[got:])
		got += k
		r.off += int64(k)
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the header promised more
		}
		if err != nil {
			return nil, err
		}
		if got == n {
			return p, nil
		}
		size := 2 * len(p)
		if 2*size >= n {
			size = n
		}
		grown := make([]byte, size)
		copy(grown, p)
		p = grown
	}
}

// ReadyPayload returns the payload of the ready frame for this version:
// {"version":1}.
func ReadyPayload() []byte {
	return []byte(`{"version":` + strconv.Itoa(Version) + `}`)
}

// ParseReady returns the protocol version announced by a ready payload: any
// JSON object whose "version" member is an integer. Other members are
// ignored. It returns an error if p is not a JSON object or has no integer
// "version". Whether the version is supported is for the caller to decide.
func ParseReady(p []byte) (version int, err error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(p, &obj); err != nil {
		return 0, fmt.Errorf("protocol: ready payload is not a JSON object: %w", err)
	}
	raw, ok := obj["version"]
	if !ok {
		return 0, errors.New(`protocol: ready payload has no "version"`)
	}
	var v *int // nil for JSON null
	if err := json.Unmarshal(raw, &v); err != nil || v == nil {
		return 0, fmt.Errorf(`protocol: ready payload "version" is %s, want an integer`, raw)
	}
	return *v, nil
}
