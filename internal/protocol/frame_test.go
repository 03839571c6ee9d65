package protocol

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

// hdr builds a raw frame header, so that tests can write frames that a Writer
// refuses to produce.
func hdr(n uint32, k Kind, id uint64) []byte {
	b := make([]byte, 0, HeaderSize)
	b = append(b, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	b = append(b, byte(k))
	for s := 56; s >= 0; s -= 8 {
		b = append(b, byte(id>>s))
	}
	return b
}

// raw concatenates byte slices.
func raw(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func encode(t *testing.T, frames ...Frame) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, f := range frames {
		if err := w.WriteFrame(f); err != nil {
			t.Fatalf("WriteFrame(%v) = %v, want nil", f, err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatalf("Flush() = %v, want nil", err)
	}
	return buf.Bytes()
}

func TestKindString(t *testing.T) {
	tests := []struct {
		name string
		kind Kind
		want string
	}{
		{"ready", KindReady, "ready"},
		{"task", KindTask, "task"},
		{"start", KindStart, "start"},
		{"result", KindResult, "result"},
		{"error", KindError, "error"},
		{"heartbeat", KindHeartbeat, "heartbeat"},
		{"zero", 0, "kind(0)"},
		{"unknown", 11, "kind(11)"},
		{"max", 255, "kind(255)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.kind.String(); got != tt.want {
				t.Errorf("Kind(%d).String() = %q, want %q", uint8(tt.kind), got, tt.want)
			}
		})
	}
}

func TestWriteFrame(t *testing.T) {
	tests := []struct {
		name  string
		frame Frame
		want  []byte
	}{
		{
			name:  "ready",
			frame: Frame{Kind: KindReady, Payload: []byte(`{"version":1}`)},
			want:  raw([]byte{0, 0, 0, 13, 1, 0, 0, 0, 0, 0, 0, 0, 0}, []byte(`{"version":1}`)),
		},
		{
			name:  "task",
			frame: Frame{Kind: KindTask, ID: 0x0102030405060708, Payload: []byte("hi")},
			want:  []byte{0, 0, 0, 2, 2, 1, 2, 3, 4, 5, 6, 7, 8, 'h', 'i'},
		},
		{
			name:  "start has no payload",
			frame: Frame{Kind: KindStart, ID: 42},
			want:  []byte{0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 42},
		},
		{
			name:  "empty payload is no payload",
			frame: Frame{Kind: KindResult, ID: 1, Payload: []byte{}},
			want:  []byte{0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1},
		},
		{
			name:  "error",
			frame: Frame{Kind: KindError, ID: 1<<64 - 1, Payload: []byte("boom")},
			want:  raw([]byte{0, 0, 0, 4, 5, 255, 255, 255, 255, 255, 255, 255, 255}, []byte("boom")),
		},
		{
			name:  "heartbeat",
			frame: Frame{Kind: KindHeartbeat},
			want:  []byte{0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := encode(t, tt.frame); !bytes.Equal(got, tt.want) {
				t.Errorf("WriteFrame(%v) wrote %x, want %x", tt.frame, got, tt.want)
			}
		})
	}
}

func TestWriteFrameInvalid(t *testing.T) {
	tests := []struct {
		name   string
		frame  Frame
		reason string
	}{
		{"kind zero", Frame{Kind: 0, ID: 1}, "unknown kind 0"},
		{"unknown kind", Frame{Kind: 11, ID: 1}, "unknown kind 11"},
		{"ready with id", Frame{Kind: KindReady, ID: 3, Payload: ReadyPayload()}, "ready frame with id 3, want 0"},
		{"heartbeat with id", Frame{Kind: KindHeartbeat, ID: 1}, "heartbeat frame with id 1, want 0"},
		{"heartbeat with payload", Frame{Kind: KindHeartbeat, Payload: []byte("x")}, "heartbeat frame with a 1-byte payload, want none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := NewWriter(&buf)
			// A valid frame first, so that the error's offset is not 0.
			if err := w.WriteFrame(Frame{Kind: KindTask, ID: 1, Payload: []byte("abc")}); err != nil {
				t.Fatalf("WriteFrame(task) = %v, want nil", err)
			}
			err := w.WriteFrame(tt.frame)
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("WriteFrame(%v) = %v, want a *FormatError", tt.frame, err)
			}
			if fe.Offset != HeaderSize+3 || fe.Reason != tt.reason {
				t.Errorf("WriteFrame(%v) = {Offset: %d, Reason: %q}, want {Offset: %d, Reason: %q}", tt.frame, fe.Offset, fe.Reason, HeaderSize+3, tt.reason)
			}
			if err := w.Flush(); err != nil {
				t.Fatalf("Flush() = %v, want nil", err)
			}
			if got := buf.Len(); got != HeaderSize+3 {
				t.Errorf("after a rejected frame the stream holds %d bytes, want %d", got, HeaderSize+3)
			}
		})
	}
}

func TestWriteFrameDoesNotFlush(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.WriteFrame(Frame{Kind: KindStart, ID: 9}); err != nil {
		t.Fatalf("WriteFrame() = %v, want nil", err)
	}
	if buf.Len() != 0 {
		t.Fatalf("after WriteFrame the underlying writer holds %d bytes, want 0 until Flush", buf.Len())
	}
	if err := w.Flush(); err != nil {
		t.Fatalf("Flush() = %v, want nil", err)
	}
	if buf.Len() != HeaderSize {
		t.Errorf("after Flush the underlying writer holds %d bytes, want %d", buf.Len(), HeaderSize)
	}
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

func TestWriterErrorIsSticky(t *testing.T) {
	boom := errors.New("boom")
	w := NewWriter(failWriter{boom})
	if err := w.WriteFrame(Frame{Kind: KindStart, ID: 1}); err != nil {
		t.Fatalf("WriteFrame() = %v, want nil (buffered)", err)
	}
	if err := w.Flush(); !errors.Is(err, boom) {
		t.Fatalf("Flush() = %v, want %v", err, boom)
	}
	if err := w.WriteFrame(Frame{Kind: KindStart, ID: 2}); !errors.Is(err, boom) {
		t.Errorf("WriteFrame() after a failed Flush = %v, want %v", err, boom)
	}
}

// isFormat returns a check for a *FormatError at offset, which wraps target
// if target is not nil.
func isFormat(offset int64, reason string, target error) func(error) bool {
	return func(err error) bool {
		var fe *FormatError
		if !errors.As(err, &fe) || fe.Offset != offset || fe.Reason != reason {
			return false
		}
		return target == nil || errors.Is(err, target)
	}
}

func is(target error) func(error) bool {
	return func(err error) bool { return errors.Is(err, target) }
}

func TestReadFrame(t *testing.T) {
	task := Frame{Kind: KindTask, ID: 7, Payload: []byte("payload")}
	taskBytes := encode(t, task)
	tests := []struct {
		name    string
		in      []byte
		max     int
		want    []Frame
		wantErr func(error) bool
		errDesc string
	}{
		{
			name: "empty stream", in: nil,
			wantErr: is(io.EOF), errDesc: "io.EOF",
		},
		{
			name: "one frame", in: taskBytes,
			want:    []Frame{task},
			wantErr: is(io.EOF), errDesc: "io.EOF",
		},
		{
			name: "session",
			in: encode(t,
				Frame{Kind: KindReady, Payload: ReadyPayload()},
				Frame{Kind: KindStart, ID: 1},
				Frame{Kind: KindHeartbeat},
				Frame{Kind: KindResult, ID: 1, Payload: []byte("out")},
				Frame{Kind: KindStart, ID: 2},
				Frame{Kind: KindError, ID: 2, Payload: []byte("failed")},
			),
			want: []Frame{
				{Kind: KindReady, Payload: ReadyPayload()},
				{Kind: KindStart, ID: 1},
				{Kind: KindHeartbeat},
				{Kind: KindResult, ID: 1, Payload: []byte("out")},
				{Kind: KindStart, ID: 2},
				{Kind: KindError, ID: 2, Payload: []byte("failed")},
			},
			wantErr: is(io.EOF), errDesc: "io.EOF",
		},
		{
			name: "payload exactly at the limit", in: taskBytes, max: len(task.Payload),
			want:    []Frame{task},
			wantErr: is(io.EOF), errDesc: "io.EOF",
		},
		{
			name: "partial header", in: taskBytes[:5],
			wantErr: is(io.ErrUnexpectedEOF), errDesc: "io.ErrUnexpectedEOF",
		},
		{
			name: "header without payload", in: taskBytes[:HeaderSize],
			wantErr: is(io.ErrUnexpectedEOF), errDesc: "io.ErrUnexpectedEOF",
		},
		{
			name: "partial payload", in: raw(taskBytes, taskBytes[:len(taskBytes)-1]),
			want:    []Frame{task},
			wantErr: is(io.ErrUnexpectedEOF), errDesc: "io.ErrUnexpectedEOF",
		},
		{
			name: "kind zero", in: raw(taskBytes, hdr(0, 0, 1)),
			want:    []Frame{task},
			wantErr: isFormat(int64(len(taskBytes)), "unknown kind 0", nil), errDesc: "unknown kind at the second frame",
		},
		{
			name: "unknown kind", in: hdr(0, 99, 1),
			wantErr: isFormat(0, "unknown kind 99", nil), errDesc: "unknown kind",
		},
		{
			name: "over the limit", in: raw(taskBytes, taskBytes), max: len(task.Payload) - 1,
			wantErr: isFormat(0, "task payload of 7 bytes is over the limit of 6", ErrFrameTooLarge),
			errDesc: "ErrFrameTooLarge at byte 0",
		},
		{
			name: "over the default limit", in: hdr(DefaultMaxPayload+1, KindResult, 1),
			wantErr: isFormat(0, "result payload of 1073741825 bytes is over the limit of 1073741824", ErrFrameTooLarge),
			errDesc: "ErrFrameTooLarge",
		},
		{
			name: "largest length field", in: hdr(1<<32-1, KindTask, 1),
			wantErr: isFormat(0, "task payload of 4294967295 bytes is over the limit of 1073741824", ErrFrameTooLarge),
			errDesc: "ErrFrameTooLarge",
		},
		{
			name: "heartbeat with payload", in: raw(hdr(1, KindHeartbeat, 0), []byte("x")),
			wantErr: isFormat(0, "heartbeat frame with a 1-byte payload, want none", nil), errDesc: "bad heartbeat",
		},
		{
			name: "heartbeat with id", in: hdr(0, KindHeartbeat, 5),
			wantErr: isFormat(0, "heartbeat frame with id 5, want 0", nil), errDesc: "bad heartbeat",
		},
		{
			// A worker that prints to its result pipe: the error quotes
			// the text, which a kind alone ("unknown kind 111") hid.
			name: "text", in: raw([]byte("hello world\n"), encode(t, Frame{Kind: KindReady, Payload: ReadyPayload()})),
			wantErr: isFormat(0, `unknown kind 111 (the header's bytes begin with text, "hello world": not a frame; `+
				"text belongs on stdout or stderr, never with the frames)", nil),
			errDesc: "unknown kind, quoting the text",
		},
		{
			name: "ready with id", in: raw(hdr(2, KindReady, 1), []byte("{}")),
			wantErr: isFormat(0, "ready frame with id 1, want 0", nil), errDesc: "bad ready",
		},
	}
	readers := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"whole", func(r io.Reader) io.Reader { return r }},
		{"one byte", iotest.OneByteReader},
		{"half", iotest.HalfReader},
		{"data and EOF", iotest.DataErrReader},
	}
	for _, tt := range tests {
		for _, rd := range readers {
			t.Run(tt.name+"/"+rd.name, func(t *testing.T) {
				r := NewReader(rd.wrap(bytes.NewReader(tt.in)), tt.max)
				for i, want := range tt.want {
					got, err := r.ReadFrame()
					if err != nil {
						t.Fatalf("ReadFrame() #%d = %v, want %v", i, err, want)
					}
					if !equalFrames(got, want) {
						t.Fatalf("ReadFrame() #%d = %v, want %v", i, got, want)
					}
				}
				got, err := r.ReadFrame()
				if !tt.wantErr(err) {
					t.Fatalf("ReadFrame() = %v, %v, want %s", got, err, tt.errDesc)
				}
				if got2, err2 := r.ReadFrame(); err2 != err {
					t.Errorf("ReadFrame() after an error = %v, %v, want the same error %v", got2, err2, err)
				}
			})
		}
	}
}

func equalFrames(a, b Frame) bool {
	return a.Kind == b.Kind && a.ID == b.ID && bytes.Equal(a.Payload, b.Payload)
}

func TestReadFrameEmptyPayloadIsNil(t *testing.T) {
	r := NewReader(bytes.NewReader(hdr(0, KindStart, 1)), 0)
	f, err := r.ReadFrame()
	if err != nil || f.Payload != nil {
		t.Errorf("ReadFrame() = %v, %v, want a nil payload and no error", f, err)
	}
}

func TestReadFrameUnderlyingError(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name string
		in   io.Reader
	}{
		{"before the header", iotest.ErrReader(boom)},
		{"inside the header", io.MultiReader(bytes.NewReader(hdr(3, KindTask, 1)[:4]), iotest.ErrReader(boom))},
		{"inside the payload", io.MultiReader(bytes.NewReader(raw(hdr(3, KindTask, 1), []byte("a"))), iotest.ErrReader(boom))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(tt.in, 0)
			if f, err := r.ReadFrame(); !errors.Is(err, boom) {
				t.Errorf("ReadFrame() = %v, %v, want %v", f, err, boom)
			}
		})
	}
}

// TestReadFramePayloadIsFresh checks that a payload does not alias the
// Reader's buffer: reading on must not change a payload already returned.
func TestReadFramePayloadIsFresh(t *testing.T) {
	in := encode(t,
		Frame{Kind: KindTask, ID: 1, Payload: []byte("first")},
		Frame{Kind: KindTask, ID: 2, Payload: []byte("other")},
	)
	r := NewReader(bytes.NewReader(in), 0)
	a, err := r.ReadFrame()
	if err != nil {
		t.Fatalf("ReadFrame() = %v", err)
	}
	if _, err := r.ReadFrame(); err != nil {
		t.Fatalf("ReadFrame() = %v", err)
	}
	if string(a.Payload) != "first" {
		t.Errorf("first payload = %q after reading on, want %q", a.Payload, "first")
	}
	a.Payload[0] = 'X' // the caller owns it
}

// TestRoundTripSizes sends payloads around the sizes where the Reader grows
// its buffer through a pipe, which delivers them in pieces.
func TestRoundTripSizes(t *testing.T) {
	sizes := []int{0, 1, 4095, 4096, 4097, initialChunk - 1, initialChunk, initialChunk + 1,
		2 * initialChunk, 4*initialChunk + 1, 3<<20 + 5}
	for _, n := range sizes {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			payload := make([]byte, n)
			for i := range payload {
				payload[i] = byte(i * 7)
			}
			want := Frame{Kind: KindResult, ID: uint64(n), Payload: payload}
			pr, pw := io.Pipe()
			errc := make(chan error, 1)
			go func() {
				w := NewWriter(pw)
				err := w.WriteFrame(want)
				if err == nil {
					err = w.Flush()
				}
				pw.CloseWithError(err)
				errc <- err
			}()
			r := NewReader(pr, n)
			got, err := r.ReadFrame()
			if err != nil || !equalFrames(got, want) {
				t.Errorf("ReadFrame() = {%v %d len %d}, %v, want {%v %d len %d}", got.Kind, got.ID, len(got.Payload), err, want.Kind, want.ID, n)
			}
			if cap(got.Payload) != len(got.Payload) {
				t.Errorf("cap(Payload) = %d, want %d", cap(got.Payload), len(got.Payload))
			}
			if _, err := r.ReadFrame(); err != io.EOF {
				t.Errorf("second ReadFrame() = %v, want io.EOF", err)
			}
			if err := <-errc; err != nil {
				t.Errorf("writer: %v", err)
			}
		})
	}
}

// allocated returns the bytes allocated on the heap while f runs.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestReadFrameLyingHeader checks that a header announcing a huge payload
// costs nothing like that much memory when the bytes never come.
func TestReadFrameLyingHeader(t *testing.T) {
	tests := []struct {
		name     string
		declared uint32
		sent     int
	}{
		{"1 GiB announced, 10 bytes sent", DefaultMaxPayload, 10},
		{"1 GiB announced, 1 MiB sent", DefaultMaxPayload, 1 << 20},
		{"512 MiB announced, nothing sent", 512 << 20, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := raw(hdr(tt.declared, KindResult, 1), make([]byte, tt.sent))
			r := NewReader(bytes.NewReader(in), 0)
			var err error
			n := allocated(func() { _, err = r.ReadFrame() })
			if err != io.ErrUnexpectedEOF {
				t.Errorf("ReadFrame() = %v, want io.ErrUnexpectedEOF", err)
			}
			limit := uint64(max(initialChunk, 6*tt.sent) + 64<<10)
			if n > limit {
				t.Errorf("ReadFrame() allocated %d bytes for a %d-byte announcement with %d bytes sent, want at most %d", n, tt.declared, tt.sent, limit)
			}
		})
	}
}

func TestReadFrameAllocation(t *testing.T) {
	const n = 5<<20 + 3
	in := encode(t, Frame{Kind: KindResult, ID: 1, Payload: make([]byte, n)})
	r := NewReader(bytes.NewReader(in), 0)
	var err error
	got := allocated(func() { _, err = r.ReadFrame() })
	if err != nil {
		t.Fatalf("ReadFrame() = %v", err)
	}
	if limit := uint64(2*n + 64<<10); got > limit {
		t.Errorf("ReadFrame() allocated %d bytes for a %d-byte payload, want at most %d", got, n, limit)
	}
}

func TestFormatError(t *testing.T) {
	err := error(&FormatError{Offset: 1234, Reason: "unknown kind 9"})
	if got, want := err.Error(), "protocol: bad frame at byte 1234: unknown kind 9"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("errors.Is(%v, ErrFrameTooLarge) = true, want false", err)
	}
	_, err = NewReader(bytes.NewReader(hdr(11, KindTask, 1)), 10).ReadFrame()
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("errors.Is(%v, ErrFrameTooLarge) = false, want true", err)
	}
	if !strings.HasPrefix(err.Error(), "protocol: bad frame at byte 0: ") {
		t.Errorf("Error() = %q, want the prefix %q", err.Error(), "protocol: bad frame at byte 0: ")
	}
}

func TestReadyPayload(t *testing.T) {
	if got, want := string(ReadyPayload()), `{"version":1}`; got != want {
		t.Errorf("ReadyPayload() = %s, want %s", got, want)
	}
	if v, err := ParseReady(ReadyPayload()); v != Version || err != nil {
		t.Errorf("ParseReady(ReadyPayload()) = %d, %v, want %d, nil", v, err, Version)
	}
}

func TestParseReady(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    int
		wantErr bool
	}{
		{"minimal", `{"version":1}`, 1, false},
		{"spaces", ` { "version" : 1 } `, 1, false},
		{"other members", `{"sdk":"python","pid":12,"version":1,"features":["x"]}`, 1, false},
		{"future version", `{"version":2}`, 2, false},
		{"zero", `{"version":0}`, 0, false},
		{"empty", ``, 0, true},
		{"not JSON", `version 1`, 0, true},
		{"array", `[1]`, 0, true},
		{"null", `null`, 0, true},
		{"missing", `{}`, 0, true},
		{"other case", `{"Version":1}`, 0, true},
		{"string", `{"version":"1"}`, 0, true},
		{"fraction", `{"version":1.5}`, 0, true},
		{"null version", `{"version":null}`, 0, true},
		{"truncated", `{"version":1`, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseReady([]byte(tt.in))
			if got != tt.want || (err != nil) != tt.wantErr {
				t.Errorf("ParseReady(%q) = %d, %v, want %d, error %t", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}
