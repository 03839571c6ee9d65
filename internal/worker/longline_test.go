package worker

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"
)

// zeroLine reads n bytes of 'x', then a newline when nl is set, then EOF,
// in reads of whatever size it is asked for.
type zeroLine struct {
	n  int
	nl bool
}

func (z *zeroLine) Read(p []byte) (int, error) {
	if z.n == 0 {
		if z.nl {
			z.nl = false
			p[0] = '\n'
			return 1, nil
		}
		return 0, io.EOF
	}
	k := min(len(p), z.n)
	for i := range p[:k] {
		p[i] = 'x'
	}
	z.n -= k
	return k, nil
}

// TestLongLineMemory: reading an answer line as long as the bound, or one
// past it, allocates a little over twice the line in all. It allocated five
// to six times the line (130 to 154 MiB for 24 MiB; now 56): append grows a
// large slice by a quarter at a time, each growth a new copy, and the line
// was copied once more when it ended. With GOGC's slack, a 60 MB answer took
// the supervisor's memory 316 MB up, and four workers writing without end
// under the 64 MiB bound about 1 GB.
func TestLongLineMemory(t *testing.T) {
	const maxLine = 24 << 20
	for _, tc := range []struct {
		name  string
		r     *zeroLine
		whole bool // the line is an answer, not too long
	}{
		{"a line of the bound", &zeroLine{n: maxLine, nl: true}, true},
		{"a line past the bound", &zeroLine{n: 2 * maxLine}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			events := make(chan Event, 4)
			rr := &resultReader{events: events, gone: make(chan struct{}), maxLine: maxLine}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			rr.readLines(&sampledReader{r: tc.r, sample: func() int64 { return 0 }})
			runtime.ReadMemStats(&after)
			close(events)
			var got []Event
			for ev := range events {
				got = append(got, ev)
			}
			if tc.whole {
				if len(got) != 2 || len(got[0].chunk) != maxLine+1 || !bytes.Equal(got[0].chunk[maxLine-3:], []byte("xxx\n")) || got[1].err != io.EOF {
					t.Fatalf("%d events, want the line whole and EOF", len(got))
				}
			} else {
				var le *LineTooLongError
				if len(got) != 1 || !errors.As(got[0].err, &le) {
					t.Fatalf("%d events, want one with a LineTooLongError", len(got))
				}
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("allocated %d MiB", alloc>>20)
			if alloc > 3*maxLine {
				t.Errorf("reading %s of %d MiB allocated %d MiB, want under %d MiB", tc.name, maxLine>>20, alloc>>20, (3*maxLine)>>20)
			}
		})
	}
}
