package pool_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/protocol"
	"github.com/safepool/safepool/pool"
	"github.com/safepool/safepool/serve"
)

// The test binary is also the workers the tests run: TestMain turns it into
// one when SAFEPOOL_TEST_WORKER names a mode. The input of each task says
// what the worker does with it; see behave.
const workerEnv = "SAFEPOOL_TEST_WORKER"

// workerCmd returns the command that runs this test binary as a worker.
func workerCmd(mode string) []string {
	return []string{os.Args[0], "-test.run=^$", "--", "worker:" + mode}
}

// holdMemory maps mb MiB for the rest of the process's life, every page
// in. It asks the kernel to fill them in at once (MAP_POPULATE), with no
// write of this program's, which under the race detector would also touch
// its shadow of the pages, as much memory again. Where memory is short the
// kernel may leave pages out without a word, and no OOM kill: then every
// page is written, and the fault of a page that does not fit meets the OOM
// killer as any program's would.
func holdMemory(mb int) error {
	before := rssAnon()
	b, err := syscall.Mmap(-1, 0, mb<<20, syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_POPULATE)
	if err != nil {
		return err
	}
	if rssAnon()-before < int64(mb)<<20*3/4 {
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
	}
	return nil
}

// rssAnon is the process's anonymous resident memory (RssAnon), or 0.
func rssAnon() int64 {
	status, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// workerEnvFor returns the environment for workers in mode.
func workerEnvFor(mode string) []string {
	return append(os.Environ(), workerEnv+"="+mode)
}

// runWorker runs the worker mode named by the environment and returns its
// exit code.
func runWorker(mode string) int {
	switch mode {
	case "line":
		in := bufio.NewReaderSize(os.Stdin, 1<<20)
		out := bufio.NewWriter(os.Stdout)
		for {
			line, err := in.ReadString('\n')
			if err != nil {
				return 0
			}
			res, err := behave(strings.TrimSuffix(line, "\n"))
			if err != nil {
				res = "error:" + err.Error()
			}
			if res == "" {
				continue
			}
			fmt.Fprintln(out, res)
			out.Flush()
		}
	case "framed":
		err := serve.Run(context.Background(), func(ctx context.Context, p []byte) ([]byte, error) {
			res, err := behave(string(p))
			return []byte(res), err
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			return 1
		}
		return 0
	case "oneshot":
		res, err := behave(os.Args[len(os.Args)-1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(res)
		return 0
	case "framed-raw":
		// A framed worker written against the wire format alone, which
		// exits right after answering "bye", leaving the tasks pipelined
		// to it unread.
		in := protocol.NewReader(os.NewFile(3, "tasks"), 0)
		out := protocol.NewWriter(os.NewFile(4, "results"))
		out.WriteFrame(protocol.Frame{Kind: protocol.KindReady, Payload: protocol.ReadyPayload()})
		out.Flush()
		for {
			f, err := in.ReadFrame()
			if err != nil {
				return 0
			}
			if string(f.Payload) == "swallow" {
				continue // read, never started, never answered
			}
			if string(f.Payload) == "die-reading" {
				return 9 // as a worker killed reading a task too big for it
			}
			if string(f.Payload) == "die-mid-frame" {
				// Killed while writing a large result: the frame is
				// cut short, and the pipe closes a little before the
				// process is reaped.
				out.WriteFrame(protocol.Frame{Kind: protocol.KindStart, ID: f.ID})
				out.Flush()
				r := os.NewFile(4, "results")
				r.Write(append(protocol.AppendHeader(nil, uint8(protocol.KindResult), f.ID, 1000), "cut short"...))
				r.Close()
				time.Sleep(20 * time.Millisecond)
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
			if string(f.Payload) == "exit0-reading" {
				return 0 // as a worker that ends between tasks, one read ahead
			}
			out.WriteFrame(protocol.Frame{Kind: protocol.KindStart, ID: f.ID})
			res := protocol.Frame{Kind: protocol.KindResult, ID: f.ID, Payload: append([]byte("ok:"), f.Payload...)}
			switch string(f.Payload) {
			case "answer-twice":
				out.WriteFrame(res)
			case "unflushed-result":
				// Started, then answered into the buffer, which is
				// flushed only with the next task's frames.
				out.Flush()
				out.WriteFrame(res)
				continue
			case "short-length":
				// A header whose length leaves out the payload's last
				// byte, which then starts the next frame.
				out.Flush()
				h := protocol.AppendHeader(nil, uint8(protocol.KindResult), f.ID, len(res.Payload)-1)
				os.NewFile(4, "results").Write(append(h, res.Payload...))
				continue
			}
			out.WriteFrame(res)
			out.Flush()
			if string(f.Payload) == "bye" {
				return 0
			}
		}
	case "framed-batch":
		return runBatchWorker()
	case "flaky-start":
		// A line worker whose starts numbered in the file $FLAKY_STARTS,
		// from 2 to the number in $FLAKY_FAILS plus 1, die at once: a
		// command that worked, then fails for a while, then works again.
		file := os.Getenv("FLAKY_STARTS")
		b, _ := os.ReadFile(file)
		n := len(b) + 1
		os.WriteFile(file, append(b, 'x'), 0o644)
		if fails, _ := strconv.Atoi(os.Getenv("FLAKY_FAILS")); n >= 2 && n <= fails+1 {
			fmt.Fprintln(os.Stderr, "license server unreachable")
			return 4
		}
		return runWorker("line")
	case "fat-start":
		// A line worker that loads $FAT_MB MiB before it reads a line,
		// as a model or a large library would.
		mb, _ := strconv.Atoi(os.Getenv("FAT_MB"))
		fat := make([]byte, mb<<20)
		for i := 0; i < len(fat); i += 4096 {
			fat[i] = 1
		}
		defer runtime.KeepAlive(fat)
		return runWorker("line")
	case "fat-map-start":
		// As fat-start, with the pages mapped in at once (MAP_POPULATE)
		// rather than written one by one, which under the race detector
		// would touch as much shadow memory again.
		mb, _ := strconv.Atoi(os.Getenv("FAT_MB"))
		if err := holdMemory(mb); err != nil {
			return 4
		}
		return runWorker("line")
	case "dead-at-start":
		fmt.Fprintln(os.Stderr, "cannot load model: file not found")
		return 4
	case "banner":
		// A line worker that greets on stdout before it reads anything.
		fmt.Println("Loading model...")
		return runWorker("line")
	case "footer":
		// A line worker that says goodbye on stdout at the end of its input.
		code := runWorker("line")
		fmt.Println("done, bye")
		return code
	case "unflushed-ticker", "unflushed-timer":
		// The same, with a timer pending all along, as most Go programs
		// have (a ticker, a context deadline): the Go runtime then keeps
		// a thread waiting in epoll_wait.
		if mode == "unflushed-ticker" {
			go func() {
				for range time.Tick(100 * time.Millisecond) {
				}
			}()
		} else {
			time.AfterFunc(time.Hour, func() {})
		}
		return runWorker("unflushed")
	case "extra-per-read":
		// A line worker that answers the whole lines each read brings in
		// one write, with a stray line after the answers when the read
		// brought more than one line. It waits before each read, for the
		// lines sent ahead to gather: long enough for several to come even
		// when the test's lines are submitted slowly (a loaded machine
		// under the race detector took more than 20 ms a line).
		buf := make([]byte, 1<<16)
		var part string
		for {
			time.Sleep(100 * time.Millisecond)
			n, err := os.Stdin.Read(buf)
			if n == 0 || err != nil {
				return 0
			}
			data := part + string(buf[:n])
			end := strings.LastIndexByte(data, '\n')
			if end < 0 {
				part = data
				continue
			}
			lines := strings.Split(data[:end], "\n")
			part = data[end+1:]
			var out strings.Builder
			for _, l := range lines {
				out.WriteString("ok:" + l + "\n")
			}
			if len(lines) > 1 {
				out.WriteString("extra\n")
			}
			os.Stdout.WriteString(out.String())
		}
	case "unflushed":
		// A line worker that never flushes its answers: they wait in its
		// buffer while it blocks reading for more input.
		in := bufio.NewReader(os.Stdin)
		out := bufio.NewWriter(os.Stdout)
		for {
			line, err := in.ReadString('\n')
			if err != nil {
				out.Flush()
				return 0
			}
			fmt.Fprintln(out, "ok:"+strings.TrimSuffix(line, "\n"))
		}
	case "framed-slow-start":
		// A framed worker that computes for 1.5 s before it is ready.
		behave("spin:1500")
		return runWorker("framed")
	case "framed-silent":
		// A framed worker that never sends its ready frame.
		time.Sleep(time.Hour)
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown worker mode", mode)
	return 2
}

// behave does what input asks. Inputs of the form "verb" or "verb:arg":
//
//	kill             SIGKILL the worker itself
//	segv             die of SIGSEGV
//	exit:N           exit with status N
//	sleep:MS         sleep, then answer
//	hang             sleep forever, ignoring SIGTERM
//	termtrap:FILE:N  sleep until SIGTERM, then write "cleaned" to FILE and exit with status N
//	termhog          sleep until SIGTERM, then do hog
//	hog              allocate and touch memory until killed
//	childhog         run a child that does hog, wait for it, and answer with how it ended
//	garbage          write junk on the result pipe
//	closeout         close the result pipe and keep living
//	bye              answer, then exit 0 at once (line protocol; see framed-raw)
//	fail             report a task error (framed) or an error line
//	once:FILE:VERB   do VERB the first time (FILE does not exist yet), answer afterwards
//	grandchild:FILE  start a grandchild that holds the worker's pipes, write its pid to FILE, then SIGKILL the worker
//	oomscore         answer with the worker's own oom_score_adj
//	groupprocs       answer with the number of processes in the worker's own memory cgroup
//	escape:FILE      start "sleep 1000" in a session of its own (out of the worker's process group), write its pid to FILE, answer
//	alive:FILE       answer "alive" if the process whose pid is in FILE runs (a zombie does not), else "gone"
//	grow:MB          keep MB more megabytes for the rest of the worker's life, then answer
//	lategrow:MB      (one-shot) sleep 400 ms (four samples' worth of a watch), then map MB megabytes, every page in, and exit 0 at once, answering nothing
//	hold:MB          map MB MiB more, every page in, for the rest of the worker's life
//	pid              answer with the worker's pid
//	spew:OUT:ERR:N   (one-shot) write OUT bytes of spewPattern to stdout and ERR to stderr, then exit N
//	chatter:N        write N lines "chatter I" to stdout and N to stderr, then answer
//	mute             answer nothing (line protocol)
//	twice            answer with two lines at once: "extra" and the answer (line protocol)
//	twice-slow       write "extra", and the answer 300 ms later, then wait 300 ms before reading on
//	closein          answer, then close stdin and sleep
//	closein-hang     close stdin and sleep, without answering
//	endless          write on stdout without end, and no newline
//	spin:MS          use the CPU for MS milliseconds, then answer
//	killat:MS        SIGKILL the worker itself at MS milliseconds since the Unix epoch
//	swallow          (framed-raw only) read the task and never start or answer it
//	die-reading      (framed-raw only) read the task and exit 9 before starting it
//	die-mid-frame    (framed-raw only) write part of a result frame, close fd 4, then SIGKILL itself
//	exit0-reading    (framed-raw only) read the task and exit 0 before starting it
//	answer-twice     (framed-raw only) send the task's result frame twice
//	unflushed-result (framed-raw only) start the task, write its result without flushing it, and read on
//	short-length     (framed-raw only) answer with a result frame whose length is one byte short
//
//	slot:X           answer X/$SAFEPOOL_SLOT/the worker's pid
//
// Anything else is answered with "ok:" + input.
func behave(in string) (string, error) {
	verb, arg, _ := strings.Cut(in, ":")
	switch verb {
	case "kill":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	case "segv":
		// The Go runtime turns a fault into a panic; a shell dies of it.
		syscall.Exec("/bin/sh", []string{"sh", "-c", "kill -SEGV $$"}, os.Environ())
	case "exit":
		n, _ := strconv.Atoi(arg)
		os.Exit(n)
	case "sleep":
		ms, _ := strconv.Atoi(arg)
		time.Sleep(time.Duration(ms) * time.Millisecond)
	case "hang":
		signal.Ignore(syscall.SIGTERM)
		select {}
	case "termtrap":
		file, code, _ := strings.Cut(arg, ":")
		n, _ := strconv.Atoi(code)
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		<-term
		os.WriteFile(file, []byte("cleaned"), 0o644)
		os.Exit(n)
	case "termhog":
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		<-term
		return behave("hog")
	case "hog":
		var keep [][]byte
		for {
			b := make([]byte, 20<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			keep = append(keep, b)
			time.Sleep(5 * time.Millisecond)
		}
	case "childhog":
		cmd := exec.Command(os.Args[0], "hog")
		cmd.Env = append(os.Environ(), workerEnv+"=oneshot")
		err := cmd.Run()
		return fmt.Sprintf("child: %v", err), nil
	case "garbage":
		if os.Getenv(workerEnv) == "framed" {
			// A whole header, of a kind that does not exist.
			f := os.NewFile(4, "results")
			f.Write([]byte{0, 0, 0, 9, 99, 0, 0, 0, 0, 0, 0, 0, 1})
			select {}
		}
		fmt.Println("unsolicited line 1")
		return "unsolicited line 2", nil
	case "closeout":
		if os.Getenv(workerEnv) == "framed" {
			syscall.Close(4)
		} else {
			os.Stdout.Close()
		}
		select {}
	case "bye":
		fmt.Println("ok:" + in)
		os.Exit(0)
	case "fail":
		return "", errors.New("this task fails")
	case "mute":
		return "", nil // no answer (line protocol)
	case "once":
		file, rest, _ := strings.Cut(arg, ":")
		if _, err := os.Stat(file); err != nil {
			os.WriteFile(file, nil, 0o644)
			return behave(rest)
		}
	case "grandchild":
		cmd := exec.Command("sleep", "1000")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if os.Getenv(workerEnv) == "framed" {
			cmd.ExtraFiles = []*os.File{os.NewFile(3, "tasks"), os.NewFile(4, "results")}
		}
		if err := cmd.Start(); err != nil {
			return "", err
		}
		os.WriteFile(arg, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	case "escape":
		cmd := exec.Command("sleep", "1000")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return "", err
		}
		return "ok", os.WriteFile(arg, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
	case "alive":
		pid, err := os.ReadFile(arg)
		if err != nil {
			return "", err
		}
		stat, err := os.ReadFile("/proc/" + string(pid) + "/stat")
		if _, after, ok := strings.Cut(string(stat), ") "); err == nil && ok && !strings.HasPrefix(after, "Z") {
			return "alive", nil
		}
		return "gone", nil
	case "groupprocs":
		return groupProcs()
	case "slot":
		return arg + "/" + os.Getenv(pool.SlotEnv) + "/" + strconv.Itoa(os.Getpid()), nil
	case "oomscore":
		b, err := os.ReadFile("/proc/self/oom_score_adj")
		return strings.TrimSpace(string(b)), err
	case "grow":
		mb, _ := strconv.Atoi(arg)
		b := make([]byte, mb<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		grown = append(grown, b)
	case "hold":
		// MB MiB more for the rest of the worker's life, every page in at
		// once (MAP_POPULATE), as lategrow does.
		mb, _ := strconv.Atoi(arg)
		if err := holdMemory(mb); err != nil {
			return "", err
		}
		return "held:" + arg, nil
	case "lategrow":
		time.Sleep(400 * time.Millisecond)
		mb, _ := strconv.Atoi(arg)
		// Every page in at once (MAP_POPULATE), with no write of this
		// program's, which under the race detector would also touch its
		// shadow of the page, as much memory again.
		if _, err := syscall.Mmap(-1, 0, mb<<20, syscall.PROT_READ|syscall.PROT_WRITE,
			syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_POPULATE); err != nil {
			return "", err
		}
		// At once, with none of the exit's hooks: the race detector's ran
		// long enough for a sample to find the new pages, which left
		// TestOneShotLatePeakUnprivileged nothing to check.
		syscall.Exit(0)
	case "pid":
		return strconv.Itoa(os.Getpid()), nil
	case "chatter":
		n, _ := strconv.Atoi(arg)
		for i := range n {
			fmt.Fprintf(os.Stdout, "chatter %d\n", i)
			fmt.Fprintf(os.Stderr, "chatter %d\n", i)
		}
	case "spew":
		var out, errs int64
		var code int
		fmt.Sscanf(strings.ReplaceAll(arg, ":", " "), "%d %d %d", &out, &errs, &code)
		spewPattern(os.Stdout, out)
		spewPattern(os.Stderr, errs)
		os.Exit(code)
	case "twice":
		return "extra\nok:" + in, nil
	case "twice-slow":
		os.Stdout.WriteString("extra\n")
		time.Sleep(300 * time.Millisecond)
		os.Stdout.WriteString("ok:" + in + "\n")
		time.Sleep(300 * time.Millisecond)
		return "", nil
	case "closein":
		os.Stdout.WriteString("ok:" + in + "\n")
		syscall.Close(0)
		time.Sleep(time.Hour)
	case "closein-hang":
		syscall.Close(0)
		time.Sleep(time.Hour)
	case "endless":
		b := []byte(strings.Repeat("x", 64<<10))
		for {
			if _, err := os.Stdout.Write(b); err != nil {
				return "", err
			}
		}
	case "killat":
		ms, _ := strconv.ParseInt(arg, 10, 64)
		time.Sleep(time.Until(time.UnixMilli(ms)))
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	case "spin":
		ms, _ := strconv.Atoi(arg)
		for end := time.Now().Add(time.Duration(ms) * time.Millisecond); time.Now().Before(end); {
		}
	}
	return "ok:" + in, nil
}

// grown keeps the memory that "grow" tasks allocate.
var grown [][]byte

// superviseIn runs this test binary as a supervisor in the mode that env
// selects, inside the cgroup dir, as in a container, and returns its stdout
// (and stderr, with stderrToo). It joins the group before it runs, keeping
// its default oom_score_adj (Group.Prepare would mark it a worker). The
// test fails if it has not ended within a minute.
func superviseIn(t *testing.T, dir string, stderrToo bool, env ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$1" -test.run='^$'`, dir, os.Args[0])
	cmd.Env = append(os.Environ(), env...)
	var out strings.Builder
	cmd.Stdout = &out
	if stderrToo {
		cmd.Stderr = &out
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatal("the supervisor did not finish within a minute")
		return "", nil
	}
}

// spewPattern writes n bytes to w in 4 KiB chunks, each of which starts
// with its own number, so that bytes out of place change a hash of them.
func spewPattern(w io.Writer, n int64) {
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i / 4096 * 7)
	}
	var chunk uint64
	for n > 0 {
		k := min(n, int64(len(buf)))
		for at := 0; at < int(k); at += 4096 {
			binary.BigEndian.PutUint64(buf[at:], chunk)
			chunk++
		}
		if _, err := w.Write(buf[:k]); err != nil {
			return
		}
		n -= k
	}
}

// runBatchWorker is a framed/2 worker written against the wire format: a
// batch's payload is its items, one a line; plain tasks are one item. It
// writes each item's answer and the next item's start frame together, and
// flushes before it runs the item.
func runBatchWorker() int {
	in := protocol.NewReader(os.NewFile(3, "tasks"), 0)
	out := protocol.NewWriter(os.NewFile(4, "results"))
	out.WriteFrame(protocol.Frame{Kind: protocol.KindReady, Payload: []byte(`{"version":2}`)})
	out.Flush()
	index := func(i uint32, rest []byte) []byte {
		return append(binary.BigEndian.AppendUint32(nil, i), rest...)
	}
	for {
		f, err := in.ReadFrame()
		if err != nil {
			return 0
		}
		if f.Kind != protocol.KindBatch {
			out.WriteFrame(protocol.Frame{Kind: protocol.KindStart, ID: f.ID})
			out.Flush()
			res, err := behave(string(f.Payload))
			if err != nil {
				out.WriteFrame(protocol.Frame{Kind: protocol.KindError, ID: f.ID, Payload: []byte(err.Error())})
			} else {
				out.WriteFrame(protocol.Frame{Kind: protocol.KindResult, ID: f.ID, Payload: []byte(res)})
			}
			out.Flush()
			continue
		}
		indexes, payload, _ := protocol.ParseBatch(f.Payload)
		items := strings.Split(string(payload), "\n")
		for _, i := range indexes {
			out.WriteFrame(protocol.Frame{Kind: protocol.KindStart, ID: f.ID, Payload: index(i, nil)})
			out.Flush()
			res, err := behave(items[i])
			if err != nil {
				out.WriteFrame(protocol.Frame{Kind: protocol.KindItemError, ID: f.ID, Payload: index(i, []byte(err.Error()))})
			} else {
				out.WriteFrame(protocol.Frame{Kind: protocol.KindItem, ID: f.ID, Payload: index(i, []byte(res))})
			}
		}
		out.Flush()
	}
}

// groupProcs counts the processes in the calling process's memory cgroup
// (v1's memory hierarchy, else v2's unified one).
func groupProcs() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	dir := ""
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case slices.Contains(strings.Split(parts[1], ","), "memory"):
			dir = "/sys/fs/cgroup/memory" + parts[2]
		case parts[0] == "0" && parts[1] == "" && dir == "":
			dir = "/sys/fs/cgroup" + parts[2]
		}
	}
	procs, err := os.ReadFile(dir + "/cgroup.procs")
	if err != nil {
		return "", err
	}
	return strconv.Itoa(len(strings.Fields(string(procs)))), nil
}
