package cli

import (
	"fmt"
	"os"
	"path/filepath"
)

// outputOverInput refuses a --joblog, --json or --journal file that is one
// of the job's input files (an -a file, or the regular file on standard
// input), and a --joblog and --json that are the same file, however spelt
// (./in.txt, a symbolic link). The job log and the JSON summary are
// created empty before the first input is read: over an input file, the
// run read their header instead of the inputs, and the inputs were lost;
// over each other, the job log was lost. The journal is checked against
// the other two by openOutputs (journalFileAt).
func (j *job) outputOverInput() error {
	outs := []struct{ flag, path string }{
		{"--joblog", j.joblog}, {"--json", j.jsonPath}, {"--journal", j.journal.path},
	}
	for i, o := range outs {
		if o.path == "" || o.path == "-" {
			continue
		}
		if in := inputFileAt(j.src, o.path); in != "" {
			return fmt.Errorf("%s %s would overwrite %s, which holds the inputs: name another file", o.flag, o.path, in)
		}
		if o.flag != "--json" {
			continue
		}
		if p := outs[0]; i > 0 && p.path != "" && samePath(p.path, o.path) {
			return fmt.Errorf("%s %s and %s %s are the same file: name two files", p.flag, p.path, o.flag, o.path)
		}
	}
	return nil
}

// inputFileAt returns what src reads from the regular file at path, "the
// input file NAME" or "the file on standard input", or "" when it reads
// nothing from it. A source of ::: arguments reads no file.
func inputFileAt(src source, path string) string {
	var fs *fileSource
	switch s := src.(type) {
	case *fileSource:
		fs = s
	case *blockReader:
		fs = s.files
	default:
		return ""
	}
	target, err := os.Stat(path)
	if err != nil || !target.Mode().IsRegular() {
		// Only a regular file is emptied when created again: /dev/null
		// or a pipe may be both an input and an output.
		return ""
	}
	// What is at each input's name when the run started: each file is
	// opened only when the reading reaches it.
	for i, fi := range fs.found {
		if fi != nil && os.SameFile(fi, target) {
			if fs.names[i] == "-" {
				return "the file on standard input"
			}
			return "the input file " + fs.names[i]
		}
	}
	return ""
}

// samePath reports whether a and b name the same regular file, or the
// same path once made absolute where nothing exists yet. Two outputs to
// /dev/null, or to another device or pipe, are no mistake.
func samePath(a, b string) bool {
	fa, errA := os.Stat(a)
	if errA == nil && !fa.Mode().IsRegular() {
		return false
	}
	absA, errAbsA := filepath.Abs(a)
	absB, errAbsB := filepath.Abs(b)
	if errAbsA == nil && errAbsB == nil && absA == absB {
		return true
	}
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}
