package cli

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/safepool/safepool/internal/journal"
	"github.com/safepool/safepool/pool"
)

// Lines in blocks: safepool map hands its line workers blocks of whole
// lines, each one task of the pool (pool.Task.Items, one item a line), so
// that a line costs the supervisor a few bytes of bookkeeping rather than a
// task's trip through the engine. The pool keeps each line's fate: a dead
// worker costs only the line it was running (docs/architecture.md, "Lines
// in blocks").

const (
	// blockBytes and blockLines bound a block: enough short lines that a
	// block's trip through the engine costs little per line, few enough
	// that the blocks held (each line's pool.Item is about 90 bytes) keep
	// the supervisor's memory flat. Measured over 1M short lines: 256-line
	// blocks cost the supervisor about 1.4 times the CPU of 1024-line ones
	// for 1 MiB less peak RSS; 2048-line blocks grew it from 24 MiB at 50k
	// lines to 35 MiB at 10M.
	blockBytes = 64 << 10
	blockLines = 1024
	// blockTime is about how long a block should keep a worker busy, by
	// the recent time per line: long enough that a block's trip through the
	// engine is small beside it, short enough that the last blocks of the
	// input spread over the workers.
	blockTime = 5 * time.Millisecond
)

// lineBlocks cuts the inputs of map into blocks of whole lines. A block
// ends at blockBytes, at the number of lines that lineBlocks.size allows,
// or where the input has no whole line ready, so that a slow input (a
// terminal, a stream) gets its answers as soon as its lines come.
type lineBlocks struct {
	files *fileSource
	br    *bufio.Reader // reads the file files reads; nil before it opens
	// perLine is the recent time per line, in nanoseconds, that the
	// results show: 0 before the first.
	perLine atomic.Int64
}

func newLineBlocks(fs *fileSource) *lineBlocks { return &lineBlocks{files: fs} }

// size is how many lines the next block may hold: one until a result says
// how long lines take, then about blockTime's worth, at most blockLines.
func (lb *lineBlocks) size() int {
	d := lb.perLine.Load()
	if d <= 0 {
		return 1
	}
	return int(min(max(int64(blockTime)/d, 1), blockLines))
}

// observe learns the time per line from a result of the pool.
func (lb *lineBlocks) observe(r *pool.Result) {
	n := len(r.Items)
	if r.State != pool.Done || n == 0 {
		return
	}
	d := max(int64(r.Items[n-1].End.Sub(r.Items[0].Start))/int64(n), 1)
	if old := lb.perLine.Load(); old > 0 {
		d = old + (d-old)/8
	}
	lb.perLine.Store(max(d, 1))
}

// next returns a block of at most maxLines whole lines, each with its
// newline (one is added to a last line without it), and how many lines it
// holds; io.EOF when the inputs are done.
func (lb *lineBlocks) next(maxLines int) ([]byte, int, error) {
	var block []byte
	n := 0
	for n < maxLines && len(block) < blockBytes {
		if lb.br == nil {
			r, err := lb.files.reader()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, 0, err
			}
			lb.br = bufio.NewReaderSize(r, 64<<10)
		}
		br := lb.br
		if br.Buffered() == 0 {
			if n > 0 {
				break // reading more may wait: send what is here first
			}
			if _, err := br.Peek(1); err != nil {
				if err != io.EOF {
					return nil, 0, fmt.Errorf("reading %s: %w", lb.files.name(), err)
				}
				lb.br = nil
				lb.files.nextFile()
				continue
			}
		}
		buf, _ := br.Peek(br.Buffered())
		last := bytes.LastIndexByte(buf, '\n')
		if last < 0 {
			if n > 0 {
				break // the rest of this line may take a while to come
			}
			line, err := (&lineReader{r: br, sep: '\n', max: lb.files.max}).next()
			var le *longInputError
			if errors.As(err, &le) {
				le.Why = lb.files.why // feedBlocks numbers it
				return nil, 0, err
			}
			if err != nil {
				return nil, 0, fmt.Errorf("reading %s: %w", lb.files.name(), err)
			}
			block = append(line, '\n')
			n = 1
			continue
		}
		region := buf[:last+1]
		if room := blockBytes - len(block); len(region) > room {
			if i := bytes.LastIndexByte(region[:room], '\n'); i >= 0 {
				region = region[:i+1]
			} else if n > 0 {
				break // its first line alone is over the room left
			} else {
				region = region[:bytes.IndexByte(region, '\n')+1]
			}
		}
		var c int
		if need := maxLines - n; need < len(region)/64 {
			// A few lines of many buffered (one at a time until the
			// results tell how long lines take, as in a resume that
			// skips them all): count no further than them.
			region, c = firstLines(region, need)
		} else if c = bytes.Count(region, newline); c > need {
			c = need
			region = region[:lineEnd(region, c)]
		}
		if block == nil {
			block = make([]byte, 0, min(max(len(region), 256), blockBytes))
		}
		block = append(block, region...)
		n += c
		br.Discard(len(region))
	}
	if n == 0 {
		return nil, 0, io.EOF
	}
	return block, n, nil
}

// firstLines returns the first k lines of b, whose last line ends with a
// newline, or all of them when it has fewer, and how many they are.
func firstLines(b []byte, k int) ([]byte, int) {
	off, c := 0, 0
	for ; c < k && off < len(b); c++ {
		off += bytes.IndexByte(b[off:], '\n') + 1
	}
	return b[:off], c
}

// lineEnd is where the first k lines of b end.
func lineEnd(b []byte, k int) int {
	off := 0
	for ; k > 0; k-- {
		off += bytes.IndexByte(b[off:], '\n') + 1
	}
	return off
}

// feedBlocks submits the input in blocks of lines until it ends, the pool
// stops or reading fails (then fail is called). It returns the number of
// lines submitted to the pool, and whether the input was read to its end. With a journal, each line is keyed and, when
// resuming, looked up: a line an earlier run finished is skipped (and its
// output replayed for map), and the lines around it go in blocks of their
// own, so that a replayed output keeps its place in --keep-order.
func (j *job) feedBlocks(ctx context.Context, p *pool.Pool, jl *joblog, jj *jobJournal, fb *feedBack) (uint64, bool) {
	var id, seq uint64 // the pool's ids and the journal's, of the last line
	for {
		block, n, err := j.blocks.next(j.blocks.size())
		if err == io.EOF {
			return id, true
		}
		var le *longInputError
		if errors.As(err, &le) {
			le.Input = int64(seq) + 1
		}
		if err != nil {
			fb.stop(fmt.Errorf("reading input: %w", err))
			return id, false
		}
		if feedStopped(ctx, p) {
			return id, false // a read that came back after the run stopped
		}
		if jj == nil {
			if jl != nil {
				for i, rest := 0, block; i < n; i++ {
					k := bytes.IndexByte(rest, '\n')
					jl.submit(id+uint64(i)+1, id+uint64(i)+1, rest[:k])
					rest = rest[k+1:]
				}
			}
			if _, err := p.Submit(ctx, pool.Task{Input: block, Items: n}); err != nil {
				return id, false // the pool is stopping; the results loop reports why
			}
			id += uint64(n)
			seq = id
			continue
		}
		// Every line's key, at once; then the lines to run, which the
		// writer keeps: each submitted part of the block has its own.
		all := make([]journal.Key, n)
		journal.KeyLines(block, all)
		if !jj.resuming() {
			seqs := make([]uint64, n)
			for i := range seqs {
				seqs[i] = seq + uint64(i) + 1
			}
			seq += uint64(n)
			if !j.submitLines(ctx, p, jl, jj, &id, block, seqs, all) {
				return id, false
			}
			continue
		}
		var seqs []uint64
		var keys []journal.Key
		start, off := 0, 0 // where the lines to run begin; where line i begins
		for i := range n {
			seq++
			line := block[off : off+bytes.IndexByte(block[off:], '\n')]
			next := off + len(line) + 1
			f, done, err := jj.finished(all[i])
			if err != nil {
				fb.fail(err)
				return id, false
			}
			if !done {
				if seqs == nil {
					seqs = make([]uint64, 0, n-i)
					keys = make([]journal.Key, 0, n-i)
				}
				seqs, keys = append(seqs, seq), append(keys, all[i])
				off = next
				continue
			}
			if !j.submitLines(ctx, p, jl, jj, &id, block[start:off], seqs, keys) {
				return id, false
			}
			seqs, keys = nil, nil
			start, off = next, next
			if feedStopped(ctx, p) {
				return id, false
			}
			fb.skip(j.mode, jj, seq, all[i], line, f, id)
		}
		if !j.submitLines(ctx, p, jl, jj, &id, block[start:], seqs, keys) {
			return id, false
		}
	}
}

// submitLines submits region, lines numbered seqs with keys, as one task
// of the pool, after the job log and the journal have them; *id, the
// pool's id of the last line submitted, advances by their number. It
// reports false when the pool is stopping.
func (j *job) submitLines(ctx context.Context, p *pool.Pool, jl *joblog, jj *jobJournal, id *uint64,
	region []byte, seqs []uint64, keys []journal.Key) bool {
	m := len(seqs)
	if m == 0 {
		return true
	}
	if jl != nil {
		for i, rest := 0, region; i < m; i++ {
			k := bytes.IndexByte(rest, '\n')
			jl.submit(*id+uint64(i)+1, seqs[i], rest[:k])
			rest = rest[k+1:]
		}
	}
	for i, seq := range seqs {
		j.seqs.note(*id+uint64(i)+1, seq)
	}
	jj.submitLines(*id+1, seqs, keys, region)
	if _, err := p.Submit(ctx, pool.Task{Input: region, Items: m}); err != nil {
		jj.withdraw(*id + 1)
		return false // the pool is stopping; the results loop reports why
	}
	*id += uint64(m)
	return true
}

// itemInput is the input of item it of r: its line, for a block of lines.
func itemInput(r *pool.Result, it *pool.Item) []byte {
	if r.Items == nil {
		return r.Input
	}
	in := r.Input
	for i := 0; i < it.Index; i++ {
		in = in[bytes.IndexByte(in, '\n')+1:]
	}
	if k := bytes.IndexByte(in, '\n'); k >= 0 {
		return in[:k]
	}
	return in
}
