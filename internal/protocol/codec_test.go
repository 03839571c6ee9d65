package protocol_test

import (
	"bytes"
	"testing"

	"github.com/safepool/safepool/internal/protocol"
)

// The header codec is kind-agnostic and agrees with Writer and Reader.
func TestCodec(t *testing.T) {
	b := protocol.AppendFrame([]byte("x"), 200, 1<<40+7, []byte("abc"))
	if len(b) != 1+protocol.HeaderSize+3 || string(b[1+protocol.HeaderSize:]) != "abc" {
		t.Fatalf("AppendFrame = %q", b)
	}
	n, kind, id := protocol.ParseHeader(b[1:])
	if n != 3 || kind != 200 || id != 1<<40+7 {
		t.Fatalf("ParseHeader = %d, %d, %d", n, kind, id)
	}
	var buf bytes.Buffer
	w := protocol.NewWriter(&buf)
	if err := w.WriteFrame(protocol.Frame{Kind: protocol.KindTask, ID: 9, Payload: []byte("hi")}); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if want := protocol.AppendFrame(nil, uint8(protocol.KindTask), 9, []byte("hi")); !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("Writer wrote %x, AppendFrame %x", buf.Bytes(), want)
	}
	f, err := protocol.NewReader(bytes.NewReader(buf.Bytes()), 0).ReadFrame()
	if err != nil || f.Kind != protocol.KindTask || f.ID != 9 || string(f.Payload) != "hi" {
		t.Fatalf("ReadFrame = %+v, %v", f, err)
	}
}

// An items frame (framed/3) round-trips through the Reader, and one too
// short for its range's head, or of no item, is refused.
func TestItemsFrame(t *testing.T) {
	b := protocol.AppendItems(nil, 7, 3, 2, []byte("out"))
	f, err := protocol.NewReader(bytes.NewReader(b), 0).ReadFrame()
	if err != nil || f.Kind != protocol.KindItems || f.ID != 7 {
		t.Fatalf("ReadFrame = %+v, %v", f, err)
	}
	first, count, out, ok := protocol.ParseItems(f.Payload)
	if !ok || first != 3 || count != 2 || string(out) != "out" {
		t.Fatalf("ParseItems = %d, %d, %q, %v", first, count, out, ok)
	}
	if _, _, _, ok := protocol.ParseItems(protocol.AppendItems(nil, 7, 3, 0, nil)[protocol.HeaderSize:]); ok {
		t.Error("ParseItems took a range of no item")
	}
	short := protocol.AppendFrame(nil, uint8(protocol.KindItems), 7, []byte{0, 0, 0, 3})
	if _, err := protocol.NewReader(bytes.NewReader(short), 0).ReadFrame(); err == nil {
		t.Error("ReadFrame took an items frame of 4 bytes")
	}
}

// A batch frame in the compact form of framed/3 names a range of items by
// its first index.
func TestBatchRange(t *testing.T) {
	b := protocol.AppendBatchRange(nil, 9, 3, 3, []byte("pay"))
	f, err := protocol.NewReader(bytes.NewReader(b), 0).ReadFrame()
	if err != nil || f.Kind != protocol.KindBatch {
		t.Fatalf("ReadFrame = %+v, %v", f, err)
	}
	ix, payload, ok := protocol.ParseBatch(f.Payload)
	if !ok || len(ix) != 3 || ix[0] != 3 || ix[2] != 5 || string(payload) != "pay" {
		t.Fatalf("ParseBatch = %v, %q, %v", ix, payload, ok)
	}
}
