package cli

import (
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

func TestBlockReader(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     string
		size   int
		recend string
		want   []string
	}{
		{name: "empty", in: "", size: 4, recend: "\n"},
		{name: "whole lines", in: "1\n2\n3\n4\n5\n", size: 4, recend: "\n", want: []string{"1\n2\n", "3\n4\n", "5\n"}},
		{name: "cut before a partial line", in: "1\n22\n3\n", size: 4, recend: "\n", want: []string{"1\n", "22\n", "3\n"}},
		{name: "last line without newline", in: "1\n2\n3", size: 4, recend: "\n", want: []string{"1\n2\n", "3"}},
		{name: "short input, last line without newline", in: "a\nb\nc", size: 8, recend: "\n", want: []string{"a\nb\nc"}},
		{name: "last line without newline fits the last block", in: "1\n2\n3\n4", size: 4, recend: "\n", want: []string{"1\n2\n", "3\n4"}},
		{name: "record longer than a block", in: "a\nlongline\nb\n", size: 4, recend: "\n", want: []string{"a\n", "longline\n", "b\n"}},
		{name: "long record at the end", in: "longline", size: 4, recend: "\n", want: []string{"longline"}},
		{name: "block of exactly size", in: "123\n456\n", size: 4, recend: "\n", want: []string{"123\n", "456\n"}},
		{name: "recend of two bytes", in: "a;;b;;c", size: 4, recend: ";;", want: []string{"a;;", "b;;c"}},
		{name: "recend of two bytes, last record too long", in: "a;;b;;cc", size: 4, recend: ";;", want: []string{"a;;", "b;;", "cc"}},
		{name: "recend split across reads", in: "abcde;;f;;", size: 3, recend: ";;", want: []string{"abcde;;", "f;;"}},
		{name: "no recend", in: "abcdefghij", size: 4, recend: "", want: []string{"abcd", "efgh", "ij"}},
		{name: "lines after a long record", in: "longlonglonglong\n1\n2\n3\n4\n5\n", size: 4, recend: "\n", want: []string{"longlonglonglong\n", "1\n2\n", "3\n4\n", "5\n"}},
	} {
		for _, mode := range []string{"", ", a byte a read", ", blocks given back"} {
			t.Run(tc.name+mode, func(t *testing.T) {
				var r io.Reader = strings.NewReader(tc.in)
				if mode == ", a byte a read" {
					r = iotest.OneByteReader(r)
				}
				b, err := newBlockReader(nil, r, tc.size, []byte(tc.recend))
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for {
					block, err := b.next()
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					got = append(got, string(block))
					if mode == ", blocks given back" {
						// As the pool does once it copied the block: the
						// next block is read into its array.
						b.recycle(block)
					}
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("blocks of %q (size %d, recend %q) = %q, want %q", tc.in, tc.size, tc.recend, got, tc.want)
				}
			})
		}
	}
}

// TestBlockReaderRecycles: a block given back lends its array to a later
// block, and only an array of a block's usual size is kept.
func TestBlockReaderRecycles(t *testing.T) {
	b, err := newBlockReader(nil, strings.NewReader("1\n2\n3\n4\nlongline\n5\n6\n"), 4, []byte("\n"))
	if err != nil {
		t.Fatal(err)
	}
	next := func(want string) []byte {
		t.Helper()
		block, err := b.next()
		if err != nil || string(block) != want {
			t.Fatalf("next() = %q, %v; want %q", block, err, want)
		}
		return block
	}
	first := next("1\n2\n")
	b.recycle(first)
	if second := next("3\n4\n"); &second[:1][0] != &first[:1][0] {
		t.Error("the block given back was not read into again")
	}
	long := next("longline\n")
	b.recycle(long) // larger than a block: left to the garbage collector
	if n := len(b.spare); n != 0 {
		t.Errorf("%d arrays kept after a long record's was given back, want none", n)
	}
	next("5\n6\n")
}

// chunkReader returns reads of random sizes, up to max bytes.
type chunkReader struct {
	r   io.Reader
	rnd *rand.Rand
	max int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	return c.r.Read(p[:min(len(p), 1+c.rnd.IntN(c.max))])
}

// TestBlockReaderBounds cuts random inputs, read in random pieces, and
// checks every block: the blocks make the input; a block holds at most
// size bytes unless it is one record longer than that; every block but
// the last ends with a record end; and a block leaves out nothing of the
// next record that would have fitted.
func TestBlockReaderBounds(t *testing.T) {
	// Small parts make the long records below be read in parts, record
	// ends split between two of them included.
	for _, part := range []int{longPart, 1, 2, 5, 13} {
		t.Run(fmt.Sprintf("part%d", part), func(t *testing.T) {
			defer func(was int) { longPart = was }(longPart)
			longPart = part
			testBlockReaderBounds(t)
		})
	}
}

func testBlockReaderBounds(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		size := 1 + rnd.IntN(40)
		recend := []string{"\n", ";;", "abc"}[rnd.IntN(3)]
		var in strings.Builder
		for n := rnd.IntN(12); n > 0; n-- {
			long := rnd.IntN(5) == 0
			l := rnd.IntN(size)
			if long {
				l = size + rnd.IntN(4*size+200)
			}
			in.WriteString(strings.Repeat("x", l))
			if n > 1 || rnd.IntN(2) == 0 {
				in.WriteString(recend)
			}
		}
		b, err := newBlockReader(nil, &chunkReader{r: strings.NewReader(in.String()), rnd: rnd, max: 1 + rnd.IntN(300)}, size, []byte(recend))
		if err != nil {
			t.Fatal(err)
		}
		var blocks []string
		for {
			block, err := b.next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			blocks = append(blocks, string(block))
		}
		what := fmt.Sprintf("blocks of %q (size %d, recend %q): %q", in.String(), size, recend, blocks)
		if strings.Join(blocks, "") != in.String() {
			t.Fatalf("%s: do not make the input", what)
		}
		for i, block := range blocks {
			last := i == len(blocks)-1
			ends := strings.Count(block, recend)
			if len(block) > size && (ends > 1 || ends == 1 && !strings.HasSuffix(block, recend)) {
				t.Fatalf("%s: block %d is longer than %d and not one record", what, i, size)
			}
			if !last && !strings.HasSuffix(block, recend) {
				t.Fatalf("%s: block %d does not end a record", what, i)
			}
			if last || len(block) > size {
				continue
			}
			next := blocks[i+1]
			rec := next
			if j := strings.Index(next, recend); j >= 0 {
				rec = next[:j+len(recend)]
			}
			if len(block)+len(rec) <= size && (strings.HasSuffix(rec, recend) || i+1 == len(blocks)-1) {
				t.Fatalf("%s: block %d leaves out the next record, which fits", what, i)
			}
		}
	}
}

// TestBlockReaderFiles: the files of -a are read as one stream, but a file
// whose last record has no record end ends its block there, as the end of
// the input does: its last line is never joined to the next file's first
// (b and c, below, are not one record "bc").
func TestBlockReaderFiles(t *testing.T) {
	for _, tc := range []struct {
		name   string
		files  []string
		size   int
		recend string
		want   []string
	}{
		{name: "files with newlines run on", files: []string{"a\nb\n", "c\nd\n"}, size: 100, recend: "\n",
			want: []string{"a\nb\nc\nd\n"}},
		{name: "a file without its last newline", files: []string{"a\nb", "c\nd\n"}, size: 100, recend: "\n",
			want: []string{"a\nb", "c\nd\n"}},
		{name: "a file without its last newline, blocks cut before", files: []string{"a\nbb\nc", "d\n"}, size: 4, recend: "\n",
			want: []string{"a\n", "bb\nc", "d\n"}},
		{name: "a long last record without its end", files: []string{"a\nlonglong", "d\n"}, size: 4, recend: "\n",
			want: []string{"a\n", "longlong", "d\n"}},
		{name: "empty files between", files: []string{"a", "", "b", ""}, size: 100, recend: "\n",
			want: []string{"a", "b"}},
		{name: "two-byte recend", files: []string{"a;;b;", ";c;;"}, size: 100, recend: ";;",
			want: []string{"a;;b;", ";c;;"}},
		{name: "no recend", files: []string{"abc", "def"}, size: 4, recend: "",
			want: []string{"abcd", "ef"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var names []string
			for i, content := range tc.files {
				name := fmt.Sprintf("%s/f%d", dir, i)
				if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
				names = append(names, name)
			}
			b, err := newBlockReader(names, nil, tc.size, []byte(tc.recend))
			if err != nil {
				t.Fatal(err)
			}
			defer b.close()
			var got []string
			for {
				block, err := b.next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, string(block))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("blocks of %q (size %d, recend %q) = %q, want %q", tc.files, tc.size, tc.recend, got, tc.want)
			}
		})
	}
}

func TestUnescapeRecend(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      bool
	}{
		{in: `\n`, want: "\n"},
		{in: `}\n`, want: "}\n"},
		{in: `a\tb\r\0\\`, want: "a\tb\r\x00\\"},
		{in: ``, want: ``},
		{in: `a\`, err: true},
		{in: `\q`, err: true},
	} {
		got, err := unescapeRecend(tc.in)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("unescapeRecend(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}
