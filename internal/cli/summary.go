package cli

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/safepool/safepool/internal/bytesize"
	"github.com/safepool/safepool/pool"
)

const (
	// summaryListMax is how many failed tasks the summary on stderr lists.
	summaryListMax = 20
	// jsonListMax is how many failed tasks the JSON summary keeps; the
	// rest are counted in failed_omitted, so memory stays bounded.
	jsonListMax = 10000
	// summaryInputMax and jsonInputMax bound the inputs they quote.
	summaryInputMax = 40
	jsonInputMax    = 1024
)

// failedTask is one failed or poison task, as the summaries show it.
type failedTask struct {
	ID       uint64 `json:"id"`
	Input    string `json:"input"`
	State    string `json:"state"`
	Cause    string `json:"cause"`
	Attempts int    `json:"attempts"`
	PeakRSS  int64  `json:"peak_rss_bytes"`
	ExitCode int    `json:"exit_code"`
	Signal   string `json:"signal"`
	Message  string `json:"message"`
	// Agent names the agent that ran the last attempt of a --nats run's
	// task; it is left out of local runs.
	Agent string `json:"agent,omitempty"`

	short string // the input shortened and escaped for the text summary
	// explained reports whether Message is the pool's own explanation of
	// the task's end (a poison task, or one that others' memory crowded
	// out), which the text summary shows whole, also where the workers'
	// stderr was already printed.
	explained bool
}

// recoveredTask is a task that succeeded after one or more failed attempts.
type recoveredTask struct {
	ID       uint64 `json:"id"`
	Input    string `json:"input"`
	Attempts int    `json:"attempts"`
	// Causes are the causes of the failed attempts, in order.
	Causes  []string `json:"causes"`
	PeakRSS int64    `json:"peak_rss_bytes"`

	short string
}

// text renders one recovered task:
// task 7 (input '7') done on attempt 2, after oom (peak 256 MiB)
func (r *recoveredTask) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "task %d (input '%s') done on attempt %d, after %s", r.ID, r.short, r.Attempts, strings.Join(r.Causes, ", "))
	if r.PeakRSS > 0 {
		fmt.Fprintf(&b, " (peak %s)", bytesize.Format(r.PeakRSS))
	}
	return b.String()
}

// taskCounts counts tasks by terminal state.
type taskCounts struct {
	Submitted int `json:"submitted"`
	Done      int `json:"done"`
	Failed    int `json:"failed"`
	Cancelled int `json:"cancelled"`
	Poison    int `json:"poison"`
	// Unwritten counts tasks that succeeded but whose output was not
	// written out of safepool (outputLedger): not done, since the journal
	// does not have them as done and --resume runs them again.
	Unwritten int `json:"unwritten"`
	// Skipped counts inputs not run because an earlier run of the journal
	// finished them (--resume); they are not among Submitted.
	// SkippedFailed counts those of them that had failed or were poison
	// (--resume without --resume-failed), which fail the run as they did.
	Skipped       int `json:"skipped"`
	SkippedFailed int `json:"skipped_failed"`
	// NotCollected counts the tasks of a --nats run that the submitter
	// left without their results when its terminal hung up (SIGHUP), or
	// when it could not stop the run: they go on on the agents, and the
	// same command with --run-id collects them. They are not cancelled.
	NotCollected int `json:"not_collected,omitempty"`
}

// summary is what a run or map reports at the end. The results loop fills
// it; nothing else touches it.
type summary struct {
	Mode           string       `json:"mode"`
	Command        []string     `json:"command"`
	ExitStatus     int          `json:"exit_status"`
	Aborted        bool         `json:"aborted"`
	Interrupted    bool         `json:"interrupted"`
	AbortReason    string       `json:"abort_reason,omitempty"`
	StartTime      time.Time    `json:"start_time"`
	WallSeconds    float64      `json:"wall_seconds"`
	MemoryMode     string       `json:"memory_mode"`
	Tasks          taskCounts   `json:"tasks"`
	Attempts       int          `json:"attempts"`
	WorkersStarted int          `json:"workers_started"`
	WorkerDeaths   int          `json:"worker_deaths"`
	Failed         []failedTask `json:"failed"`
	FailedOmitted  int          `json:"failed_omitted"`
	// Recovered lists tasks that succeeded after earlier attempts failed,
	// so that a retry that saved the run is still visible.
	Recovered        []recoveredTask `json:"recovered"`
	RecoveredOmitted int             `json:"recovered_omitted"`
	// Preempted counts attempts the memory governor stopped; Memory is
	// what it planned with at the end, or nil when it was off.
	Preempted int            `json:"preempted"`
	Memory    *memorySummary `json:"memory,omitempty"`
	// NotRead is, for a run stopped before the end of its input, the
	// number of inputs it did not read (the ::: arguments), or -1 when
	// that number is unknown (lines still to come); 0 otherwise.
	NotRead int64 `json:"inputs_not_read,omitempty"`

	wall time.Duration
	// messages reports whether to show attempt messages in the text
	// summary; one-shot jobs already printed their stderr.
	messages bool
	// viaShell reports whether a shell stays between safepool and the
	// command (job.viaShell), for the hint on exit statuses over 128.
	viaShell bool
	// listedIn says where every task is listed, for the tasks the text
	// summary leaves out (listedIn); "" means nowhere yet.
	listedIn string
	// seqs numbers the tasks it lists by their inputs (nil: the pool's ids
	// are the inputs' numbers).
	seqs *taskSeqs
	// textOnly reports whether the summary is written as text alone (no
	// --json): Failed then keeps only the summaryListMax tasks with the
	// lowest ids, all that the text shows, and not jsonListMax of them
	// with their messages (up to 4 KiB each, some 100 MiB of memory for
	// 10,000 failed jobs with long stderr).
	textOnly bool
	// outputLost counts the failed tasks whose output could not be kept
	// (output-lost); outputLostMessage is the first one's message.
	outputLost        int
	outputLostMessage string
}

// setTasks takes the counts of tasks by terminal state from the pool,
// which counts them once for every consumer, and moves the tasks done
// whose output led found not written from done to unwritten.
func (s *summary) setTasks(st pool.Stats, led *outputLedger) {
	unwritten := led.count()
	s.Tasks = taskCounts{Submitted: st.Submitted, Done: st.Done - unwritten, Unwritten: unwritten,
		Failed: st.Failed, Cancelled: st.Cancelled, Poison: st.Poison}
}

// add lists one result among the failed or recovered tasks, as it is. The
// counts of tasks come from the pool (setTasks).
func (s *summary) add(r *pool.Result) {
	if r.Items != nil && r.State != pool.Done && r.State != pool.Cancelled {
		// A batch's items that failed together: each is listed, by its id
		// and its input.
		for i := range r.Items {
			it := r.Items[i]
			one := *r
			one.ID, one.Input, one.Items = it.ID, itemInput(r, &it), nil
			s.add(&one)
		}
		return
	}
	if len(r.Items) == 1 {
		one := *r
		one.ID, one.Input, one.Items = r.Items[0].ID, itemInput(r, &r.Items[0]), nil
		r = &one
	}
	switch r.State {
	case pool.Done:
		s.addRecovered(r)
		return
	case pool.Cancelled:
		return
	}
	if r.Cause() == pool.CauseOutputLost {
		s.outputLost++
		if n := len(r.Attempts); n > 0 && s.outputLostMessage == "" {
			s.outputLostMessage = r.Attempts[n-1].Message
		}
	}
	id := s.seqs.of(r.ID)
	at := len(s.Failed) // where it goes in Failed
	switch {
	case s.textOnly && len(s.Failed) >= summaryListMax:
		// It takes the place of the highest id, if lower.
		at = 0
		for i := range s.Failed {
			if s.Failed[i].ID > s.Failed[at].ID {
				at = i
			}
		}
		s.FailedOmitted++
		if id > s.Failed[at].ID {
			return
		}
	case len(s.Failed) >= jsonListMax:
		s.FailedOmitted++
		return
	}
	ft := failedTask{
		ID:       id,
		Input:    strings.ToValidUTF8(string(truncate(r.Input, jsonInputMax)), "\uFFFD"),
		State:    string(r.State),
		Cause:    string(r.Cause()),
		ExitCode: -1,
		short:    escapeInput(r.Input, summaryInputMax),
	}
	if n := len(r.Attempts); n > 0 {
		last := r.Attempts[n-1]
		ft.Attempts = last.Number
		ft.ExitCode = last.ExitCode
		ft.Signal = last.Signal
		ft.Message = strings.TrimSpace(last.Message)
		// A failed attempt without a cause never reached a worker (a
		// --nats task too large for a message): its message is all
		// there is to say, and nothing was printed for it.
		ft.explained = r.State == pool.Poison || last.Crowded || last.Cause == ""
	}
	for _, a := range r.Attempts {
		ft.PeakRSS = max(ft.PeakRSS, a.PeakRSS)
	}
	if at < len(s.Failed) {
		s.Failed[at] = ft
		return
	}
	s.Failed = append(s.Failed, ft)
}

// setAgent names the agent of failed task id's last attempt, when the
// summary lists it.
func (s *summary) setAgent(id uint64, agent string) {
	for i := range s.Failed {
		if s.Failed[i].ID == id {
			s.Failed[i].Agent = agent
			return
		}
	}
}

// addRecovered notes a done task if any of its attempts failed. Preempted
// attempts are the pool's doing, not the task's, and do not count.
func (s *summary) addRecovered(r *pool.Result) {
	var causes []string
	var peak int64
	for _, a := range r.Attempts {
		if a.Cause != "" && a.Cause != pool.CausePreempted {
			causes = append(causes, string(a.Cause))
			peak = max(peak, a.PeakRSS)
		}
	}
	if len(causes) == 0 {
		return
	}
	if len(s.Recovered) >= jsonListMax {
		s.RecoveredOmitted++
		return
	}
	s.Recovered = append(s.Recovered, recoveredTask{
		ID:       s.seqs.of(r.ID),
		Input:    strings.ToValidUTF8(string(truncate(r.Input, jsonInputMax)), "\uFFFD"),
		Attempts: r.Attempts[len(r.Attempts)-1].Number,
		Causes:   causes,
		PeakRSS:  peak,
		short:    escapeInput(r.Input, summaryInputMax),
	})
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// ok reports whether every task succeeded and nothing was aborted.
func (s *summary) ok() bool {
	return !s.Aborted && s.Tasks.Done == s.Tasks.Submitted && s.Tasks.SkippedFailed == 0
}

// skippedNote says how many inputs an earlier run finished, or nothing.
func (s *summary) skippedNote() string {
	switch {
	case s.Tasks.Skipped == 0:
		return ""
	case s.Tasks.SkippedFailed == 0:
		return fmt.Sprintf("; %d skipped, done in an earlier run", s.Tasks.Skipped)
	}
	return fmt.Sprintf("; %d skipped, finished in an earlier run (%d of them failed: --resume-failed reruns them)",
		s.Tasks.Skipped, s.Tasks.SkippedFailed)
}

// notReadNote says what a run stopped before the end of its input did not
// read, which its counts of tasks leave out: "; 28 more inputs not run", or
// "; the rest of the input not read".
func (s *summary) notReadNote() string {
	switch {
	case s.NotRead == 1:
		return "; 1 more input not run"
	case s.NotRead > 1:
		return fmt.Sprintf("; %d more inputs not run", s.NotRead)
	case s.NotRead < 0:
		return "; the rest of the input not read"
	}
	return ""
}

// writeText writes the summary for people. When all tasks succeeded it is
// one line, or nothing when quiet is set or there were no tasks.
func (s *summary) writeText(w io.Writer, quiet bool) {
	if s.ok() {
		if quiet || s.Tasks.Submitted+s.Tasks.Skipped == 0 {
			return
		}
		fmt.Fprintf(w, "safepool: %s done in %s%s%s\n", plural(s.Tasks.Done, "task"), formatWall(s.wall), s.memoryNote(), s.skippedNote())
		s.writeRecovered(w)
		return
	}
	slices.SortFunc(s.Failed, func(a, b failedTask) int { return cmp.Compare(a.ID, b.ID) })
	var b strings.Builder
	b.WriteString("safepool: ")
	if s.Interrupted {
		b.WriteString("interrupted: ")
	} else if s.Aborted {
		b.WriteString("aborted: ")
	}
	fmt.Fprintf(&b, "%d done, %d failed", s.Tasks.Done, s.Tasks.Failed)
	if s.Tasks.Poison > 0 {
		fmt.Fprintf(&b, ", %d poison", s.Tasks.Poison)
	}
	if s.Tasks.Unwritten > 0 {
		fmt.Fprintf(&b, ", %d output not written", s.Tasks.Unwritten)
	}
	if s.Tasks.Cancelled > 0 {
		fmt.Fprintf(&b, ", %d cancelled", s.Tasks.Cancelled)
	}
	if s.Tasks.NotCollected > 0 {
		fmt.Fprintf(&b, ", %d not collected (going on on the agents)", s.Tasks.NotCollected)
	}
	fmt.Fprintf(&b, " of %s in %s%s%s%s\n", plural(s.Tasks.Submitted, "task"), formatWall(s.wall), s.memoryNote(), s.skippedNote(), s.notReadNote())
	if s.AbortReason != "" && !s.Interrupted {
		fmt.Fprintf(&b, "safepool: aborted because %s\n", s.AbortReason)
	}
	for i, f := range s.Failed {
		if i == summaryListMax {
			break
		}
		b.WriteString("  ")
		b.WriteString(f.text(s.messages, s.viaShell))
		b.WriteString("\n")
	}
	if more := len(s.Failed) + s.FailedOmitted - summaryListMax; more > 0 {
		fmt.Fprintf(&b, "  and %d more failed tasks (%s)\n", more, cmp.Or(s.listedIn, listedIn("", "")))
	}
	b.WriteString(s.outputLostNote())
	io.WriteString(w, b.String())
	s.writeRecovered(w)
}

// outputLostNote says once why the failed tasks of cause output-lost lost
// their output, when a temporary file in $TMPDIR could not be written:
// "safepool: $TMPDIR (/tmp) was full: 3 tasks lost their output
// (output-lost)\n". Each task's line says only output-lost; the reason is
// in its message (pool's spool), the same for all.
func (s *summary) outputLostNote() string {
	if s.outputLost == 0 {
		return ""
	}
	_, rest, ok := strings.Cut(s.outputLostMessage, " temporary file in ")
	rest, _, _ = strings.Cut(rest, "; the job was stopped")
	i := strings.LastIndex(rest, ": ")
	if !ok || i < 0 {
		return ""
	}
	dir, why := rest[:i], rest[i+2:]
	lost := fmt.Sprintf("%s lost their output (output-lost)", plural(s.outputLost, "task"))
	if s.outputLost == 1 {
		lost = "1 task lost its output (output-lost)"
	}
	if why == syscall.ENOSPC.Error() || why == syscall.EDQUOT.Error() {
		return fmt.Sprintf("safepool: $TMPDIR (%s) was full: %s\n", dir, lost)
	}
	return fmt.Sprintf("safepool: $TMPDIR (%s) could not be written (%s): %s\n", dir, why, lost)
}

// writeRecovered lists the tasks that succeeded only after a retry.
func (s *summary) writeRecovered(w io.Writer) {
	slices.SortFunc(s.Recovered, func(a, b recoveredTask) int { return cmp.Compare(a.ID, b.ID) })
	for i, r := range s.Recovered {
		if i == summaryListMax {
			break
		}
		fmt.Fprintf(w, "  %s\n", r.text())
	}
	if more := len(s.Recovered) + s.RecoveredOmitted - summaryListMax; more > 0 {
		fmt.Fprintf(w, "  and %d more recovered tasks (%s)\n", more, cmp.Or(s.listedIn, listedIn("", "")))
	}
}

// text renders one failed task:
// task 17 (input 'big.wav') oom after 2 attempts, peak 1.9 GiB
func (f *failedTask) text(messages, viaShell bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "task %d (input '%s') ", f.ID, f.short)
	cause := f.Cause
	if cause == "" {
		cause = f.State
	}
	if f.State == string(pool.Poison) {
		fmt.Fprintf(&b, "poison (%s)", cause)
	} else {
		b.WriteString(cause)
	}
	if f.Attempts > 0 {
		fmt.Fprintf(&b, " after %s", plural(f.Attempts, "attempt"))
	}
	if f.Agent != "" {
		fmt.Fprintf(&b, " on %s", f.Agent)
	}
	if viaShell {
		b.WriteString(shellStatusHint(f.Cause))
	}
	if f.PeakRSS > 0 {
		fmt.Fprintf(&b, ", peak %s", bytesize.Format(f.PeakRSS))
	}
	switch {
	case f.Message == "":
	case f.explained:
		fmt.Fprintf(&b, ": %s", messageLine(f.Message, explanationMax))
	case messages:
		fmt.Fprintf(&b, ": %s", messageLine(f.Message, summaryMessageMax))
	}
	return b.String()
}

// shellStatusHint says what a shell's exit status over 128 may mean:
// " (the shell's status; its child may have been killed by SIGKILL)" for
// exit:137. The cause stays exit:137: the shell may have exited so for
// another reason, and safepool never guesses a cause.
func shellStatusHint(cause string) string {
	code, ok := strings.CutPrefix(cause, "exit:")
	if !ok {
		return ""
	}
	n, err := strconv.Atoi(code)
	if err != nil || n <= 128 || n > 128+64 {
		return ""
	}
	return fmt.Sprintf(" (the shell's status; its child may have been killed by %s)", pool.SignalName(syscall.Signal(n-128)))
}

// summaryMessageMax is how many bytes of an attempt's message a summary
// line shows.
const summaryMessageMax = 80

// explanationMax is how many bytes of the pool's own explanation of a
// task's end a summary line shows: enough for the whole of it.
const explanationMax = 400

// messageSep joins the last lines of a worker's stderr in an attempt's
// message (pool.Attempt.Message).
const messageSep = " | "

// messageLine renders msg on one line of at most about max bytes, quoted.
// Of a message on several lines (a framed worker's error, then its
// traceback) it shows the first that carries text. The pool joins the last
// lines of a worker's stderr with messageSep, and the last of those is the
// error, so when msg is too long its older stderr lines are left out first,
// and "…" says so.
func messageLine(msg string, max int) string {
	for _, l := range strings.Split(msg, "\n") {
		if strings.TrimSpace(l) != "" {
			msg = strings.TrimSpace(l)
			break
		}
	}
	cut := false
	for len(msg) > max {
		i := strings.Index(msg, messageSep)
		if i < 0 {
			break
		}
		msg, cut = msg[i+len(messageSep):], true
	}
	q := escapeInput([]byte(msg), max)
	if cut {
		q = "…" + q
	}
	return q
}

// writeJSON writes the summary as one JSON object followed by a newline.
func (s *summary) writeJSON(w io.Writer) error {
	slices.SortFunc(s.Failed, func(a, b failedTask) int { return cmp.Compare(a.ID, b.ID) })
	if s.Failed == nil {
		s.Failed = []failedTask{}
	}
	slices.SortFunc(s.Recovered, func(a, b recoveredTask) int { return cmp.Compare(a.ID, b.ID) })
	if s.Recovered == nil {
		s.Recovered = []recoveredTask{}
	}
	if s.Command == nil {
		s.Command = []string{}
	}
	s.WallSeconds = float64(s.wall.Milliseconds()) / 1000
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(s)
}

func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// formatWall renders a wall time: "0.4s", "12.3s", "4m2s".
func formatWall(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return d.Round(time.Second).String()
}

// quoteMessage renders a message on one line for a terminal: control
// bytes, such as the escape sequences a worker's stderr may hold, and
// invalid UTF-8 are escaped as in inputs.
func quoteMessage(s string) string { return escapeInput([]byte(s), len(s)) }

// listedIn says where a run lists every task, for the summary to send a
// reader to: the job log it writes, or its journal, or else --joblog.
func listedIn(joblog, journal string) string {
	switch {
	case joblog != "":
		return "the job log " + shellQuote(joblog) + " lists every task"
	case journal != "":
		return "the journal " + shellQuote(journal) + " holds every task: safepool report " + shellQuote(journal)
	}
	return "--joblog FILE lists every task"
}
