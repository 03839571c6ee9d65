package worker

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/memory"
)

// TestSessionGoFaultNearLimit: a Go worker under a data size limit whose
// runtime faulted (the garbage collector, refused the memory it asked
// for, dereferenced nil) writes "SIGSEGV: segmentation violation", its
// stacks and its registers, and exits 2. Near its limit, by its private
// memory or by its data size, that is the limit's doing: memory-limit,
// with the limit in the message as every size is written. Far from both
// it is exit:2, and its message is the crash dump's first line, never its
// register dump.
func TestSessionGoFaultNearLimit(t *testing.T) {
	const (
		limit     = 128 * mib
		dataLimit = 2048 * mib // room for a race build's own mappings
	)
	for _, tc := range []struct {
		name, input string
		cause       Cause
		message     string
	}{
		// 7/8 of the limit: within a quarter of it, and under it, so that
		// sampling does not stop the worker first.
		{name: "private memory near the limit", input: fmt.Sprintf("gofault:private:%d", limit/8*7),
			cause: CauseMemoryLimit, message: "over the memory limit of 128 MiB"},
		// Its data size within a quarter of the data size limit (a Go
		// heap mapped over reserved address space, untouched), with
		// little memory in use.
		{name: "data size near the data size limit", input: fmt.Sprintf("gofault:data:%d", dataLimit/8*7),
			cause: CauseMemoryLimit, message: "over the memory limit of 128 MiB"},
		{name: "far from both", input: "gofault:private:0",
			cause: ExitCause(2), message: "SIGSEGV: segmentation violation"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := helperConfig("oneshot", IONone, "--", tc.input)
			cfg.MemLimit = limit
			cfg.Shim = memory.Shim{DataLimit: dataLimit}
			_, d := drive(t, cfg, []string{tc.input}, false, 30*time.Second)
			if d.Cause != tc.cause || len(d.Flights) != 1 {
				t.Fatalf("Death = cause %q, %d flights, want %q, 1 (exit %+v, stderr %q)", d.Cause, len(d.Flights), tc.cause, d.Exit, LastLines(d.Stderr, 3))
			}
			if o := d.Flights[0].Outcome; o.Cause != tc.cause || o.Message != tc.message {
				t.Errorf("Outcome = cause %q, message %q; want %q, %q", o.Cause, o.Message, tc.cause, tc.message)
			}
		})
	}
}

// goFault does "gofault:private:N" or "gofault:data:N": it maps private
// memory, every page in, until its private memory (RssAnon and VmSwap) is
// N bytes, or writable private memory that it leaves untouched until its
// data size (VmData) is N bytes; stays so for 1.5 s, long enough to be
// sampled many times; then writes the crash dump of a Go runtime that
// faulted in its garbage collector, as Go 1.26 does when the kernel
// refuses it memory at its data size limit, and exits 2.
func goFault(arg string) {
	kind, n, _ := strings.Cut(arg, ":")
	target, _ := strconv.ParseInt(n, 10, 64)
	field, flags := "VmData", syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_NORESERVE
	if kind == "private" {
		// MAP_POPULATE brings every page in without a write of this
		// program's, which a race build would shadow with as much again.
		field, flags = "RssAnon", syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_POPULATE
	}
	if more := target - statusBytes(field); target > 0 && more > 0 {
		if _, err := syscall.Mmap(-1, 0, int(more), syscall.PROT_READ|syscall.PROT_WRITE, flags); err != nil {
			fmt.Fprintln(os.Stderr, "gofault:", err)
			os.Exit(1)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	os.Stderr.Write(goFaultDump())
	syscall.Exit(2)
}

// statusBytes returns field of /proc/self/status in bytes (RssAnon: with
// VmSwap added).
func statusBytes(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fmt.Fprintln(os.Stderr, "gofault:", err)
		os.Exit(1)
	}
	var total int64
	for _, line := range bytes.Split(b, []byte("\n")) {
		key, val, _ := bytes.Cut(line, []byte(":"))
		if k := string(key); k == field || field == "RssAnon" && k == "VmSwap" {
			kib, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(string(val)), " kB"), 10, 64)
			total += kib << 10
		}
	}
	return total
}

// goFaultDump is what Go 1.26's runtime wrote, here, when its garbage
// collector faulted under a data size limit: the signal's name, the
// stacks of every goroutine (more than a tail of stderr keeps) and the
// registers.
func goFaultDump() []byte {
	var b bytes.Buffer
	b.WriteString("SIGSEGV: segmentation violation\nPC=0x42c95d m=3 sigcode=1 addr=0x0\n\n")
	b.WriteString("goroutine 0 gp=0x39de58e972c0 m=3 mp=0x39de58ed1008 [idle]:\n" +
		"runtime.(*spanQueue).tryDrain(0x39de00000400?, 0x4350e5?, 0x5599e8?)\n" +
		"\t/usr/local/go/src/runtime/mgcmark_greenteagc.go:520 +0x5d fp=0x39de58ee7cb8 sp=0x39de58ee7c98 pc=0x42c95d\n" +
		"runtime.(*gcWork).dispose(0x39de58ec1260)\n" +
		"\t/usr/local/go/src/runtime/mgcwork.go:325 +0xbe fp=0x39de58ee7d08 sp=0x39de58ee7ce8 pc=0x434c7e\n\n")
	for i := 0; i < 40; i++ {
		fmt.Fprintf(&b, "goroutine %d gp=0x39de58e96780 m=nil [GC worker (idle)]:\n"+
			"runtime.gopark(0x0?, 0x0?, 0x0?, 0x0?, 0x0?)\n"+
			"\t/usr/local/go/src/runtime/proc.go:462 +0xce fp=0x39de58eccfa8 sp=0x39de58eccf88 pc=0x47766e\n"+
			"runtime.gcBgMarkWorker(0x39de58f00070)\n"+
			"\t/usr/local/go/src/runtime/mgc.go:1791 +0xeb fp=0x39de58ec8fc8 sp=0x39de58ec8f40 pc=0x4268eb\n\n", i+17)
	}
	b.WriteString("rax    0x39de58ec1278\nrbx    0x7f026fc5cc00\nrip    0x42c95d\nrflags 0x10246\ncs     0x33\nfs     0x0\ngs     0x0\n")
	return b.Bytes()
}
