package cli

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

// xLine reads n bytes of 'x', then a newline when nl is set, then what
// rest holds, in reads of whatever size it is asked for, as a file does.
type xLine struct {
	n    int
	nl   bool
	rest io.Reader
}

func (z *xLine) Read(p []byte) (int, error) {
	if z.n == 0 {
		if z.nl {
			z.nl = false
			p[0] = '\n'
			return 1, nil
		}
		if z.rest != nil {
			return z.rest.Read(p)
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

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestLongInputMemory: reading a long input line, for run or map, or
// refusing one past the bound, allocates about twice the line in all (56
// MiB for 24 MiB; for the bound, 32 MiB), not five times (119 MiB; 149):
// append grew it by a quarter at a time, each growth a copy kept until the
// garbage collector ran, and map (GOGC=300) took 866 MB to read a 200 MB
// line, 317 MB to refuse one past the 64 MiB bound.
func TestLongInputMemory(t *testing.T) {
	const bound = 24 << 20
	for _, tc := range []struct {
		name  string
		n     int
		want  float64 // at most this many times the line allocated
		whole bool
	}{
		{"a line of the bound", bound, 4, true},
		{"a line a little shorter", bound - 1000, 4, true},
		{"a line past the bound", 2 * bound, 3, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := &fileSource{names: []string{"-"}, stdin: &xLine{n: tc.n, nl: true}, sep: '\n', max: bound}
			lb := newLineBlocks(fs)
			var block []byte
			var n int
			var err error
			alloc := allocated(func() { block, n, err = lb.next(4) })
			t.Logf("allocated %d MiB for a line of %d MiB", alloc>>20, tc.n>>20)
			if tc.whole {
				if err != nil || n != 1 || len(block) != tc.n+1 || !bytes.HasSuffix(block, []byte("xx\n")) {
					t.Fatalf("next() = %d bytes, %d lines, %v; want the line whole", len(block), n, err)
				}
			} else {
				var le *longInputError
				if !errors.As(err, &le) || string(le.Start) != strings.Repeat("x", longInputStart) {
					t.Fatalf("next() error = %v, want a longInputError", err)
				}
			}
			lim := uint64(tc.want * float64(min(tc.n, bound)))
			if alloc > lim {
				t.Errorf("reading %s of %d MiB allocated %d MiB, want at most %d MiB", tc.name, tc.n>>20, alloc>>20, lim>>20)
			}
		})
	}
}

// TestLongRecordMemory: map --pipe reads a record far longer than a block
// in about twice its size in all (60 MiB for 24 MiB, 84 under the race
// detector), where it took 143 and 153 MiB: growing it by a quarter at a
// time took a 200 MB record to 627 MB of the supervisor's memory. What it
// reads past the record's end is no more than a block.
func TestLongRecordMemory(t *testing.T) {
	const size, long = 1 << 20, 24 << 20
	in := &xLine{n: long, nl: true, rest: strings.NewReader(strings.Repeat("short line\n", 300000))}
	b, err := newBlockReader(nil, in, size, []byte("\n"))
	if err != nil {
		t.Fatal(err)
	}
	var block []byte
	alloc := allocated(func() { block, err = b.next() })
	t.Logf("allocated %d MiB for a record of %d MiB", alloc>>20, long>>20)
	if err != nil || len(block) != long+1 {
		t.Fatalf("next() = %d bytes, %v; want the long record", len(block), err)
	}
	if lim := uint64(9 * long / 2); alloc > lim {
		t.Errorf("reading a record of %d MiB allocated %d MiB, want at most %d MiB", long>>20, alloc>>20, lim>>20)
	}
	if len(b.carry) > size+1 {
		t.Errorf("read %d bytes past the record, want at most a block (%d)", len(b.carry), size+1)
	}
	next, err := b.next()
	if err != nil || len(next) > size || !bytes.HasPrefix(next, []byte("short line\n")) {
		t.Errorf("the block after = %d bytes, %v; want the short lines", len(next), err)
	}
}
