package cli

import (
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// blocksOf cuts in into blocks of at most maxLines lines.
func blocksOf(t *testing.T, r io.Reader, maxLines int) []string {
	t.Helper()
	lb := newLineBlocks(&fileSource{names: []string{"-"}, stdin: r})
	var got []string
	for {
		b, n, err := lb.next(maxLines)
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		if c := strings.Count(string(b), "\n"); c != n || !strings.HasSuffix(string(b), "\n") {
			t.Fatalf("block %q holds %d lines, said %d", b, c, n)
		}
		got = append(got, string(b))
	}
}

func TestLineBlocks(t *testing.T) {
	long := strings.Repeat("x", blockBytes+10)
	for _, tc := range []struct {
		name     string
		in       string
		maxLines int
		want     []string
	}{
		{name: "empty", in: "", maxLines: 4},
		{name: "by count", in: "1\n2\n3\n4\n5\n", maxLines: 2, want: []string{"1\n2\n", "3\n4\n", "5\n"}},
		{name: "last line without newline", in: "1\n2\n3", maxLines: 5, want: []string{"1\n2\n", "3\n"}},
		{name: "empty lines", in: "\n\na\n", maxLines: 5, want: []string{"\n\na\n"}},
		{name: "a line over the byte bound", in: "a\n" + long + "\nb\n", maxLines: 5, want: []string{"a\n", long + "\n", "b\n"}},
		// A few lines of many buffered are cut without counting the rest.
		{name: "few of many", in: strings.Repeat("ab\n", 500), maxLines: 7,
			want: append(slices.Repeat([]string{strings.Repeat("ab\n", 7)}, 71), "ab\nab\nab\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := blocksOf(t, strings.NewReader(tc.in), tc.maxLines)
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("blocks = %q, want %q", got, tc.want)
			}
			// Read a byte at a time, the blocks may be smaller, never different lines.
			one := blocksOf(t, iotest.OneByteReader(strings.NewReader(tc.in)), tc.maxLines)
			if strings.Join(one, "") != strings.Join(tc.want, "") {
				t.Errorf("blocks read a byte at a time = %q, want the lines of %q", one, tc.want)
			}
		})
	}
}

// TestLineBlocksBytes: a block ends before blockBytes.
func TestLineBlocksBytes(t *testing.T) {
	line := strings.Repeat("y", 99) + "\n"
	got := blocksOf(t, strings.NewReader(strings.Repeat(line, 2000)), 100000)
	total := 0
	for _, b := range got {
		if len(b) > blockBytes {
			t.Errorf("a block of %d bytes, over %d", len(b), blockBytes)
		}
		total += len(b)
	}
	if total != 2000*len(line) || len(got) < 2000*len(line)/blockBytes {
		t.Errorf("%d blocks of %d bytes in all, want %d bytes in blocks of at most %d", len(got), total, 2000*len(line), blockBytes)
	}
}

// TestLineBlocksPrompt: a block ends where the input has no whole line
// ready, so that the lines of a slow input go out as they come.
func TestLineBlocksPrompt(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	lb := newLineBlocks(&fileSource{names: []string{"-"}, stdin: r})
	w.WriteString("1\n2\n3")
	done := make(chan string, 1)
	go func() {
		b, _, _ := lb.next(256)
		done <- string(b)
	}()
	select {
	case b := <-done:
		if b != "1\n2\n" {
			t.Errorf("block = %q, want the two whole lines", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the block waited for more input")
	}
}
