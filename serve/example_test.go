package serve_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"os/signal"
	"syscall"

	"github.com/safepool/safepool/serve"
)

// This is a complete worker that upper-cases each task's payload. Run it
// with safepool's framed protocol; it serves until the supervisor closes its
// task pipe, and stops on SIGTERM.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err := serve.Run(ctx, func(ctx context.Context, payload []byte) ([]byte, error) {
		log.Printf("upper-casing %d bytes", len(payload)) // stderr is the task's log
		return bytes.ToUpper(payload), nil
	})
	if err != nil {
		log.Fatal(err)
	}
}

// RunWith serves any pair of streams, which shows the wire format: every
// frame is a 13-byte header (payload length as a big-endian uint32, kind,
// task id as a big-endian uint64) followed by the payload.
func ExampleRunWith() {
	const (
		kindTask = 2
		header   = 13
	)
	kinds := map[byte]string{1: "ready", 3: "start", 4: "result", 5: "error"}

	// What the supervisor writes to the worker's fd 3: two tasks.
	var tasks bytes.Buffer
	for id, payload := range []string{"hello", ""} {
		tasks.Write(binary.BigEndian.AppendUint32(nil, uint32(len(payload))))
		tasks.WriteByte(kindTask)
		tasks.Write(binary.BigEndian.AppendUint64(nil, uint64(id+1)))
		tasks.WriteString(payload)
	}

	var results bytes.Buffer
	err := serve.RunWith(context.Background(), &tasks, &results, func(ctx context.Context, payload []byte) ([]byte, error) {
		if len(payload) == 0 {
			return nil, errors.New("empty input")
		}
		return bytes.ToUpper(payload), nil
	}, serve.Options{})
	if err != nil {
		log.Fatal(err)
	}

	// What the supervisor reads from the worker's fd 4.
	for results.Len() > 0 {
		h := results.Next(header)
		n := binary.BigEndian.Uint32(h[0:4])
		id := binary.BigEndian.Uint64(h[5:13])
		fmt.Printf("%-6s id=%d %q\n", kinds[h[4]], id, results.Next(int(n)))
	}
	// Output:
	// ready  id=0 "{\"version\":1}"
	// start  id=1 ""
	// result id=1 "HELLO"
	// start  id=2 ""
	// error  id=2 "empty input"
}
