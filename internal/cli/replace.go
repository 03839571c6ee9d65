package cli

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// A replacement string stands for a value computed from a job's input.
type replacement int

const (
	replLiteral   replacement = iota
	replInput                 // {}   the input
	replNoExt                 // {.}  the input without its extension
	replBase                  // {/}  the basename of the input
	replDir                   // {//} the dirname of the input
	replBaseNoExt             // {/.} the basename without its extension
	replSeq                   // {#}  the job number
	replSlot                  // {%}  the job slot: the worker slot that runs the attempt
)

// replacementTokens lists the recognised replacement strings, longest first
// where one is a prefix of another.
var replacementTokens = []struct {
	tok  string
	kind replacement
}{
	{"{}", replInput},
	{"{.}", replNoExt},
	{"{//}", replDir},
	{"{/.}", replBaseNoExt},
	{"{/}", replBase},
	{"{#}", replSeq},
	{"{%}", replSlot},
}

// part is a literal piece of text or one replacement string.
type part struct {
	kind replacement
	lit  string
}

// cmdTemplate is a parsed CMD ARGS... of safepool run.
type cmdTemplate struct {
	// words are the parsed argument words. In shell mode there is one word,
	// the command line given to sh -c.
	words [][]part
	// shell reports whether CMD was given as one argument containing
	// whitespace; it then runs under sh -c and values are shell-quoted, as
	// GNU parallel does.
	shell bool
	// exec reports whether, in shell mode, the command line is a single
	// command that sh runs with exec, so that the command replaces the
	// shell and a signal that kills it is seen as such (shellWords).
	exec bool
	// appendInput reports whether CMD has no replacement string at all, in
	// which case the input is added as the last argument.
	appendInput bool
	// ctxs are, in shell mode, where each replacement string of the
	// command line stands: outside quotes, or inside '...' or "...", so
	// that its value is quoted for that place (quoteValue). nil: every
	// value is quoted as a word of its own (quoteContexts).
	ctxs []quoteCtx
}

// parseTemplate parses the command of safepool run.
func parseTemplate(cmd []string) (*cmdTemplate, error) {
	if len(cmd) == 0 {
		return nil, fmt.Errorf("missing command")
	}
	t := &cmdTemplate{shell: len(cmd) == 1 && strings.ContainsAny(cmd[0], " \t\n")}
	found := false
	for i, w := range cmd {
		parts, err := parseWord(w)
		if err != nil {
			return nil, err
		}
		hasRepl := false
		for _, p := range parts {
			if p.kind != replLiteral {
				hasRepl = true
			}
		}
		if hasRepl && i == 0 && !t.shell {
			return nil, fmt.Errorf("the command name %q cannot contain a replacement string; %s", w, commandNameHint(cmd))
		}
		found = found || hasRepl
		t.words = append(t.words, parts)
	}
	t.appendInput = !found
	if t.shell {
		if err := escapedValueCheck(t.words[0]); err != nil {
			return nil, err
		}
		if t.appendInput {
			if err := appendedInputCheck(cmd[0]); err != nil {
				return nil, err
			}
		}
		t.exec = shellWords(cmd[0]).kind != shellKeep
		t.ctxs, _ = quoteContexts(t.words[0])
	}
	return t, nil
}

// escapedValueCheck refuses a shell command line (parsed as parts)
// where a backslash escapes the first byte of a replacement string's value:
// one right before it, outside '...' and comments, where sh reads it as an
// escape. No quoting of the value survives it: "\{}" ran a $(...) of an
// input as a command, and \{} split an input with a space in two. A line
// whose quotes are not followed (quoteContexts) is refused too, since the
// backslash may be outside them.
func escapedValueCheck(parts []part) error {
	for k := 1; k < len(parts); k++ {
		prev := parts[k-1]
		if parts[k].kind == replLiteral || prev.kind != replLiteral {
			continue
		}
		if n := len(prev.lit) - len(strings.TrimRight(prev.lit, `\`)); n%2 == 0 {
			continue
		}
		// Where the value stands, in the line without that backslash.
		without := slices.Concat(parts[:k-1], []part{{lit: prev.lit[:len(prev.lit)-1]}}, parts[k:])
		nth := 0
		for _, p := range parts[:k] {
			if p.kind != replLiteral {
				nth++
			}
		}
		ctxs, ok := quoteContexts(without)
		if ok && (ctxs[nth] == ctxSingle || ctxs[nth] == ctxComment) {
			continue // a backslash in '...' or in a comment is itself
		}
		tok := replacementTokens[tokenIndex(parts[k].kind)].tok
		return fmt.Errorf("a backslash right before %s in the shell command line would escape the first character of its value, whatever quotes it: write %s without it, or \\\\%s for a backslash before the value", tok, tok, tok)
	}
	return nil
}

// appendedInputCheck refuses a shell command line with no replacement
// string where the input, added at its end after a space, would not be an
// argument of its own: after a trailing backslash, which escapes that
// space and joins the input to the last word ('cmd -x \' ran cmd with
// " INPUT"), or in a comment ('cmd -x # note' ran cmd without its input,
// and an input with a newline ran the rest of it as a command). GNU
// parallel runs both as written.
func appendedInputCheck(line string) error {
	const fix = "write {} where the input goes"
	if n := len(line) - len(strings.TrimRight(line, `\`)); n%2 == 1 {
		return fmt.Errorf("the shell command line ends with a backslash, which would join the input added after it to its last word: %s", fix)
	}
	ctxs, ok := quoteContexts([]part{{lit: line + " "}, {kind: replInput}})
	if ok && ctxs[len(ctxs)-1] == ctxComment {
		return fmt.Errorf("the shell command line ends in a comment, where the input added at its end would be lost: %s, before the #", fix)
	}
	return nil
}

// commandNameHint says how to write cmd, whose command name holds a
// replacement string: {} alone runs each input as a command line (sh -c
// {}); otherwise one shell command line, where the value is quoted as a
// word, as GNU parallel quotes it. (sh -c './bin/{}' would run a ; or
// $(...) of an input as a command, and drop the words after it.)
func commandNameHint(cmd []string) string {
	if len(cmd) == 1 && cmd[0] == "{}" {
		return "to run each input as a command line, write: sh -c {}"
	}
	words := make([]string, len(cmd))
	for i, w := range cmd {
		words[i] = w
		if parts, err := parseWord(w); err == nil && len(parts) == 1 && parts[0].kind == replLiteral {
			words[i] = shellQuote(w)
		}
	}
	line := strings.Join(words, " ")
	if len(cmd) == 1 {
		line = "exec " + line // a space, so that it is a command line
	}
	hint := "write one argument with a space, a shell command line in which each value is quoted"
	if !strings.Contains(line, "'") {
		hint += ": '" + line + "'"
	}
	return hint
}

// viaShell reports whether a shell stays between safepool and the command.
func (t *cmdTemplate) viaShell() bool {
	return t.shell && !t.exec && !startsWithExec(t.line())
}

// line returns the command line of shell mode, with its replacement strings.
func (t *cmdTemplate) line() string { return t.text()[0] }

// parseWord splits one word into literals and replacement strings.
func parseWord(w string) ([]part, error) {
	var parts []part
	var lit strings.Builder
	for i := 0; i < len(w); {
		if w[i] == '{' {
			if tok := parallelOnly(w, i); tok == "{0#}" || tok == "{0%}" {
				// GNU parallel pads them to the width of the number of
				// jobs, which a run that streams its inputs does not know.
				return nil, fmt.Errorf("the replacement string %s of GNU parallel (%s padded with zeros) is not supported: write %s, or pad it in a shell command line: 'cmd $(printf %%04d %s)'", tok, "{"+tok[2:], "{"+tok[2:], "{"+tok[2:])
			} else if tok != "" {
				return nil, fmt.Errorf("the replacement string %s of GNU parallel is not supported: safepool run has one list of inputs, and {} {.} {/} {//} {/.} stand for its input", tok)
			}
			matched := false
			for _, rt := range replacementTokens {
				if strings.HasPrefix(w[i:], rt.tok) {
					if lit.Len() > 0 {
						parts = append(parts, part{lit: lit.String()})
						lit.Reset()
					}
					parts = append(parts, part{kind: rt.kind})
					i += len(rt.tok)
					matched = true
					break
				}
			}
			if matched {
				continue
			}
		}
		lit.WriteByte(w[i])
		i++
	}
	if lit.Len() > 0 || len(parts) == 0 {
		parts = append(parts, part{lit: lit.String()})
	}
	return parts, nil
}

// parallelOnly returns the replacement string of GNU parallel that is not
// one of safepool's and starts at w[i], a '{', or "". Left as text, such a
// string would reach the command as it is, next to the input added as the
// last argument, and the job would do something else without a word.
//
// Those are a positional string of an input source ({1}, {2.}, {1/}, {3//},
// {1/.}), a Perl expression ({= ... =}), and the job number and slot
// padded with zeros ({0#}, {0%}). A bare {N} is taken for one only
// where it starts a word or follows a space, a quote or one of / = : , so
// that a regular expression's count (a{2}, [0-9]{3}, .{4}) stays text.
func parallelOnly(w string, i int) string {
	for _, tok := range []string{"{0#}", "{0%}"} {
		if strings.HasPrefix(w[i:], tok) {
			return tok
		}
	}
	if strings.HasPrefix(w[i:], "{=") && strings.Contains(w[i+2:], "=}") {
		return w[i : i+2+strings.Index(w[i+2:], "=}")+2]
	}
	j := i + 1
	for j < len(w) && w[j] >= '0' && w[j] <= '9' {
		j++
	}
	if j == i+1 || w[i+1] == '0' {
		return ""
	}
	for _, mod := range []string{".}", "//}", "/.}", "/}"} {
		if strings.HasPrefix(w[j:], mod) {
			return w[i : j+len(mod)]
		}
	}
	if !strings.HasPrefix(w[j:], "}") {
		return ""
	}
	if i == 0 || strings.IndexByte(" \t\n'\"/=:,", w[i-1]) >= 0 {
		return w[i : j+1]
	}
	return ""
}

// command returns the template as an argument vector, for messages and
// for pool.Config.Command.
func (t *cmdTemplate) command() []string {
	words := t.text()
	if t.shell {
		return []string{"sh", "-c", t.execPrefix() + words[0]}
	}
	return words
}

// execPrefix is what precedes the command line given to sh -c.
func (t *cmdTemplate) execPrefix() string {
	if t.exec {
		return "exec "
	}
	return ""
}

// text returns the words of the template with their replacement strings.
func (t *cmdTemplate) text() []string {
	words := make([]string, len(t.words))
	for i, w := range t.words {
		var b strings.Builder
		for _, p := range w {
			if p.kind == replLiteral {
				b.WriteString(p.lit)
			} else {
				b.WriteString(replacementTokens[tokenIndex(p.kind)].tok)
			}
		}
		words[i] = b.String()
	}
	return words
}

func tokenIndex(k replacement) int {
	for i, rt := range replacementTokens {
		if rt.kind == k {
			return i
		}
	}
	return 0
}

// slotted reports whether the template holds {%}, the job slot, so that
// each attempt's argument vector depends on the slot that runs it.
func (t *cmdTemplate) slotted() bool {
	for _, w := range t.words {
		for _, p := range w {
			if p.kind == replSlot {
				return true
			}
		}
	}
	return false
}

// expand returns the argument vector of job number seq with the given input,
// run in job slot slot, as --dry-run shows it.
func (t *cmdTemplate) expand(input []byte, seq uint64, slot int) []string {
	in := string(input)
	n := 0 // replacement strings met so far, for t.ctxs
	value := func(k replacement) string {
		var v string
		switch k {
		case replInput:
			v = in
		case replNoExt:
			v = noExt(in)
		case replBase:
			v = basename(in)
		case replDir:
			v = dirname(in)
		case replBaseNoExt:
			v = noExt(basename(in))
		case replSeq:
			v = strconv.FormatUint(seq, 10)
		case replSlot:
			v = strconv.Itoa(slot)
		}
		if t.shell {
			ctx := ctxBare
			if n < len(t.ctxs) {
				ctx = t.ctxs[n]
			}
			n++
			v = quoteValue(v, ctx)
		}
		return v
	}
	args := make([]string, 0, len(t.words)+3)
	if t.shell {
		args = append(args, "sh", "-c")
	}
	for _, w := range t.words {
		if len(w) == 1 && w[0].kind == replLiteral {
			args = append(args, w[0].lit)
			continue
		}
		var b strings.Builder
		for _, p := range w {
			if p.kind == replLiteral {
				b.WriteString(p.lit)
			} else {
				b.WriteString(value(p.kind))
			}
		}
		args = append(args, b.String())
	}
	if t.appendInput {
		if t.shell {
			args[len(args)-1] += " " + shellQuote(in)
		} else {
			args = append(args, in)
		}
	}
	return args
}

// argv returns the argument vector that runs job number seq in job slot
// slot: expand's, with the exec that lets a single command replace the
// shell.
func (t *cmdTemplate) argv(input []byte, seq uint64, slot int) []string {
	args := t.expand(input, seq, slot)
	if t.exec {
		args[2] = t.execPrefix() + args[2]
	}
	return args
}

// basename returns s without its directory part, like basename(1).
func basename(s string) string {
	trimmed := strings.TrimRight(s, "/")
	if trimmed == "" {
		if s == "" {
			return ""
		}
		return "/"
	}
	if i := strings.LastIndexByte(trimmed, '/'); i >= 0 {
		return trimmed[i+1:]
	}
	return trimmed
}

// dirname returns the directory part of s, like dirname(1): "." when there
// is none.
func dirname(s string) string {
	trimmed := strings.TrimRight(s, "/")
	if trimmed == "" {
		if s == "" {
			return "."
		}
		return "/"
	}
	i := strings.LastIndexByte(trimmed, '/')
	if i < 0 {
		return "."
	}
	d := strings.TrimRight(trimmed[:i], "/")
	if d == "" {
		return "/"
	}
	return d
}

// noExt removes the extension (from the last dot of the last path element)
// of s. A leading dot, as in ".bashrc", is not an extension.
func noExt(s string) string {
	slash := strings.LastIndexByte(s, '/')
	dot := strings.LastIndexByte(s, '.')
	if dot > slash+1 {
		return s[:dot]
	}
	return s
}

// shellQuote quotes s for sh so that it stays one word.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_@%+=:,./-", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
