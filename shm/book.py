"""Consolidated book arrays of one symbol, published under a seqlock in rotating slots.

Layout (after the segment header): a 64-byte control line holding ``generation`` (the
number of the last complete publish), then ``slots`` copies of :func:`book_slot_dtype`.
Publish number ``g`` goes to slot ``g % slots``.

Writer (the aggregator, one per symbol): take slot ``(generation + 1) % slots``, make its
``seq`` odd, write every field, make ``seq`` even again, then store the new
``generation``. Reader: load ``generation``, load that slot's ``seq`` (odd → retry),
read, load ``seq`` again (changed → retry). Stores are published in program order and
loads are not reordered with loads (``shm.ordering`` point 2), so a reader that sees the
same even ``seq`` twice has read one complete publish, never a torn book.

Why slots rather than one seqlocked buffer: a reader can keep a zero-copy view of the
newest slot and the writer will not touch that slot for the next ``slots - 1``
publishes, so a model process can read in place and only check
:meth:`BookSnapshotView.valid` at the end (or take a copy with :meth:`BookReader.snapshot`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from shm.segment import CACHE_LINE, Segment, SegmentKind

LAYOUT_VERSION = 1


def book_slot_dtype(depth: int, exchanges: int) -> np.dtype:
    """One complete consolidated book plus per-exchange status, as one record."""
    sides = []
    for side in ("bid", "ask"):
        sides += [
            (f"{side}_price", "<f8", (depth,)),
            (f"{side}_size", "<f8", (depth,)),
            (f"{side}_orders", "<u4", (depth,)),  # 0 = no exchange reports counts there
            (f"{side}_exchange_size", "<f8", (depth, exchanges)),
        ]
    return np.dtype(
        [
            ("seq", "<u8"),
            ("generation", "<u8"),
            ("publish_ts", "<i8"),  # ns, when the aggregator published this book
            ("records_applied", "<u8"),  # records applied to this symbol so far
            ("bid_levels", "<u4"),
            ("ask_levels", "<u4"),
            *sides,
            # per exchange, indexed by exchange id
            ("exchange_status", "u1", (exchanges,)),  # shm.records.Status
            ("exchange_reason", "<u2", (exchanges,)),  # shm.records.Reason of the last change
            ("exchange_status_since", "<i8", (exchanges,)),  # ns
            ("exchange_best_bid", "<f8", (exchanges,)),
            ("exchange_best_bid_size", "<f8", (exchanges,)),
            ("exchange_best_ask", "<f8", (exchanges,)),
            ("exchange_best_ask_size", "<f8", (exchanges,)),
            ("exchange_bid_levels", "<u4", (exchanges,)),
            ("exchange_ask_levels", "<u4", (exchanges,)),
            ("exchange_sequence", "<u8", (exchanges,)),  # last exchange update id applied
            ("exchange_ts", "<i8", (exchanges,)),  # last exchange timestamp seen
            ("exchange_receive_ts", "<i8", (exchanges,)),
        ],
        align=True,
    )


def book_payload_size(depth: int, exchanges: int, slots: int) -> int:
    return CACHE_LINE + slots * book_slot_dtype(depth, exchanges).itemsize


class _BookSegment:
    def __init__(self, segment: Segment) -> None:
        depth, exchanges, slots = segment.params[:3]
        self.segment = segment
        self.name = segment.name
        self.depth, self.exchanges, self.slot_count = depth, exchanges, slots
        self.slot_dtype = book_slot_dtype(depth, exchanges)
        payload = segment.payload
        self._control = payload[:CACHE_LINE].cast("Q")
        self.slots = np.frombuffer(payload, dtype=self.slot_dtype, count=slots, offset=CACHE_LINE)
        self._seqs = [memoryview(self.slots[i : i + 1].view(np.uint64))[:1] for i in range(slots)]

    @property
    def generation(self) -> int:
        return self._control[0]

    def close(self) -> None:
        self._control.release()
        self._seqs = []
        self.slots = None
        self.segment.close()


class BookWriter(_BookSegment):
    """The aggregator's side: fill a slot, then publish it in one step."""

    @classmethod
    def create(
        cls, name: str, depth: int, exchanges: int, slots: int, owner_pid: int | None = None
    ) -> "BookWriter":
        if slots < 2:
            raise ValueError("a book needs at least two slots")
        segment = Segment.create(
            name,
            SegmentKind.BOOK,
            LAYOUT_VERSION,
            book_payload_size(depth, exchanges, slots),
            params=(depth, exchanges, slots),
            owner_pid=owner_pid,
        )
        return cls(segment)

    @classmethod
    def attach(cls, name: str) -> "BookWriter":
        return cls(Segment.attach(name, SegmentKind.BOOK, LAYOUT_VERSION, writable=True))

    def begin(self) -> np.void:
        """Open the next slot for writing (its seq goes odd) and return it."""
        generation = self._control[0] + 1
        index = generation % self.slot_count
        seq = self._seqs[index]
        seq[0] = seq[0] + 1  # odd: readers of this slot retry from now on
        self._pending = generation
        return self.slots[index]

    def end(self, slot: np.void) -> int:
        """Finish the slot opened by :meth:`begin` and make it the current book."""
        generation = self._pending
        slot["generation"] = generation
        slot["publish_ts"] = time.time_ns()
        seq = self._seqs[generation % self.slot_count]
        seq[0] = seq[0] + 1  # even: the slot is complete (after every data store)
        self._control[0] = generation  # publish (after the slot is complete)
        return generation


@dataclass(slots=True)
class BookSnapshotView:
    """Zero-copy view of one published book; trust it only while :meth:`valid` is True."""

    slot: np.void
    generation: int
    _seq_view: memoryview
    _seq: int

    def valid(self) -> bool:
        return self._seq_view[0] == self._seq


class BookReader(_BookSegment):
    """Any process's read-only side: consistent copies, or zero-copy views plus a check."""

    @classmethod
    def attach(cls, name: str) -> "BookReader":
        return cls(Segment.attach(name, SegmentKind.BOOK, LAYOUT_VERSION, writable=False))

    def view(self, retries: int = 1000) -> BookSnapshotView:
        """The current book in place (no copy); check ``valid()`` after reading it."""
        for _ in range(retries):
            generation = self._control[0]
            index = generation % self.slot_count
            seq_view = self._seqs[index]
            seq = seq_view[0]
            if seq & 1:
                continue
            slot = self.slots[index]
            if slot["generation"] != generation:
                continue
            return BookSnapshotView(slot, generation, seq_view, seq)
        raise TimeoutError(f"book {self.name!r}: writer kept every slot busy for {retries} tries")

    def snapshot(self, retries: int = 1000) -> np.void:
        """A private copy of the current book, guaranteed untorn."""
        for _ in range(retries):
            view = self.view(retries)
            copy = view.slot.copy()
            if view.valid():
                return copy
        raise TimeoutError(f"book {self.name!r}: could not copy a stable book in {retries} tries")
