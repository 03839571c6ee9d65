package cli

import (
	"bytes"
	"fmt"
	"io"
)

// blockReader cuts its input into blocks of whole records for map --pipe,
// as GNU parallel's --pipe --block does: a block is at most size bytes and
// ends at the last record end (recend) within them; the partial record
// after it starts the next block. A record longer than size makes a block
// of its own, however long. The last block may lack a record end: what is
// left at the end of the input is one block when it fits in size. Several
// input files are read as one stream, except that a file whose last record
// has no record end ends a block there, as the end of the input does: its
// last record is never joined to the next file's first.
type blockReader struct {
	r      *segmentReader
	size   int
	recend []byte
	// carry is the partial record read after the last block's end.
	carry []byte
	eof   bool
	// files are the input files read one after the other, closed by close.
	files *fileSource
	// at is the input offset of the block next returned last, and end
	// the offset after it.
	at, end int64
	// spare holds blocks given back (recycle), whose arrays next reads
	// the next blocks into: no new array of a block's size, which the
	// runtime zeroes and the kernel faults in, for each block.
	spare chan []byte
}

// spareBlocks is how many given-back blocks a blockReader keeps; one
// more is given to the garbage collector.
const spareBlocks = 4

// newBlockReader reads the blocks of the named files one after the other
// ("-" is stdin), as if they were one stream.
func newBlockReader(names []string, stdin io.Reader, size int, recend []byte) (*blockReader, error) {
	if len(names) == 0 {
		names = []string{"-"}
	}
	fs, err := openFiles(names, stdin, '\n', 0, "") // blocks bound themselves
	if err != nil {
		return nil, err
	}
	return &blockReader{r: &segmentReader{fs: fs, recend: recend}, size: size, recend: recend, files: fs,
		spare: make(chan []byte, spareBlocks)}, nil
}

// segmentReader reads files one after the other. Where a file ends without
// a record end (a last line without its newline), it returns io.EOF: the
// segment of the input read so far ends there, and resume starts the next
// one, so that the file's last record ends a block and is not joined to
// the next file's first. Files that end with a record end, and empty ones,
// run on into the next file within a segment.
type segmentReader struct {
	fs     *fileSource // the files, opened as the reading reaches them
	recend []byte
	// tail holds the last bytes read from the current file, up to
	// len(recend): whether it ends with a record end.
	tail []byte
	// ended: the current segment has returned io.EOF.
	ended bool
}

func (s *segmentReader) Read(p []byte) (int, error) {
	for {
		if s.ended {
			return 0, io.EOF
		}
		r, err := s.fs.reader()
		if err != nil {
			return 0, err // io.EOF after the last file
		}
		n, err := r.Read(p)
		if n > 0 {
			// Only the last bytes can matter: a read of a block would
			// otherwise be copied whole, only to be cut back.
			s.tail = append(s.tail, p[max(n-len(s.recend), 0):n]...)
			if k := len(s.tail) - len(s.recend); k > 0 {
				s.tail = append(s.tail[:0], s.tail[k:]...)
			}
		}
		if err == io.EOF {
			unended := len(s.tail) > 0 && !bytes.Equal(s.tail, s.recend)
			s.fs.nextFile()
			s.tail = s.tail[:0]
			if unended && s.fs.i < len(s.fs.names) {
				s.ended = true
			}
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

// resume starts the next segment after one that ended at a file without a
// record end, and reports whether there was one.
func (s *segmentReader) resume() bool {
	if !s.ended {
		return false
	}
	s.ended = false
	return true
}

// next returns the next block, which the caller may keep: each block has
// an array of its own.
//
// A block is cut at the last record end within its first size bytes, or,
// when its first record is longer than that, at that record's end. At the
// end of the input, what is left makes the last block when it fits in
// size bytes, records and a last one without its end alike, as GNU
// parallel does: a short input is one block, not its records and then its
// unended last one. What was read past the cut (carry) starts the next
// block, and counts within that block's size like what is read for it.
//
// A record longer than a block is read in parts of a block each (at least
// longPart), put together once its end is found: the supervisor then holds
// about twice the record at its peak. A buffer that doubled as the record
// grew held up to three times it (a 300 MB record took the supervisor to
// 920 MB: the old array and the new one of 512 MB at the last growth),
// and append's growth by a quarter at a time copied it over and over.
func (b *blockReader) next() ([]byte, error) {
	if b.eof && len(b.carry) == 0 && b.r.resume() {
		b.eof = false // the input goes on in the next file
	}
	// Room for a block and the byte that tells it is not the last one: a
	// block of whole records needs no more.
	var buf []byte
	select {
	case s := <-b.spare:
		if cap(s) >= len(b.carry) {
			buf = s[:len(b.carry)]
		}
	default:
	}
	if buf == nil {
		buf = make([]byte, len(b.carry), max(b.size+1, len(b.carry)))
	}
	copy(buf, b.carry)
	b.carry = nil
	// long: no record ends within the first size bytes; searched: no
	// record end starts in buf before it. parts hold the start of a long
	// record, held bytes in all, buf the rest read so far.
	long, searched := false, 0
	var parts [][]byte
	held := 0
	cut := -1
	for cut < 0 {
		// A byte past size tells, before the end of the input, that the
		// block cannot be the last one.
		if held+len(buf) > b.size || b.eof {
			if b.eof && held+len(buf) <= b.size {
				cut = len(buf)
				break
			}
			if !long {
				if i := bytes.LastIndex(buf[:b.size], b.recend); i >= 0 {
					cut = i + len(b.recend)
					break
				}
				long, searched = true, max(b.size-len(b.recend)+1, 0)
			}
			if i := bytes.Index(buf[searched:], b.recend); i >= 0 {
				cut = searched + i + len(b.recend)
				break
			}
			if b.eof {
				cut = len(buf)
				break
			}
			searched = max(len(buf)-len(b.recend)+1, 0)
		}
		if len(buf) == cap(buf) {
			if long {
				// The record goes on: buf becomes a part, but for its
				// last bytes, where a record end may start, which begin
				// the next part.
				keep := min(max(len(b.recend)-1, 0), len(buf))
				if k := len(buf) - keep; k > 0 {
					parts = append(parts, buf[:k:k])
					held += k
				}
				next := make([]byte, keep, keep+max(b.size+1, longPart))
				copy(next, buf[len(buf)-keep:])
				buf, searched = next, 0
			} else {
				buf = append(buf[:cap(buf)], make([]byte, max(b.size, len(buf)))...)[:len(buf)]
			}
		}
		// No more than a block's worth a read, so that what is read past
		// a long record's end, the next block's start, is no more than that.
		n, err := b.r.Read(buf[len(buf):min(cap(buf), len(buf)+max(b.size+1, 64<<10))])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			b.eof = true
		} else if err != nil {
			return nil, err
		}
	}
	if cut == 0 && held == 0 {
		return nil, io.EOF
	}
	if cut < len(buf) {
		b.carry = bytes.Clone(buf[cut:])
	}
	block := buf[:cut] // its array's whole capacity kept, for recycle
	if held > 0 {
		block = make([]byte, 0, held+cut)
		for i, p := range parts {
			block = append(block, p...)
			parts[i] = nil
		}
		block = append(block, buf[:cut]...)
	}
	b.at, b.end = b.end, b.end+int64(len(block))
	return block, nil
}

// recycle gives back block, which next returned, once nothing else refers
// to it (pool.Task.StdinDone): next reads a later block into its array.
// Only an array of a block's usual size is kept, and no more than
// spareBlocks of them. It may be called on any goroutine.
func (b *blockReader) recycle(block []byte) {
	if cap(block) != b.size+1 {
		return
	}
	select {
	case b.spare <- block[:0]:
	default:
	}
}

// longPart is the least size of the parts in which a record longer than a
// block is read (blockReader.next).
var longPart = 1 << 20

// total is unknown in advance.
func (b *blockReader) total() int64 { return -1 }

func (b *blockReader) close() error { return b.files.close() }

// label names the block next returned last in the summary, the job log
// and the journal: its bytes in the input, counting from 0.
func (b *blockReader) label() []byte {
	return fmt.Appendf(nil, "bytes %d-%d", b.at, b.end-1)
}
