package cli

import (
	"context"
	"fmt"
	"runtime/debug"
	"strings"
)

var versionSynopsis = []string{"safepool version", "safepool --version"}

// runVersion prints the version: "safepool v1.2.0", or for a build from a
// checkout "safepool (devel) 7ceb0db12a3f 2025-06-10T08:00:00Z modified".
func runVersion(_ context.Context, e *env, args []string) error {
	fs := newFlagSet("version")
	registerHelp(fs)
	if err := parseFlags("version", fs, args); err != nil {
		if err == errHelp {
			writeHelp(e.stdout, "safepool version prints the version of safepool.\n", versionSynopsis, fs, "")
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return usagef("version", "unexpected argument %q", fs.Arg(0))
	}
	fmt.Fprintf(e.stdout, "safepool %s\n", version())
	return nil
}

// version describes this build from the information the Go toolchain
// records in the binary: the module's version, else the commit it was
// built from. Without either (a build that recorded nothing) it says so.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown version)"
	}
	return formatVersion(bi)
}

// formatVersion renders the version recorded in bi.
func formatVersion(bi *debug.BuildInfo) string {
	v := bi.Main.Version
	if v == "" {
		v = "(unknown version)"
	}
	parts := []string{v}
	var revision, when, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "modified"
			}
		}
	}
	if revision != "" && !strings.Contains(v, revision[:min(12, len(revision))]) {
		parts = append(parts, revision[:min(12, len(revision))])
		if when != "" {
			parts = append(parts, when)
		}
		if modified != "" {
			parts = append(parts, modified)
		}
	}
	return strings.Join(parts, " ")
}
