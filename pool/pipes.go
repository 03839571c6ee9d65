package pool

import (
	"github.com/safepool/safepool/internal/protocol"
)

// appendTask appends a task frame to buf, ready for the pipe.
func appendTask(buf []byte, id uint64, payload []byte) []byte {
	return protocol.AppendFrame(buf, uint8(protocol.KindTask), id, payload)
}
