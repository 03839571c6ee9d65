package cluster

import (
	"fmt"
	"time"

	"github.com/safepool/safepool/internal/bytesize"
	"github.com/safepool/safepool/pool"
)

// What an agent does with a task when its local pool has given the task's
// result: one pure function, decide, with its plumbing in the agent.
//
//	local result                         | move
//	-------------------------------------+----------------------------------
//	done                                 | record done, ack
//	cancelled (the agent is stopping)    | nak at once, nothing charged
//	crowded out (oom, alone, others held | as a death below: its need and
//	  the memory it lacked), not Skip,   |   class unchanged, note the
//	  retries left                       |   attempts, nak with a backoff
//	crowded out, otherwise               | record failed (oom), term
//	memory (oom, memory-limit, poison),  | publish with a larger need into
//	  a live agent fits the next class   |   the next class, ack this one
//	memory, no live agent fits more      | record poison, term
//	death, not Skip, retries left        | note the attempts, nak with a
//	                                     |   backoff: any agent may take it
//	death, otherwise; task error         | record failed, term
//
// The local pool itself runs a task again here when the memory governor
// owns an OOM kill and the task had neighbours (with fewer neighbours), as
// on one machine; worker deaths are the run's, counted over every machine,
// so the local pool has no retries of its own. "Retries left" counts the
// task's charged worker deaths on every agent, memory deaths aside: as on
// one machine, a kill for memory does not count against --retries.
//
// A task crowded out (pool.Attempt.Crowded: killed for memory while it ran
// alone, because processes other than the agent's workers held what it
// lacked) says nothing of what it needs: on one machine it ends failed, not
// poison, and its need is not raised. Here it is not moved up a class nor
// recorded poison either; it is a worker death like any other, which the
// run's policy may retry, on whichever agent (this one too) takes it next,
// and which counts against --retries, so that a task no agent ever has the
// room for ends failed rather than goes round for ever.

// move is what an agent does with a task's message.
type move int

const (
	moveRecord  move = iota // record the result (state), then ack or term
	moveNak                 // nak with delay, after noting the attempts
	moveUp                  // republish with need into a larger class, then ack
	moveRelease             // nak at once, no attempt charged
)

// decision is decide's verdict.
type decision struct {
	move  move
	state pool.State    // moveRecord: the state recorded
	delay time.Duration // moveNak
	need  int64         // moveUp: the task's new need
	// crowded says the death was a crowding out (pool.Attempt.Crowded),
	// judged as a worker death, not as the task's own memory need.
	crowded bool
	// note, for a poison task no agent fits, says so for the summary.
	note string
}

// placement is what decide knows of the agents: this one's capacity for
// one task, and the largest class any live agent fits (-1: none known).
type placement struct {
	capacity     int64
	largestClass int
	largestCap   int64
}

// MaxLost is how many times a task may be lost with the agent that ran it
// (the agent killed, or cut off for AckWait) before it is recorded failed
// with CauseAgentLost rather than handed to the next agent: a task that
// kills whatever machine runs it would otherwise take down agent after
// agent. It does not count against --retries, which a lost machine's
// tasks do not spend.
const MaxLost = 3

// CauseAgentLost is the cause of a delivery whose agent took the task and
// was not heard of again about it.
const CauseAgentLost pool.Cause = "agent-lost"

// isMemory reports whether an attempt that ended with c was killed for
// memory.
func isMemory(c pool.Cause) bool { return c == pool.CauseOOM || c == pool.CauseMemoryLimit }

// deathsOf counts the charged worker deaths among as, memory kills aside
// but crowdings out counted.
func deathsOf(as []AttemptRecord) int {
	n := 0
	for _, a := range as {
		if a.Cause.IsWorkerDeath() && (!isMemory(a.Cause) || a.Crowded) {
			n++
		}
	}
	return n
}

// decide says what becomes of a task whose local result is state, with
// its last cause, and crowded when its last attempt was crowded out
// (pool.Attempt.Crowded), given every attempt so far (earlier deliveries
// and this one) and the run's policy.
func decide(state pool.State, cause pool.Cause, crowded bool, need int64, all []AttemptRecord, spec *RunSpec, pl placement) decision {
	switch {
	case state == pool.Done:
		return decision{move: moveRecord, state: pool.Done}
	case state == pool.Cancelled:
		return decision{move: moveRelease}
	case crowded && state != pool.Poison:
		if d := deathsOf(all); spec.OnWorkerDeath != pool.Skip && d <= spec.Retries {
			return decision{move: moveNak, delay: backoff(d), crowded: true}
		}
		return decision{move: moveRecord, state: pool.Failed, crowded: true}
	case state == pool.Poison || isMemory(cause):
		// At least one class up: a message published again into its own
		// class has the message id of the one being answered, which
		// JetStream drops as a duplicate, and the task was lost (an agent
		// of --mem-limit 32MiB, below class 0's 64 MiB, did so).
		next := max(need, pl.capacity+1, classBound(ClassOf(need))+1)
		if pl.largestClass >= ClassOf(next) && ClassOf(next) <= MaxClass && pl.capacity < classBound(MaxClass) {
			return decision{move: moveUp, need: next}
		}
		note := fmt.Sprintf("killed for memory with %s, on the largest agent", bytesize.Format(pl.capacity))
		if pl.largestCap > pl.capacity {
			note = fmt.Sprintf("killed for memory with %s; no agent can give it more than %s per task",
				bytesize.Format(pl.capacity), bytesize.Format(pl.largestCap))
		}
		return decision{move: moveRecord, state: pool.Poison, note: note}
	case cause.IsWorkerDeath() && spec.OnWorkerDeath != pool.Skip:
		// Under Abort too, as on one machine: the run stops for a task
		// that failed every attempt.
		if d := deathsOf(all); d <= spec.Retries {
			return decision{move: moveNak, delay: backoff(d)}
		}
	}
	return decision{move: moveRecord, state: pool.Failed}
}

// backoff is the delay before a task's next delivery after its n-th death:
// 50 ms doubling to at most 5 s, as on one machine.
func backoff(n int) time.Duration {
	d := 50 * time.Millisecond
	for i := 1; i < n && d < 5*time.Second; i++ {
		d *= 2
	}
	return min(d, 5*time.Second)
}
