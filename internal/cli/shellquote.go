package cli

import (
	"slices"
	"strings"
)

// quoteCtx is where a replacement string stands in a shell command line of
// safepool run: what sh would make of the characters of its value.
type quoteCtx int

const (
	// ctxBare: outside quotes. The value is shell-quoted as a word of its
	// own ('it'\''s'), as GNU parallel does.
	ctxBare quoteCtx = iota
	// ctxSingle: inside '...', where every character is itself but '.
	ctxSingle
	// ctxDouble: inside "...", where $, `, " and \ are special.
	ctxDouble
	// ctxComment: in a comment (# to the end of the line), which a
	// newline ends, whatever quotes the value is in.
	ctxComment
)

// quoteValue returns v written so that sh reads it back as exactly v where
// it stands: shell-quoted outside quotes; with each ' closed, escaped and
// reopened inside '...'; with $ ` " \ escaped inside "...". A value that
// stood inside quotes ('{}' or "{}") was otherwise shell-quoted a second
// time there: its quotes became part of it, and a $(...) or ; in it ran
// as a command. In a comment, each newline of v becomes a space: a
// newline there, quoted or not, ended the comment, and the rest of the
// value ran as a command (an input "x\ntouch f #" created f); the value of
// a comment is read by nothing else.
func quoteValue(v string, ctx quoteCtx) string {
	switch ctx {
	case ctxComment:
		return shellQuote(strings.ReplaceAll(v, "\n", " "))
	case ctxSingle:
		return strings.ReplaceAll(v, "'", `'\''`)
	case ctxDouble:
		var b strings.Builder
		for i := 0; i < len(v); i++ {
			if strings.IndexByte("$`\"\\", v[i]) >= 0 {
				b.WriteByte('\\')
			}
			b.WriteByte(v[i])
		}
		return b.String()
	}
	return shellQuote(v)
}

// quoteContexts finds where each replacement string of a shell command
// line stands (parts, in order), as sh (POSIX, dash) parses the line:
// outside quotes, inside '...' or inside "...", also within $(...), or
// in a comment.
// It reports false for a line it cannot follow for sure: here-documents,
// backquotes, ${...}, $((...)), quotes left open. Such a line gets every
// value shell-quoted as a word of its own, as GNU parallel does.
func quoteContexts(parts []part) ([]quoteCtx, bool) {
	// stack holds the open quotes and command substitutions: '\'', '"',
	// or '(' for $( ... ), whose parenthesis depth is in depth.
	var (
		stack   []byte
		depth   []int
		ctxs    []quoteCtx
		atStart = true // at the start of a word, where # starts a comment
		comment = false
	)
	top := func() byte {
		if len(stack) == 0 {
			return 0
		}
		return stack[len(stack)-1]
	}
	for _, p := range parts {
		if p.kind == replLiteral && hasWord(p.lit, "case") {
			// Its patterns end with a ) that no ( opened: within
			// $( ... ), where that ) ends is not followed here.
			return nil, false
		}
		if p.kind != replLiteral {
			switch {
			case comment:
				ctxs = append(ctxs, ctxComment)
			case top() == '\'':
				ctxs = append(ctxs, ctxSingle)
			case top() == '"':
				ctxs = append(ctxs, ctxDouble)
			default:
				ctxs = append(ctxs, ctxBare)
			}
			atStart = false
			continue
		}
		s := p.lit
		for i := 0; i < len(s); i++ {
			c := s[i]
			if comment {
				if c == '\n' {
					comment, atStart = false, true
				}
				continue
			}
			if c == '\\' && i+1 == len(s) && top() != '\'' {
				return nil, false // it would escape a value's first byte
			}
			switch top() {
			case '\'':
				if c == '\'' {
					stack = stack[:len(stack)-1]
				}
				continue
			case '"':
				switch {
				case c == '\\':
					i++ // whatever it escapes, it is not a quote
				case c == '"':
					stack = stack[:len(stack)-1]
				case c == '`':
					return nil, false
				case c == '$' && i+1 < len(s) && s[i+1] == '(':
					if i+2 < len(s) && s[i+2] == '(' {
						return nil, false // $(( arithmetic ))
					}
					stack, depth = append(stack, '('), append(depth, 1)
					i++
					atStart = true
				case c == '$' && i+1 < len(s) && s[i+1] == '{':
					return nil, false
				}
				continue
			}
			// Outside quotes, at the top or within $( ... ).
			switch {
			case c == '\\':
				i++
				atStart = false
			case c == '\'' || c == '"':
				stack = append(stack, c)
				atStart = false
			case c == '`':
				return nil, false
			case c == '$' && i+1 < len(s) && s[i+1] == '(':
				if i+2 < len(s) && s[i+2] == '(' {
					return nil, false
				}
				stack, depth = append(stack, '('), append(depth, 1)
				i++
				atStart = true
			case c == '$' && i+1 < len(s) && s[i+1] == '{':
				return nil, false
			case c == '<' && i+1 < len(s) && s[i+1] == '<':
				return nil, false // a here-document
			case c == '(' && top() == '(':
				depth[len(depth)-1]++
				atStart = true
			case c == ')' && top() == '(':
				depth[len(depth)-1]--
				if depth[len(depth)-1] == 0 {
					stack, depth = stack[:len(stack)-1], depth[:len(depth)-1]
				}
				atStart = true
			case c == '#' && atStart:
				comment = true
			case strings.IndexByte(" \t\n;&|()<>", c) >= 0:
				atStart = true
			default:
				atStart = false
			}
		}
	}
	if len(stack) > 0 {
		return nil, false
	}
	return ctxs, true
}

// hasWord reports whether w appears in s as a word of its own.
func hasWord(s, w string) bool {
	return slices.Contains(strings.FieldsFunc(s, func(r rune) bool {
		return strings.ContainsRune(" \t\n;&|()<>'\"`$", r)
	}), w)
}
