package pool

import (
	"github.com/safepool/safepool/internal/protocol"
)

// appendTask appends a task frame to buf, ready for the pipe.
func appendTask(buf []byte, id uint64, payload []byte) []byte {
	b := frameBuffer(buf)
	w := protocol.NewWriter(&b)
	_ = w.WriteFrame(protocol.Frame{Kind: protocol.KindTask, ID: id, Payload: payload})
	_ = w.Flush()
	return b
}

// frameBuffer collects one encoded frame.
type frameBuffer []byte

func (b *frameBuffer) Write(p []byte) (int, error) {
	*b = append(*b, p...)
	return len(p), nil
}
