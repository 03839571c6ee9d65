package cli

import (
	"io"
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
		{name: "record longer than a block", in: "a\nlongline\nb\n", size: 4, recend: "\n", want: []string{"a\n", "longline\n", "b\n"}},
		{name: "long record at the end", in: "longline", size: 4, recend: "\n", want: []string{"longline"}},
		{name: "block of exactly size", in: "123\n456\n", size: 4, recend: "\n", want: []string{"123\n", "456\n"}},
		{name: "recend of two bytes", in: "a;;b;;c", size: 4, recend: ";;", want: []string{"a;;", "b;;", "c"}},
		{name: "recend split across reads", in: "abcde;;f;;", size: 3, recend: ";;", want: []string{"abcde;;", "f;;"}},
		{name: "no recend", in: "abcdefghij", size: 4, recend: "", want: []string{"abcd", "efgh", "ij"}},
	} {
		for _, one := range []bool{false, true} {
			name := tc.name
			if one {
				name += ", a byte a read"
			}
			t.Run(name, func(t *testing.T) {
				var r io.Reader = strings.NewReader(tc.in)
				if one {
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
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("blocks of %q (size %d, recend %q) = %q, want %q", tc.in, tc.size, tc.recend, got, tc.want)
				}
			})
		}
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
