package worker

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestStartWithOutputs: a one-shot process given output pipes made ahead
// (NewOutputs) writes through them as through pipes of its own, its stderr
// tail included; the Outputs of a start that failed are closed, and their
// copiers end.
func TestStartWithOutputs(t *testing.T) {
	var stderr bytes.Buffer // written by the copier until CloseIO returns
	o, err := NewOutputs(nil, &stderr)
	if err != nil {
		t.Fatalf("NewOutputs() = %v", err)
	}
	spec := helperConfig("oneshot", IONone, "--", "die").Spec
	spec.Outputs = o
	p, err := Start(spec)
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	select {
	case <-p.Done():
	case <-time.After(20 * time.Second):
		p.Kill()
		<-p.Done()
		t.Fatal("the worker did not end within 20s")
	}
	p.CloseIO(time.Second)
	if code := p.Exit().Code; code != 3 {
		t.Errorf("exit code = %d, want 3", code)
	}
	const want = "worker: giving up on die"
	if got := p.StderrTail(); !strings.Contains(got, want) {
		t.Errorf("StderrTail() = %q, want it to hold %q", got, want)
	}
	if got := stderr.String(); !strings.Contains(got, want) {
		t.Errorf("stderr = %q, want it to hold %q", got, want)
	}

	unused, err := NewOutputs(nil, &stderr)
	if err != nil {
		t.Fatalf("NewOutputs() = %v", err)
	}
	if _, err := Start(Spec{Outputs: unused}); err == nil {
		t.Fatal("Start() of an empty command = nil, want an error")
	}
	for deadline := time.Now().Add(5 * time.Second); unused.copiers.Load() > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d copiers of the failed start's Outputs still run after 5s", unused.copiers.Load())
		}
		time.Sleep(time.Millisecond)
	}
}
