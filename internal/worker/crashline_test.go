package worker

import (
	"strings"
	"testing"
)

// TestStderrCrashGoSignal checks that the first line of a Go runtime crash
// dump that a fatal signal caused ("SIGSEGV: segmentation violation", the
// header of a Go worker whose runtime faulted, as it does here when its
// data size limit refuses it memory during a collection) is taken for the
// crash line, as "fatal error: " and "panic: " are. Without it the
// message of such a worker is the last three lines of its register dump
// ("cs 0x33 | fs 0x0 | gs 0x0"), which tell nothing.
func TestStderrCrashGoSignal(t *testing.T) {
	var dump strings.Builder
	dump.WriteString("SIGSEGV: segmentation violation\nPC=0x42e77d m=2 sigcode=1 addr=0x0\n\n")
	// The goroutines' stacks, more than the tail keeps.
	for i := 0; i < 60; i++ {
		dump.WriteString("goroutine 7 gp=0x28550290d860 m=nil [IO wait]:\nruntime.gopark(0x0?, 0x7f9a9503cb88?, 0x0?, 0x0?, 0xb?)\n\t/usr/local/go/src/runtime/proc.go:462 +0xce fp=0x285502977b38 sp=0x285502977b18 pc=0x47c56e\n\n")
	}
	dump.WriteString("rax    0x285502933278\nrip    0x42e77d\nrflags 0x10246\ncs     0x33\nfs     0x0\ngs     0x0\n")

	var tb tailBuffer
	if _, err := tb.Write([]byte(dump.String())); err != nil {
		t.Fatal(err)
	}
	if got, want := tb.crashLine(), "SIGSEGV: segmentation violation"; got != want {
		t.Errorf("crash line = %q, want %q", got, want)
	}
}
