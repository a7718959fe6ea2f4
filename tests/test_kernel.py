"""The C kernel (actors/connectors/_kernel.c) against its Python twins in base.py: the same books
(dict and price list, the very float objects), the same record bytes, the same errors with the
same levels applied before them; and for the feed functions, the same counters, states and
records after every event of a random KuCoin session."""

from __future__ import annotations

import dataclasses
import random

import orjson
import pytest

from actors.connectors import base, kucoin
from actors.connectors.base import (
    ASK_SIDE,
    BID_SIDE,
    RECORD_SIZE,
    L2Book,
    RecordOutput,
    SymbolCounters,
    SymbolFeed,
    SymbolRecords,
    SyncState,
    _apply_level_python,
    _apply_sequenced_frame_python,
    _apply_sequenced_side_python,
    _apply_side_python,
    _change_sequence_python,
    _publish_live_delta_python,
)
from actors.connectors.kucoin import KucoinConnector
from shm.records import Reason
from shm.records import Side as BookSide
from tests.conftest import MemorySink
from tests.test_kucoin_protocol import SYMBOLS, l2, snapshot

levels_c = pytest.importorskip("actors.connectors._kernel", reason="the C level kernel is not built (no compiler)")


class Side:
    def __init__(self) -> None:
        self.levels: dict[float, float] = {}
        self.prices: list[float] = []

    def state(self) -> tuple[dict[float, float], list[float]]:
        return dict(self.levels), list(self.prices)


def random_texts(rng: random.Random, count: int) -> list[list[object]]:
    """Levels as venues send them: decimal texts (some repeated, some deletes), JSON numbers."""
    levels: list[list[object]] = []
    for _ in range(count):
        price = round(100 + rng.randint(-40, 40) * 0.25, 2)
        size = 0 if rng.random() < 0.3 else round(rng.random() * 5, rng.randint(0, 8))
        kind = rng.random()
        if kind < 0.6:
            levels.append([f"{price:.2f}", f"{size:.8f}"])
        elif kind < 0.8:
            levels.append((price, size, "extra"))
        else:
            levels.append([str(price), size])
    return levels


def test_apply_side_matches_the_python_twin_on_random_frames() -> None:
    rng = random.Random(7)
    c_side, py_side = Side(), Side()
    for frame in range(400):
        raw = random_texts(rng, rng.randint(0, 12))
        c_scratch = bytearray(RECORD_SIZE * 16)
        py_scratch = bytearray(RECORD_SIZE * 16)
        side = BID_SIDE if frame % 2 else ASK_SIDE
        args = (1_700_000_000_000_000_000 + frame, 2_000_000_000_000_000_000, frame * 7, side)
        c_end = levels_c.apply_side(c_side.levels, c_side.prices, raw, c_scratch, RECORD_SIZE, *args)
        py_end = _apply_side_python(py_side.levels, py_side.prices, raw, py_scratch, RECORD_SIZE, *args)
        assert c_end == py_end == RECORD_SIZE * (1 + len(raw))
        assert c_scratch == py_scratch
        assert c_side.state() == py_side.state()
        assert c_side.prices == sorted(c_side.levels)
        assert all(price.__class__ is float and size.__class__ is float for price, size in c_side.levels.items())


def test_apply_level_matches_the_python_twin() -> None:
    rng = random.Random(11)
    c_side, py_side = Side(), Side()
    c_scratch, py_scratch = bytearray(RECORD_SIZE * 4), bytearray(RECORD_SIZE * 4)
    for step in range(2_000):
        price = 50.0 + rng.randint(0, 60) * 0.5
        size = 0.0 if rng.random() < 0.35 else rng.random()
        offset = RECORD_SIZE * (step % 4)
        stamps = (step, step + 1, 2**64 - 1 - step, BID_SIDE)
        c_end = levels_c.apply_level(c_side.levels, c_side.prices, price, size, c_scratch, offset, *stamps)
        py_end = _apply_level_python(py_side.levels, py_side.prices, price, size, py_scratch, offset, *stamps)
        assert c_end == py_end == offset + RECORD_SIZE
        assert c_scratch == py_scratch
        assert c_side.state() == py_side.state()


@pytest.mark.parametrize(
    "raw, error",
    [
        ([["1.0", "1"], ["NaN", "1"]], ValueError),
        ([["1.0", "1"], ["2.0", "-1"]], ValueError),
        ([["1.0", "1"], ["2.0", "1e16"]], ValueError),
        ([["1.0", "1"], ["1e13", "1"]], ValueError),
        ([["1.0", "1"], ["abc", "1"]], ValueError),
        ([["1.0", "1"], ["2.0"]], ValueError),
        ([["1.0", "1"], []], ValueError),
        ([["1.0", "1"], {}], ValueError),
        ([["1.0", "1"], [None, "1"]], TypeError),
        ([["1.0", "1"], 5], TypeError),
    ],
)
def test_a_bad_level_raises_the_same_error_with_the_levels_before_it_applied(raw: list, error: type) -> None:
    outcomes = []
    for apply in (levels_c.apply_side, _apply_side_python):
        side, scratch = Side(), bytearray(RECORD_SIZE * 4)
        with pytest.raises(error):
            apply(side.levels, side.prices, raw, scratch, 0, 1, 2, 3, BID_SIDE)
        outcomes.append((side.state(), bytes(scratch[:RECORD_SIZE])))  # the records before the bad one
    assert outcomes[0] == outcomes[1] and outcomes[0][0] == ({1.0: 1.0}, [1.0])


@pytest.mark.parametrize(
    "exchange_ts, receive_ts, sequence",
    [(2**63, 0, 0), (0, -(2**63) - 1, 0), (0, 0, -1), (0, 0, 2**64)],
)
def test_values_the_record_cannot_hold_raise_value_error_in_both(exchange_ts: int, receive_ts: int, sequence: int) -> None:
    for apply in (levels_c.apply_level, _apply_level_python):
        side = Side()
        with pytest.raises(ValueError):
            apply(side.levels, side.prices, 1.0, 1.0, bytearray(RECORD_SIZE), 0, exchange_ts, receive_ts, sequence, ASK_SIDE)


def test_a_record_past_the_scratch_is_refused_not_written() -> None:
    side = Side()
    with pytest.raises(IndexError):
        levels_c.apply_level(side.levels, side.prices, 1.0, 1.0, bytearray(RECORD_SIZE), RECORD_SIZE, 0, 0, 0, BID_SIDE)


def test_the_connectors_use_the_c_kernel_when_it_is_built() -> None:
    assert base.KERNEL_PATH == "c" and base.apply_side is levels_c.apply_side


def random_changes(rng: random.Random, count: int) -> list[list[object]]:
    """KuCoin's changes: [price, size, sequence] texts, some of them sequence-only (price "0")."""
    changes: list[list[object]] = []
    for _ in range(count):
        price = "0" if rng.random() < 0.2 else f"{100 + rng.randint(-30, 30) * 0.5:.1f}"
        size = "0" if rng.random() < 0.3 else f"{rng.random() * 3:.6f}"
        changes.append([price, size, str(rng.randint(1, 10**13))])
    return changes


def test_apply_sequenced_side_matches_the_python_twin() -> None:
    rng = random.Random(13)
    c_side, py_side = Side(), Side()
    for frame in range(400):
        changes = random_changes(rng, rng.randint(0, 6))
        c_scratch, py_scratch = bytearray(RECORD_SIZE * 8), bytearray(RECORD_SIZE * 8)
        stamps = (frame, frame + 5, ASK_SIDE)
        c_end = levels_c.apply_sequenced_side(c_side.levels, c_side.prices, changes, c_scratch, 0, *stamps)
        py_end = _apply_sequenced_side_python(py_side.levels, py_side.prices, changes, py_scratch, 0, *stamps)
        assert c_end == py_end == RECORD_SIZE * sum(change[0] != "0" for change in changes)
        assert c_scratch == py_scratch
        assert c_side.state() == py_side.state()


@pytest.mark.parametrize(
    "changes, error",
    [
        ([["1.0", "1", "5"], ["2.0", "1"]], ValueError),
        ([["1.0", "1", "5"], ["2.0", "1", "6", "x"]], ValueError),
        ([["1.0", "1", "5"], ["2.0", "1", "-6"]], ValueError),
        ([["1.0", "1", "5"], ["2.0", "1", "six"]], ValueError),
        ([["1.0", "1", "5"], ["2.0", "-1", "6"]], ValueError),
        ([["1.0", "1", "5"], 7], TypeError),
    ],
)
def test_a_bad_change_raises_the_same_error_with_the_changes_before_it_applied(changes: list, error: type) -> None:
    outcomes = []
    for apply in (levels_c.apply_sequenced_side, _apply_sequenced_side_python):
        side, scratch = Side(), bytearray(RECORD_SIZE * 4)
        with pytest.raises(error):
            apply(side.levels, side.prices, changes, scratch, 0, 1, 2, BID_SIDE)
        outcomes.append((side.state(), bytes(scratch[:RECORD_SIZE])))  # the records before the bad one
    assert outcomes[0] == outcomes[1] and outcomes[0][0] == ({1.0: 1.0}, [1.0])


def stamp_texts(rng: random.Random) -> list[str]:
    """Microsecond stamps around every edge the C reader checks, valid or not."""
    texts = [
        "2021-04-17T16:43:37.075687Z", "1970-01-01T00:00:00.000000Z", "2261-12-31T23:59:59.999999Z",
        "2262-01-01T00:00:00.000000Z", "1969-12-31T23:59:59.999999Z", "2024-02-29T12:00:00.000001Z",
        "2023-02-29T12:00:00.000001Z", "2100-02-29T00:00:00.000000Z", "2000-02-29T00:00:00.000000Z",
        "2021-04-31T00:00:00.000000Z", "2021-13-01T00:00:00.000000Z", "2021-00-01T00:00:00.000000Z",
        "2021-04-17T24:00:00.000000Z", "2021-04-17T23:60:00.000000Z", "2021-04-17T23:59:60.000000Z",
        "2021-04-17 16:43:37.075687Z", "2021-04-17T16:43:37.07568 Z", "2021-04-17T16:43:37.+75687Z",
        "2021-04-17T16:43:37.075687", "2021-04-17T16:43:37.0756871Z", "2021-04-17T16:43:37Z", "",
        "２021-04-17T16:43:37.075687Z",
    ]
    for _ in range(5_000):
        year, month, day = rng.randint(1960, 2300), rng.randint(0, 13), rng.randint(0, 32)
        hour, minute, second = rng.randint(0, 25), rng.randint(0, 61), rng.randint(0, 61)
        texts.append(f"{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{rng.randint(0, 999_999):06}Z")
    return texts


def test_micros_stamp_ns_reads_exactly_what_rfc3339_ns_reads_or_leaves_it_to_it() -> None:
    from actors.connectors.base import _micros_stamp_ns_python

    rng = random.Random(17)
    read = 0
    for text in stamp_texts(rng):
        stamp_ns = levels_c.micros_stamp_ns(text)
        assert _micros_stamp_ns_python(text) is None
        base.micros_stamp_ns = _micros_stamp_ns_python  # rfc3339_ns's own reading, without the kernel
        try:
            try:
                expected = base.rfc3339_ns(text)
            except ValueError:
                expected = None
        finally:
            base.micros_stamp_ns = levels_c.micros_stamp_ns
        if stamp_ns is not None:
            assert stamp_ns == expected, text
            read += 1
    assert read > 1_000
    assert levels_c.micros_stamp_ns("2021-04-17T16:43:37.075687Z") == 1_618_677_817_075_687_000


@pytest.mark.parametrize(
    "change",
    [["1", "2", "3"], ("1", 2.0, "017"), ["1", "2", " +5 "], ["1", "2", 7.5], ["1", "2"], ["1", "2", "3", "4"],
     ["1", "2", "x"], ["1", "2", None], "abc", 5],
)
def test_change_sequence_matches_the_python_twin(change: object) -> None:
    outcomes = []
    for key in (levels_c.change_sequence, _change_sequence_python):
        try:
            outcomes.append(key(change))
        except (ValueError, TypeError) as error:
            outcomes.append(type(error))
    assert outcomes[0] == outcomes[1]


def sequenced_records() -> SymbolRecords:
    """A delta scratch of two records, so that larger frames reserve more first."""
    return SymbolRecords(RecordOutput(MemorySink()), 1, 2, capacity=2)


def random_sequenced_frame(rng: random.Random) -> tuple[list, list]:
    """Both sides of a delta: unsorted change sequences, a price changed twice, sequence-only changes."""
    sides = []
    for _ in range(2):
        changes = random_changes(rng, rng.randint(0, 5))
        if changes and rng.random() < 0.3:
            changes.append([changes[0][0], "1.5", str(int(changes[0][2]) + rng.choice((-1, 1)))])
        sides.append([tuple(change) if rng.random() < 0.3 else change for change in changes])
    return sides[0], sides[1]


def book_state(book: L2Book) -> tuple:
    return book.bids, book.asks, book.bid_prices, book.ask_prices


def test_apply_sequenced_frame_matches_the_python_twin() -> None:
    rng = random.Random(19)
    c_book, py_book = L2Book(), L2Book()
    c_records, py_records = sequenced_records(), sequenced_records()
    for frame in range(600):
        bids, asks = random_sequenced_frame(rng)
        stamps = (frame, 1_700_000_000_000_000_000 + frame, 1_700_000_000_000_000_500)
        c_count = levels_c.apply_sequenced_frame(c_book, c_records, bids, asks, *stamps)
        py_count = _apply_sequenced_frame_python(py_book, py_records, bids, asks, *stamps)
        assert c_count == py_count
        assert c_records.scratch == py_records.scratch and c_records.capacity == py_records.capacity
        assert book_state(c_book) == book_state(py_book)
        assert all(price.__class__ is float for price in c_book.bid_prices + c_book.ask_prices)
    assert c_records.capacity > 2


@pytest.mark.parametrize(
    "bids, asks, exchange_ts",
    [
        ([["1.0", "1", "5"], ["2.0", "1"]], [], 0),  # a change of two values: sorting it is the error
        ([["1.0", "1", "5"]], [["3.0", "1", "6"], ["4.0", "1", "x"]], 0),
        ([["1.0", "1", "5"]], [["3.0", "abc", "6"]], 0),
        ([["1.0", "1", "5"]], [["3.0", None, "6"]], 0),
        ([["1.0", "1", "5"]], [["3.0", "1", "-6"]], 0),
        ([["1.0", "1", "5"]], [7], 0),
        ([["1.0", "1", "5"]], [["3.0", "1", "6"], 7], 0),
        ([["1.0", "1", "5"]], 7, 0),
        ([["0", "0", "5"], ["0", "0", "6"]], [], 2**63),  # nothing to pack: nothing to refuse
        ([["0", "0", "5"], ["1.0", "1", "6"]], [], 2**63),  # a record the stamp does not fit
        ([["1.0", "1", "5"]], [["2.0", "1", str(2**64)]], 0),
    ],
)
def test_a_bad_sequenced_frame_has_the_same_outcome_in_both(bids: object, asks: object, exchange_ts: int) -> None:
    outcomes = []
    for apply in (levels_c.apply_sequenced_frame, _apply_sequenced_frame_python):
        book, records = L2Book(), sequenced_records()
        try:
            outcome: object = apply(book, records, bids, asks, 0, exchange_ts, 1)
        except (ValueError, TypeError) as error:
            outcome = type(error)
        packed = RECORD_SIZE * len(book)  # the records before a bad change (every good one adds a level here)
        outcomes.append((outcome, book_state(book), bytes(records.scratch[:packed])))
    assert outcomes[0] == outcomes[1]


class OtherFeed(SymbolFeed):
    __slots__ = ()


class OtherCounters(SymbolCounters):
    __slots__ = ()


class OtherBook(L2Book):
    __slots__ = ()


class OtherRecords(SymbolRecords):
    __slots__ = ()


def ticker_frame(sequence: int, bid: tuple[float, float], ask: tuple[float, float]) -> bytes:
    data = {"sequence": str(sequence), "bestBid": repr(bid[0]), "bestBidSize": repr(bid[1]),
            "bestAsk": repr(ask[0]), "bestAskSize": repr(ask[1])}
    return orjson.dumps({"type": "message", "topic": "/market/ticker:BTC-USDT", "subject": "trade.ticker", "data": data})


def bad_change(rng: random.Random, sequence: int) -> list[object]:
    return rng.choice([
        ["abc", "1", str(sequence)], ["99.5", "-1", str(sequence)], ["99.5", "1e16", str(sequence)],
        ["1e13", "1", str(sequence)], ["99.5", "1", "x"], ["99.5", "1", "-3"], ["99.5", "1"],
        ["99.5", "1", str(sequence), "extra"], ["0.0", "1", str(sequence)],
    ])


def random_event(rng: random.Random, connector: KucoinConnector, sequence: int) -> tuple[object, int]:
    """The next event of a random KuCoin session (and the sequence after it), crafted from the book as
    it stands so that most frames apply, most tickers agree and some deltas cross the book."""
    feed = connector.feeds["BTC-USDT"]
    book = feed.book
    if feed.state is not SyncState.LIVE:
        bids = [[f"{100 - index * 0.5}", "1"] for index in range(8)]
        asks = [[f"{101 + index * 0.5}", "2"] for index in range(8)]
        return ("snapshot", snapshot(sequence, bids, asks)), sequence
    roll = rng.random()
    if roll < 0.08 and book.bid_prices and book.ask_prices:
        best_bid, best_ask = book.best_bid(), book.best_ask()
        if rng.random() < 0.2:
            best_bid = (best_bid[0], best_bid[1] + 1)
        return ("frame", ticker_frame(sequence + rng.choice((0, 0, 1)), best_bid, best_ask)), sequence
    if roll < 0.12:
        return ("consume", None), sequence
    start = sequence + 1 + (rng.random() < 0.02)
    sides = [[], []]
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        change_sequence = start + len(sides[0]) + len(sides[1])
        side = rng.randint(0, 1)
        kind = rng.random()
        if kind < 0.3:
            change = ["0", "0", str(change_sequence)]
        elif kind < 0.36:
            change = bad_change(rng, change_sequence)
        else:
            crossing = rng.random() < 0.04
            price = (102 + rng.randint(0, 6) * 0.5) if side == 0 and crossing else (
                100 - rng.randint(-1, 12) * 0.5 if side == 0 else 101 + rng.randint(-1, 12) * 0.5)
            size = "0" if rng.random() < 0.3 else f"{rng.randint(1, 40) / 8}"
            change = [repr(float(price)), size if rng.random() < 0.9 else float(size), str(change_sequence)]
        sides[side].append(change)
    end = start + max(len(sides[0]) + len(sides[1]) - 1, 0)
    rng.shuffle(sides[0])
    frame = l2(start, end, bids=sides[0], asks=sides[1])
    roll = rng.random()
    if roll > 0.5:  # a time, now and then one past 2262 (no record can stamp it)
        time_ms = 1_700_000_000_000 + sequence if roll < 0.97 else 9_300_000_000_000
        frame = frame.replace(b'"symbol"', b'"time":%d,"symbol"' % time_ms)
    return ("frame", frame.decode() if rng.random() < 0.85 else frame), end


def session_states(connector: KucoinConnector, events: list, rng: random.Random | None) -> tuple[list, list]:
    """Every event applied to ``connector`` (drawn from ``rng`` first when given), and what a consumer
    and the counters saw after each."""
    feed = connector.feeds["BTC-USDT"]
    sink = connector.output.sink
    states = []
    written = len(sink.batches)
    sequence = feed.last_id
    for number in range(len(events) if rng is None else 1_500):
        if rng is not None:
            event, sequence = random_event(rng, connector, sequence)
            events.append(event)
        kind, payload = events[number]
        connector.frame_rejected = False
        if kind == "snapshot":
            connector.snapshot_requests(10**12 * (number + 1))
            connector.on_snapshot("BTC-USDT", payload, number)
        elif kind == "consume":
            sink.consume()
            connector.flush(number)
        else:
            connector.on_message(0, payload, 1_700_000_000_000_000_000 + number)
        book = feed.book
        batches, written = sink.batches[written:], len(sink.batches)
        states.append((
            [batch.tobytes() for batch in batches], dataclasses.astuple(feed.counters), connector.connection_counters[0],
            dict(book.bids), dict(book.asks), list(book.bid_prices), list(book.ask_prices), feed.state,
            feed.last_id, feed.bridged, feed.resend_pending, list(feed.expected_tops), connector.frame_rejected,
            connector.output.batches_lost, connector.output.records_lost,
        ))
    return events, states


def kucoin_session(sink_factory) -> KucoinConnector:
    connector = KucoinConnector(sink_factory(40), 1, {"BTC/USDT": 1}, ticker_cross_check=True, await_welcome=False,
                                depth_limit=6)
    connector.load_instruments(SYMBOLS)
    connector.on_open(0, 1)
    connector.on_message(0, b'{"id":"1","type":"ack"}', 2)
    connector.snapshot_requests(0)
    connector.on_snapshot("BTC-USDT", snapshot(10, [["100.0", "1"], ["99.5", "1"]], [["101.0", "1"]]), 3)
    return connector


def test_kucoin_sessions_match_with_the_c_feed_functions_and_their_python_twins(sink_factory, monkeypatch) -> None:
    """One random session of live deltas (sequence-only, multi-change, malformed, crossing, deeper than the
    depth limit, out of sequence), tickers that agree or not and a small ring that refuses writes: the
    C feed functions, the same through the generic attribute path (objects of other classes), and the
    Python twins leave the same records, counters, books and states after every event."""
    c_connector = kucoin_session(sink_factory)
    events, c_states = session_states(c_connector, [], random.Random(23))
    counters = c_connector.counters("BTC/USDT")
    assert min(counters.crossed, counters.cross_check_mismatches, counters.parse_errors, counters.gaps) > 0
    assert c_connector.output.batches_lost > 0 and counters.frames_applied > 500

    generic = kucoin_session(sink_factory)
    feed = generic.feeds["BTC-USDT"]
    feed.__class__, feed.counters.__class__ = OtherFeed, OtherCounters
    feed.book.__class__, feed.records.__class__ = OtherBook, OtherRecords
    assert session_states(generic, events, None)[1] == c_states

    monkeypatch.setattr(kucoin, "apply_live_sequenced_delta", base._apply_live_sequenced_delta_python)
    monkeypatch.setattr(kucoin, "change_sequence", _change_sequence_python)
    monkeypatch.setattr(base, "publish_live_delta", _publish_live_delta_python)
    python = kucoin_session(sink_factory)
    python._apply_levels = _apply_sequenced_frame_python
    assert session_states(python, events, None)[1] == c_states


class Unslotted:
    scratch = capacity = sink_write_records = None


def test_configure_feeds_takes_only_slots_and_keeps_what_it_had_otherwise() -> None:
    assert base.publish_live_delta is levels_c.publish_live_delta
    assert base.apply_live_sequenced_delta is levels_c.apply_live_sequenced_delta
    with pytest.raises(TypeError):
        levels_c.configure_feeds(SymbolFeed, SymbolCounters, L2Book, Unslotted, Reason, BookSide)
    book = L2Book()
    assert levels_c.apply_sequenced_frame(book, sequenced_records(), [["1.5", "2", "7"]], [], 0, 0, 0) == 1
    assert book.bids == {1.5: 2.0}
