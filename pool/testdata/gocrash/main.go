// Command gocrash is a one-shot job that dies as a Go program does:
// "gocrash huge" allocates 4 GiB on the Go heap at once, which a data size
// limit refuses ("fatal error: runtime: out of memory" and the stacks of
// every goroutine); "gocrash panic" panics 300 calls deep (a 100-frame
// stack after "panic: "). It is built without -race, which cannot run under
// a data size limit.
package main

import (
	"os"
	"runtime"
)

func main() {
	switch os.Args[len(os.Args)-1] {
	case "huge":
		b := make([]byte, 4<<30)
		b[len(b)-1] = 1
		runtime.KeepAlive(b)
	case "panic":
		deepPanic(300)
	}
}

func deepPanic(n int) {
	if n > 0 {
		deepPanic(n - 1)
		return
	}
	panic("gopanic: deep enough")
}
