package memory

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// helperEnv switches the test binary into a helper process (see
// runHelper), in the manner of os/exec's tests.
const helperEnv = "SAFEPOOL_MEMORY_TEST_HELPER"

// mib is a mebibyte.
const mib = 1 << 20

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode, os.Args[1:]))
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if err := afterTests(); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: left behind:", err)
			if code == 0 {
				code = 1
			}
		}
		os.Exit(code)
	}))
}
