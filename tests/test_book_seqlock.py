"""shm.book: readers in other processes never accept a torn book from a flat-out writer.

The writer fills every field of a slot from the generation number it is publishing
(prices, sizes, per-exchange sizes, level counts, per-exchange status…), so a reader can
tell whether what it read came from ONE publish. A negative control reads the same slots
without the seqlock protocol and must catch the writer half-way.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time

import numpy as np

from shm.book import BookReader, BookWriter, book_slot_dtype
from shm.segment import SegmentKind, segment_name

DEPTH = 400
EXCHANGES = 16
SLOTS = 2
READ_SECONDS = 2.5
# Maintained by BookWriter itself, not by the pattern.
MANAGED_FIELDS = {"seq", "generation", "publish_ts"}


class BookPattern:
    """Every pattern field of a slot as a function of the generation ``g``.

    Element ``j`` of field number ``i`` holds ``g * (i + 2) + j`` (integer fields wrap
    modulo their type) and the level counts vary with ``g``, so any two generations
    differ in every field.
    """

    def __init__(self, slot_dtype: np.dtype) -> None:
        self.fields = [name for name in slot_dtype.names if name not in MANAGED_FIELDS]
        self.slot_offsets = {name: slot_dtype.fields[name][1] for name in self.fields}
        self.dtypes = {name: slot_dtype.fields[name][0] for name in self.fields}
        self.factors = {name: index + 2 for index, name in enumerate(self.fields)}
        self.offsets = {
            name: np.arange(int(np.prod(dtype.shape)), dtype=np.int64).reshape(dtype.shape)
            for name, dtype in self.dtypes.items()
        }

    def value(self, name: str, generation: int) -> np.ndarray:
        if name == "bid_levels":
            return np.array(1 + generation % DEPTH)
        if name == "ask_levels":
            return np.array(1 + (generation * 7) % DEPTH)
        return (self.offsets[name] + generation * self.factors[name]).astype(self.dtypes[name].base)

    def fill(self, slot: np.void, generation: int, fields: list[str]) -> None:
        """Write the pattern straight into the slot (no staging copy: the slot is busy longest)."""
        for name in fields:
            if self.dtypes[name].shape:
                np.add(self.offsets[name], generation * self.factors[name], out=slot[name], casting="unsafe")
            else:
                slot[name] = self.value(name, generation)

    def torn(self, slot: np.void) -> bool:
        """True unless every pattern field matches the slot's own ``generation``."""
        generation = int(slot["generation"])
        return any(not np.array_equal(slot[name], self.value(name, generation)) for name in self.fields)


def rewrite_book(name: str, stop, started) -> None:
    """Publish generation after generation flat out, fields in reverse memory order.

    Writing backwards makes the writer cross any reader copying front to back, so an
    unprotected reader has the best chance of seeing two generations at once.
    """
    writer = BookWriter.attach(name)
    pattern = BookPattern(writer.slot_dtype)
    backwards = sorted(pattern.fields, key=pattern.slot_offsets.get, reverse=True)
    started.set()
    while not stop.is_set():
        generation = writer.generation + 1
        slot = writer.begin()
        pattern.fill(slot, generation, backwards)
        assert writer.end(slot) == generation
    writer.close()


def read_book(name: str, mode: str, seconds: float, results) -> None:
    """Read in a tight loop for ``seconds``; count reads, retries and torn books accepted.

    ``snapshot``: BookReader.snapshot() (its retries counted through ``view``).
    ``view``: view(), check in place, then valid(). Negative controls: ``unvalidated``
    takes view() but never checks valid(); ``raw`` copies slot 0, which the writer
    rewrites every other publish, with no seq check at all.
    """
    reader = BookReader.attach(name)
    pattern = BookPattern(reader.slot_dtype)
    reads = views = torn = timeouts = 0
    generations = set()
    take_view = reader.view

    def counted_view(*args: object) -> object:
        nonlocal views
        views += 1
        return take_view(*args)

    reader.view = counted_view
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if mode == "snapshot":
            try:
                book = reader.snapshot()
            except TimeoutError:
                timeouts += 1
                continue
        elif mode == "view":
            view = reader.view()
            bad = pattern.torn(view.slot)
            if not view.valid():
                continue
            generations.add(view.generation)
        elif mode == "unvalidated":
            book = reader.view().slot.copy()
        else:
            book = reader.slots[0].copy()
        if mode != "view":
            bad = pattern.torn(book)
            generations.add(int(book["generation"]))
        reads += 1
        torn += bad
    retries = views - reads if mode in ("snapshot", "view") else 0
    results.put({"mode": mode, "reads": reads, "retries": retries, "torn": torn, "timeouts": timeouts,
                 "distinct_generations": len(generations)})
    reader.close()


def run_readers(instance: str, spawn, modes: list[str]) -> tuple[dict[str, dict], int]:
    name = segment_name(instance, SegmentKind.BOOK, "BTC-USDT")
    book = BookWriter.create(name, DEPTH, EXCHANGES, SLOTS)
    context = mp.get_context("spawn")
    stop, started, results = context.Event(), context.Event(), context.Queue()
    writer = spawn(rewrite_book, name, stop, started)
    assert started.wait(30), "writer did not start"
    readers = [spawn(read_book, name, mode, READ_SECONDS, results) for mode in modes]
    reports = {}
    deadline = time.monotonic() + READ_SECONDS + 30
    while len(reports) < len(readers):
        try:
            report = results.get(timeout=0.5)
        except queue.Empty:
            crashed = [reader.exitcode for reader in readers if reader.exitcode not in (None, 0)]
            assert not crashed and writer.is_alive(), "a reader or the writer died; see its stderr"
            assert time.monotonic() < deadline, "readers did not report in time"
            continue
        reports[report["mode"]] = report
    stop.set()
    writer.join(10)
    for reader in readers:
        reader.join(10)
        assert reader.exitcode == 0
    assert writer.exitcode == 0
    published = book.generation
    book.close()
    return reports, published


def test_pattern_detects_a_single_foreign_value():
    """The checker itself: one element from another generation makes a book torn."""
    slot = np.zeros(1, book_slot_dtype(DEPTH, EXCHANGES))[0]
    pattern = BookPattern(slot.dtype)
    slot["generation"] = 41
    pattern.fill(slot, 41, pattern.fields)
    assert not pattern.torn(slot)
    assert pattern.value("bid_price", 41)[0] == 41 * pattern.factors["bid_price"]
    slot["bid_exchange_size"][DEPTH - 1, EXCHANGES - 1] = pattern.value("bid_exchange_size", 43)[-1, -1]
    assert pattern.torn(slot)


def test_seqlock_readers_never_accept_a_torn_book(instance, spawn):
    reports, published = run_readers(instance, spawn, ["snapshot", "view"])
    print(f"\n{published:,} books published; readers: {reports}")
    for mode, report in reports.items():
        assert report["torn"] == 0, f"{mode} reader accepted {report['torn']} torn books"
        assert report["reads"] > 1000, f"{mode} reader made only {report['reads']} reads"
        assert report["distinct_generations"] > 50, f"{mode} reader saw the writer stand still"
    assert published > 1000


def test_reading_without_the_seqlock_does_see_torn_books(instance, spawn):
    """Negative controls: the same writer, read without (part of) the protocol, is caught half-way.

    ``unvalidated`` shows the final ``valid()`` check is what keeps the test above green;
    ``raw`` shows what a reader ignoring ``seq`` altogether gets.
    """
    reports, published = run_readers(instance, spawn, ["raw", "unvalidated"])
    print(f"\n{published:,} books published; unprotected readers: {reports}")
    for mode, report in reports.items():
        assert report["reads"] > 1000, f"{mode} reader made only {report['reads']} reads"
        # Typically thousands of torn books per run here; none means the check is blind.
        assert report["torn"] > 0, f"{mode} reader saw no torn book: the torn-book check cannot fail"
