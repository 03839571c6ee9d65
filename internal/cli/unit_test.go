package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/safepool/safepool/pool"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  bool
	}{
		{"0", 0, false},
		{"4096", 4096, false},
		{"100B", 100, false},
		{"512MiB", 512 << 20, false},
		{"512mib", 512 << 20, false},
		{"512M", 512 << 20, false},
		{"512m", 512 << 20, false},
		{"2G", 2 << 30, false},
		{"2GiB", 2 << 30, false},
		{"1.5GiB", 3 << 29, false},
		{"800K", 800 << 10, false},
		{"800KiB", 800 << 10, false},
		{"1T", 1 << 40, false},
		{"1MB", 1000000, false},
		{"1kB", 1000, false},
		{" 64 MiB ", 64 << 20, false},
		{"", 0, true},
		{"MiB", 0, true},
		{"-1G", 0, true},
		{"12XB", 0, true},
		{"1.2.3M", 0, true},
		{"99999999999T", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseSize(tt.in)
			if (err != nil) != tt.err || got != tt.want {
				t.Errorf("parseSize(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.err)
			}
		})
	}
}

// TestSizeFlagError: a size flag's error says what is wrong, once, without
// the "size ...:" that parseSize's own error starts with (pflag names the
// value and the flag), and parseSize's error carries its parts as fields.
func TestSizeFlagError(t *testing.T) {
	var n int64
	err := newSizeValue(&n).Set("12XB")
	if err == nil || strings.Contains(err.Error(), "size") || !strings.HasPrefix(err.Error(), `unknown unit "XB"`) {
		t.Errorf("Set(%q) = %v, want the unknown unit alone", "12XB", err)
	}
	_, err = parseSize("12XB")
	var se *sizeError
	if !errors.As(err, &se) || se.Input != "12XB" || !strings.HasPrefix(se.Why, "unknown unit") {
		t.Errorf("parseSize(%q) = %v, want a *sizeError for the input with why", "12XB", err)
	}
}

func TestFormatSizeFlag(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{256 << 20, "256MiB"},
		{2 << 30, "2GiB"},
		{1536 << 20, "1536MiB"},
		{3 << 10, "3KiB"},
		{1000, "1000"},
	}
	for _, tt := range tests {
		if got := formatSizeFlag(tt.in); got != tt.want {
			t.Errorf("formatSizeFlag(%d) = %q, want %q", tt.in, got, tt.want)
		}
		if back, err := parseSize(formatSizeFlag(tt.in)); err != nil || back != tt.in {
			t.Errorf("parseSize(formatSizeFlag(%d)) = %d, %v", tt.in, back, err)
		}
	}
}

func TestTemplate(t *testing.T) {
	tests := []struct {
		name  string
		cmd   []string
		input string
		seq   uint64
		want  []string
	}{
		{"input", []string{"gzip", "-9", "{}"}, "a b.txt", 1, []string{"gzip", "-9", "a b.txt"}},
		{"appended", []string{"echo", "x"}, "in", 1, []string{"echo", "x", "in"}},
		{"seq only means no append", []string{"echo", "{#}"}, "in", 7, []string{"echo", "7"}},
		{"noext", []string{"e", "{.}"}, "dir.d/song.tar.gz", 1, []string{"e", "dir.d/song.tar"}},
		{"noext no ext", []string{"e", "{.}"}, "dir.d/song", 1, []string{"e", "dir.d/song"}},
		{"noext dotfile", []string{"e", "{.}"}, "dir/.bashrc", 1, []string{"e", "dir/.bashrc"}},
		{"base", []string{"e", "{/}"}, "/a/b/song.wav", 1, []string{"e", "song.wav"}},
		{"dir", []string{"e", "{//}"}, "/a/b/song.wav", 1, []string{"e", "/a/b"}},
		{"dir none", []string{"e", "{//}"}, "song.wav", 1, []string{"e", "."}},
		{"dir root", []string{"e", "{//}"}, "/song.wav", 1, []string{"e", "/"}},
		{"basenoext", []string{"e", "{/.}"}, "a.b/song.wav", 1, []string{"e", "song"}},
		{"several in one word", []string{"e", "{//}/out/{/.}.mp3"}, "in/x.wav", 3, []string{"e", "in/out/x.mp3"}},
		{"unknown braces stay", []string{"e", "{x}", "${HOME}", "{}"}, "i", 1, []string{"e", "{x}", "${HOME}", "i"}},
		{"shell", []string{"echo {} > {.}.out"}, "it's.txt", 1, []string{"sh", "-c", `echo 'it'\''s.txt' > 'it'\''s'.out`}},
		{"shell appended", []string{"echo a b"}, "x y", 1, []string{"sh", "-c", "echo a b 'x y'"}},
		{"shell plain value", []string{"gzip -c {}"}, "a/b-1.txt", 1, []string{"sh", "-c", "gzip -c a/b-1.txt"}},
		{"empty input", []string{"echo", "[{}]"}, "", 1, []string{"echo", "[]"}},
		{"regular expression counts", []string{"grep", "-E", "^a{2}[0-9]{3}.{4}(ab){1}"}, "x", 1, []string{"grep", "-E", "^a{2}[0-9]{3}.{4}(ab){1}", "x"}},
		{"braces of awk", []string{"awk", "{print $1}"}, "x", 1, []string{"awk", "{print $1}", "x"}},
		{"not a number", []string{"echo", "{a}{0}{1x}"}, "x", 1, []string{"echo", "{a}{0}{1x}", "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := parseTemplate(tt.cmd)
			if err != nil {
				t.Fatalf("parseTemplate(%q) error: %v", tt.cmd, err)
			}
			if got := tmpl.expand([]byte(tt.input), tt.seq, 0); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("expand(%q, %d) = %q, want %q", tt.input, tt.seq, got, tt.want)
			}
		})
	}
}

// TestTemplateSlot: {%} is the slot given to expand, in each form of the
// command, and counts as a replacement string (the input is not added).
func TestTemplateSlot(t *testing.T) {
	tests := []struct {
		name string
		cmd  []string
		slot int
		want []string
	}{
		{"argv", []string{"env", "CUDA_VISIBLE_DEVICES={%}", "train", "{}"}, 2, []string{"env", "CUDA_VISIBLE_DEVICES=2", "train", "in put"}},
		{"alone", []string{"echo", "{%}"}, 3, []string{"echo", "3"}},
		{"shell", []string{"CUDA_VISIBLE_DEVICES={%} train {} > out.{%}"}, 1, []string{"sh", "-c", "CUDA_VISIBLE_DEVICES=1 train 'in put' > out.1"}},
		{"shell quoted", []string{`echo "slot {%}" '{%}'`}, 4, []string{"sh", "-c", `echo "slot 4" '4'`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := parseTemplate(tt.cmd)
			if err != nil {
				t.Fatalf("parseTemplate(%q) error: %v", tt.cmd, err)
			}
			if !tmpl.slotted() {
				t.Errorf("parseTemplate(%q).slotted() = false, want true", tt.cmd)
			}
			if got := tmpl.expand([]byte("in put"), 1, tt.slot); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("expand(%q, 1, %d) = %q, want %q", "in put", tt.slot, got, tt.want)
			}
		})
	}
}

func TestTemplateErrors(t *testing.T) {
	tests := []struct {
		name string
		cmd  []string
		want string
	}{
		{"empty", nil, "missing command"},
		{"command is a replacement", []string{"{}", "x"}, "a shell command line in which each value is quoted: '{} x'"},
		{"command is the input", []string{"{}"}, "sh -c {}"},
		{"positional", []string{"echo", "{1}"}, "{1} of GNU parallel is not supported"},
		{"positional with text", []string{"convert", "{1}", "out/{1}.png"}, "{1} of GNU parallel"},
		{"positional extension", []string{"echo", "x{2.}.txt"}, "{2.} of GNU parallel"},
		{"positional basename", []string{"echo", "{1/}"}, "{1/}"},
		{"positional dirname", []string{"echo", "{1//}"}, "{1//}"},
		{"positional both", []string{"echo", "{1/.}"}, "{1/.}"},
		{"positional in a shell line", []string{"convert {1} {1.}.png"}, "{1} of GNU parallel"},
		{"positional after an equals sign", []string{"tool", "--in={2}"}, "{2}"},
		{"perl expression", []string{"echo", "{= s/a/b/ =}"}, "{= s/a/b/ =}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseTemplate(tt.cmd)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("parseTemplate(%q) error = %v, want one containing %q", tt.cmd, err, tt.want)
			}
		})
	}
}

func TestTemplateCommand(t *testing.T) {
	tmpl, err := parseTemplate([]string{"ffmpeg", "-i", "{}", "{.}.mp3"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tmpl.command(), []string{"ffmpeg", "-i", "{}", "{.}.mp3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("command() = %q, want %q", got, want)
	}
}

func readAll(t *testing.T, s source) []string {
	t.Helper()
	var got []string
	for {
		b, err := s.next()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatalf("next() error: %v", err)
		}
		got = append(got, string(b))
	}
}

func TestSources(t *testing.T) {
	dir := t.TempDir()
	f1 := filepath.Join(dir, "one")
	f2 := filepath.Join(dir, "two")
	os.WriteFile(f1, []byte("a\nb\n"), 0o600)
	os.WriteFile(f2, []byte("c\n\nd"), 0o600)
	tests := []struct {
		name   string
		colons []string
		have   bool
		files  []string
		stdin  string
		sep    byte
		want   []string
		total  int64
	}{
		{"stdin", nil, false, nil, "x\ny\n", '\n', []string{"x", "y"}, -1},
		{"stdin no final newline", nil, false, nil, "x\ny", '\n', []string{"x", "y"}, -1},
		{"stdin empty", nil, false, nil, "", '\n', nil, -1},
		{"stdin empty lines", nil, false, nil, "\n\n", '\n', []string{"", ""}, -1},
		{"stdin binary", nil, false, nil, "\x00\xff\r\t\n", '\n', []string{"\x00\xff\r\t"}, -1},
		{"null separated", nil, false, nil, "a b\x00c\nd\x00", 0, []string{"a b", "c\nd"}, -1},
		{"colons", []string{"p", "q"}, true, nil, "ignored\n", '\n', []string{"p", "q"}, 2},
		{"colons empty", nil, true, nil, "ignored\n", '\n', nil, 0},
		{"files in order", nil, false, []string{f1, f2}, "", '\n', []string{"a", "b", "c", "", "d"}, -1},
		{"file and stdin", nil, false, []string{f1, "-"}, "s\n", '\n', []string{"a", "b", "s"}, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := newSource(tt.colons, tt.have, tt.files, strings.NewReader(tt.stdin), tt.sep, 0, "")
			if err != nil {
				t.Fatal(err)
			}
			defer src.close()
			if got := src.total(); got != tt.total {
				t.Errorf("total() = %d, want %d", got, tt.total)
			}
			if got := readAll(t, src); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("inputs = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSourceMissingFile(t *testing.T) {
	_, err := newSource(nil, false, []string{"/nonexistent/in.txt"}, nil, '\n', 0, "")
	if err == nil || !strings.Contains(err.Error(), "cannot open input file /nonexistent/in.txt") {
		t.Errorf("newSource(missing file) error = %v", err)
	}
}

func TestLongLine(t *testing.T) {
	line := bytes.Repeat([]byte("0123456789"), 1<<20) // 10 MiB
	src := newLineReader(bytes.NewReader(append(line, '\n')), '\n', len(line))
	got, err := src.next()
	if err != nil || !bytes.Equal(got, line) {
		t.Fatalf("next() = %d bytes, %v; want %d bytes", len(got), err, len(line))
	}
	if _, err := src.next(); err != io.EOF {
		t.Errorf("second next() error = %v, want EOF", err)
	}
}

// endless is an input with no separator in it, as a file without newlines
// (or find -print0 read without -0) is: NUL bytes without end. It fails
// the test once more than limit bytes are read from it.
type endless struct {
	t     *testing.T
	read  int
	limit int
}

func (e *endless) Read(p []byte) (int, error) {
	if e.read > e.limit {
		e.t.Errorf("read %d bytes of an endless input, want at most %d", e.read, e.limit)
		return 0, errors.New("read too far")
	}
	clear(p)
	e.read += len(p)
	return len(p), nil
}

// TestLongInputStops: an input longer than the bound is not read whole
// into memory (it used to be, however long): reading stops past the bound
// with a *longInputError that numbers the input and says why, for the
// inputs of run and map (a task per line) and for map's lines in blocks.
func TestLongInputStops(t *testing.T) {
	const max = 1 << 20
	check := func(t *testing.T, err error, wantInput int64) {
		t.Helper()
		var le *longInputError
		if !errors.As(err, &le) {
			t.Fatalf("error = %v, want a *longInputError", err)
		}
		if le.Input != wantInput || le.Limit != max || le.Why != "why" {
			t.Errorf("error = %+v, want input %d, limit %d and its reason", le, wantInput, max)
		}
		if msg := err.Error(); !strings.Contains(msg, "is longer than 1MiB") || !strings.Contains(msg, "use -0") {
			t.Errorf("error = %q, want the bound and the hint about -0", msg)
		}
	}
	t.Run("source", func(t *testing.T) {
		in := &endless{t: t, limit: 2 * max}
		src, err := newSource(nil, false, nil, io.MultiReader(strings.NewReader("a\nb\n"), in), '\n', max, "why")
		if err != nil {
			t.Fatal(err)
		}
		defer src.close()
		for _, want := range []string{"a", "b"} {
			if got, err := src.next(); err != nil || string(got) != want {
				t.Fatalf("next() = %q, %v; want %q", got, err, want)
			}
		}
		_, err = src.next()
		check(t, err, 3)
	})
	t.Run("blocks", func(t *testing.T) {
		in := &endless{t: t, limit: 2 * max}
		fs, err := openFiles([]string{"-"}, io.MultiReader(strings.NewReader("a\nb\n"), in), '\n', max, "why")
		if err != nil {
			t.Fatal(err)
		}
		defer fs.close()
		lb := newLineBlocks(fs)
		if block, n, err := lb.next(10); err != nil || string(block) != "a\nb\n" || n != 2 {
			t.Fatalf("next() = %q, %d, %v; want the two short lines", block, n, err)
		}
		_, _, err = lb.next(10)
		var le *longInputError
		if errors.As(err, &le) {
			le.Input = 3 // feedBlocks numbers it
		}
		check(t, err, 3)
	})
}

func TestEscapeInput(t *testing.T) {
	tests := []struct {
		in   string
		max  int
		want string
	}{
		{"plain.wav", 40, "plain.wav"},
		{"a\tb\nc\\d\re", 40, `a\tb\nc\\d\re`},
		{"\x00\xff\x7f", 40, `\x00\xff\x7f`},
		{"héllo", 40, "héllo"},
		{"abcdefgh", 4, "abcd…"},
		{"ééé", 3, "é…"}, // does not split a UTF-8 sequence
	}
	for _, tt := range tests {
		if got := escapeInput([]byte(tt.in), tt.max); got != tt.want {
			t.Errorf("escapeInput(%q, %d) = %q, want %q", tt.in, tt.max, got, tt.want)
		}
	}
}

// testResult is a failed task with two attempts: an OOM kill, then a
// SIGKILL.
func testResult() *pool.Result {
	start := time.UnixMilli(1718000000123)
	return &pool.Result{
		ID:    17,
		Input: []byte("big\tfile.wav"),
		State: pool.Failed,
		Attempts: []pool.Attempt{
			{Number: 1, WorkerPID: 4242, Start: start, End: start.Add(1500 * time.Millisecond),
				Cause: pool.CauseOOM, ExitCode: -1, Signal: "SIGKILL", PeakRSS: 1 << 30},
			{Number: 2, WorkerPID: 4243, Start: start.Add(2 * time.Second), End: start.Add(4 * time.Second),
				Cause: pool.CauseOOM, ExitCode: -1, Signal: "SIGKILL", PeakRSS: 2040109465},
		},
	}
}

// joblogRows renders the rows of every attempt of r.
func joblogRows(r *pool.Result) string {
	var b strings.Builder
	for i := range r.Attempts {
		b.WriteString(joblogRow(r.ID, escapeInput(r.Input, joblogInputMax), &r.Attempts[i]))
	}
	return b.String()
}

func TestJoblogRows(t *testing.T) {
	ok := &pool.Result{ID: 3, Input: []byte("x"), State: pool.Done, Attempts: []pool.Attempt{
		{Number: 1, WorkerPID: 99, Start: time.UnixMilli(1718000000005), End: time.UnixMilli(1718000000255), ExitCode: 0},
	}}
	got := joblogRows(testResult()) + joblogRows(ok)
	want := "17\tbig\\tfile.wav\t1\t4242\t1718000000.123\t1.500\t-\tSIGKILL\toom\t1073741824\n" +
		"17\tbig\\tfile.wav\t2\t4243\t1718000002.123\t2.000\t-\tSIGKILL\toom\t2040109465\n" +
		"3\tx\t1\t99\t1718000000.005\t0.250\t0\t-\t-\t-\n"
	if got != want {
		t.Errorf("joblog rows =\n%s\nwant\n%s", got, want)
	}
	for _, line := range strings.Split(strings.TrimSpace(want), "\n") {
		if n := len(strings.Split(line, "\t")); n != len(joblogColumns) {
			t.Errorf("row %q has %d columns, want %d", line, n, len(joblogColumns))
		}
	}
}

// TestJoblogFile checks that each row is in the file as soon as its attempt
// has ended, before the job log is closed.
func TestJoblogFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jobs.tsv")
	jl, err := openJoblog(path, false)
	if err != nil {
		t.Fatal(err)
	}
	r := testResult()
	jl.submit(r.ID, r.ID, r.Input)
	jl.submit(9, 9, []byte("never ran"))
	lines := func() []string {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	}
	for i := range r.Attempts {
		jl.observe(pool.Event{Kind: pool.EventAttemptEnded, TaskID: r.ID, Attempt: &r.Attempts[i]})
		if got := lines(); len(got) != i+2 {
			t.Errorf("after attempt %d ended, the job log has %d lines, want %d:\n%s", i+1, len(got), i+2, strings.Join(got, "\n"))
		}
	}
	jl.observe(pool.Event{Kind: pool.EventTaskEnded, TaskID: r.ID, Result: r})
	jl.observe(pool.Event{Kind: pool.EventTaskEnded, TaskID: 9, Result: &pool.Result{ID: 9, State: pool.Cancelled}}) // never ran: no row
	if n := len(jl.inputs); n != 0 {
		t.Errorf("the job log still holds %d inputs of ended tasks", n)
	}
	if err := jl.close(); err != nil {
		t.Fatal(err)
	}
	got := lines()
	want := []string{strings.Join(joblogColumns, "\t")}
	want = append(want, strings.Split(strings.TrimSuffix(joblogRows(r), "\n"), "\n")...)
	if !slices.Equal(got, want) {
		t.Errorf("joblog file =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := openJoblog(filepath.Join(t.TempDir(), "no", "such", "dir"), false); err == nil {
		t.Errorf("openJoblog(missing dir) succeeded")
	}
}

func TestSummaryText(t *testing.T) {
	tests := []struct {
		name    string
		results []*pool.Result
		mod     func(s *summary)
		quiet   bool
		want    string
	}{
		{name: "no tasks", want: ""},
		{
			name:    "all done",
			results: []*pool.Result{{ID: 1, State: pool.Done}, {ID: 2, State: pool.Done}},
			want:    "safepool: 2 tasks done in 1.2s\n",
		},
		{
			name: "done after a retry",
			results: []*pool.Result{
				{ID: 1, State: pool.Done, Attempts: []pool.Attempt{{Number: 1}}},
				{ID: 7, State: pool.Done, Input: []byte("7"), Attempts: []pool.Attempt{
					{Number: 1, Cause: pool.CauseOOM, PeakRSS: 256 << 20},
					{Number: 2, Cause: pool.CausePreempted},
					{Number: 2, PeakRSS: 10 << 20},
				}},
			},
			want: "safepool: 2 tasks done in 1.2s\n" +
				"  task 7 (input '7') done on attempt 2, after oom (peak 256 MiB)\n",
		},
		{
			name:    "all done quiet",
			results: []*pool.Result{{ID: 1, State: pool.Done}},
			quiet:   true,
			want:    "",
		},
		{
			name:    "one failed",
			results: []*pool.Result{{ID: 1, State: pool.Done}, testResult()},
			quiet:   true,
			want: "safepool: 1 done, 1 failed of 2 tasks in 1.2s\n" +
				"  task 17 (input 'big\\tfile.wav') oom after 2 attempts, peak 1.9 GiB\n",
		},
		{
			name: "interrupted",
			results: []*pool.Result{{ID: 1, State: pool.Done}, {ID: 2, State: pool.Cancelled},
				{ID: 3, State: pool.Failed, Input: []byte("x"), Attempts: []pool.Attempt{{Number: 1, Cause: pool.CauseCancelled, ExitCode: -1}}}},
			mod: func(s *summary) { s.Aborted, s.Interrupted = true, true },
			want: "safepool: interrupted: 1 done, 1 failed, 1 cancelled of 3 tasks in 1.2s\n" +
				"  task 3 (input 'x') cancelled after 1 attempt\n",
		},
		{
			name: "aborted by policy with message",
			results: []*pool.Result{{ID: 4, State: pool.Poison, Input: []byte("y"),
				Attempts: []pool.Attempt{{Number: 3, Cause: pool.CauseTaskError, ExitCode: -1, Message: "ValueError: bad\ntraceback"}}}},
			mod: func(s *summary) {
				s.Aborted, s.AbortReason, s.messages = true, "task 4 poison: oom after 3 attempts (--on-worker-death abort)", true
			},
			want: "safepool: aborted: 0 done, 0 failed, 1 poison of 1 task in 1.2s\n" +
				"safepool: aborted because task 4 poison: oom after 3 attempts (--on-worker-death abort)\n" +
				"  task 4 (input 'y') poison (task-error) after 3 attempts: ValueError: bad\n",
		},
		{
			// run's summary shows no worker's stderr (the jobs printed
			// it), but the pool's own explanation of a poison or crowded
			// task, whole.
			name: "explanations without messages",
			results: []*pool.Result{
				{ID: 2, State: pool.Poison, Input: []byte("1500"), Attempts: []pool.Attempt{
					{Number: 2, Cause: pool.CauseOOM, ExitCode: -1, PeakRSS: 1013 << 20, Message: "killed by the OOM killer while running alone with the whole memory budget of 922 MiB (peak 1013 MiB): it needs more memory than the pool may use"}}},
				{ID: 3, State: pool.Failed, Input: []byte("700"), Attempts: []pool.Attempt{
					{Number: 2, Cause: pool.CauseOOM, ExitCode: -1, PeakRSS: 500 << 20, Crowded: true, Message: "killed by the OOM killer while running alone (peak 500 MiB): processes other than the pool's workers held 521 MiB"}}},
				{ID: 4, State: pool.Failed, Input: []byte("x"), Attempts: []pool.Attempt{
					{Number: 1, Cause: "exit:3", ExitCode: 3, Message: "stderr of the job"}}},
			},
			want: "safepool: 0 done, 2 failed, 1 poison of 3 tasks in 1.2s\n" +
				"  task 2 (input '1500') poison (oom) after 2 attempts, peak 1013 MiB: killed by the OOM killer while running alone with the whole memory budget of 922 MiB (peak 1013 MiB): it needs more memory than the pool may use\n" +
				"  task 3 (input '700') oom after 2 attempts, peak 500 MiB: killed by the OOM killer while running alone (peak 500 MiB): processes other than the pool's workers held 521 MiB\n" +
				"  task 4 (input 'x') exit:3 after 1 attempt\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &summary{wall: 1234 * time.Millisecond}
			addResults(s, tt.results...)
			if tt.mod != nil {
				tt.mod(s)
			}
			var b strings.Builder
			s.writeText(&b, tt.quiet)
			if got := b.String(); got != tt.want {
				t.Errorf("writeText() =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestSummaryListIsBounded(t *testing.T) {
	s := &summary{wall: time.Second}
	for i := 1; i <= 30; i++ {
		addResults(s, &pool.Result{ID: uint64(i), State: pool.Failed, Input: []byte("i"), Attempts: []pool.Attempt{{Number: 1, Cause: "exit:1", ExitCode: 1}}})
	}
	var b strings.Builder
	s.writeText(&b, false)
	if got := strings.Count(b.String(), "\n"); got != 1+summaryListMax+1 {
		t.Errorf("summary of 30 failures has %d lines, want %d:\n%s", got, 1+summaryListMax+1, b.String())
	}
	if !strings.Contains(b.String(), "and 10 more failed tasks") {
		t.Errorf("summary does not count the rest:\n%s", b.String())
	}
}

func TestSummaryJSON(t *testing.T) {
	s := &summary{Mode: "run", Command: []string{"echo", "{}"}, StartTime: time.Unix(1718000000, 0).UTC(), wall: 1500 * time.Millisecond}
	addResults(s, &pool.Result{ID: 1, State: pool.Done}, testResult())
	s.ExitStatus = 1
	var b bytes.Buffer
	if err := s.writeJSON(&b); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("JSON %s: %v", b.String(), err)
	}
	for _, key := range []string{"mode", "command", "exit_status", "aborted", "interrupted", "start_time",
		"wall_seconds", "memory_mode", "tasks", "attempts", "workers_started", "worker_deaths", "failed", "failed_omitted"} {
		if _, ok := got[key]; !ok {
			t.Errorf("JSON summary has no %q: %s", key, b.String())
		}
	}
	if got["wall_seconds"] != 1.5 || got["exit_status"] != 1.0 {
		t.Errorf("JSON summary = %s", b.String())
	}
	failed := got["failed"].([]any)[0].(map[string]any)
	want := map[string]any{"id": 17.0, "input": "big\tfile.wav", "state": "failed", "cause": "oom",
		"attempts": 2.0, "peak_rss_bytes": 2040109465.0, "exit_code": -1.0, "signal": "SIGKILL", "message": ""}
	if !reflect.DeepEqual(failed, want) {
		t.Errorf("failed[0] = %v, want %v", failed, want)
	}
}

// TestUsageErrors runs the command line in process: each mistake gives one
// error line, the usage, and exit status 2, without starting anything.
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // the first line of stderr
	}{
		{"no command", nil, "safepool runs commands"},
		{"unknown command", []string{"frobnicate"}, `safepool: unknown command "frobnicate"`},
		{"flag before the command", []string{"-j", "4", "run", "echo"}, `safepool: unknown command "-j" (flags come after the command: safepool run -j ...)`},
		{"command typo", []string{"rnu", "echo"}, `safepool: unknown command "rnu" (did you mean safepool run?)`},
		{"parallel itself", []string{"parallel", "echo", ":::", "a"}, `safepool: unknown command "parallel" (safepool run takes the place of parallel: safepool run CMD ...)`},
		{"program as in GNU parallel", []string{"echo", "{}", ":::", "a"}, `safepool: unknown command "echo" (to run it for each input, as GNU parallel does: safepool run echo ...)`},
		{"unknown flag", []string{"run", "--bogus", "echo"}, "safepool run: unknown flag: --bogus"},
		{"typo", []string{"run", "--keep-ordr", "echo"}, "safepool run: unknown flag: --keep-ordr (did you mean --keep-order?)"},
		{"swapped letters", []string{"run", "--jbos", "2", "echo"}, "safepool run: unknown flag: --jbos (did you mean --jobs?)"},
		{"beginning of a flag", []string{"run", "--dry", "echo"}, "safepool run: unknown flag: --dry (did you mean --dry-run?)"},
		{"beginning of a flag with a value", []string{"run", "--ret=2", "echo"}, "safepool run: unknown flag: --ret (did you mean --retries?)"},
		{"typo with a value", []string{"map", "--blocks=10M", "--pipe", "cat"}, "safepool map: unknown flag: --blocks (did you mean --block?)"},
		{"parallel's halt", []string{"run", "--halt", "now,fail=1", "echo"}, "safepool run: unknown flag: --halt (--on-worker-death abort stops at the first failure"},
		{"parallel's pipe on run", []string{"run", "--pipe", "wc"}, "safepool run: unknown flag: --pipe (--pipe is safepool map's: safepool map --pipe CMD)"},
		{"xargs -I", []string{"run", "-I", "{}", "echo", "{}"}, "safepool run: unknown shorthand flag: 'I' in -I ({} always stands for the input: leave -I {} out)"},
		{"xargs -n", []string{"run", "-n", "1", "echo"}, "safepool run: unknown shorthand flag: 'n' in -n (each job takes one input: leave -n 1 out)"},
		{"xargs --replace", []string{"run", "--replace", "echo"}, "safepool run: unknown flag: --replace ({} always stands for the input: leave --replace out)"},
		{"xargs --no-run-if-empty", []string{"run", "--no-run-if-empty", "echo"}, "safepool run: unknown flag: --no-run-if-empty (with no input, nothing runs: leave --no-run-if-empty out)"},
		{"parallel -X", []string{"run", "-X", "echo"}, "safepool run: unknown shorthand flag: 'X' in -X (each job takes one input)"},
		{"parallel -u", []string{"run", "-u", "echo"}, "safepool run: unknown shorthand flag: 'u' in -u (a job's output is written whole when it ends)"},
		{"parallel --memfree", []string{"map", "--memfree", "1G", "cat"}, "safepool map: unknown flag: --memfree (the memory governor starts a job only when its memory fits: see --mem-budget and --mem-reserve)"},
		{"parallel --colsep", []string{"run", "--colsep", ",", "echo"}, "safepool run: unknown flag: --colsep (not supported: each input is one value, {}; split it in a shell command line)"},
		{"both resumes", []string{"run", "--journal", "/nonexistent/j.db", "--resume-failed", "--resume", "echo"}, "safepool run: give --resume (skip the failed inputs) or --resume-failed (run them again), not both"},
		{"map -0", []string{"map", "-0", "cat"}, "safepool map: unknown shorthand flag: '0' in -0 (-0 is safepool run's; map reads lines, and map --pipe cuts records at --recend '\\0')"},
		{"map --pipe --null", []string{"map", "--pipe", "--null", "cat"}, "safepool map: unknown flag: --null (-0 is safepool run's; map reads lines, and map --pipe cuts records at --recend '\\0')"},
		{"bad jobs", []string{"run", "-j", "x", "echo"}, `safepool run: invalid argument "x" for "-j, --jobs" flag`},
		{"negative jobs", []string{"run", "-j", "-1", "echo"}, "safepool run: -j must be at least 0, not -1 (GNU parallel's -j -N, the CPUs less N, is not supported)"},
		{"parallel's jobs plus", []string{"run", "-j", "+2", "echo"}, `safepool run: invalid argument "+2" for "-j, --jobs" flag: GNU parallel's +N (the CPUs plus N) is not supported: give a number of jobs`},
		{"parallel's jobs percent", []string{"map", "--jobs=50%", "cat"}, `safepool map: invalid argument "50%" for "-j, --jobs" flag: GNU parallel's N% (a share of the CPUs) is not supported`},
		{"xargs -P plus", []string{"run", "-P", "+2", "echo"}, `safepool run: invalid argument "+2" for "-P, --max-procs" flag: GNU parallel's +N`},
		{"bad size", []string{"run", "--mem-limit", "12XB", "echo"}, `safepool run: invalid argument "12XB" for "--mem-limit" flag: unknown unit "XB" (want B, K, M, G, T, KiB, MiB, GiB, TiB, kB, MB, GB or TB)`},
		{"bad duration", []string{"run", "--timeout", "5", "echo"}, `safepool run: invalid argument "5" for "--timeout" flag`},
		{"negative timeout grace", []string{"run", "--timeout-grace", "-1s", "echo"}, "safepool run: --timeout-grace must not be negative"},
		{"empty nats", []string{"run", "--nats", "", "echo"}, "safepool run: --nats needs the URL of a NATS server, not an empty one"},
		{"empty nats with run id", []string{"map", "--nats=", "--run-id", "a", "cat"}, "safepool map: --nats needs the URL of a NATS server, not an empty one"},
		{"grace with nats", []string{"run", "--nats", "nats://127.0.0.1:1", "--grace", "1s", "echo"}, "safepool run: --grace is a flag of each machine's safepool agent, not of the run, with --nats"},
		{"negative timeout grace with nats", []string{"map", "--nats", "nats://127.0.0.1:1", "--timeout-grace", "-1s", "cat"}, "safepool map: --timeout-grace must not be negative"},
		{"parallel's termseq", []string{"run", "--termseq", "TERM,200,KILL,25", "echo"}, "safepool run: unknown flag: --termseq (--timeout sends SIGTERM, then SIGKILL after --timeout-grace (0: SIGKILL at once))"},
		{"bad action", []string{"run", "--on-worker-death", "panic", "echo"}, `safepool run: --on-worker-death must be retry, skip or abort, not "panic"`},
		{"retries with skip", []string{"map", "--on-worker-death=skip", "--retries=1", "cat"}, "safepool map: --retries 1 and --on-worker-death skip: skip fails a task at its first failure, and no task would be retried"},
		{"missing command", []string{"run", "-j", "2"}, "safepool run: missing command"},
		{"missing command before colons", []string{"run", ":::", "a"}, "safepool run: missing command"},
		{"two colon lists", []string{"run", "echo", ":::", "a", ":::", "b"}, "safepool run: only one ::: list is supported"},
		{"input file list", []string{"run", "echo", "::::", "f"}, "safepool run: :::: (GNU parallel's input file) is not supported: use -a FILE"},
		{"linked list", []string{"run", "echo", ":::+", "a"}, "safepool run: :::+ (GNU parallel's linked input list) is not supported"},
		{"positional", []string{"run", "echo", "{1}", ":::", "a"}, "safepool run: the replacement string {1} of GNU parallel is not supported"},
		{"input as the command", []string{"run", "{}", ":::", "ls"}, `safepool run: the command name "{}" cannot contain a replacement string; to run each input as a command line, write: sh -c {}`},
		{"input in the command's path", []string{"run", "./bin/{}", ":::", "a"}, `safepool run: the command name "./bin/{}" cannot contain a replacement string; write one argument with a space, a shell command line in which each value is quoted: 'exec ./bin/{}'`},
		{"input as the command, with arguments", []string{"run", "{}", "-l", "/tmp", ":::", "ls"}, `safepool run: the command name "{}" cannot contain a replacement string; write one argument with a space, a shell command line in which each value is quoted: '{} -l /tmp'`},
		{"colons and -a", []string{"run", "-a", "f", "echo", ":::", "a"}, "safepool run: give inputs with -a or with :::, not both"},
		{"slot with nats", []string{"run", "--nats", "nats://127.0.0.1:1", "echo", "{%}", ":::", "a"}, "safepool run: {%} (the job slot) is not supported with --nats: each job has its slot on its agent"},
		{"slot in map", []string{"map", "-j", "2", "worker.py", "{%}"}, "safepool map: {%} is not replaced by map: a worker serves many inputs and finds its slot, 1 to -j, in $SAFEPOOL_SLOT"},
		{"joblog takes a flag", []string{"run", "--joblog", "-k", "echo", ":::", "a"}, "safepool run: --joblog FILE: -k is a flag, where FILE should be (write ./-k for a file named so)"},
		{"joblog to stdout", []string{"run", "--joblog", "-", "echo", ":::", "a"}, "safepool run: --joblog FILE: - is not stdin or stdout here"},
		{"journal takes a flag", []string{"run", "--journal", "--resume", "echo", ":::", "a"}, "safepool run: --journal FILE: --resume is a flag"},
		{"arg-file takes a flag", []string{"run", "-a", "-k", "echo"}, "safepool run: --arg-file FILE: -k is a flag"},
		{"action takes a flag", []string{"run", "--on-worker-death", "-q", "echo"}, "safepool run: --on-worker-death ACTION: -q is a flag, where ACTION should be"},
		{"map joblog takes the worker flag", []string{"map", "--joblog", "--worker", "cat"}, "safepool map: --joblog FILE: --worker is a flag"},
		{"map no worker", []string{"map", "-j", "2"}, "safepool map: missing worker command (--worker 'CMD')"},
		{"map both workers", []string{"map", "--worker", "cat", "cat"}, "safepool map: give the worker with --worker or after the flags, not both"},
		{"map colons", []string{"map", "cat", ":::", "a"}, "safepool map: ::: (an input list of GNU parallel) is not map's: map reads its input from stdin or -a FILE"},
		{"map --pipe input file list", []string{"map", "--pipe", "wc", "::::", "f"}, "safepool map: :::: (an input list of GNU parallel) is not map's"},
		{"map --worker and colons", []string{"map", "--worker", "tr a-z A-Z", ":::", "a", "b"}, "safepool map: ::: (an input list of GNU parallel) is not map's: map reads its input from stdin or -a FILE"},
		{"map --worker and input file list", []string{"map", "--pipe", "--worker", "wc -l", "::::", "f"}, "safepool map: :::: (an input list of GNU parallel) is not map's"},
		{"map replacement string", []string{"map", "echo", "{}"}, "safepool map: {} is not replaced by map: a worker reads its inputs on stdin, one line each"},
		{"map --worker replacement string", []string{"map", "--worker", "cat {}"}, "safepool map: {} is not replaced by map: a worker reads its inputs on stdin, one line each"},
		{"map --worker slot", []string{"map", "--worker", "worker.py  {%}"}, "safepool map: {%} is not replaced by map: a worker serves many inputs"},
		{"map --pipe replacement string", []string{"map", "--pipe", "--block", "1M", "wc", "-l", "{/}"}, "safepool map: {/} is not replaced by map: each block reaches the worker on its stdin (GNU parallel's --cat and --fifo are not supported)"},
		{"map line number", []string{"map", "echo", "{#}"}, "safepool map: {#} is not replaced by map"},
		{"map json stdout", []string{"map", "--json", "-", "--worker", "cat"}, "safepool map: --json needs a FILE: stdout carries the data"},
		{"map bad max-rss", []string{"map", "--max-rss", "lots", "--worker", "cat"}, `safepool map: invalid argument "lots" for "--max-rss" flag: want a number with an optional unit, such as 512MiB`},
		{"demo extra", []string{"demo", "now"}, `safepool demo: unexpected argument "now"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Run(context.Background(), tt.args, strings.NewReader(""), &stdout, &stderr)
			if code != exitUsage {
				t.Errorf("Run(%q) = %d, want %d; stderr:\n%s", tt.args, code, exitUsage, stderr.String())
			}
			first, rest, _ := strings.Cut(stderr.String(), "\n")
			if !strings.HasPrefix(first, tt.want) {
				t.Errorf("Run(%q) stderr first line = %q, want %q", tt.args, first, tt.want)
			}
			if len(tt.args) > 0 && !strings.Contains(rest, "Usage:") {
				t.Errorf("Run(%q) stderr has no usage:\n%s", tt.args, stderr.String())
			}
			if stdout.Len() != 0 {
				t.Errorf("Run(%q) stdout = %q, want nothing", tt.args, stdout.String())
			}
		})
	}
}

func TestMissingInputFile(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := Run(context.Background(), []string{"run", "-a", "/nonexistent/list", "echo"}, strings.NewReader(""), &stdout, &stderr)
	if code != exitUsage || stderr.String() != "safepool: cannot open input file /nonexistent/list: no such file or directory\n" {
		t.Errorf("Run(-a missing) = %d, stderr %q", code, stderr.String())
	}
}

// TestStdinDirectory: a directory on stdin (< DIR) is refused at once,
// as -a DIR is (exit 2); it was read once the run had started, and the
// run stopped with exit 3 ('read /dev/stdin: is a directory').
func TestStdinDirectory(t *testing.T) {
	for _, args := range [][]string{
		{"run", "echo"},
		{"run", "-a", "-", "echo"},
		{"map", "cat"},
		{"map", "--pipe", "cat"},
	} {
		dir, err := os.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		code := Run(context.Background(), args, dir, &stdout, &stderr)
		dir.Close()
		if code != exitUsage || stderr.String() != "safepool: cannot read inputs from stdin: it is a directory\n" {
			t.Errorf("Run(%q) < DIR = %d, stderr %q", args, code, stderr.String())
		}
	}
}

func TestHelpListsEveryFlag(t *testing.T) {
	for _, name := range []string{"run", "map", "report", "demo"} {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := Run(context.Background(), []string{name, "--help"}, nil, &stdout, &stderr); code != 0 {
				t.Fatalf("%s --help = %d, stderr %s", name, code, stderr.String())
			}
			help := stdout.String()
			for _, flag := range flagNames(name) {
				if !strings.Contains(help, "--"+flag) {
					t.Errorf("%s --help does not mention --%s", name, flag)
				}
			}
			for _, line := range strings.Split(help, "\n") {
				if len([]rune(line)) > helpWidth {
					t.Errorf("%s --help line is wider than %d: %q", name, helpWidth, line)
				}
			}
		})
	}
}

// flagNames lists the visible flags of a subcommand.
func flagNames(cmd string) []string {
	var fs *pflag.FlagSet
	switch cmd {
	case "run":
		fs = (&runArgs{}).flagSet()
	case "map":
		fs = (&mapArgs{}).flagSet()
	case "report":
		fs = (&reportArgs{}).flagSet()
	default:
		fs = (&demoArgs{}).flagSet()
	}
	var names []string
	fs.VisitAll(func(f *pflag.Flag) {
		if !f.Hidden {
			names = append(names, f.Name)
		}
	})
	return names
}

// TestRunInProcess runs a real pool in process, so that the race detector
// and the leak check at the end of TestMain see the session's goroutines.
func TestRunInProcess(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := Run(context.Background(), []string{"run", "-k", "--progress", "echo", "{#}:{}", ":::", "a", "b", "c"}, strings.NewReader(""), &stdout, &stderr)
	if code != exitOK || stdout.String() != "1:a\n2:b\n3:c\n" {
		t.Errorf("run echo = %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stderr.String(), "safepool: 3 tasks done in ") {
		t.Errorf("run echo stderr = %q, want the summary", stderr.String())
	}
}

// TestInterruptInProcess cancels the context as Ctrl-C does: the pool
// stops, the summary says so, and the exit status is 3.
func TestInterruptInProcess(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	stdin := strings.NewReader("10\n10\n10\n")
	var stdout, stderr bytes.Buffer
	done := make(chan int)
	go func() { done <- Run(ctx, []string{"run", "-j", "2", "sleep"}, stdin, &stdout, &stderr) }()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	cancel()
	select {
	case code := <-done:
		if code != exitAborted {
			t.Errorf("interrupted run = %d, want %d; stderr:\n%s", code, exitAborted, stderr.String())
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("interrupted run took %v to stop", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("interrupted run did not stop")
	}
	if !strings.Contains(stderr.String(), "safepool: interrupted: 0 done") {
		t.Errorf("stderr = %q, want the interrupted summary", stderr.String())
	}
}

func TestShellWords(t *testing.T) {
	tests := []struct {
		line  string
		kind  shellKind
		words []string
	}{
		{"cat", shellNone, []string{"cat"}},
		{"python3 -u model.py", shellNone, []string{"python3", "-u", "model.py"}},
		{"  spaced \t out  ", shellNone, []string{"spaced", "out"}},
		{`grep 'a b' "c d" e\ f`, shellNone, []string{"grep", "a b", "c d", "e f"}},
		{`echo "a\"b" 'it'\''s' "\$HOME" "a\z"`, shellNone, []string{"echo", `a"b`, "it's", "$HOME", `a\z`}},
		{"awk '{ print toupper($0); fflush() }'", shellNone, []string{"awk", "{ print toupper($0); fflush() }"}},
		{"gzip -c {} --name={.}", shellNone, []string{"gzip", "-c", "{}", "--name={.}"}},
		{"a=b", shellKeep, nil},                          // an assignment alone
		{"cmd a=b", shellNone, []string{"cmd", "a=b"}},   // an argument
		{`"A"=b cmd`, shellNone, []string{"A=b", "cmd"}}, // quoted: a command name, not an assignment
		{"python3 x.py 2>/dev/null", shellExec, nil},
		{"python3 $HOME/x.py", shellExec, nil},
		{`python3 "$HOME/x.py"`, shellExec, nil},
		{"ls *.txt", shellExec, nil},
		{"cat ~/x", shellExec, nil},
		{"cmd # a comment", shellExec, nil},
		{"gzip -c {} > {}.gz", shellExec, nil},
		{"FOO=1 python3 x.py", shellKeep, nil},
		{"a | b", shellKeep, nil},
		{"a; b", shellKeep, nil},
		{"a && b", shellKeep, nil},
		{"a &", shellKeep, nil},
		{"a\nb", shellKeep, nil},
		{"(a)", shellKeep, nil},
		{"echo $(date)", shellKeep, nil},
		{`echo "$(date)"`, shellKeep, nil},
		{"echo `date`", shellKeep, nil},
		{"while read l; do echo $l; done", shellKeep, nil},
		{"if true", shellKeep, nil},
		{"{ cat", shellKeep, nil},
		{"! cat", shellKeep, nil},
		{"cd /tmp", shellKeep, nil},
		{"read x", shellKeep, nil},
		{"exec python3 x.py", shellKeep, nil},
		{"echo 'unterminated", shellKeep, nil},
		{`echo "unterminated`, shellKeep, nil},
		{`echo trailing\`, shellKeep, nil},
		{"", shellKeep, nil},
		{"   ", shellKeep, nil},
	}
	for _, tt := range tests {
		got := shellWords(tt.line)
		if got.kind != tt.kind || !slices.Equal(got.words, tt.words) {
			t.Errorf("shellWords(%q) = %v %q, want %v %q", tt.line, got.kind, got.words, tt.kind, tt.words)
		}
	}
}

func TestWorkerCommand(t *testing.T) {
	tests := []struct {
		line     string
		argv     []string
		viaShell bool
	}{
		{"python3 -u model.py", []string{"python3", "-u", "model.py"}, false},
		{"python3 model.py 2>>log", []string{"sh", "-c", "exec python3 model.py 2>>log"}, false},
		{"zcat x.gz | python3 model.py", []string{"sh", "-c", "zcat x.gz | python3 model.py"}, true},
		{"exec python3 model.py | cat", []string{"sh", "-c", "exec python3 model.py | cat"}, false},
	}
	for _, tt := range tests {
		argv, viaShell := workerCommand(tt.line)
		if !slices.Equal(argv, tt.argv) || viaShell != tt.viaShell {
			t.Errorf("workerCommand(%q) = %q, %v; want %q, %v", tt.line, argv, viaShell, tt.argv, tt.viaShell)
		}
	}
}

func TestShellTemplate(t *testing.T) {
	tests := []struct {
		cmd      string
		argv     []string // of input "a b"
		dry      string   // what --dry-run shows
		viaShell bool
	}{
		{"gzip -c {} > {}.gz", []string{"sh", "-c", "exec gzip -c 'a b' > 'a b'.gz"}, "gzip -c 'a b' > 'a b'.gz", false},
		{"python3 x.py", []string{"sh", "-c", "exec python3 x.py 'a b'"}, "python3 x.py 'a b'", false},
		{"cat {} | wc -l", []string{"sh", "-c", "cat 'a b' | wc -l"}, "cat 'a b' | wc -l", true},
	}
	for _, tt := range tests {
		tmpl, err := parseTemplate([]string{tt.cmd})
		if err != nil {
			t.Fatal(err)
		}
		if got := tmpl.argv([]byte("a b"), 1, 0); !slices.Equal(got, tt.argv) {
			t.Errorf("%q: argv = %q, want %q", tt.cmd, got, tt.argv)
		}
		if got := tmpl.expand([]byte("a b"), 1, 0)[2]; got != tt.dry {
			t.Errorf("%q: expand = %q, want %q", tt.cmd, got, tt.dry)
		}
		if got := tmpl.viaShell(); got != tt.viaShell {
			t.Errorf("%q: viaShell = %v, want %v", tt.cmd, got, tt.viaShell)
		}
	}
}

func TestShellStatusHint(t *testing.T) {
	tests := []struct{ cause, want string }{
		{"exit:137", " (the shell's status; its child may have been killed by SIGKILL)"},
		{"exit:143", " (the shell's status; its child may have been killed by SIGTERM)"},
		{"exit:128", ""},
		{"exit:1", ""},
		{"exit:255", ""},
		{"signal:SIGKILL", ""},
		{"oom", ""},
	}
	for _, tt := range tests {
		if got := shellStatusHint(tt.cause); got != tt.want {
			t.Errorf("shellStatusHint(%q) = %q, want %q", tt.cause, got, tt.want)
		}
	}
}

func TestMessageLine(t *testing.T) {
	tests := []struct{ msg, want string }{
		{"short", "short"},
		{"ValueError: bad\ntraceback line\n", "ValueError: bad"},
		{"\n\nsecond\n", "second"},
		{`File "/srv/a/very/long/path/to/the/worker/module.py", line 3, in f | return d["a"]["b"][k] | KeyError: 'a'`,
			`…return d["a"]["b"][k] | KeyError: 'a'`},
		{"oops \x1b[2Jclear", `oops \x1b[2Jclear`},
		{strings.Repeat("x", 100), strings.Repeat("x", 80) + "…"},
	}
	for _, tt := range tests {
		if got := messageLine(tt.msg, 80); got != tt.want {
			t.Errorf("messageLine(%q) = %q, want %q", tt.msg, got, tt.want)
		}
	}
}

// TestPoolErrorsNamePoolOnce checks the errors the pool returns when its
// workers cannot start: the "pool: " prefix appears once, whether the
// error comes from New or from Err after an abort.
func TestPoolErrorsNamePoolOnce(t *testing.T) {
	_, err := pool.New(pool.Config{Command: []string{"no-such-command-xyz"}, Protocol: pool.Line})
	if err == nil || strings.Count(err.Error(), "pool: ") > 1 {
		t.Errorf("pool.New(missing command) = %v, want an error naming pool at most once", err)
	}
	p, err := pool.New(pool.Config{Command: []string{"sh", "-c", "exit 3"}, Protocol: pool.Line, Workers: 1, Retries: 5})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer p.Close()
		for range 3 {
			if _, err := p.Submit(context.Background(), pool.Task{Input: []byte("x")}); err != nil {
				return
			}
		}
	}()
	for range p.Results() {
	}
	err = p.Err()
	var se *pool.StartError
	if !errors.As(err, &se) {
		t.Fatalf("Err() = %v, want a *StartError", err)
	}
	if n := strings.Count(err.Error(), "pool: "); n != 1 {
		t.Errorf("Err() = %q: \"pool: \" %d times, want once", err, n)
	}
}

func TestFormatVersion(t *testing.T) {
	vcs := []debug.BuildSetting{
		{Key: "vcs.revision", Value: "7ceb0db6c64c5bda521a34135b4a2905535b0f07"},
		{Key: "vcs.time", Value: "2025-06-10T08:00:00Z"},
		{Key: "vcs.modified", Value: "true"},
	}
	tests := []struct {
		name string
		bi   debug.BuildInfo
		want string
	}{
		{"release", debug.BuildInfo{Main: debug.Module{Version: "v1.2.0"}}, "v1.2.0"},
		{"pseudo-version", debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20250610080000-7ceb0db6c64c"}, Settings: vcs}, "v0.0.0-20250610080000-7ceb0db6c64c"},
		{"checkout", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs}, "(devel) 7ceb0db6c64c 2025-06-10T08:00:00Z modified"},
		{"nothing recorded", debug.BuildInfo{}, "(unknown version)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatVersion(&tt.bi); got != tt.want {
				t.Errorf("formatVersion() = %q, want %q", got, tt.want)
			}
		})
	}
}

// addResults lists rs in s and adds them to its counts of tasks, as the
// pool's Stats would count them.
func addResults(s *summary, rs ...*pool.Result) {
	st := pool.Stats{Submitted: s.Tasks.Submitted, Done: s.Tasks.Done, Failed: s.Tasks.Failed,
		Cancelled: s.Tasks.Cancelled, Poison: s.Tasks.Poison}
	for _, r := range rs {
		s.add(r)
		st.Submitted++
		switch r.State {
		case pool.Done:
			st.Done++
		case pool.Failed:
			st.Failed++
		case pool.Cancelled:
			st.Cancelled++
		case pool.Poison:
			st.Poison++
		}
	}
	s.setTasks(st, nil)
}

// TestShellValuesInQuotes runs shell command lines of safepool run whose
// replacement strings stand outside quotes, inside '...' and inside "...",
// also within $(...), with hostile inputs, through sh: each value must
// reach the command exactly as the input, never run as a command. A value
// inside quotes used to be shell-quoted as a word of its own there: its
// quotes became part of it, and $(...) or ; in it ran.
func TestShellValuesInQuotes(t *testing.T) {
	inputs := []string{"plain", "a b", "it's", `"`, "'", "''", "$(echo RAN)", "`echo RAN`", `\`, `a\nb`,
		"a;echo RAN", "line\nbreak", "*", "$HOME", "!", "-n", "", "${x:-RAN}", `\"'$`, "{}"}
	dir := t.TempDir()
	for _, tc := range []struct{ line, want string }{
		{`printf '[%s]\n' {}`, "[V]\n"},
		{`printf '[%s]\n' '{}'`, "[V]\n"},
		{`printf '[%s]\n' "{}"`, "[V]\n"},
		{`printf '[%s]\n' "<{}>" '<{}>' x{}x`, "[<V>]\n[<V>]\n[xVx]\n"},
		{`printf '[%s]\n' "$(printf '%s' "{}")"`, "[V]\n"},
		{`printf '[%s]\n' "$(printf '%s' '{}')"`, "[V]\n"},
		{`printf '[%s]\n' "x'{}'y"`, "[x'V'y]\n"},
		{`printf '[%s]\n' 'x"{}"y'`, "[x\"V\"y]\n"},
		{`v="{}"; printf '[%s]\n' "$v"`, "[V]\n"},
		{`printf '[%s]\n' {} # '{}'`, "[V]\n"},
	} {
		tmpl, err := parseTemplate([]string{tc.line})
		if err != nil {
			t.Fatal(err)
		}
		if tmpl.ctxs == nil {
			t.Errorf("%s: quoteContexts could not follow it", tc.line)
		}
		for _, in := range inputs {
			args := tmpl.argv([]byte(in), 1, 0)
			cmd := exec.Command(args[0], args[1:]...)
			cmd.Dir = dir // where a value that broke out of its quotes would write
			out, err := cmd.Output()
			if want := strings.ReplaceAll(tc.want, "V", in); err != nil || string(out) != want {
				t.Errorf("%s with input %q: sh -c %q printed %q (%v), want %q", tc.line, in, args[2], out, err, want)
			}
		}
	}
}

func TestQuoteContexts(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []quoteCtx // nil: not followed
	}{
		{`echo {} '{}' "{}"`, []quoteCtx{ctxBare, ctxSingle, ctxDouble}},
		{`echo "a'{}'b" 'a"{}"b'`, []quoteCtx{ctxDouble, ctxSingle}},
		{`echo \'{} \"{}`, []quoteCtx{ctxBare, ctxBare}},
		{`echo "\"{}"`, []quoteCtx{ctxDouble}},
		{`echo "$(echo '{}' "{}" {})"`, []quoteCtx{ctxSingle, ctxDouble, ctxBare}},
		{`echo $(echo $(echo "{}") '{}') {}`, []quoteCtx{ctxDouble, ctxSingle, ctxBare}},
		{`echo {} # it's "{}"` + "\n" + `echo '{}'`, []quoteCtx{ctxBare, ctxComment, ctxSingle}},
		{"echo a#'{}'", []quoteCtx{ctxSingle}},
		{"echo `echo {}`", nil},
		{`echo ${x:-{}}`, nil},
		{`echo $(( {} + 1 ))`, nil},
		{"cat <<EOF\n{}\nEOF", nil},
		{`echo "{}`, nil},
		{`echo $(case {} in a) echo '{}';; esac)`, nil},
	} {
		tmpl, err := parseTemplate([]string{tc.line})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(tmpl.ctxs, tc.want) {
			t.Errorf("quoteContexts(%q) = %v, want %v", tc.line, tmpl.ctxs, tc.want)
		}
	}
}

// TestLineMapGOGC checks the collector's GOGC in map of lines: 300, or
// the environment's GOGC whenever it is set; Go's default when resuming.
func TestLineMapGOGC(t *testing.T) {
	was := debug.SetGCPercent(100)
	defer debug.SetGCPercent(was)
	gogc := func() int {
		v := debug.SetGCPercent(100)
		debug.SetGCPercent(v)
		return v
	}
	t.Setenv("GOGC", "")
	setLineMapGOGC(true)
	if got := gogc(); got != 100 {
		t.Errorf("GOGC = %d when resuming, want 100", got)
	}
	setLineMapGOGC(false)
	if got := gogc(); got != lineMapGOGC {
		t.Errorf("GOGC = %d, want %d", got, lineMapGOGC)
	}
	t.Setenv("GOGC", "50")
	debug.SetGCPercent(50)
	setLineMapGOGC(false)
	if got := gogc(); got != 50 {
		t.Errorf("GOGC set to 50 in the environment = %d after setLineMapGOGC", got)
	}
}
