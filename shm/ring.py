"""Single-producer single-consumer ring of :data:`shm.records.RECORD_DTYPE` records.

Layout (after the 256-byte segment header; each control line on its own cache line so
producer and consumer never write the same line):

- producer line: ``write_idx``, ``producer_pid``, ``producer_epoch``,
  ``dropped_records``, ``dropped_batches``
- consumer line: ``read_idx``, ``consumer_pid``, ``consumer_waiting``,
  ``resnapshot_requests``, ``high_water`` (the largest backlog the consumer found)
- ``capacity`` records (a power of two), indexed by ``idx & (capacity - 1)``.

Indices are monotonically increasing 64-bit record counts, never wrapped, so
``write_idx - read_idx`` is the fill and there is no full/empty ambiguity.

Contracts:

- **Never a silent overwrite.** A batch that does not fit is refused whole
  (``write`` returns False) and counted in ``dropped_records``/``dropped_batches``. A
  consumer learns it missed records from :meth:`Ring.take_missed`; the producer, which
  got False, re-sends a full snapshot of every book once there is room. Batches are
  all-or-nothing, so a consumer never sees part of a snapshot.
- **Publish after data.** The producer copies the records, then stores ``write_idx``;
  the consumer loads ``write_idx``, then reads records (``shm.ordering`` point 2).
  Records a consumer has been handed stay untouched until it calls :meth:`commit`.
- **Doorbell without busy-spinning.** A consumer with nothing to read stores
  ``consumer_waiting = 1``, fences, re-checks, then sleeps on its doorbell; a producer
  stores ``write_idx``, fences, and rings only if the consumer is waiting
  (``shm.ordering`` point 3). The doorbell itself is the owner's business (a callable).
- **Two producer implementations, one protocol.** ``shm/_fastring.c`` (an optional C
  extension, used by :meth:`Ring.become_producer` when it was built) and the Python
  :meth:`Ring.write` below write the same layout the same way; the C one uses C11
  release stores and a seq_cst fence. ``COBY_PURE_PYTHON_RING=1`` forces the Python one.
- **Consumer restarts.** A new consumer has lost its state; it calls
  :meth:`request_resnapshot`, which skips what is queued and asks the producer (who
  checks :meth:`take_resnapshot_request`) for fresh snapshots of every book.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from shm.ordering import full_fence
from shm.records import RECORD_DTYPE
from shm.segment import CACHE_LINE, Segment, SegmentKind

try:
    from shm import _fastring
except ImportError:  # built without a C compiler: the pure-Python producer below is used
    _fastring = None
if os.environ.get("COBY_PURE_PYTHON_RING"):
    _fastring = None

LAYOUT_VERSION = 2

_CONTROL_SIZE = 2 * CACHE_LINE
_Q = CACHE_LINE // 8  # uint64 slots per cache line

# Producer line (uint64 slot indices).
WRITE_IDX, PRODUCER_PID, PRODUCER_EPOCH, DROPPED_RECORDS, DROPPED_BATCHES = range(5)
# Consumer line.
READ_IDX, CONSUMER_PID, CONSUMER_WAITING, RESNAPSHOT_REQUESTS, HIGH_WATER = (_Q + i for i in range(5))

_EMPTY = np.empty(0, dtype=RECORD_DTYPE)
_RECORD_SIZE = RECORD_DTYPE.itemsize


def ring_payload_size(capacity: int) -> int:
    return _CONTROL_SIZE + capacity * RECORD_DTYPE.itemsize


class Ring:
    """One side's handle on a ring segment (producer or consumer; both may attach)."""

    def __init__(self, segment: Segment) -> None:
        (capacity, record_size, *_) = segment.params
        if record_size != RECORD_DTYPE.itemsize:
            raise ValueError(f"ring {segment.name!r} holds {record_size}-byte records, expected 64")
        self.segment = segment
        self.name = segment.name
        self.capacity = capacity
        self._mask = capacity - 1
        self._byte_capacity = capacity * _RECORD_SIZE
        payload = segment.payload
        self._control = payload[:_CONTROL_SIZE].cast("Q")
        # write_idx as bytes: a consumer can sleep on it (a futex, shm.wake) and a producer wake it
        self.write_word = payload[WRITE_IDX * 8 : WRITE_IDX * 8 + 8]
        self.records = np.frombuffer(payload, dtype=RECORD_DTYPE, count=capacity, offset=_CONTROL_SIZE)
        # Writes go through a byte view: numpy copies structured dtypes field by field
        # (~4 µs a batch), raw bytes in one memcpy (~0.5 µs); measured in bench/ring.py.
        self._bytes = memoryview(self.records.view(np.uint8))
        self._write = self._control[WRITE_IDX]
        self._read = self._control[READ_IDX]
        self._seen_dropped = self._control[DROPPED_RECORDS]
        self._seen_resnapshot = self._control[RESNAPSHOT_REQUESTS]
        self._read_seen = self._read
        self._high_water = self._control[HIGH_WATER]
        self._doorbell: Callable[[], None] | None = None
        self._fast: "_fastring.Producer | None" = None

    @classmethod
    def create(cls, name: str, capacity: int, owner_pid: int | None = None) -> "Ring":
        if capacity < 2 or capacity & (capacity - 1):
            raise ValueError(f"ring capacity must be a power of two, got {capacity}")
        segment = Segment.create(
            name,
            SegmentKind.RING,
            LAYOUT_VERSION,
            ring_payload_size(capacity),
            params=(capacity, RECORD_DTYPE.itemsize),
            owner_pid=owner_pid,
        )
        return cls(segment)

    @classmethod
    def attach(cls, name: str) -> "Ring":
        return cls(Segment.attach(name, SegmentKind.RING, LAYOUT_VERSION, writable=True))

    # ---- producer side -------------------------------------------------------------

    def become_producer(self) -> None:
        """Claim the producer role (a restarted connector continues at ``write_idx``).

        With the C extension, ``write``, ``write_records`` and ``free`` become the C producer's
        own methods: one call per batch (~0.3 µs) instead of ~1 µs of Python bookkeeping.
        """
        self._write = self._control[WRITE_IDX]
        self._read_seen = self._control[READ_IDX]
        self._seen_resnapshot = self._control[RESNAPSHOT_REQUESTS]
        self._control[PRODUCER_PID] = os.getpid()
        self._control[PRODUCER_EPOCH] += 1
        if _fastring is not None:
            self._fast = _fastring.Producer(self.segment.payload, self.capacity, RECORD_DTYPE)
            self._fast.doorbell = self._doorbell
            self.write = self._fast.write
            self.write_records = self._fast.write_records
            self.free = self._fast.free

    @property
    def doorbell(self) -> Callable[[], None] | None:
        """Called after a write when the consumer has announced it is going to sleep."""
        return self._doorbell

    @doorbell.setter
    def doorbell(self, ring: Callable[[], None] | None) -> None:
        self._doorbell = ring
        if self._fast is not None:
            self._fast.doorbell = ring

    @property
    def write_path(self) -> str:
        """Which producer implementation this handle writes with: "c" or "python"."""
        return "c" if self._fast is not None else "python"

    def free(self) -> int:
        return self.capacity - (self._write - self._control[READ_IDX])

    def write(self, batch: np.ndarray) -> bool:
        """Append a whole batch, or nothing (counted as dropped) if it does not fit."""
        if batch.dtype is not RECORD_DTYPE and batch.dtype != RECORD_DTYPE:
            raise TypeError(f"ring records must have RECORD_DTYPE, got {batch.dtype}")
        return self._append(np.frombuffer(batch, np.uint8), len(batch))

    def write_records(self, buffer: bytearray | memoryview, count: int) -> bool:
        """Append the first ``count`` records of a buffer of packed ``RECORD_DTYPE`` records
        (a connector's delta scratch), as :meth:`write` appends a batch."""
        if count < 0 or count * _RECORD_SIZE > len(buffer):
            raise ValueError(f"{count} records do not fit a buffer of {len(buffer)} bytes")
        with memoryview(buffer) as view, view[: count * _RECORD_SIZE] as records:
            return self._append(records, count)

    def _append(self, data: np.ndarray | memoryview, count: int) -> bool:
        """The ``count`` records ``data`` holds (their bytes, exactly), or nothing if they do not fit."""
        write = self._write
        control = self._control
        if write + count - self._read_seen > self.capacity:
            # Reload the consumer's index only when the cached one says "full": reading its
            # cache line on every write costs a cross-core transfer (measured in bench/ring.py).
            self._read_seen = control[READ_IDX]
            if write + count - self._read_seen > self.capacity:
                if count > self.capacity:
                    raise ValueError(f"a batch of {count} records can never fit a ring of {self.capacity}")
                control[DROPPED_RECORDS] += count
                control[DROPPED_BATCHES] += 1
                return False
        start = (write & self._mask) * _RECORD_SIZE
        end = start + count * _RECORD_SIZE
        if end <= self._byte_capacity:
            self._bytes[start:end] = data
        else:
            split = self._byte_capacity - start
            self._bytes[start:] = data[:split]
            self._bytes[: end - self._byte_capacity] = data[split:]
        write += count
        self._write = write
        control[WRITE_IDX] = write  # publish after the records (ordering point 2)
        if self._doorbell is not None:
            full_fence()  # store write_idx → load consumer_waiting (ordering point 3)
            if control[CONSUMER_WAITING]:
                self._doorbell()
        return True

    def take_resnapshot_request(self) -> bool:
        """True once per consumer request for fresh snapshots of every book."""
        requests = self._control[RESNAPSHOT_REQUESTS]
        if requests != self._seen_resnapshot:
            self._seen_resnapshot = requests
            return True
        return False

    # ---- consumer side -------------------------------------------------------------

    def become_consumer(self) -> None:
        self._read = self._control[READ_IDX]
        self._seen_dropped = self._control[DROPPED_RECORDS]
        self._high_water = self._control[HIGH_WATER]
        self._control[CONSUMER_PID] = os.getpid()

    def available(self) -> int:
        return self._control[WRITE_IDX] - self._read

    @property
    def read_position(self) -> int:
        """The index (records consumed since the ring was created) of the next record :meth:`read` returns."""
        return int(self._read)

    def read(self, max_records: int | None = None) -> np.ndarray:
        """A zero-copy view of the next contiguous run of records (may stop at the wrap).

        The view stays valid until :meth:`commit`; call ``read`` again after committing
        to get the part past the wrap.
        """
        available = self._control[WRITE_IDX] - self._read  # load index before records
        if available == 0:
            return _EMPTY
        self._note_backlog(available)
        start = self._read & self._mask
        count = min(available, self.capacity - start)
        if max_records is not None:
            count = min(count, max_records)
        return self.records[start : start + count]

    def _note_backlog(self, available: int) -> None:
        if available > self._high_water:
            self._high_water = available
            self._control[HIGH_WATER] = available

    def commit(self, count: int) -> None:
        """Hand ``count`` records back to the producer."""
        self._read += count
        self._control[READ_IDX] = self._read

    def drain(self, max_records: int | None = None) -> np.ndarray:
        """Copy out and commit everything available (both sides of the wrap)."""
        available = self.available()
        if available == 0:
            return _EMPTY
        self._note_backlog(available)
        if max_records is not None:
            available = min(available, max_records)
        start = self._read & self._mask
        end = start + available
        if end <= self.capacity:
            out = self.records[start:end].copy()
        else:
            out = np.concatenate((self.records[start:], self.records[: end - self.capacity]))
        self.commit(available)
        return out

    def take_missed(self) -> int:
        """Records the producer had to drop since the last call (0 if none)."""
        dropped = self._control[DROPPED_RECORDS]
        missed = dropped - self._seen_dropped
        self._seen_dropped = dropped
        return missed

    def prepare_to_wait(self) -> bool:
        """Announce a sleep; False if records arrived meanwhile (then do not sleep)."""
        self._control[CONSUMER_WAITING] = 1
        full_fence()  # store consumer_waiting → load write_idx (ordering point 3)
        if self._control[WRITE_IDX] != self._read:
            self._control[CONSUMER_WAITING] = 0
            return False
        return True

    def done_waiting(self) -> None:
        self._control[CONSUMER_WAITING] = 0

    def request_resnapshot(self) -> None:
        """Skip everything queued and ask the producer for fresh snapshots of every book."""
        self._read = self._control[WRITE_IDX]
        self._control[READ_IDX] = self._read
        self._control[RESNAPSHOT_REQUESTS] += 1

    # ---- observation (supervisor, status) -------------------------------------------

    def stats(self) -> dict[str, int]:
        control = self._control
        write, read = control[WRITE_IDX], control[READ_IDX]
        return {
            "capacity": self.capacity,
            "fill": write - read,
            "written_records": write,
            "dropped_records": control[DROPPED_RECORDS],
            "dropped_batches": control[DROPPED_BATCHES],
            "high_water": control[HIGH_WATER],
            "producer_pid": control[PRODUCER_PID],
            "producer_epoch": control[PRODUCER_EPOCH],
            "consumer_pid": control[CONSUMER_PID],
        }

    def close(self) -> None:
        self.__dict__.pop("write", None)
        self.__dict__.pop("write_records", None)
        self.__dict__.pop("free", None)
        self._fast = None
        self._control.release()
        self._bytes.release()
        self.records = None
        self.segment.close()
