package pool_test

import (
	"strings"
	"testing"

	"github.com/safepool/safepool/pool"
)

// TestEnvRepeatedName: where Config.Env names a variable twice, a one-shot
// process's environment (/proc/PID/environ, as the kernel gave it) holds
// it once, with its last value, as exec.Cmd would give it: the slot's
// environment is de-duplicated once and then passed as it is.
func TestEnvRepeatedName(t *testing.T) {
	cfg := pool.Config{
		Command:  []string{"/bin/sh", "-c", `tr '\0' '\n' < /proc/$$/environ | grep '^SAFEPOOL_ENV_TEST=' | tr '\n' ' '`},
		Protocol: pool.OneShot,
		Workers:  2,
		Env:      []string{"SAFEPOOL_ENV_TEST=first", "PATH=/usr/bin:/bin", "SAFEPOOL_ENV_TEST=last"},
	}
	got, _ := run(t, cfg, "a", "b", "c")
	if len(got) != 3 {
		t.Fatalf("%d results, want 3", len(got))
	}
	for id, r := range got {
		if r.State != pool.Done || strings.TrimSpace(string(r.Output)) != "SAFEPOOL_ENV_TEST=last" {
			t.Errorf("task %d = %s %q, want done with the environment's one SAFEPOOL_ENV_TEST, the last", id, r.State, r.Output)
		}
	}
}

// TestEnvNUL: a variable holding a NUL byte cannot reach a process (exec
// refuses it), so New refuses it rather than drop it without a word.
func TestEnvNUL(t *testing.T) {
	_, err := pool.New(pool.Config{Command: []string{"/bin/true"}, Env: []string{"PATH=/usr/bin:/bin", "BAD=a\x00b"}})
	if err == nil || !strings.Contains(err.Error(), `Config.Env[1] ("BAD") holds a NUL byte`) {
		t.Fatalf("New = %v, want an error naming Config.Env[1] and its NUL byte", err)
	}
}
