package pool_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/safepool/safepool/pool"
)

// TestSharedWriters: every worker copies its stdout and stderr into
// Config.Stdout and Config.Stderr on goroutines of its own, and a writer
// such as a bytes.Buffer is not safe for concurrent use. The pool must
// write to it one at a time: it used to write from every copier at once,
// a data race that lost most of the lines.
func TestSharedWriters(t *testing.T) {
	const tasks, lines = 12, 200
	var buf bytes.Buffer
	var inputs []string
	for range tasks {
		inputs = append(inputs, fmt.Sprintf("chatter:%d", lines))
	}
	got, p := run(t, pool.Config{
		Command:  workerCmd("framed"),
		Env:      workerEnvFor("framed"),
		Protocol: pool.Framed,
		Workers:  4,
		Stdout:   &buf,
		Stderr:   &buf,
	}, inputs...)
	if err := p.Err(); err != nil {
		t.Fatalf("Err() = %v", err)
	}
	for id, r := range got {
		if r.State != pool.Done {
			t.Errorf("task %d: %s (%s), want done", id, r.State, r.Cause())
		}
	}
	// Each copier writes what it read, which may end within a line: count
	// the bytes and the lines, not whole lines.
	want := 0
	for i := range lines {
		want += len(fmt.Sprintf("chatter %d\n", i))
	}
	want *= tasks * 2
	if n := buf.Len(); n != want {
		t.Errorf("the workers' output holds %d bytes, want %d", n, want)
	}
	if n, want := strings.Count(buf.String(), "\n"), tasks*lines*2; n != want {
		t.Errorf("the workers' output holds %d lines, want %d", n, want)
	}
}
