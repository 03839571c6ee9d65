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
