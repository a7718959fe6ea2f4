"""Rolling feature tensor of one symbol: T rows × F float32, timestamps and row sequence.

Layout (after the segment header): a 64-byte control line holding ``rows_written``, then
``row_seq`` (uint64 × 2T), ``row_ts`` (int64 × 2T) and ``values`` (float32 × 2T × F).

Row number ``n`` (counting from 1) is written twice, at ``(n-1) % T`` and at
``(n-1) % T + T`` (a mirrored ring), so the newest K ≤ T rows are always one contiguous
block and a model gets them as a single zero-copy ``(K, F)`` view, wrap or not.

Writer: store ``row_seq[i] = 0`` for both copies (the row is being rewritten), write
values and timestamp, store ``row_seq[i] = n`` for both, then ``rows_written = n``.
Reader: load ``rows_written`` ``n``, view rows ``n-K+1 … n``, read them, then check that
``row_seq`` of the first and last row are still ``n-K+1`` and ``n`` (a row is only ever
overwritten by a newer one, so first-and-last intact means all intact). Ordering is
``shm.ordering`` point 2: data before sequence, sequence before the count. After storing the
count the writer wakes readers asleep on it (:mod:`shm.wake`, :meth:`FeatureReader.wait_for_row`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from shm import wake
from shm.segment import CACHE_LINE, Segment, SegmentKind

LAYOUT_VERSION = 1


def features_payload_size(rows: int, width: int) -> int:
    return CACHE_LINE + 2 * rows * (8 + 8 + 4 * width)


class _FeatureSegment:
    def __init__(self, segment: Segment) -> None:
        rows, width, schema_version = segment.params[:3]
        self.segment = segment
        self.name = segment.name
        self.rows, self.width, self.schema_version = rows, width, schema_version
        payload = segment.payload
        self._payload = payload
        self._control = payload[:CACHE_LINE].cast("Q")
        offset = CACHE_LINE
        self.row_seq = np.frombuffer(payload, np.uint64, 2 * rows, offset)
        offset += 16 * rows
        self.row_ts = np.frombuffer(payload, np.int64, 2 * rows, offset)
        offset += 16 * rows
        self.values = np.frombuffer(payload, np.float32, 2 * rows * width, offset).reshape(2 * rows, width)

    @property
    def rows_written(self) -> int:
        return self._control[0]

    def close(self) -> None:
        self._control.release()
        self._payload = None
        self.row_seq = self.row_ts = self.values = None
        self.segment.close()


class FeatureWriter(_FeatureSegment):
    @classmethod
    def create(
        cls, name: str, rows: int, width: int, schema_version: int, owner_pid: int | None = None
    ) -> "FeatureWriter":
        segment = Segment.create(
            name,
            SegmentKind.FEATURES,
            LAYOUT_VERSION,
            features_payload_size(rows, width),
            params=(rows, width, schema_version),
            owner_pid=owner_pid,
        )
        return cls(segment)

    @classmethod
    def attach(cls, name: str) -> "FeatureWriter":
        return cls(Segment.attach(name, SegmentKind.FEATURES, LAYOUT_VERSION, writable=True))

    def append(self, values: np.ndarray, timestamp_ns: int) -> int:
        """Write the next row and return its sequence number."""
        number = self._control[0] + 1
        low = (number - 1) % self.rows
        high = low + self.rows
        row_seq = self.row_seq
        row_seq[low] = 0
        row_seq[high] = 0
        self.values[low] = values
        self.values[high] = values
        self.row_ts[low] = timestamp_ns
        self.row_ts[high] = timestamp_ns
        row_seq[low] = number
        row_seq[high] = number
        self._control[0] = number
        wake.wake(self._payload)  # readers asleep in wait_for_row
        return number


@dataclass(slots=True)
class FeatureWindow:
    """The newest rows as zero-copy views; trust them only while :meth:`valid` is True."""

    values: np.ndarray  # (K, F) float32
    timestamps: np.ndarray  # (K,) int64 ns
    sequences: np.ndarray  # (K,) uint64, consecutive
    last_sequence: int

    def valid(self) -> bool:
        count = len(self.sequences)
        return count == 0 or (
            self.sequences[0] == self.last_sequence - count + 1 and self.sequences[-1] == self.last_sequence
        )


class FeatureReader(_FeatureSegment):
    @classmethod
    def attach(cls, name: str) -> "FeatureReader":
        return cls(Segment.attach(name, SegmentKind.FEATURES, LAYOUT_VERSION, writable=False))

    def wait_for_row(self, after_seq: int, timeout_s: float) -> int | None:
        """Sleep until a row newer than ``after_seq`` is complete and return the newest row's
        sequence, or None after ``timeout_s``: one futex wake-up from the writer's append, no
        message (needs :data:`shm.wake.CAN_WAIT`; otherwise wait on the features doorbell)."""
        deadline = time.monotonic() + timeout_s
        while (newest := int(self._control[0])) <= after_seq:
            left = deadline - time.monotonic()
            if left <= 0.0:
                return None
            wake.wait_any([(self._payload, newest)], left)
        return newest

    def latest(self, count: int) -> FeatureWindow:
        """The newest ``min(count, rows_written, T)`` rows, in order, without copying."""
        if count > self.rows:
            raise ValueError(f"at most {self.rows} rows are kept, asked for {count}")
        last = self._control[0]
        count = min(count, last)
        start = (last - count) % self.rows
        block = slice(start, start + count)
        return FeatureWindow(self.values[block], self.row_ts[block], self.row_seq[block], last)
