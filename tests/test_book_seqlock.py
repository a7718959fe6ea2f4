"""shm.book: readers in other processes never accept a torn book from a flat-out writer.

The writer fills every field of a slot from the generation number it is publishing
(prices, sizes, per-exchange sizes, level counts, per-exchange status…), so a reader can
tell whether what it read came from ONE publish. A negative control reads the same slots
without the seqlock protocol and must catch the writer half-way. A reader asleep on several
books (a futex on their generations) wakes when another process publishes one of them.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time

import numpy as np
import pytest

from shm import wake
from shm.book import BookLayout, BookReader, BookWriter, book_slot_dtype, wait_for_publish
from shm.segment import SegmentKind, segment_name

DEPTH = 400
EXCHANGES = 16
SLOTS = 2
LAYOUT = BookLayout(DEPTH, EXCHANGES, SLOTS)
READ_SECONDS = 2.5
MIN_READS = 1000  # a reader goes on past READ_SECONDS (up to 4x) until it has made these
# Maintained by BookWriter itself, not by the pattern.
MANAGED_FIELDS = {"seq", "generation", "publish_ts"}


class BookPattern:
    """Every pattern field of a slot as a function of the generation ``g``.

    Fields are the slot's leaves (those of the ``metrics`` and ``buckets`` records included), each named
    by its path. Element ``j`` of field number ``i`` holds ``g * (i + 2) + j`` (integer
    fields wrap modulo their type) and the level counts vary with ``g``, so any two
    generations differ in every field.
    """

    def __init__(self, slot_dtype: np.dtype) -> None:
        leaves = []
        for name in slot_dtype.names:
            dtype, offset = slot_dtype.fields[name][:2]
            if dtype.names:
                leaves += [((name, sub), dtype.fields[sub][0], offset + dtype.fields[sub][1]) for sub in dtype.names]
            elif name not in MANAGED_FIELDS:
                leaves.append(((name,), dtype, offset))
        self.fields = [path for path, _, _ in leaves]
        self.slot_offsets = {path: offset for path, _, offset in leaves}
        self.dtypes = {path: dtype for path, dtype, _ in leaves}
        self.factors = {path: index + 2 for index, path in enumerate(self.fields)}
        self.offsets = {
            path: np.arange(int(np.prod(dtype.shape)), dtype=np.int64).reshape(dtype.shape)
            for path, dtype in self.dtypes.items()
        }

    def value(self, path: tuple[str, ...], generation: int) -> np.ndarray:
        if path == ("bid_levels",):
            return np.array(1 + generation % DEPTH)
        if path == ("ask_levels",):
            return np.array(1 + (generation * 7) % DEPTH)
        return (self.offsets[path] + generation * self.factors[path]).astype(self.dtypes[path].base)

    @staticmethod
    def parent(slot: np.void, path: tuple[str, ...]) -> np.void:
        return slot if len(path) == 1 else slot[path[0]]

    def fill(self, slot: np.void, generation: int, fields: list[tuple[str, ...]]) -> None:
        """Write the pattern straight into the slot (no staging copy: the slot is busy longest)."""
        for path in fields:
            parent = self.parent(slot, path)
            if self.dtypes[path].shape:
                np.add(self.offsets[path], generation * self.factors[path], out=parent[path[-1]], casting="unsafe")
            else:
                parent[path[-1]] = self.value(path, generation)

    def torn(self, slot: np.void) -> bool:
        """True unless every pattern field matches the slot's own ``generation``."""
        generation = int(slot["generation"])
        return any(
            not np.array_equal(self.parent(slot, path)[path[-1]], self.value(path, generation)) for path in self.fields
        )


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
        assert writer.end() == generation
    writer.close()


def read_book(name: str, mode: str, seconds: float, results) -> None:
    """Read in a tight loop for ``seconds`` and at least MIN_READS reads (a loaded host may
    give the reader little CPU), at most 4 x ``seconds``; count reads, retries and torn books.

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
    started = time.monotonic()
    deadline, cap = started + seconds, started + 4 * seconds
    while (now := time.monotonic()) < deadline or (reads < MIN_READS and now < cap):
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
    book = BookWriter.create(name, LAYOUT)
    context = mp.get_context("spawn")
    stop, started, results = context.Event(), context.Event(), context.Queue()
    writer = spawn(rewrite_book, name, stop, started)
    assert started.wait(30), "writer did not start"
    readers = [spawn(read_book, name, mode, READ_SECONDS, results) for mode in modes]
    reports = {}
    deadline = time.monotonic() + 4 * READ_SECONDS + 30
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
    slot = np.zeros(1, book_slot_dtype(LAYOUT))[0]
    pattern = BookPattern(slot.dtype)
    slot["generation"] = 41
    pattern.fill(slot, 41, pattern.fields)
    assert not pattern.torn(slot)
    assert pattern.value(("bids",), 41)[0, 0] == 41 * pattern.factors[("bids",)]
    slot["bids"][DEPTH - 1, -1] = pattern.value(("bids",), 43)[-1, -1]
    assert pattern.torn(slot)
    pattern.fill(slot, 41, pattern.fields)
    slot["buckets"]["ask_abs_exchange_size"][0, 0] = 0.5
    assert pattern.torn(slot)


def test_seqlock_readers_never_accept_a_torn_book(instance, spawn):
    reports, published = run_readers(instance, spawn, ["snapshot", "view"])
    print(f"\n{published:,} books published; readers: {reports}")
    for mode, report in reports.items():
        assert report["torn"] == 0, f"{mode} reader accepted {report['torn']} torn books"
        assert report["reads"] >= MIN_READS, f"{mode} reader made only {report['reads']} reads"
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
        assert report["reads"] >= MIN_READS, f"{mode} reader made only {report['reads']} reads"
        # Typically thousands of torn books per run here; none means the check is blind.
        assert report["torn"] > 0, f"{mode} reader saw no torn book: the torn-book check cannot fail"


def publish_later(name: str, delay_s: float, count: int) -> None:
    """Publish ``count`` books into segment ``name`` after ``delay_s``, as the aggregator does."""
    writer = BookWriter.attach(name)
    time.sleep(delay_s)
    for _ in range(count):
        writer.begin()
        writer.end()
    writer.close()


@pytest.mark.skipif(not wake.CAN_WAIT, reason="no futex_waitv here (or shm._wake not built)")
def test_a_reader_asleep_on_books_wakes_when_another_process_publishes(instance, spawn) -> None:
    names = [segment_name(instance, SegmentKind.BOOK, symbol) for symbol in ("A/USDT", "B/USDT")]
    writers = [BookWriter.create(name, BookLayout(4, 2, 2)) for name in names]
    readers = [BookReader.attach(name) for name in names]
    try:
        seen = [int(reader.generation) for reader in readers]
        started = time.monotonic()
        assert not wait_for_publish(readers, seen, 0.2)  # nothing published: the timeout
        assert time.monotonic() - started >= 0.19
        assert wait_for_publish(readers, [seen[0], seen[1] + 1], 5.0)  # one already differs: at once
        spawn(publish_later, names[1], 0.3, 1)
        started = time.monotonic()
        assert wait_for_publish(readers, seen, 10.0)
        assert readers[1].generation == seen[1] + 1 and readers[0].generation == seen[0]
        assert time.monotonic() - started < 5.0
    finally:
        for handle in (*readers, *writers):
            handle.close()
