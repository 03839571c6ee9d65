package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// FuzzReadFrame feeds arbitrary bytes to a Reader and checks it against an
// independent walk over the same bytes: it must never panic, must decode
// exactly the complete frames, must fail the way the bytes call for, must
// allocate only in proportion to the payload bytes that really arrived, and
// every frame it returns must re-encode to the bytes it came from. A non-zero
// chunk shrinks the Reader's first payload buffer, so that small inputs reach
// the code that grows it.
func FuzzReadFrame(f *testing.F) {
	var session bytes.Buffer
	w := NewWriter(&session)
	for _, fr := range []Frame{
		{Kind: KindReady, Payload: ReadyPayload()},
		{Kind: KindTask, ID: 1, Payload: []byte("first task")},
		{Kind: KindStart, ID: 1},
		{Kind: KindHeartbeat},
		{Kind: KindResult, ID: 1, Payload: []byte("FIRST TASK")},
		{Kind: KindError, ID: 2, Payload: []byte("it failed")},
	} {
		if err := w.WriteFrame(fr); err != nil {
			f.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		f.Fatal(err)
	}
	s := session.Bytes()

	seeds := []struct {
		data    []byte
		limit   uint32
		oneByte bool
		chunk   uint8
	}{
		{data: nil},
		{data: s},
		{data: s, oneByte: true},
		{data: s, limit: 5},              // the ready payload is over the limit
		{data: s[:len(s)-3], limit: 100}, // cut inside a payload
		{data: s[:20], oneByte: true},    // cut inside a header
		{data: raw(hdr(0, 0, 0))},        // kind 0
		{data: hdr(0, KindReady, 7)},     // ready with an id
		{data: raw(s[:26], hdr(1, KindHeartbeat, 0), []byte("x"))},
		{data: raw(hdr(DefaultMaxPayload, KindResult, 1), []byte("tiny"))},                  // a lying header
		{data: raw(hdr(3<<20, KindTask, 9), make([]byte, 100)), limit: 4<<20 - 1, chunk: 8}, // lying, past the first chunk
		{data: raw(hdr(100, KindResult, 3), make([]byte, 100)), oneByte: true, chunk: 3},    // honest, past the first chunk
	}
	for _, sd := range seeds {
		f.Add(sd.data, sd.limit, sd.oneByte, sd.chunk)
	}

	f.Fuzz(func(t *testing.T, data []byte, limit uint32, oneByte bool, chunk uint8) {
		maxPayload := int(limit % (4 << 20)) // 0 means DefaultMaxPayload
		effective := uint64(maxPayload)
		if maxPayload <= 0 {
			effective = DefaultMaxPayload
		}
		var src io.Reader = bytes.NewReader(data)
		if oneByte {
			src = iotest.OneByteReader(src)
		}
		r := NewReader(src, maxPayload)
		if chunk > 0 {
			r.chunk = int(chunk)
		}

		frames := make([]Frame, 0, len(data)/HeaderSize+1)
		var err error
		alloc := allocated(func() {
			for {
				var fr Frame
				fr, err = r.ReadFrame()
				if err != nil {
					return
				}
				frames = append(frames, fr)
			}
		})

		// Walk the input independently.
		var (
			pos      int
			complete []int // start offsets of the complete frames
			bound    uint64
			wantErr  func(error) bool
		)
		for wantErr == nil {
			rest := len(data) - pos
			switch {
			case rest == 0:
				wantErr = is(io.EOF)
				continue
			case rest < HeaderSize:
				wantErr = is(io.ErrUnexpectedEOF)
				continue
			}
			n := uint64(binary.BigEndian.Uint32(data[pos:]))
			k := Kind(data[pos+4])
			id := binary.BigEndian.Uint64(data[pos+5:])
			if fe := check(int64(pos), k, id, n, effective); fe != nil {
				quoteText(fe, data[pos:pos+HeaderSize])
				wantErr = isFormat(int64(pos), fe.Reason, fe.err)
				continue
			}
			received := min(n, uint64(rest-HeaderSize))
			bound += payloadAllocBound(uint64(r.chunk), n, received)
			if received < n {
				wantErr = is(io.ErrUnexpectedEOF)
				continue
			}
			complete = append(complete, pos)
			pos += HeaderSize + int(n)
		}

		if len(frames) != len(complete) {
			t.Fatalf("ReadFrame() decoded %d frames, want %d", len(frames), len(complete))
		}
		if !wantErr(err) {
			t.Fatalf("ReadFrame() after %d frames = %v, want the error the walk predicts at byte %d", len(frames), err, pos)
		}
		var fe *FormatError
		if errors.As(err, &fe) && fe.Offset != int64(pos) {
			t.Fatalf("FormatError.Offset = %d, want %d", fe.Offset, pos)
		}
		const slack = 16 << 10 // error values, and noise from the runtime
		if alloc > bound+slack {
			t.Fatalf("ReadFrame() allocated %d bytes, want at most %d", alloc, bound+slack)
		}

		for i, fr := range frames {
			if uint64(cap(fr.Payload)) > effective {
				t.Fatalf("frame %d: cap(Payload) = %d, over the limit %d", i, cap(fr.Payload), effective)
			}
			start := complete[i]
			end := start + HeaderSize + len(fr.Payload)
			if got := encode(t, fr); !bytes.Equal(got, data[start:end]) {
				t.Fatalf("frame %d re-encodes to %x, want %x", i, got, data[start:end])
			}
		}
	})
}

// payloadAllocBound is the most readPayload may allocate for a payload of n
// bytes of which received arrived, with a first buffer of chunk bytes: n when
// it fits the first chunk; otherwise no more than 6 times what arrived (the
// first chunk aside) and never 2n.
func payloadAllocBound(chunk, n, received uint64) uint64 {
	if n <= chunk {
		return n
	}
	return min(max(chunk, 6*received), 2*n)
}
