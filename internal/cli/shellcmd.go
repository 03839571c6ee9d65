package cli

import "strings"

// shellKind says how much of a shell a command line needs.
type shellKind int

const (
	// shellNone: only words, quotes and backslash escapes. It runs as an
	// argument vector, without a shell.
	shellNone shellKind = iota
	// shellExec: one simple command that needs the shell for expansions
	// ($VAR, globs, ~) or redirections, and nothing else. sh runs it with
	// exec, so the command replaces the shell and its own death (a signal)
	// is what safepool sees.
	shellExec
	// shellKeep: anything else: lists, pipelines, compound commands,
	// command substitution, assignments, builtins. The shell stays, and
	// its exit status is what safepool sees.
	shellKeep
)

// commandLine is a shell command line analysed: words holds its words when
// kind is shellNone.
type commandLine struct {
	kind  shellKind
	words []string
}

// shellWords analyses line as sh would parse it, conservatively: whatever it
// cannot tell for sure is shellKeep, which runs the line exactly as given.
//
// It does not expand anything; it only finds whether there is something to
// expand. Braces are ordinary characters inside a word (sh has no brace
// expansion), so run's replacement strings such as {} and {.} count as
// plain text.
func shellWords(line string) commandLine {
	var (
		words   []string
		cur     strings.Builder
		inWord  bool
		special bool // an expansion, glob, redirection or comment
	)
	keep := commandLine{kind: shellKeep}
	endWord := func() {
		if inWord {
			words = append(words, cur.String())
			cur.Reset()
			inWord = false
		}
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == ' ' || c == '\t':
			endWord()
			continue
		case c == '\n', c == ';', c == '&', c == '|', c == '(', c == ')', c == '`':
			// Lists, pipelines, subshells, command substitution.
			return keep
		case c == '\'':
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				return keep // unterminated: let sh say so
			}
			cur.WriteString(line[i+1 : i+1+j])
			i += 1 + j
		case c == '"':
			j := i + 1
			for ; j < len(line) && line[j] != '"'; j++ {
				switch line[j] {
				case '`':
					return keep
				case '$':
					if j+1 < len(line) && line[j+1] == '(' {
						return keep
					}
					special = true
				case '\\':
					if j+1 < len(line) && strings.IndexByte("$`\"\\\n", line[j+1]) >= 0 {
						j++
						if line[j] == '\n' {
							continue // a line continuation
						}
					}
				}
				cur.WriteByte(line[j])
			}
			if j == len(line) {
				return keep
			}
			i = j
		case c == '\\':
			if i+1 == len(line) {
				return keep
			}
			i++
			if line[i] == '\n' {
				continue // a line continuation
			}
			cur.WriteByte(line[i])
		case c == '$':
			if i+1 < len(line) && line[i+1] == '(' {
				return keep
			}
			special = true
			cur.WriteByte(c)
		case c == '<' || c == '>' || c == '*' || c == '?' || c == '[':
			special = true
			cur.WriteByte(c)
		case (c == '~' || c == '#') && !inWord:
			special = true
			cur.WriteByte(c)
		case c == '=' && len(words) == 0 && isName(cur.String()) && !quotedSoFar(line, i):
			// FOO=bar cmd: an assignment for cmd's environment.
			return keep
		default:
			cur.WriteByte(c)
		}
		inWord = true
	}
	endWord()
	if len(words) == 0 || shellOnly[words[0]] {
		return keep
	}
	if special {
		return commandLine{kind: shellExec}
	}
	return commandLine{kind: shellNone, words: words}
}

// quotedSoFar reports whether the first word of line, up to byte i, holds a
// quote or a backslash: "A"=b is not an assignment.
func quotedSoFar(line string, i int) bool {
	start := len(line[:i]) - len(strings.TrimLeft(line[:i], " \t"))
	return strings.ContainsAny(line[start:i], `'"\`)
}

// isName reports whether s is a shell variable name.
func isName(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// shellOnly are the words that mean something else, or nothing, outside a
// shell when they come first: reserved words and the builtins that have no
// program of the same name (or whose program cannot do their work, as cd
// cannot change its caller's directory). exec is here because a line that
// starts with it already replaces the shell: it runs as given.
var shellOnly = map[string]bool{
	"!": true, "{": true, "}": true, "[[": true, "case": true, "do": true, "done": true, "elif": true,
	"else": true, "esac": true, "fi": true, "for": true, "function": true, "if": true, "in": true,
	"select": true, "then": true, "until": true, "while": true,
	".": true, ":": true, "alias": true, "bg": true, "break": true, "builtin": true, "cd": true,
	"command": true, "continue": true, "eval": true, "exec": true, "exit": true, "export": true,
	"fg": true, "getopts": true, "hash": true, "jobs": true, "let": true, "local": true,
	"read": true, "readonly": true, "return": true, "set": true, "shift": true, "source": true,
	"times": true, "trap": true, "type": true, "ulimit": true, "umask": true, "unalias": true,
	"unset": true, "wait": true,
}

// startsWithExec reports whether line's first word is exec, so that the
// shell replaces itself already.
func startsWithExec(line string) bool {
	f := strings.Fields(line)
	return len(f) > 0 && f[0] == "exec"
}

// workerCommand returns the argument vector that runs the shell command
// line of map --worker, and whether a shell stays between safepool and the
// command.
func workerCommand(line string) (argv []string, viaShell bool) {
	cl := shellWords(line)
	switch cl.kind {
	case shellNone:
		return cl.words, false
	case shellExec:
		return []string{"sh", "-c", "exec " + line}, false
	}
	return []string{"sh", "-c", line}, !startsWithExec(line)
}
