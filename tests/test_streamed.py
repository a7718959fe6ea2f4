"""The shared stream-seeded machinery and checksum helpers, through a toy venue: snapshot
in the stream, sequence continuity, truncation, crossed books, resubscription with
backoff, snapshot timeouts, reconnect-only venues, pings and ring overflow."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import msgpack
import orjson
import pytest

from actors.connectors.base import ConnectionAction, Instrument, SyncState
from actors.connectors.checksum import (
    BITFINEX,
    KRAKEN,
    OKX,
    TextBook,
    interleaved_checksum,
    kraken_checksum,
)
from actors.connectors.base import OutgoingMessage
from actors.connectors.stream_seeded import (
    StreamFeed,
    StreamSeededConnector,
    apply_text_levels,
)
from shm.records import Kind, Reason, Side, Status

SECOND = 1_000_000_000
NOW = 1_700_000_000 * SECOND
INSTRUMENTS = [
    Instrument("BTC/USD", "BTC-USD", "BTC", "USD", tick_size=0.1, lot_size=1e-8),
    Instrument("ETH/USD", "ETH-USD", "ETH", "USD", tick_size=0.01, lot_size=1e-8),
]
SYMBOL_IDS = {"BTC/USD": 1, "ETH/USD": 2}


class ToyVenue(StreamSeededConnector):
    """A venue that is only data: JSON frames ``{"s":sym,"t":"snap"|"upd","b":..,"a":..,"seq":n,"prev":n,"cs":n,"ts":ns}``."""

    name = "toy"
    instruments_url = "http://toy.test/instruments"
    sequence_rule = staticmethod(lambda sequence, previous, last: previous == last)

    def parse_instruments(self, body: str | bytes) -> list[Instrument]:
        return INSTRUMENTS

    def connection_url(self, connection: int) -> str:
        return "ws://toy.test"

    def subscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        return [f"sub {' '.join(feed.instrument.native for feed in feeds)}"]

    def resubscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        natives = " ".join(feed.instrument.native for feed in feeds)
        return [f"unsub {natives}", f"sub {natives}"]

    def application_ping(self, connection: int) -> str:
        return "ping"

    def on_message(self, connection: int, data: str | bytes, receive_ts: int) -> ConnectionAction:
        message = orjson.loads(data)
        feed = self.feeds[message["s"]]
        exchange_ts = message.get("ts", 0)
        if message["t"] == "snap":
            self.on_book_snapshot(feed, message["b"], message["a"], message["seq"], message.get("cs"), exchange_ts,
                                  receive_ts)
        else:
            self.on_book_update(
                feed, message["b"], message["a"], message["seq"], message["prev"], message.get("cs"), exchange_ts,
                receive_ts,
            )
        return self.connection_action(connection)


class ToyOkx(ToyVenue):
    book_checksum = OKX


def frame(
    kind: str, symbol: str, seq: int, bids=(), asks=(), prev: int = 0, checksum: int | None = None, ts: int = 0
) -> str:
    message = {"s": symbol, "t": kind, "b": [list(level) for level in bids], "a": [list(level) for level in asks]}
    message |= {"seq": seq, "prev": prev, "ts": ts}
    if checksum is not None:
        message["cs"] = checksum
    return orjson.dumps(message).decode()


def toy(sink, venue: type[ToyVenue] = ToyVenue, depth: int = 3, **attributes) -> ToyVenue:
    connector = venue(sink, 9, SYMBOL_IDS, depth=depth)
    for name, value in attributes.items():
        setattr(connector, name, value)
    connector.use_instruments(INSTRUMENTS)
    return connector


def live(connector: ToyVenue) -> ToyVenue:
    assert connector.on_open(0, NOW) == ["sub BTC-USD ETH-USD"]
    connector.on_message(0, frame("snap", "BTC-USD", 10, [("100.0", "1")], [("101.0", "2")]), NOW)
    connector.on_message(0, frame("snap", "ETH-USD", 20, [("10.00", "1")], [("10.01", "2")]), NOW)
    return connector


def texts(messages: list[OutgoingMessage]) -> list[tuple[int, str]]:
    return [(message.connection, message.text) for message in messages]


# ---- checksum helpers ------------------------------------------------------------------------

KRAKEN_DOC_ASKS = [
    ("45285.2", "0.00100000"), ("45286.4", "1.54571953"), ("45286.6", "1.54571109"), ("45289.6", "1.54560911"),
    ("45290.2", "0.15890660"), ("45291.8", "1.54553491"), ("45294.7", "0.04454749"), ("45296.1", "0.35380000"),
    ("45297.5", "0.09945542"), ("45299.5", "0.18772827"),
]
KRAKEN_DOC_BIDS = [
    ("45283.5", "0.10000000"), ("45283.4", "1.54582015"), ("45282.1", "0.10000000"), ("45281.0", "0.10000000"),
    ("45280.3", "1.54592586"), ("45279.0", "0.07990000"), ("45277.6", "0.03310103"), ("45277.5", "0.30000000"),
    ("45277.3", "1.54602737"), ("45276.6", "0.15445238"),
]


def test_kraken_checksum_of_the_documented_book() -> None:
    assert kraken_checksum(KRAKEN_DOC_ASKS, KRAKEN_DOC_BIDS) == 3310070434
    assert KRAKEN.ask_token("0.05000", "0.00000304") == "5000304"


def test_interleaved_checksums_of_the_documented_books() -> None:
    assert interleaved_checksum([("3366.1", "7"), ("3366", "6")], [("3366.8", "9"), ("3368", "8")]) == -1881014294
    assert interleaved_checksum([("3366.1", "7")], [("3366.8", "9"), ("3368", "8"), ("3372", "8")]) == 831078360
    # Bitfinex: asks carry negative amounts on the wire and in the checksum.
    assert interleaved_checksum([("7254.7", "3.3"), ("7254.6", "1")], [("7254.8", "-0.5"), ("7255", "-2")]) == -1049391339


@pytest.mark.parametrize("checksum", [KRAKEN, OKX, BITFINEX], ids=["kraken", "okx", "bitfinex"])
def test_cached_book_checksum_equals_a_fresh_one_under_random_updates(checksum, memory_sink) -> None:
    """The per-side cache must never serve a stale side: compare with the list-based helper."""
    rng = random.Random(7)
    book = TextBook()
    records = toy(memory_sink).feeds["BTC-USD"].records
    truth_bids: dict[str, str] = {}
    truth_asks: dict[str, str] = {}
    for _ in range(400):
        side_is_bid = rng.random() < 0.5
        tick = rng.randrange(1, 40) if side_is_bid else rng.randrange(41, 80)
        price = f"{tick / 10:.1f}"
        size = rng.choice(["0", "0.5", "1.25000", "3"])
        truth = truth_bids if side_is_bid else truth_asks
        if size == "0":
            truth.pop(price, None)
        else:
            truth[price] = size
        level = [[price, size]]
        apply_text_levels(book, records, level if side_is_bid else [], [] if side_is_bid else level, checksum, 0, 0, 0)
        bids = sorted(truth_bids.items(), key=lambda level: -float(level[0]))
        asks = sorted(truth_asks.items(), key=lambda level: float(level[0]))
        if checksum is KRAKEN:
            expected = kraken_checksum(asks, bids)
        elif checksum is OKX:
            expected = interleaved_checksum(bids, asks)
        else:
            expected = interleaved_checksum(bids, [(price, f"-{size}") for price, size in asks])
        assert checksum.compute(book) == expected


def test_text_book_truncation_drops_tokens(memory_sink) -> None:
    book = TextBook()
    records = toy(memory_sink).feeds["BTC-USD"].records
    apply_text_levels(book, records, [["1.0", "1"], ["2.0", "1"]], [["3.0", "1"], ["4.0", "1"]], KRAKEN, 0, 0, 0)
    assert book.truncate(1) == ([1.0], [4.0])
    assert (book.bid_tokens, book.ask_tokens) == ({2.0: "201"}, {3.0: "301"})


# ---- the state machine -------------------------------------------------------------------------


def test_subscribe_snapshot_then_updates_with_extra_level_fields(memory_sink) -> None:
    connector = live(toy(memory_sink))
    assert [feed.state for feed in connector.feeds.values()] == [SyncState.LIVE] * 2
    # Elements after price and size (timestamps, flags, counts) are ignored.
    connector.on_message(0, frame("upd", "BTC-USD", 11, [("100.5", "3", "t", "r")], [("101.0", "0", "t")], prev=10), NOW)
    book = connector.book("BTC/USD")
    assert (book.bid_levels(), book.ask_levels()) == ([(100.5, 3.0), (100.0, 1.0)], [])
    counters = connector.counters("BTC/USD")
    assert (counters.snapshots, counters.frames_applied, counters.levels_applied) == (1, 1, 2)
    assert memory_sink.books()[1] == (book.bids, book.asks)
    assert connector.outgoing_messages(NOW) == []


def test_updates_before_the_snapshot_are_dropped(memory_sink) -> None:
    connector = toy(memory_sink)
    connector.on_open(0, NOW)
    connector.on_message(0, frame("upd", "BTC-USD", 5, [("99.0", "1")], prev=4), NOW)
    assert connector.counters("BTC/USD").frames_dropped == 1
    assert connector.feeds["BTC-USD"].state == SyncState.SUBSCRIBING
    assert memory_sink.of_kind(Kind.STATUS)["aux"].tolist() == [Status.CONNECTING] * 2


def test_truncation_to_the_subscribed_depth_writes_deletes(memory_sink) -> None:
    connector = live(toy(memory_sink, depth=2))
    connector.on_message(0, frame("upd", "BTC-USD", 11, [("99.0", "1"), ("100.2", "1")], prev=10), NOW)
    assert connector.book("BTC/USD").bid_levels() == [(100.2, 1.0), (100.0, 1.0)]
    last = memory_sink.batches[-1]
    assert [(float(r["price"]), float(r["size"])) for r in last] == [(99.0, 1.0), (100.2, 1.0), (99.0, 0.0)]
    assert memory_sink.books()[1][0] == {100.2: 1.0, 100.0: 1.0}


def test_sequence_gap_clears_and_resubscribes_that_symbol_only(memory_sink) -> None:
    connector = live(toy(memory_sink))
    connector.on_message(0, frame("upd", "BTC-USD", 12, [("100.5", "3")], prev=11), NOW)
    counters = connector.counters("BTC/USD")
    assert (counters.gaps, counters.resyncs, counters.frames_dropped) == (1, 1, 1)
    clear, status = memory_sink.batches[-1]
    assert (clear["kind"], clear["reason"], status["aux"]) == (Kind.CLEAR, Reason.SEQUENCE_GAP, Status.RESYNCING)
    assert texts(connector.outgoing_messages(5 * SECOND)) == [(0, "unsub BTC-USD"), (0, "sub BTC-USD")]
    assert counters.resubscribes == 1
    connector.on_message(0, frame("upd", "BTC-USD", 13, [("100.5", "3")], prev=12), NOW)  # old subscription's tail
    connector.on_message(0, frame("snap", "BTC-USD", 30, [("100.1", "1")], [("101.0", "2")]), NOW)
    assert connector.feeds["BTC-USD"].state == SyncState.LIVE
    assert memory_sink.books()[1] == ({100.1: 1.0}, {101.0: 2.0})
    assert connector.counters("ETH/USD").resyncs == 0


def test_repeated_failures_back_off_and_a_verified_update_resets_it(memory_sink) -> None:
    connector = live(toy(memory_sink, resubscribe_retry_initial_s=1.0))
    feed = connector.feeds["BTC-USD"]
    poll = 10 * SECOND
    for attempt, delay_s in enumerate([0, 1, 2, 4]):
        connector.on_message(0, frame("snap", "BTC-USD", 1, [("102.0", "1")], [("101.0", "1")]), NOW)  # crossed
        assert connector.counters("BTC/USD").crossed == attempt + 1
        assert connector.outgoing_messages(poll) == [] or delay_s == 0
        if delay_s:
            assert connector.outgoing_messages(poll + delay_s * SECOND - 1) == []
            assert len(connector.outgoing_messages(poll + delay_s * SECOND)) == 2
        poll += 100 * SECOND
    connector.on_message(0, frame("snap", "BTC-USD", 40, [("100.0", "1")], [("101.0", "1")]), NOW)
    assert feed.failures_in_row == 4
    connector.on_message(0, frame("upd", "BTC-USD", 41, [("100.0", "2")], prev=40), NOW)
    assert feed.failures_in_row == 0


def test_a_snapshot_that_never_comes_is_asked_for_again(memory_sink) -> None:
    connector = toy(memory_sink, snapshot_timeout_s=5.0)
    connector.on_open(0, NOW)
    assert connector.outgoing_messages(100 * SECOND) == []  # the deadline starts at this poll
    assert connector.outgoing_messages(105 * SECOND - 1) == []
    assert connector.outgoing_messages(105 * SECOND) == []  # timed out: resubscribe scheduled
    assert texts(connector.outgoing_messages(105 * SECOND)) == [(0, "unsub BTC-USD ETH-USD"), (0, "sub BTC-USD ETH-USD")]
    assert connector.counters("BTC/USD").snapshot_timeouts == 1


def test_closing_drops_pending_resubscriptions(memory_sink) -> None:
    connector = live(toy(memory_sink))
    connector.on_message(0, frame("upd", "BTC-USD", 99, prev=98), NOW)
    connector.on_close(0, NOW, Reason.DISCONNECTED)
    assert connector.outgoing_messages(SECOND) == []
    assert all(feed.state == SyncState.IDLE for feed in connector.feeds.values())
    assert memory_sink.books() == {}


def test_a_venue_without_per_symbol_resubscribe_reconnects(memory_sink) -> None:
    connector = live(toy(memory_sink, resubscribe_per_symbol=False))
    action = connector.on_message(0, frame("upd", "ETH-USD", 99, prev=98), NOW)
    assert action is ConnectionAction.RECONNECT
    assert connector.outgoing_messages(SECOND) == []
    assert connector.on_message(0, frame("upd", "BTC-USD", 11, prev=10), NOW) is ConnectionAction.CONTINUE


def test_application_pings_on_open_connections(memory_sink) -> None:
    connector = toy(memory_sink, application_ping_interval_s=20.0)
    assert connector.outgoing_messages(0) == []
    live(connector)
    assert connector.outgoing_messages(SECOND) == []
    assert texts(connector.outgoing_messages(21 * SECOND)) == [(0, "ping")]
    assert connector.outgoing_messages(22 * SECOND) == []


def test_checksum_mismatch_on_an_interleaved_venue(memory_sink) -> None:
    connector = toy(memory_sink, venue=ToyOkx, depth=400)
    connector.on_open(0, NOW)
    bids, asks = [("3366.1", "7"), ("3366", "6")], [("3366.8", "9"), ("3368", "8")]
    connector.on_message(0, frame("snap", "BTC-USD", 1, bids, asks, checksum=-1881014294), NOW)
    assert connector.feeds["BTC-USD"].state == SyncState.LIVE
    good = interleaved_checksum([("3366.1", "7")], [("3366.8", "9"), ("3368", "8")])
    connector.on_message(0, frame("upd", "BTC-USD", 2, [("3366", "0")], prev=1, checksum=good), NOW)
    connector.on_message(0, frame("upd", "BTC-USD", 3, [("3366", "5")], prev=2, checksum=good), NOW)
    counters = connector.counters("BTC/USD")
    assert (counters.checksums_ok, counters.checksums_failed) == (2, 1)
    assert memory_sink.of_kind(Kind.CLEAR)["reason"].tolist() == [Reason.CHECKSUM]


def test_bad_levels_are_counted_and_resync(memory_sink) -> None:
    connector = live(toy(memory_sink))
    connector.on_message(0, frame("upd", "BTC-USD", 11, [("nan", "1")], prev=10), NOW)
    connector.on_message(0, frame("upd", "ETH-USD", 21, [("10.00", "-1")], prev=20), NOW)
    assert connector.counters("BTC/USD").parse_errors == connector.counters("ETH/USD").parse_errors == 1
    assert memory_sink.books() == {}


def test_ring_overflow_resends_books_when_room_returns(sink_factory) -> None:
    sink = sink_factory(capacity=12)
    connector = live(toy(sink))
    connector.on_message(0, frame("upd", "BTC-USD", 11, [("99.0", "1")], prev=10), NOW)
    assert sink.refused == 1
    sink.consume()
    connector.flush(NOW)
    assert [feed.resend_pending for feed in connector.feeds.values()] == [False, False]
    assert sink.books()[1] == ({100.0: 1.0, 99.0: 1.0}, {101.0: 2.0})
    trade_feed = connector.feeds["ETH-USD"]
    connector.write_trade(trade_feed, 10.0, 1.5, Side.BID, 7, 1, 2)
    assert sink.of_kind(Kind.TRADE)["aux"].tolist() == [7]


def test_subscribe_error_retries_with_backoff(memory_sink) -> None:
    connector = toy(memory_sink, resubscribe_retry_initial_s=1.0)
    connector.on_open(0, NOW)
    connector.on_subscribe_error(0, connector.feeds["BTC-USD"], "pair not supported")
    assert connector.connection_counters[0].last_error == "pair not supported"
    assert connector.outgoing_messages(0) == []
    assert texts(connector.outgoing_messages(SECOND)) == [(0, "unsub BTC-USD"), (0, "sub BTC-USD")]


@pytest.mark.parametrize("exchange_ts", [2**63, -1])
def test_a_frame_whose_exchange_time_no_record_can_hold_is_malformed(memory_sink, exchange_ts) -> None:
    """Past April 2262 (or negative): an update with no level, kept as the last exchange time,
    used to break the book's next re-send (OverflowError in the runtime's timer task); a
    snapshot broke at once."""
    connector = live(toy(memory_sink))
    connector.on_message(0, frame("upd", "BTC-USD", 11, prev=10, ts=exchange_ts), NOW)
    counters = connector.counters("BTC/USD")
    assert counters.parse_errors == 1 and counters.last_exchange_ts == 0
    assert connector.feeds["BTC-USD"].state != SyncState.LIVE  # resynced: the frame is lost
    connector.on_message(0, frame("snap", "ETH-USD", 30, [("10.00", "1")], [("10.01", "2")], ts=exchange_ts), NOW)
    assert connector.counters("ETH/USD").parse_errors == 1 and connector.feeds["ETH-USD"].state != SyncState.LIVE
    connector.request_full_resend()
    connector.flush(NOW)
    msgpack.packb([dataclasses.asdict(connector.counters(symbol)) for symbol in SYMBOL_IDS])
