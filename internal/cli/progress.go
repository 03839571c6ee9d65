package cli

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/safepool/safepool/internal/bytesize"
	"github.com/safepool/safepool/pool"
)

// counters are what the progress display shows. The counts of tasks and
// attempts are the pool's own (pool.Stats), read when the bar is drawn;
// the rest follow the input and the pool's events, written from other
// goroutines, hence atomics.
type counters struct {
	pool   atomic.Pointer[pool.Pool] // nil until the pool is made
	total  atomic.Int64              // number of inputs, skipped ones included, or -1 until the input ends
	allows atomic.Int64              // attempts the memory governor allows at once, or -1
	// skipped counts the inputs not run because an earlier run of the
	// journal finished them (--resume): the feeder counts them here, and
	// the summary and the bar read this one count.
	skipped atomic.Int64
}

func newCounters() *counters {
	c := &counters{}
	c.total.Store(-1)
	c.allows.Store(-1)
	return c
}

// observe is the part of pool.Config.Observer that the display follows.
func (c *counters) observe(ev pool.Event) {
	if ev.Kind == pool.EventMemory {
		c.allows.Store(int64(ev.Memory.Allows))
	}
}

// stats is what the pool has counted so far; zero before it is made.
func (c *counters) stats() pool.Stats {
	if p := c.pool.Load(); p != nil {
		return p.Stats()
	}
	return pool.Stats{}
}

// endedOf counts the tasks in a terminal state.
func endedOf(st pool.Stats) int64 {
	return int64(st.Done + st.Failed + st.Poison + st.Cancelled)
}

// progress draws a live bar on stderr. Every write to the terminal that can
// meet the bar goes through pause, so job output and the bar never mix on
// one line. A nil *progress or one with no bar draws nothing.
type progress struct {
	c     *counters
	start time.Time
	mem   atomic.Int64 // host memory in use, sampled by the ticker; -1 unknown

	mu  sync.Mutex // serialises the bar and the writes made under pause
	bar *progressbar.ProgressBar
	// max is the total the bar was given, 0 until it is known; stopped
	// reports whether finish has run; shown reports whether the bar is
	// on the screen, to be cleared. All are guarded by mu.
	max            int64
	stopped, shown bool
	// tty is the terminal the bar is drawn on, or -1; pgrp is safepool's
	// process group. The bar is drawn only while that group is the
	// terminal's foreground one (foreground).
	tty, pgrp int

	stop chan struct{} // closed by finish
	done chan struct{} // closed when the ticker goroutine has returned
}

// progressInterval is how often the bar is redrawn and memory sampled.
const progressInterval = 200 * time.Millisecond

// startProgress starts drawing to w when on is true. tty is the file w
// writes to, the terminal whose foreground group is checked before each
// drawing.
func startProgress(w io.Writer, on bool, c *counters, tty io.Writer) *progress {
	p := &progress{c: c, start: time.Now(), tty: -1}
	if !on {
		return p
	}
	if f, ok := tty.(*os.File); ok {
		p.tty, p.pgrp = int(f.Fd()), unix.Getpgrp()
	}
	p.mem.Store(-1)
	p.bar = progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(w),
		progressbar.OptionUseANSICodes(true),
		progressbar.OptionSetWidth(24),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionSetElapsedTime(false),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSpinnerType(14),
		// No spinner goroutine: it would draw outside p.mu, over job
		// output, and it never ends while the length is unknown.
		progressbar.OptionSetSpinnerChangeInterval(0),
	)
	p.stop = make(chan struct{})
	p.done = make(chan struct{})
	go p.loop()
	return p
}

func (p *progress) loop() {
	defer close(p.done)
	t := time.NewTicker(progressInterval)
	defer t.Stop()
	for {
		if used, ok := hostMemoryInUse(); ok {
			p.mem.Store(used)
		}
		p.mu.Lock()
		p.drawLocked()
		p.mu.Unlock()
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

// drawLocked redraws the bar with the current counts; p.mu must be held.
func (p *progress) drawLocked() {
	if p.stopped || !p.foreground() {
		// In the background (safepool ... &, or Ctrl-Z then bg), the
		// terminal is the shell's and the foreground job's: a bar drawn
		// there would land over their lines. It is drawn again after fg.
		p.shown = false
		return
	}
	p.shown = true
	st := p.c.stats()
	total, ended, skipped := p.c.total.Load(), endedOf(st), p.c.skipped.Load()
	if total > 0 && total != p.max {
		// Known from the start for ::: arguments, at the input's end for
		// lines.
		p.bar.ChangeMax64(total)
		p.max = total
	}
	// The ETA is this run's: its tasks left at the pace of those ended.
	p.bar.Describe(p.describe(st, total-skipped, ended))
	if p.max > 0 {
		// The inputs an earlier run finished are part of the whole, done
		// before this run: without them the bar of a resumed run stopped
		// short of its end.
		p.bar.Set64(ended + skipped)
	}
}

// describe renders the counts: "done 12 failed 1 running 4 mem 3.1 GiB
// memory allows 4 ETA 20s", where "memory allows" is how many tasks at once
// the memory governor admits. Failed counts poison tasks too. Running
// counts tasks, as done does (with map, lines: each of a block's), where
// "memory allows" counts attempts (a block of lines is one).
func (p *progress) describe(st pool.Stats, total, ended int64) string {
	s := fmt.Sprintf("done %d failed %d running %d", st.Done, st.Failed+st.Poison, st.Running)
	if used := p.mem.Load(); used >= 0 {
		s += " mem " + bytesize.Format(used)
	}
	if n := p.c.allows.Load(); n >= 0 {
		s += fmt.Sprintf(" memory allows %d", n)
	}
	if total > 0 && ended > 0 && ended < total {
		elapsed := time.Since(p.start)
		eta := time.Duration(float64(elapsed) / float64(ended) * float64(total-ended))
		s += " ETA " + eta.Round(time.Second).String()
	}
	return s
}

// pause runs f with the bar cleared from the screen, and draws it again.
func (p *progress) pause(f func()) {
	if p == nil || p.bar == nil {
		f()
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		f()
		return
	}
	p.clearLocked()
	f()
	p.drawLocked()
}

// clearLocked clears the bar from the screen when it is there, and safepool
// still in the foreground; p.mu must be held.
func (p *progress) clearLocked() {
	if p.shown && p.foreground() {
		p.bar.Clear()
	}
	p.shown = false
}

// foreground reports whether safepool's process group is the foreground
// one of the terminal the bar is drawn on, as pv checks: one ioctl
// (tcgetpgrp). A terminal that is not safepool's controlling terminal,
// whose foreground group cannot be read, counts as foreground.
func (p *progress) foreground() bool {
	if p.tty < 0 {
		return true
	}
	pg, err := unix.IoctlGetInt(p.tty, unix.TIOCGPGRP)
	return err != nil || pg == p.pgrp
}

// finish stops drawing and clears the bar.
func (p *progress) finish() {
	if p == nil || p.bar == nil {
		return
	}
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLocked()
	p.bar.Exit()
	p.stopped = true
}

// pausedWriter writes to w with the progress bar out of the way. It carries
// persistent workers' stderr, which the pool writes from its goroutines.
type pausedWriter struct {
	p *progress
	w io.Writer
}

func (pw pausedWriter) Write(b []byte) (n int, err error) {
	pw.p.pause(func() { n, err = pw.w.Write(b) })
	return n, err
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// hostMemoryInUse returns MemTotal − MemAvailable from /proc/meminfo, in
// bytes.
func hostMemoryInUse() (int64, bool) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	var total, avail int64 = -1, -1
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := bytes.Fields(sc.Bytes())
		if len(fields) < 2 {
			continue
		}
		n, err := strconv.ParseInt(string(fields[1]), 10, 64)
		if err != nil {
			continue
		}
		switch string(fields[0]) {
		case "MemTotal:":
			total = n << 10
		case "MemAvailable:":
			avail = n << 10
		}
	}
	if total < 0 || avail < 0 {
		return 0, false
	}
	return total - avail, true
}
