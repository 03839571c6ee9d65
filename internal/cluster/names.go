// Package cluster shares a safepool run among many machines through NATS
// JetStream: the server (embedded in the safepool binary, or any NATS
// deployment), the agents that run tasks on a local supervised pool, and the
// submitter that publishes a run's tasks and collects their results.
//
// A work-queue stream carries tasks, one subject per memory class; agents
// pull only from the classes that fit their memory and only as many tasks
// as they have free slots and memory for. Each task's result is recorded in
// a key-value bucket with create-if-absent, so exactly one result is kept
// per task however many times it ran. docs/cluster.md describes the whole.
package cluster

import (
	"fmt"
	"strings"
	"time"
)

// Names of the JetStream objects a run uses. They are part of safepool's
// interface: every agent and submitter of one deployment must agree.
const (
	// StreamName is the work-queue stream of tasks.
	StreamName = "SAFEPOOL_TASKS"
	// subjectPrefix starts every task subject: safepool.task.<class>.<run>.
	subjectPrefix = "safepool.task"
	// RunsBucket holds each run's specification, by run id.
	RunsBucket = "safepool-runs"
	// ResultsBucket holds each task's one result, by <run>.<seq>.
	ResultsBucket = "safepool-results"
	// AttemptsBucket holds a task's charged attempts on earlier
	// deliveries, by <run>.<seq>, while it is handed from machine to
	// machine.
	AttemptsBucket = "safepool-attempts"
	// AgentsBucket holds each live agent's capacity, by agent name; an
	// entry expires when its agent stops refreshing it.
	AgentsBucket = "safepool-agents"
)

const (
	// AckWait is how long a delivered task may go without a word from its
	// agent (an ack, or InProgress while it runs) before JetStream gives
	// it to another agent: the time to notice a lost machine.
	AckWait = 6 * time.Second
	// progressEvery is how often an agent says InProgress for each task it
	// holds; a third of AckWait leaves two chances to be heard.
	progressEvery = AckWait / 3
	// agentTTL is how long an agent's capacity stays advertised without a
	// refresh; agents refresh it every agentTTL/3.
	agentTTL = 15 * time.Second
	// dedupWindow is how long JetStream remembers a published task id, so
	// that a publish retried after a lost acknowledgement, or a submitter
	// restarted with the same run id, does not queue a task twice.
	dedupWindow = time.Hour
	// resultsTTL is how long results are kept after they are recorded.
	resultsTTL = 7 * 24 * time.Hour
)

// Memory classes. A task's memory need puts it in one class; class k holds
// the needs up to classBase<<k (class 0 also the tasks with no stated need).
// An agent pulls from class k only when classBase<<k fits its capacity, so
// a task reaches only agents where its need fits.
const (
	classBase = 64 << 20
	// MaxClass is the largest class: needs up to 64 MiB << 20 (64 TiB).
	MaxClass = 20
)

// ClassOf returns the memory class of a task that needs need bytes.
func ClassOf(need int64) int {
	for k := 0; k < MaxClass; k++ {
		if need <= classBound(k) {
			return k
		}
	}
	return MaxClass
}

// classBound is the largest need in class k.
func classBound(k int) int64 { return int64(classBase) << k }

// ClassBound returns the largest need, in bytes, of memory class k.
func ClassBound(k int) int64 { return classBound(k) }

// FitClass returns the largest class whose every task fits an agent with
// capacity bytes for one task: 0 when even class 0's bound does not fit,
// since an agent takes tasks with no stated need whatever its size.
func FitClass(capacity int64) int {
	k := 0
	for k < MaxClass && classBound(k+1) <= capacity {
		k++
	}
	return k
}

// taskSubject is the subject of run's tasks in class k.
func taskSubject(k int, run string) string {
	return fmt.Sprintf("%s.%d.%s", subjectPrefix, k, run)
}

// consumerName is the durable pull consumer of class k, shared by every
// agent that fits it. A work-queue stream needs consumers whose filters do
// not overlap: one per class does.
func consumerName(k int) string { return fmt.Sprintf("class-%d", k) }

// taskKey is the key of a task in the results and attempts buckets.
func taskKey(run string, seq uint64) string { return fmt.Sprintf("%s.%d", run, seq) }

// msgID is the de-duplication id of a task's message in class k: the same
// task published twice into one class is queued once, and a task moved to
// a larger class is a new message.
func msgID(run string, seq uint64, k int) string { return fmt.Sprintf("%s.%d.c%d", run, seq, k) }

// CheckRunID reports an error unless id can name a run: letters, digits,
// '-' and '_', as NATS subjects and keys allow, at most 64 bytes.
func CheckRunID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("cluster: run id must be 1 to 64 characters, not %d", len(id))
	}
	if i := strings.IndexFunc(id, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}); i >= 0 {
		return fmt.Errorf("cluster: run id %q: only letters, digits, - and _ are allowed", id)
	}
	return nil
}
