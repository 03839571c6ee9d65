package pool

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestQuoteCommandCut: a command line longer than maxQuotedCommand is
// quoted to that many bytes, never within a character, with the number of
// bytes left out; a shorter one is quoted whole.
func TestQuoteCommandCut(t *testing.T) {
	if got, want := quoteCommand([]string{"echo", "a b"}), `"echo a b"`; got != want {
		t.Errorf("quoteCommand(short) = %s, want %s", got, want)
	}
	// "é" is two bytes: the cut at 256 falls within one.
	args := []string{"echo", strings.Repeat("é", 1<<19)}
	line := strings.Join(args, " ")
	got := quoteCommand(args)
	want := `"echo ` + strings.Repeat("é", 125) + `…" (1048326 more bytes left out)`
	if got != want {
		t.Errorf("quoteCommand(1 MiB) = %.300s, want %s", got, want)
	}
	if !utf8.ValidString(got) || len(line) != 5+250+1048326 {
		t.Errorf("quoteCommand(1 MiB) = %.300s: not valid UTF-8, or the count is wrong", got)
	}
	se := &StartError{Command: args, Err: errTest}
	if msg := se.Error(); len(msg) > 400 || !strings.HasSuffix(msg, "(1048326 more bytes left out) cannot start: test") {
		t.Errorf("StartError.Error() = %.400s (%d bytes), want the command cut to 256 bytes", msg, len(msg))
	}
}

type testError struct{}

func (testError) Error() string { return "test" }

var errTest error = testError{}
