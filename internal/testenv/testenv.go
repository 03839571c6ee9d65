// Package testenv holds test helpers shared by safepool's packages.
package testenv

import (
	"os"
	"testing"
)

// InCI reports whether the tests run in CI (CI=true), where a test that
// cannot run is a failure, not a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// SkipOrFail skips t with reason, except in CI, where it fails: the CI
// machines can run every test.
func SkipOrFail(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("cannot run under CI=true: %s", reason)
	}
	t.Skip(reason)
}
