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

Waking readers: after storing ``generation`` the writer wakes every process sleeping on it
(:mod:`shm.wake`: a futex on the generation word), so a reader can sleep until the next
publish of any of several books (:func:`wait_for_publish`) instead of waiting for a message
on the bus. Optional: where :data:`shm.wake.CAN_WAIT` is False readers use the bus.

Why slots rather than one seqlocked buffer: a reader can keep a zero-copy view of the
newest slot and the writer will not touch that slot for the next ``slots - 1``
publishes, so a model process can read in place and only check
:meth:`BookSnapshotView.valid` at the end (or take a copy with :meth:`BookReader.snapshot`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shm import wake
from shm.segment import CACHE_LINE, Segment, SegmentKind

LAYOUT_VERSION = 2


@dataclass(frozen=True, slots=True)
class BookLayout:
    """The sizes that fix a book segment's layout; stored in the segment header's params."""

    depth: int  # consolidated levels per side
    exchanges: int  # columns of every per-exchange array, indexed by exchange id
    slots: int
    bps_buckets: int = 100  # relative buckets per side
    absolute_buckets: int = 200  # fixed price bins around the mid
    imbalance_depths: int = 3
    depth_steps: int = 7

    @property
    def params(self) -> tuple[int, ...]:
        return (self.depth, self.exchanges, self.slots, self.bps_buckets, self.absolute_buckets,
                self.imbalance_depths, self.depth_steps)

    @classmethod
    def from_params(cls, params: tuple[int, ...]) -> "BookLayout":
        return cls(*params[:7])


def metrics_dtype(layout: BookLayout) -> np.dtype:
    """Microstructure metrics, computed on every published book (docs/metrics.md defines each)."""
    exchanges, steps = layout.exchanges, layout.depth_steps
    return np.dtype(
        [
            ("generation", "<u8"),  # the book generation they were computed on
            ("mid", "<f8"),
            ("vw_mid", "<f8"),
            ("spread", "<f8"),
            ("spread_bps", "<f8"),
            ("imbalance_bps", "<f8", (layout.imbalance_depths,)),
            ("imbalance", "<f8", (layout.imbalance_depths,)),
            ("depth_steps_bps", "<f8", (steps,)),
            ("bid_depth", "<f8", (steps,)),  # cumulative size within each depth step of the mid
            ("ask_depth", "<f8", (steps,)),
            ("dominance_bps", "<f8"),
            ("dominance", "<f8", (exchanges,)),
            ("cross_spread", "<f8"),
            ("cross_spread_bps", "<f8"),
            ("cross_bid_exchange", "<i2"),  # -1: fewer than two exchanges quote
            ("cross_ask_exchange", "<i2"),
            ("exchange_spread_bps", "<f8", (exchanges,)),
            ("total_bid_size", "<f8"),
            ("total_ask_size", "<f8"),
            ("total_bid_notional", "<f8"),
            ("total_ask_notional", "<f8"),
        ],
        align=True,
    )


def buckets_dtype(layout: BookLayout) -> np.dtype:
    """Price buckets, refreshed at ``buckets.refresh_ms`` (docs/metrics.md)."""
    exchanges, buckets, bins = layout.exchanges, layout.bps_buckets, layout.absolute_buckets
    per_side = []
    for side in ("bid", "ask"):
        per_side += [
            (f"{side}_bps_size", "<f8", (buckets,)),
            (f"{side}_bps_notional", "<f8", (buckets,)),
            (f"{side}_bps_orders", "<u4", (buckets,)),
            (f"{side}_bps_exchange_size", "<f8", (buckets, exchanges)),
            (f"{side}_abs_size", "<f8", (bins,)),
            (f"{side}_abs_notional", "<f8", (bins,)),
            (f"{side}_abs_orders", "<u4", (bins,)),
            (f"{side}_abs_exchange_size", "<f8", (bins, exchanges)),
        ]
    return np.dtype(
        [
            ("generation", "<u8"),  # the book generation they were computed on; 0 = never
            ("computed_ts", "<i8"),
            ("mid", "<f8"),  # the mid the relative buckets are measured from
            ("bps_width", "<f8"),
            ("abs_unit", "<f8"),  # 0: no absolute buckets for this instrument
            ("abs_first_price", "<f8"),
            *per_side,
        ],
        align=True,
    )


PRICE, SIZE, ORDERS, FIRST_EXCHANGE = 0, 1, 2, 3
"""Columns of a side's level matrix (``bids``/``asks``, best level first): price, total
size, total order count (exact integers; 0 where no exchange gives counts), then one
size column per exchange id. The aggregator keeps its working top in the same columns,
so a publish is one copy per side."""


def book_slot_dtype(layout: BookLayout) -> np.dtype:
    """One complete consolidated book, its analytics and per-exchange status, as one record."""
    depth, exchanges = layout.depth, layout.exchanges
    return np.dtype(
        [
            ("seq", "<u8"),
            ("generation", "<u8"),
            ("publish_ts", "<i8"),  # ns, when the aggregator published this book
            ("records_applied", "<u8"),  # records applied to this instrument so far
            ("bid_levels", "<u4"),  # rows of ``bids`` in use
            ("ask_levels", "<u4"),
            ("bids", "<f8", (depth, FIRST_EXCHANGE + exchanges)),
            ("asks", "<f8", (depth, FIRST_EXCHANGE + exchanges)),
            # per exchange, indexed by exchange id
            ("exchange_included", "u1", (exchanges,)),  # 1 = its levels are in this book
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
            ("metrics", metrics_dtype(layout)),
            ("buckets", buckets_dtype(layout)),
        ],
        align=True,
    )


def slot_field_run(dtype: np.dtype, names: Sequence[str]) -> tuple[slice, np.ndarray, dict[str, np.ndarray]]:
    """The run of a slot's bytes holding the fields ``names`` (from the first, rounded down to 8
    for alignment, to the end of the last), a private zeroed copy of that run, and each field's
    typed view into the copy: one byte copy then moves every field between a slot and the views."""
    record = dtype.fields
    start = min(record[name][1] for name in names) // 8 * 8
    stop = max(record[name][1] + record[name][0].itemsize for name in names)
    image = np.zeros(stop - start, dtype=np.uint8)
    views = {name: image[record[name][1] - start :][: record[name][0].itemsize].view(record[name][0].base)
             for name in names}
    return slice(start, stop), image, views


def book_payload_size(layout: BookLayout) -> int:
    return CACHE_LINE + layout.slots * book_slot_dtype(layout).itemsize


class _BookSegment:
    def __init__(self, segment: Segment) -> None:
        self.layout = BookLayout.from_params(segment.params)
        self.segment = segment
        self.name = segment.name
        self.depth, self.exchanges, self.slot_count = self.layout.depth, self.layout.exchanges, self.layout.slots
        self.slot_dtype = book_slot_dtype(self.layout)
        payload = segment.payload
        self._payload = payload
        self._control = payload[:CACHE_LINE].cast("Q")
        self.slots = np.frombuffer(payload, dtype=self.slot_dtype, count=self.slot_count, offset=CACHE_LINE)
        self._seqs = [memoryview(self.slots[i : i + 1].view(np.uint64))[:1] for i in range(self.slot_count)]
        # a slot's generation and publish_ts as memoryviews: a store is ~10x cheaper than on a np.void
        self._stamps = [(memoryview(self.slots["generation"][i : i + 1]), memoryview(self.slots["publish_ts"][i : i + 1]))
                        for i in range(self.slot_count)]

    @property
    def generation(self) -> int:
        return self._control[0]

    def close(self) -> None:
        self._control.release()
        self._payload = None
        self._seqs = []
        self._stamps = []
        self.slots = None
        self.segment.close()


class BookWriter(_BookSegment):
    """The aggregator's side: fill a slot, then publish it in one step."""

    @classmethod
    def create(cls, name: str, layout: BookLayout, owner_pid: int | None = None) -> "BookWriter":
        if layout.slots < 2:
            raise ValueError("a book needs at least two slots")
        segment = Segment.create(
            name,
            SegmentKind.BOOK,
            LAYOUT_VERSION,
            book_payload_size(layout),
            params=layout.params,
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

    def end(self) -> int:
        """Finish the slot opened by :meth:`begin` and make it the current book."""
        generation = self._pending
        index = generation % self.slot_count
        stamped_generation, publish_ts = self._stamps[index]
        stamped_generation[0] = generation
        publish_ts[0] = time.time_ns()
        seq = self._seqs[index]
        seq[0] = seq[0] + 1  # even: the slot is complete (after every data store)
        self._control[0] = generation  # publish (after the slot is complete)
        wake.wake(self._payload)  # readers asleep in wait_for_publish
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


def wait_for_publish(books: Sequence[_BookSegment], seen: Sequence[int], timeout_s: float) -> bool:
    """Sleep until one of ``books`` publishes a generation other than its ``seen`` one (at once
    if one already has); False after ``timeout_s``. Needs :data:`shm.wake.CAN_WAIT`."""
    return wake.wait_any([(book._payload, generation) for book, generation in zip(books, seen)], timeout_s)
