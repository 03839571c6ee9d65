"""The protocol constants that the client (_core, _launch) and the worker
(worker) share: the frame header, the kinds of the framed worker protocol
and of the bridge protocol, and the layout of a task's payload and of its
answer. docs/protocol.md specifies both protocols.

Imports only struct (and sys): every worker imports it before it is ready.
"""
import struct
import sys

# Every frame: payload length (uint32), kind (uint8), id (uint64), big-endian.
HEADER = struct.Struct(">IBQ")

# The framed worker protocol (framed/1): worker <-> safepool binary.
FRAMED = "framed/1"
READY, TASK, START, RESULT, ERROR, HEARTBEAT = 1, 2, 3, 4, 5, 6
# framed/2: batch tasks, answered item by item.
BATCH, ITEM, ITEM_ERROR = 7, 8, 9
# framed/3: answers of a range of a batch's items in one frame, and the
# running-item page.
ITEMS = 10
# The worker's ready payload: it takes batches (framed/2 where it has no
# running-item page, framed/4, the page with its bias word, where it has).
READY_PAYLOAD_V2 = b'{"version":2,"sdk":"python"}'
READY_PAYLOAD = b'{"version":4,"sdk":"python"}'
# The item count and item indexes of a batch frame, the index that starts
# the payload of a batch's start, item and item-error frames.
INDEX = struct.Struct(">I")
# Set in a batch frame's count (framed/3): its items are a range, and the
# count is followed by the first index alone, not by the list of indexes.
BATCH_RANGE = 1 << 31
# The head of an items frame's payload: its first item's index, its count.
RANGE = struct.Struct(">II")
# The running-item page: its size, the environment variable that names its
# descriptor, and, as native words, the id of the batch running (uint64 at
# byte 0), the mark of its item running (uint32 at byte 8) and the bias
# (uint32 at byte 12, framed/4): the item's position is the mark minus the
# bias.
PAGE_SIZE = 4096
PAGE_FD = "SAFEPOOL_PAGE_FD"
PAGE_POS = 2  # the position's index in the page's uint32 words
PAGE_NONE = 0xFFFFFFFF
# The page's mark (offset 8) and bias (offset 12) as one 8-byte word, the
# second of the page's uint64 words: a worker changes the bias in the same
# store as the mark (framed/4).
PAGE_WORD = 1
# The time paused (uint64 nanoseconds at byte 16), the third of the page's
# uint64 words: the binary adds each pause of the worker to it before it
# continues the worker.
PAGE_PAUSED = 2
_BIAS_SHIFT = 32 if sys.byteorder == "little" else 0


def page_word(mark: int, bias: int) -> int:
    """The 8-byte word of mark and bias, in the machine's byte order."""
    return (mark << (32 - _BIAS_SHIFT)) | (bias << _BIAS_SHIFT)


# The bridge protocol: client <-> safepool binary.
BRIDGE_VERSION = 5
K_HELLO, K_TASK, K_CLOSE, K_ABORT, K_TASK_META, K_BATCH = 1, 2, 3, 4, 5, 6
K_READY, K_RESULT, K_END, K_ITEMS, K_NOTICE = 16, 17, 18, 19, 20
# The length of the JSON before the payload of task+ and result frames.
META_LEN = struct.Struct(">I")
# A batch frame's head: its item count and the length of its JSON options.
BATCH_HEAD = struct.Struct(">II")
# One entry of an items frame: its item's index, its span (0 for one item;
# for a range of items, how many: in a done frame, a range whose values its
# output holds as one pickled list; in another state (bridge/5), a run of
# items that each have the entry's output, such as cancelled ones), its
# output's size, and the start and end of its last run.
ITEM_ENTRY = struct.Struct(">IIIdd")

# A task's payload is the pickled tuple (mode, function, item) or (mode,
# function, item, limits): mode says how the item is passed to the function.
# A batch's payload is the same with the list of its items in place of item.
MAP, STAR, APPLY = 0, 1, 2
# A task's answer in a result frame is the pickled (OK, value) or (RAISED,
# record): the function returned, or raised an exception that is not to be
# retried. An exception to be retried (task_error_retries, retry_on) is an
# error frame whose payload is its text, NUL (ERROR_RECORD) and the pickled
# record, so that the binary retries the task and, when none is left, sends
# the payload back whole.
OK, RAISED = 0, 1
ERROR_RECORD = b"\0"

# The pool clock (docs/protocol.md, "The pool clock"): a clock that stands
# still while the binary keeps the pool paused for a stopped client, which
# wait_timeout counts on. The client makes its file (CLOCK_SIZE bytes of a
# memory file), names it in the hello ("clock") and to its workers
# (CLOCK_ENV); the binary alone writes its one 8-byte word, in the
# machine's byte order: bit 63 clear, the nanoseconds the pool has been
# paused (the clock reads CLOCK_MONOTONIC minus them); bit 63 set, the
# clock's reading in nanoseconds, standing still (the pool is paused).
CLOCK_ENV = "SAFEPOOL_PY_CLOCK"
CLOCK_SIZE = 8
CLOCK_PAUSED = 1 << 63


def clock_now(word, monotonic_ns) -> float:
    """The pool clock's reading in seconds. word is the clock's word (a
    one-word memoryview), or None without a pool clock: the clock is then
    CLOCK_MONOTONIC, as that of a pool never paused."""
    # CLOCK_MONOTONIC first, the word second: a thread stopped between
    # the two gets an earlier reading of the clock, never a later one.
    now = monotonic_ns()
    if word is None:
        return now / 1e9
    w = word[0]
    if w & CLOCK_PAUSED:
        return (w & ~CLOCK_PAUSED) / 1e9
    return (now - w) / 1e9
