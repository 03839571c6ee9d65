package cluster

import (
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/safepool/safepool/pool"
)

// RunSpec is what every agent needs to know of a run to run its tasks: the
// worker command and the run's policy. The submitter records it in
// RunsBucket before it publishes the first task.
type RunSpec struct {
	// ID names the run.
	ID string `json:"id"`
	// Protocol is pool.OneShot (safepool run), pool.Line (safepool map)
	// or pool.Framed (the Python client's Pool(nats=URL)).
	Protocol pool.Protocol `json:"protocol"`
	// Command is the worker command: for one-shot runs the template, for
	// information (each task carries its own argument vector).
	Command Argv `json:"command"`
	// Retries is how many more attempts a task gets after worker deaths
	// under OnWorkerDeath Retry, counted over every machine.
	Retries int `json:"retries"`
	// OnWorkerDeath is the run's policy: retry, skip or abort.
	OnWorkerDeath pool.Action `json:"on_worker_death"`
	// Timeout bounds each attempt; zero means the agent's own --timeout.
	Timeout time.Duration `json:"timeout"`
	// TimeoutGrace is the time an attempt that ran past its timeout has
	// between SIGTERM and SIGKILL (pool.Task.TimeoutGrace): zero means the
	// agent's own --timeout-grace, a negative value SIGKILL at once
	// (--timeout-grace 0).
	TimeoutGrace time.Duration `json:"timeout_grace,omitempty"`
	// Pipeline and StallTimeout configure line workers (map); zero means
	// the pool's defaults.
	Pipeline     int           `json:"pipeline,omitempty"`
	StallTimeout time.Duration `json:"stall_timeout,omitempty"`
	MaxLine      int64         `json:"max_line,omitempty"`
	// MaxTasks, MaxRSS and StartTimeout are map's --max-tasks, --max-rss
	// and --start-timeout; zero means the pool's defaults.
	MaxTasks     int           `json:"max_tasks,omitempty"`
	MaxRSS       int64         `json:"max_rss,omitempty"`
	StartTimeout time.Duration `json:"start_timeout,omitempty"`
	// TaskErrorRetries is, for framed runs, how many more attempts a task
	// whose worker reported a failure (an error frame) gets, on the agent
	// that ran it (pool.Config.TaskErrorRetries).
	TaskErrorRetries int `json:"task_error_retries,omitempty"`
	// Created is when the run was first submitted.
	Created time.Time `json:"created"`
	// Aborted reports whether the submitter aborted the run under the
	// abort policy; agents drop its tasks.
	Aborted bool `json:"aborted,omitempty"`
}

// SettingsKept lists, as flags with their values, the settings of a run
// first submitted as s that a later submission asking for o does not
// change: a run resumed with --run-id keeps its first settings, which its
// agents already apply. Each entry reads "--retries 0 (not 2)".
func (s RunSpec) SettingsKept(o RunSpec) []string {
	var kept []string
	note := func(flag string, was, asked any) {
		if was != asked {
			kept = append(kept, fmt.Sprintf("%s %v (not %v)", flag, was, asked))
		}
	}
	note("--retries", s.Retries, o.Retries)
	note("--on-worker-death", s.OnWorkerDeath, o.OnWorkerDeath)
	note("--timeout", s.Timeout, o.Timeout)
	note("--timeout-grace", graceFlag(s.TimeoutGrace), graceFlag(o.TimeoutGrace))
	note("--pipeline", s.Pipeline, o.Pipeline)
	note("--stall-timeout", s.StallTimeout, o.StallTimeout)
	note("--max-line", s.MaxLine, o.MaxLine)
	note("--max-tasks", s.MaxTasks, o.MaxTasks)
	note("--max-rss", s.MaxRSS, o.MaxRSS)
	note("--start-timeout", s.StartTimeout, o.StartTimeout)
	note("--task-error-retries", s.TaskErrorRetries, o.TaskErrorRetries)
	return kept
}

// graceFlag is RunSpec.TimeoutGrace as --timeout-grace says it: "unset"
// for the agents' own, 0s for SIGKILL at once.
func graceFlag(d time.Duration) string {
	switch {
	case d == 0:
		return "unset"
	case d < 0:
		return "0s"
	}
	return d.String()
}

// TaskMsg is one task as it travels on the stream.
type TaskMsg struct {
	// Run is the run's id; Seq the task's number in it, from 1.
	Run string `json:"run"`
	Seq uint64 `json:"seq"`
	// Input is the input line; Args the one-shot argument vector.
	Input []byte `json:"input"`
	Args  Argv   `json:"args,omitempty"`
	// Need is the memory in bytes the task is known to need, 0 if none;
	// it decides the task's class.
	Need int64 `json:"need,omitempty"`
	// Moved counts the times the task went to a larger class; a task
	// that moved has attempts recorded in AttemptsBucket.
	Moved int `json:"moved,omitempty"`
	// Items is the number of items of a framed batch task (pool.Task.Items);
	// 0 for a task that is not a batch. The Python client's tasks are
	// batches of one item.
	Items int `json:"items,omitempty"`
}

// AttemptRecord is one attempt of a task on some agent: a pool.Attempt
// with the agent's name. Number counts the task's charged attempts over
// every agent; the other fields are pool.Attempt's.
type AttemptRecord struct {
	Number int `json:"number"`
	// Agent names the agent that ran the attempt.
	Agent     string     `json:"agent"`
	WorkerPID int        `json:"worker_pid"`
	Start     time.Time  `json:"start"`
	End       time.Time  `json:"end"`
	Cause     pool.Cause `json:"cause,omitempty"`
	ExitCode  int        `json:"exit_code"`
	Signal    string     `json:"signal,omitempty"`
	PeakRSS   int64      `json:"peak_rss,omitempty"`
	Message   string     `json:"message,omitempty"`
	// Crowded is pool.Attempt.Crowded: killed for memory while it ran
	// alone because processes other than the agent's workers held what it
	// lacked.
	Crowded bool `json:"crowded,omitempty"`
}

// ResultRecord is a task's one recorded result, the value in ResultsBucket.
type ResultRecord struct {
	// Seq is the task's number in its run; Input and Args the task.
	Seq   uint64     `json:"seq"`
	Input []byte     `json:"input"`
	Args  Argv       `json:"args,omitempty"`
	State pool.State `json:"state"`
	// InputSum, when set, is the SHA-256 of an input too large to be
	// recorded: Input and Args are then left out.
	InputSum []byte `json:"input_sum,omitempty"`
	// Output is the one-shot stdout or the line worker's answer; Stderr
	// the one-shot stderr.
	Output []byte `json:"output,omitempty"`
	Stderr []byte `json:"stderr,omitempty"`
	// Attempts lists every attempt, on every agent, in order.
	Attempts []AttemptRecord `json:"attempts"`
	// Agent names the agent that recorded the result.
	Agent string `json:"agent"`
}

// attemptsRecord is the value in AttemptsBucket: the charged attempts of a
// task's earlier deliveries, the deliveries lost with their agent, and the
// delivery running now.
type attemptsRecord struct {
	Attempts []AttemptRecord `json:"attempts"`
	// Lost lists the deliveries whose agent took the task and was never
	// heard of again about it: killed, or cut off for AckWait.
	Lost []AttemptRecord `json:"lost,omitempty"`
	// Claim is the delivery running now: the agent that took it and when.
	// An agent that ends a delivery without a result (it hands the task
	// on, or gives it back) rewrites the record without it; one that
	// records the result leaves it. A claim found by the next delivery of
	// the same message was lost with its agent.
	Claim *AttemptRecord `json:"claim,omitempty"`
	// ClaimMsg is the stream sequence of the message whose delivery holds
	// Claim; 0 from an agent of an earlier version. A delivery of another
	// message of the task (a second copy) is not run while ClaimMsg is on
	// the stream.
	ClaimMsg uint64 `json:"claim_msg,omitempty"`
	// ClaimBy is the instance (AgentInfo.Instance) of the agent that made
	// Claim; empty from an agent of an earlier version. An agent finds its
	// own claims by it: a claim of its own is never one lost with its
	// agent, whatever the server did meanwhile.
	ClaimBy string `json:"claim_by,omitempty"`
}

// AgentInfo is what an agent advertises in AgentsBucket.
type AgentInfo struct {
	// Name is the agent's name; Host the machine's host name.
	Name string `json:"name"`
	Host string `json:"host"`
	// Slots is the agent's -j.
	Slots int `json:"slots"`
	// Capacity is the most memory, in bytes, one task may use there: its
	// --mem-limit, else its memory budget.
	Capacity int64 `json:"capacity"`
	// MaxClass is FitClass(Capacity).
	MaxClass int `json:"max_class"`
	// Updated is when the agent last refreshed the entry.
	Updated time.Time `json:"updated"`
	// Version is the agent's version of safepool ("safepool version");
	// empty for an agent that does not say.
	Version string `json:"version,omitempty"`
	// PID is the agent's process id, and Instance a random id the agent
	// draws when it starts: an agent's entry is keyed by its name, and
	// Instance tells whose entry it is (Agent.claimName). Empty from an
	// agent of an earlier version.
	PID      int    `json:"pid,omitempty"`
	Instance string `json:"instance,omitempty"`
}

// Result converts a record into the pool.Result the CLI renders.
func (r *ResultRecord) Result() pool.Result {
	res := pool.Result{ID: r.Seq, Input: r.Input, Args: r.Args, State: r.State, Output: r.Output, Stderr: r.Stderr}
	for _, a := range r.Attempts {
		res.Attempts = append(res.Attempts, pool.Attempt{
			Number: a.Number, WorkerPID: a.WorkerPID, Start: a.Start, End: a.End,
			Cause: a.Cause, ExitCode: a.ExitCode, Signal: a.Signal, PeakRSS: a.PeakRSS, Message: a.Message,
			Crowded: a.Crowded,
		})
	}
	return res
}

// attemptRecords converts a local pool's attempts, numbering them after
// the charged attempts the task had before (base).
func attemptRecords(agent string, base int, as []pool.Attempt) []AttemptRecord {
	out := make([]AttemptRecord, 0, len(as))
	for _, a := range as {
		out = append(out, AttemptRecord{
			Number: base + a.Number, Agent: agent, WorkerPID: a.WorkerPID, Start: a.Start, End: a.End,
			Cause: a.Cause, ExitCode: a.ExitCode, Signal: a.Signal, PeakRSS: a.PeakRSS, Message: a.Message,
			Crowded: a.Crowded,
		})
	}
	return out
}

// Argv is an argument vector as it travels in records. JSON strings are
// UTF-8, and encoding/json would replace other bytes (a Latin-1 file name)
// with U+FFFD: an argument that is not valid UTF-8 travels as an object
// {"bytes": base64} instead, so that every agent runs the same bytes. A
// vector of UTF-8 arguments is a plain array of strings.
type Argv []string

// argBytes is the form of an argument that is not valid UTF-8.
type argBytes struct {
	Bytes []byte `json:"bytes"`
}

// MarshalJSON encodes v, each argument as a string or, if it is not valid
// UTF-8, as its bytes.
func (v Argv) MarshalJSON() ([]byte, error) {
	if v == nil {
		return []byte("null"), nil
	}
	out := make([]any, len(v))
	for i, a := range v {
		if utf8.ValidString(a) {
			out[i] = a
		} else {
			out[i] = argBytes{Bytes: []byte(a)}
		}
	}
	return json.Marshal(out)
}

// UnmarshalJSON decodes what MarshalJSON encodes.
func (v *Argv) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	if raw == nil {
		*v = nil
		return nil
	}
	out := make(Argv, len(raw))
	for i, r := range raw {
		if len(r) > 0 && r[0] == '{' {
			var ab argBytes
			if err := json.Unmarshal(r, &ab); err != nil {
				return fmt.Errorf("argument %d: %w", i, err)
			}
			out[i] = string(ab.Bytes)
			continue
		}
		if err := json.Unmarshal(r, &out[i]); err != nil {
			return fmt.Errorf("argument %d: %w", i, err)
		}
	}
	*v = out
	return nil
}

// unmarshal decodes a JSON record.
func unmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// marshal encodes a record.
func marshal(v any) ([]byte, error) { return json.Marshal(v) }
