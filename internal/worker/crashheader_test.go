package worker

import "testing"

// TestStderrCrashHeaders: the crash line is the first line of the last Go
// runtime crash dump, in each of the runtime's forms; the lines after it
// (the fault's details, the registers) and the SIGQUIT headers of the
// threads a GOTRACEBACK=crash dump relays to are not.
func TestStderrCrashHeaders(t *testing.T) {
	for _, tc := range []struct {
		name, stderr, want string
	}{
		{name: "fatal signal", stderr: "SIGBUS: bus error\nPC=0x42c95d m=0 sigcode=2 addr=0x7f0000000000\n\nrip    0x42c95d\ncs     0x33\n",
			want: "SIGBUS: bus error"},
		{name: "after unfinished text", stderr: "progress 40%SIGSEGV: segmentation violation\nPC=0x42c95d m=3 sigcode=1 addr=0x0\n",
			want: "SIGSEGV: segmentation violation"},
		{name: "a fault in the runtime", stderr: "fatal error: unexpected signal during runtime execution\n[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x42c95d]\n\nruntime stack:\n",
			want: "fatal error: unexpected signal during runtime execution"},
		{name: "a panic", stderr: "panic: runtime error: invalid memory address or nil pointer dereference\n[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x48af42]\n",
			want: "panic: runtime error: invalid memory address or nil pointer dereference"},
		{name: "SIGQUIT", stderr: "SIGQUIT: quit\nPC=0x47b941 m=0 sigcode=0\n\ngoroutine 0 gp=0x55a3a0 m=0 mp=0x55a3a0 [idle]:\n",
			want: "SIGQUIT: quit"},
		{name: "GOTRACEBACK=crash", stderr: "SIGSEGV: segmentation violation\nPC=0x42c95d m=3 sigcode=1 addr=0x0\n\nrip    0x42c95d\n\n-----\n\nSIGQUIT: quit\nPC=0x47b941 m=0 sigcode=0\n\n-----\n\nSIGQUIT: quit\nPC=0x47b941 m=2 sigcode=0\n",
			want: "SIGSEGV: segmentation violation"},
		{name: "the name inside a line", stderr: "caught SIGSEGV: segmentation violation, retrying\nrip    0x42c95d\n", want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tb tailBuffer
			// A byte at a time: the stream may arrive in any chunks.
			for i := range len(tc.stderr) {
				tb.Write([]byte{tc.stderr[i]})
			}
			if got := tb.crashLine(); got != tc.want {
				t.Errorf("crash line of %q = %q, want %q", tc.stderr, got, tc.want)
			}
		})
	}
}
