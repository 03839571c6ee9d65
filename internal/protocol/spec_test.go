package protocol

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pythonExample returns the minimal Python worker from docs/protocol.md.
func pythonExample(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "protocol.md"))
	if err != nil {
		t.Fatal(err)
	}
	const open = "```python\n#!/usr/bin/env python3\n"
	_, rest, ok := strings.Cut(string(doc), open)
	if !ok {
		t.Fatalf("docs/protocol.md has no block starting with %q", open)
	}
	src, _, ok := strings.Cut(rest, "\n```")
	if !ok {
		t.Fatal("docs/protocol.md: the Python worker's block does not end")
	}
	return "#!/usr/bin/env python3\n" + src + "\n"
}

// TestSpecPythonWorker runs the Python worker that docs/protocol.md gives
// as an example against this package, so that the specification and the
// implementation cannot drift apart.
func TestSpecPythonWorker(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python3 is required under CI: %v", err)
		}
		t.Skipf("python3 not found, so the documented worker cannot run: %v", err)
	}
	script := filepath.Join(t.TempDir(), "upper.py")
	if err := os.WriteFile(script, []byte(pythonExample(t)), 0o644); err != nil {
		t.Fatal(err)
	}

	taskR, taskW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer taskW.Close()
	resR, resW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer resR.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, script)
	cmd.Env = append(os.Environ(), EnvProtocol+"="+Framed, EnvTaskFD+"=3", EnvResultFD+"=4")
	cmd.ExtraFiles = []*os.File{taskR, resW}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	taskR.Close()
	resW.Close()
	resR.SetReadDeadline(time.Now().Add(60 * time.Second))

	r := NewReader(resR, 0)
	next := func() Frame {
		t.Helper()
		f, err := r.ReadFrame()
		if err != nil {
			t.Fatalf("ReadFrame() = %v, want a frame; worker stderr:\n%s", err, &stderr)
		}
		return f
	}
	if f := next(); f.Kind != KindReady {
		t.Fatalf("first frame = %v, want ready", f)
	} else if v, err := ParseReady(f.Payload); v != Version || err != nil {
		t.Fatalf("ParseReady(%q) = %d, %v, want %d, nil", f.Payload, v, err, Version)
	}

	big := bytes.Repeat([]byte("abc"), 50_000) // larger than a pipe's buffer
	tasks := []Frame{
		{Kind: KindTask, ID: 7, Payload: []byte("hello")},
		{Kind: KindTask, ID: 8},
		{Kind: KindTask, ID: 1 << 60, Payload: big},
	}
	writeErr := make(chan error, 1)
	go func() { // pipelined: all tasks before reading any answer
		w := NewWriter(taskW)
		for _, f := range tasks {
			if err := w.WriteFrame(f); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- w.Flush()
	}()
	for _, task := range tasks {
		want := []Frame{{Kind: KindStart, ID: task.ID}, {Kind: KindResult, ID: task.ID, Payload: bytes.ToUpper(task.Payload)}}
		for _, w := range want {
			if f := next(); !equalFrames(f, w) {
				t.Fatalf("ReadFrame() = {%v %d %d bytes}, want {%v %d %d bytes}", f.Kind, f.ID, len(f.Payload), w.Kind, w.ID, len(w.Payload))
			}
		}
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("writing tasks: %v", err)
	}

	taskW.Close() // end of the tasks: the worker exits 0
	if f, err := r.ReadFrame(); !errors.Is(err, io.EOF) {
		t.Fatalf("ReadFrame() after the last task = %v, %v, want io.EOF", f, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("worker exited with %v, want status 0; stderr:\n%s", err, &stderr)
	}
	if got := stdout.String(); !strings.Contains(got, "working on 5 bytes\n") {
		t.Errorf("worker stdout = %q, want its log lines", got)
	}
}
