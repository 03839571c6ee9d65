-- The journal of safepool runs: one SQLite database (WAL mode) that one
-- consumer of the pool's event stream writes, and the span file next to it
-- (see span). Times are Unix nanoseconds;
-- sizes are bytes. A database may hold several runs: a run resumed with
-- --resume is a new row of run whose tasks skip what an earlier run of the
-- same journal finished.
--
-- Most tasks end done at their first attempt: those are written in bulk,
-- many to a row of span, with their keys and outputs in the span file.
-- Tasks a resumed run skips because an earlier run had them done are
-- written in bulk too, to rows of skip. Every other task (pending, failed,
-- poison, cancelled, skipped after a failure, done after a retry) has a
-- row of task of its own, with its attempts in attempt.

PRAGMA user_version = 3;

-- One row per invocation of `safepool run`, `safepool map` or a Python pool.
CREATE TABLE IF NOT EXISTS run (
	id           INTEGER PRIMARY KEY,
	started      INTEGER NOT NULL,
	ended        INTEGER,            -- NULL while running, or when the supervisor died
	kind         TEXT NOT NULL,      -- 'run', 'map' or 'python'
	command      TEXT NOT NULL,      -- the command template, or the Python function's qualified name
	argv         TEXT NOT NULL,      -- JSON array of the supervisor's arguments
	workers      INTEGER NOT NULL,   -- -j
	memory_mode  TEXT NOT NULL,      -- cgroup-v1, cgroup-v2, enclosing-cgroup, no-cgroup
	mem_budget   INTEGER,            -- the governor's budget, NULL when it is off
	mem_limit    INTEGER,            -- --mem-limit per worker, NULL when none
	exit_status  INTEGER,            -- the process's exit status, NULL until it ends
	resumed      INTEGER NOT NULL DEFAULT 0  -- 1 when run with --resume or --resume-failed: it skips what runs since the last run without them finished; 1 too for a Python pool's later call of a function it called before, which continues its first call's batch
);

-- One row per task of a run that is not in a span: written when it ends,
-- or as pending when it outlives a commit, and then updated when it ends
-- (or deleted, when it ends done at its first attempt: a span holds it).
CREATE TABLE IF NOT EXISTS task (
	run_id    INTEGER NOT NULL REFERENCES run(id),
	id        INTEGER NOT NULL,      -- the submission number in its run, from 1
	key       BLOB NOT NULL,         -- run and map: the input's 16-byte key (journal.KeyOf); python: hex SHA-256 text of the function and arguments
	input     BLOB,                  -- the input line (map --pipe: the block's bytes in the input, such as 'bytes 0-1048575'), or a short repr for Python
	state     TEXT NOT NULL,         -- 'pending', or the terminal state: done, failed, poison, cancelled, skipped (finished in an earlier run: done, or with --resume failed or poison, which cause then says)
	attempts  INTEGER NOT NULL DEFAULT 0,
	cause     TEXT,                  -- the last attempt's cause when not done
	peak      INTEGER,               -- highest PeakRSS over its attempts
	output    BLOB,                  -- for map, the output to replay on resume
	ended     INTEGER,
	PRIMARY KEY (run_id, id)
);
-- The index of tasks by key, task_key ON task(key, state), is made by the
-- first Python run that resumes, in bulk: Python looks tasks up by key
-- one at a time. Keys are random, so a run that kept it up to date would
-- touch a page of it at random for every task. Resume in Go reads the keys
-- of the runs it resumes at once, and needs no index.

-- Tasks done at their first attempt, many to a row: those a commit
-- writes, in the order they ended, up to 4096 to a row. Their rows are not
-- in task, nor their attempts in attempt, and their inputs are not kept.
-- Their keys and outputs, the bulk of a run of short tasks, are not in the
-- database but in the span file next to it (the journal's path with
-- "-spans" added), which a commit appends them to before the transaction
-- that adds their rows: each row says where its data lie in that file,
-- and their CRC-32C, so that data lost with the system's page cache (the
-- span file is not synced, as the WAL is not with synchronous=NORMAL) are
-- known as lost, and their tasks run again.
CREATE TABLE IF NOT EXISTS span (
	run_id     INTEGER NOT NULL REFERENCES run(id),
	first      INTEGER NOT NULL,     -- the id (as task.id) of its first task
	count      INTEGER NOT NULL,     -- how many tasks it holds
	ids        BLOB NOT NULL,        -- its tasks' ids in runs of consecutive ids: for each run, its first id less the id after the run before (the first: less first) as a zigzag varint, then its length as a varint
	parts      BLOB NOT NULL,        -- its tasks in parts that ran as one attempt (a block of lines, or one task), in order: for each, how many tasks, their attempt's time in microseconds and its PeakRSS in KiB (0: unknown), varints
	started    INTEGER NOT NULL,     -- the earliest start of their attempts
	ended      INTEGER NOT NULL,     -- the latest end of their attempts
	worker_pid INTEGER,              -- the worker that ran them all, or NULL when several did
	peak       INTEGER,              -- the highest PeakRSS of their attempts
	data_at    INTEGER NOT NULL,     -- where its data begin in the span file, in bytes
	data_size  INTEGER NOT NULL,     -- how many bytes they take
	data_crc   INTEGER NOT NULL      -- their CRC-32C (Castagnoli)
	-- The data: the row's run_id and first (varints), which a reader
	-- checks, so that data a crash lost and a later run wrote over are
	-- not taken for the row's; a byte that says how outputs are kept (0: they are not;
	-- 1: map's answer lines, each followed by a newline, none holding
	-- one; 2: map's outputs with their lengths), then for 2 the length of
	-- the lengths (a varint); each task's key (16 bytes each, in the
	-- order of ids); for 2 each output's length (varints); and the
	-- outputs one after the other, for resume to replay.
);
CREATE INDEX IF NOT EXISTS span_run ON span(run_id, first);

-- Tasks a resumed run skipped because an earlier run had them done, many
-- to a row: those a commit writes, up to 65536 to a row. They have no row
-- in task (a skipped task whose earlier run failed, with --resume, has
-- one, with its cause), and their keys and inputs are those of the
-- earlier run's rows.
CREATE TABLE IF NOT EXISTS skip (
	run_id     INTEGER NOT NULL REFERENCES run(id),
	first      INTEGER NOT NULL,     -- the id (as task.id) of its first task
	count      INTEGER NOT NULL,     -- how many tasks it holds
	ids        BLOB NOT NULL,        -- its tasks' ids, in runs as span.ids
	ended      INTEGER NOT NULL      -- when the last of them was skipped
);
CREATE INDEX IF NOT EXISTS skip_run ON skip(run_id, first);

-- One row per attempt of a task in task, as it ends.
CREATE TABLE IF NOT EXISTS attempt (
	run_id     INTEGER NOT NULL,
	task_id    INTEGER NOT NULL,
	number     INTEGER NOT NULL,
	worker_pid INTEGER NOT NULL,
	started    INTEGER NOT NULL,
	ended      INTEGER NOT NULL,
	cause      TEXT NOT NULL,        -- '' for success
	exit_code  INTEGER,
	signal     TEXT,
	peak       INTEGER,
	message    TEXT
);
CREATE INDEX IF NOT EXISTS attempt_task ON attempt(run_id, task_id);

-- Memory and concurrency over time, sampled while the run goes on.
CREATE TABLE IF NOT EXISTS sample (
	run_id     INTEGER NOT NULL,
	at         INTEGER NOT NULL,
	worker_pid INTEGER NOT NULL DEFAULT 0,  -- 0 for whole-pool series
	series     TEXT NOT NULL,        -- 'worker' (a worker's memory), 'total' (all workers), 'budget', 'limit', 'running' (attempts running), 'allowed' (concurrency the governor allows)
	value      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sample_run ON sample(run_id, at);

-- Everything else worth marking on the time axis: worker-started,
-- worker-exited, oom, preempted, retry, poison, stalled, out-of-step,
-- over-max-rss (a worker over map's --max-rss after its first task, once
-- per run), notice,
-- admission-wait (queued tasks began to wait for memory; task_id the head of
-- the queue) and admission-wait-ended (the governor admitted task_id).
CREATE TABLE IF NOT EXISTS event (
	run_id     INTEGER NOT NULL,
	at         INTEGER NOT NULL,
	kind       TEXT NOT NULL,
	task_id    INTEGER,
	worker_pid INTEGER,
	detail     TEXT
);
CREATE INDEX IF NOT EXISTS event_run ON event(run_id, at);
