"""OKX v5 protocol on crafted frames, both generations.

Today's (:class:`OkxConnector`, the default): a book's subscribe ack starts buffering it and
asks for ``GET /api/v5/market/books``; buffered updates the snapshot already has are dropped,
the first applied straddles it, a snapshot older than the first buffered update is fetched
again; then the ``prevSeqId`` chain (keep-alives, a reset after maintenance), a break clearing
the one book and fetching it again; a snapshot in the stream and the checksum field ignored;
REST errors, 429 Retry-After and the 40-a-minute budget.

The recorded generation's (:class:`OkxStreamSeededConnector`): the snapshot in the stream,
seqId chaining, checksums verified when non-zero (mismatch → CLEAR + resubscribe).

Both: instruments (spot, swap; dated futures and options skipped), trades, acks, errors,
ping/pong, and bad input counted and dropped."""

from __future__ import annotations

import math
from collections.abc import Sequence

import orjson
import pytest

from actors.connectors import load_exchange_module
from actors.connectors.base import ConnectionAction, Instrument, SnapshotRequest, SyncState
from actors.connectors.checksum import interleaved_checksum
from actors.connectors.okx import (
    BOOK_DEPTH,
    OkxConnector,
    OkxSimulatedVenue,
    OkxStreamSeededConnector,
    native_symbol,
    parse_instruments,
)
from shm.records import Kind, Reason, Side, Status

SECOND = 1_000_000_000
NOW = 1_700_000_000 * SECOND  # wall clock: receive stamps
MONOTONIC = 5_000 * SECOND  # the monotonic clock snapshot requests are scheduled on
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT:PERP": 2}
Levels = Sequence[tuple[str, str]]


def instruments_body(*rows: dict[str, str]) -> bytes:
    return orjson.dumps({"code": "0", "msg": "", "data": list(rows)})


SPOT = instruments_body(
    {"instType": "SPOT", "instId": "BTC-USDT", "baseCcy": "BTC", "quoteCcy": "USDT", "tickSz": "0.1",
     "lotSz": "0.00000001"},
)
SWAP = instruments_body(
    {"instType": "SWAP", "instId": "ETH-USDT-SWAP", "baseCcy": "", "quoteCcy": "", "tickSz": "0.01", "lotSz": "1"},
)
DERIVATIVES = instruments_body(
    {"instType": "FUTURES", "instId": "BTC-USD-220527", "baseCcy": "", "quoteCcy": "", "tickSz": "0.1", "lotSz": "1"},
    {"instType": "OPTION", "instId": "BTC-USD-220514-22000-C", "baseCcy": "", "quoteCcy": "", "tickSz": "0.0005",
     "lotSz": "1"},
)


def book(
    action: str,
    native: str,
    bids: Levels = (),
    asks: Levels = (),
    sequence: int | None = None,
    previous: int | None = None,
    checksum: int = 0,
) -> str:
    entry: dict[str, object] = {
        "asks": [[price, size, "0", "1"] for price, size in asks],
        "bids": [[price, size, "0", "1"] for price, size in bids],
        "ts": "1700000000123",
        "checksum": checksum,
    }
    if sequence is not None:
        entry |= {"prevSeqId": previous, "seqId": sequence}
    return orjson.dumps({"arg": {"channel": "books", "instId": native}, "action": action, "data": [entry]}).decode()


def update(native: str, previous: int, sequence: int, bids: Levels = (), asks: Levels = (), checksum: int = 0) -> str:
    return book("update", native, bids, asks, sequence, previous, checksum)


def rest_books(sequence: int, bids: Levels = (), asks: Levels = ()) -> bytes:
    """A ``GET /api/v5/market/books`` answer, as OKX shapes it."""
    entry = {
        "asks": [[price, size, "0", "1"] for price, size in asks],
        "bids": [[price, size, "0", "1"] for price, size in bids],
        "ts": "1700000000100",
        "seqId": sequence,
    }
    return orjson.dumps({"code": "0", "msg": "", "data": [entry]})


def ack(native: str, channel: str = "books") -> str:
    return orjson.dumps({"event": "subscribe", "arg": {"channel": channel, "instId": native}, "connId": "a"}).decode()


def crc(bids: Levels, asks: Levels) -> int:
    return interleaved_checksum(sorted(bids, key=lambda level: -float(level[0])),
                                sorted(asks, key=lambda level: float(level[0])))


BIDS = [("100.0", "1.5"), ("99.5", "2")]
ASKS = [("101.0", "0.50"), ("101.5", "3")]
BTC_BOOKS_URL = "https://www.okx.com/api/v5/market/books?instId=BTC-USDT&sz=400"


# ---- both generations: instruments, depth ----------------------------------------------------------


def test_spot_and_swap_instruments_map_and_dated_futures_and_options_are_skipped() -> None:
    assert parse_instruments(SPOT) == [Instrument("BTC/USDT", "BTC-USDT", "BTC", "USDT", 0.1, 1e-8)]
    assert parse_instruments(SWAP) == [Instrument("ETH/USDT:PERP", "ETH-USDT-SWAP", "ETH", "USDT", 0.01, 1.0, True)]
    assert parse_instruments(DERIVATIVES) == []
    assert (native_symbol("BTC/USDT"), native_symbol("BTC/USDT:PERP")) == ("BTC-USDT", "BTC-USDT-SWAP")
    module = load_exchange_module("okx")
    assert (module.CONNECTOR, module.RECORDED_CONNECTOR) == (OkxConnector, OkxStreamSeededConnector)
    assert module.SIMULATED_VENUE is OkxSimulatedVenue


@pytest.mark.parametrize("connector_class", [OkxConnector, OkxStreamSeededConnector])
def test_instrument_bodies_accumulate_and_unlisted_perpetuals_come_from_their_name(connector_class, memory_sink) -> None:
    connector = connector_class(memory_sink, 7, SYMBOL_IDS, rest_base_url="http://127.0.0.1:9")
    assert connector.instruments_url == "http://127.0.0.1:9/api/v5/public/instruments?instType=SPOT"
    assert connector.instruments_urls[1] == "http://127.0.0.1:9/api/v5/public/instruments?instType=SWAP"
    connector.load_instruments(SPOT)
    perpetual = connector.feeds_by_canonical["ETH/USDT:PERP"].instrument
    assert (perpetual.native, perpetual.perpetual, math.isnan(perpetual.tick_size)) == ("ETH-USDT-SWAP", True, True)
    connector.load_instruments(SWAP)
    assert connector.feeds_by_canonical["ETH/USDT:PERP"].instrument.tick_size == 0.01
    assert connector.feeds_by_canonical["BTC/USDT"].instrument.tick_size == 0.1
    assert connector.missing_symbols == []


@pytest.mark.parametrize("connector_class", [OkxConnector, OkxStreamSeededConnector])
def test_depth_limits_below_the_channels_400_levels_are_refused(connector_class) -> None:
    connector_class(None, 1, {}, snapshot_limit=1000, depth_limit=1000)
    with pytest.raises(ValueError, match="400 levels"):
        connector_class(None, 1, {}, snapshot_limit=100)


@pytest.mark.parametrize("connector_class", [OkxConnector, OkxStreamSeededConnector])
def test_subscribes_books_and_trades_per_instrument_50_a_connection(connector_class, memory_sink) -> None:
    connector = connector_class(memory_sink, 7, SYMBOL_IDS)
    connector.load_instruments(SPOT)
    assert [orjson.loads(text) for text in connector.on_open(0, NOW)] == [
        {"op": "subscribe", "args": [
            {"channel": "books", "instId": "BTC-USDT"}, {"channel": "trades", "instId": "BTC-USDT"},
            {"channel": "books", "instId": "ETH-USDT-SWAP"}, {"channel": "trades", "instId": "ETH-USDT-SWAP"},
        ]}
    ]
    assert connector.connection_plan()[0].url == "wss://ws.okx.com:8443/ws/v5/public"
    many = connector_class(memory_sink, 7, {f"C{index}/USDT:PERP": index for index in range(120)})
    many.load_instruments(SPOT)
    assert [len(spec.symbols) for spec in many.connection_plan()] == [50, 50, 20]


# ---- today's generation: REST-seeded -------------------------------------------------------------


def subscribed(sink, *natives: str) -> OkxConnector:
    """Connected, and the books of ``natives`` acknowledged (buffering, snapshot due)."""
    connector = OkxConnector(sink, 7, SYMBOL_IDS)
    connector.load_instruments(SPOT)
    connector.on_open(0, NOW)
    for native in natives:
        connector.on_message(0, ack(native), NOW)
    return connector


def live(sink) -> OkxConnector:
    """BTC-USDT live at seqId 10."""
    connector = subscribed(sink, "BTC-USDT")
    assert connector.snapshot_requests(MONOTONIC) == [SnapshotRequest("BTC-USDT", BTC_BOOKS_URL)]
    connector.on_snapshot("BTC-USDT", rest_books(10, BIDS, ASKS), NOW)
    assert connector.feeds["BTC-USDT"].state == SyncState.LIVE
    return connector


def test_a_books_ack_starts_buffering_and_asks_for_the_rest_snapshot(memory_sink) -> None:
    connector = subscribed(memory_sink)
    feed = connector.feeds["BTC-USDT"]
    assert feed.state == SyncState.SUBSCRIBING and connector.snapshot_requests(MONOTONIC) == []
    connector.on_message(0, update("BTC-USDT", 5, 6, BIDS), NOW)  # before the ack: not ours yet
    connector.on_message(0, ack("BTC-USDT", "trades"), NOW)
    assert feed.state == SyncState.SUBSCRIBING
    connector.on_message(0, ack("BTC-USDT"), NOW)
    assert feed.state == SyncState.BUFFERING
    assert connector.snapshot_requests(MONOTONIC) == [SnapshotRequest("BTC-USDT", BTC_BOOKS_URL)]
    assert connector.snapshot_requests(MONOTONIC) == []  # one in flight per book
    assert (feed.counters.frames, feed.counters.frames_dropped) == (1, 1)
    assert connector.connection_counters[0].subscribe_acks == 2
    statuses = memory_sink.of_kind(Kind.STATUS)
    assert statuses["aux"].tolist() == [Status.CONNECTING, Status.CONNECTING, Status.SYNCING]


def test_updates_buffer_while_the_snapshot_loads_and_those_it_has_are_dropped(memory_sink) -> None:
    connector = subscribed(memory_sink, "BTC-USDT")
    connector.snapshot_requests(MONOTONIC)
    connector.on_message(0, update("BTC-USDT", 100, 101, bids=[("99.0", "4")]), NOW)
    connector.on_message(0, update("BTC-USDT", 101, 102, bids=[("99.5", "0")]), NOW)
    connector.on_message(0, update("BTC-USDT", 102, 103, asks=[("101.0", "0.25")]), NOW)
    assert len(memory_sink.of_kind(Kind.LEVEL)) == 0 and connector.book("BTC/USDT").best_bid() is None
    connector.on_snapshot("BTC-USDT", rest_books(101, BIDS, ASKS), NOW)  # already has seqId 101
    counters = connector.counters("BTC/USDT")
    assert (counters.snapshots, counters.frames_applied, counters.frames_dropped, counters.gaps) == (1, 2, 1, 0)
    book_ = connector.book("BTC/USDT")
    assert book_.bid_levels() == [(100.0, 1.5)]  # 99.0 came in 101 (in the snapshot), 99.5 left in 102
    assert book_.ask_levels() == [(101.0, 0.25), (101.5, 3.0)]
    assert memory_sink.books()[1] == (book_.bids, book_.asks)
    assert memory_sink.of_kind(Kind.SNAPSHOT_BEGIN)["sequence"].tolist() == [103]
    connector.on_message(0, update("BTC-USDT", 103, 104, bids=[("100.0", "1")]), NOW)
    assert memory_sink.of_kind(Kind.LEVEL)["sequence"].tolist()[-1] == 104


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "after-the-snapshot"])
def test_the_first_applied_update_straddles_the_snapshot(memory_sink, buffered: bool) -> None:
    """OKX's REST book has its own seqId, inside an update's range: prevSeqId <= it < seqId."""
    connector = subscribed(memory_sink, "BTC-USDT")
    connector.snapshot_requests(MONOTONIC)
    straddling = update("BTC-USDT", 103, 110, bids=[("100.0", "7")])
    if buffered:
        connector.on_message(0, update("BTC-USDT", 90, 103), NOW)
        connector.on_message(0, straddling, NOW)
    connector.on_snapshot("BTC-USDT", rest_books(105, BIDS, ASKS), NOW)
    if not buffered:
        connector.on_message(0, straddling, NOW)
    assert connector.book("BTC/USDT").best_bid() == (100.0, 7.0)
    assert connector.feeds["BTC-USDT"].last_id == 110
    counters = connector.counters("BTC/USDT")
    assert (counters.frames_applied, counters.frames_dropped, counters.gaps) == (1, int(buffered), 0)


def test_a_first_update_after_the_snapshot_that_skips_past_it_is_a_gap(memory_sink) -> None:
    connector = live(memory_sink)
    connector.on_message(0, update("BTC-USDT", 11, 12, bids=[("100.0", "7")]), NOW)  # 10 → 11 never came
    counters = connector.counters("BTC/USDT")
    assert (counters.gaps, counters.resyncs) == (1, 1)
    assert memory_sink.of_kind(Kind.CLEAR)["reason"].tolist() == [Reason.SEQUENCE_GAP]
    assert connector.snapshot_requests(MONOTONIC) == [SnapshotRequest("BTC-USDT", BTC_BOOKS_URL)]


def test_a_snapshot_older_than_the_first_buffered_update_is_fetched_again(memory_sink) -> None:
    connector = subscribed(memory_sink, "BTC-USDT")
    connector.snapshot_requests(MONOTONIC)
    connector.on_message(0, update("BTC-USDT", 100, 101, bids=[("99.0", "4")]), NOW)
    connector.on_snapshot("BTC-USDT", rest_books(99, BIDS, ASKS), NOW)  # an older cache's book
    counters = connector.counters("BTC/USDT")
    assert (counters.stale_snapshots, counters.snapshots) == (1, 0)
    assert connector.feeds["BTC-USDT"].state == SyncState.BUFFERING and len(memory_sink.of_kind(Kind.LEVEL)) == 0
    assert connector.snapshot_requests(MONOTONIC) == []  # the retry waits 0.5 s
    assert connector.snapshot_requests(MONOTONIC + SECOND // 2) == [SnapshotRequest("BTC-USDT", BTC_BOOKS_URL)]
    connector.on_snapshot("BTC-USDT", rest_books(100, BIDS, ASKS), NOW)
    assert connector.book("BTC/USDT").bid_levels() == [(100.0, 1.5), (99.5, 2.0), (99.0, 4.0)]
    assert (counters.snapshots, counters.frames_applied, counters.gaps) == (1, 1, 0)


def test_a_broken_chain_clears_that_book_only_and_fetches_it_again_without_resubscribing(memory_sink) -> None:
    connector = live(memory_sink)
    connector.on_message(0, ack("ETH-USDT-SWAP"), NOW)
    connector.snapshot_requests(MONOTONIC)
    connector.on_snapshot("ETH-USDT-SWAP", rest_books(5, [("10", "1")], [("11", "1")]), NOW)
    action = connector.on_message(0, update("BTC-USDT", 12, 13, bids=[("100.5", "1")]), NOW)  # 10 → 12 lost
    assert action is ConnectionAction.CONTINUE
    counters = connector.counters("BTC/USDT")
    assert (counters.gaps, counters.resyncs, connector.feeds["BTC-USDT"].state) == (1, 1, SyncState.BUFFERING)
    clear, status = memory_sink.batches[-1]
    assert (clear["kind"], clear["reason"], clear["symbol_id"]) == (Kind.CLEAR, Reason.SEQUENCE_GAP, 1)
    assert (status["kind"], status["aux"]) == (Kind.STATUS, Status.RESYNCING)
    assert connector.snapshot_requests(MONOTONIC) == [SnapshotRequest("BTC-USDT", BTC_BOOKS_URL)]
    assert connector.outgoing_messages(MONOTONIC) == []  # no unsubscribe/subscribe: the stream goes on
    connector.on_snapshot("BTC-USDT", rest_books(12, BIDS, ASKS), NOW)  # the frame that broke it bridges this
    assert connector.book("BTC/USDT").best_bid() == (100.5, 1.0) and connector.feeds["BTC-USDT"].last_id == 13
    assert memory_sink.books()[1] == ({100.5: 1.0, 100.0: 1.5, 99.5: 2.0}, {101.0: 0.5, 101.5: 3.0})
    eth = connector.counters("ETH/USDT:PERP")
    assert (eth.resyncs, eth.snapshots, connector.feeds["ETH-USDT-SWAP"].state) == (0, 1, SyncState.LIVE)
    assert memory_sink.of_kind(Kind.CLEAR)["symbol_id"].tolist() == [1]


def test_keep_alives_and_a_sequence_reset_after_maintenance_are_not_gaps(memory_sink) -> None:
    connector = live(memory_sink)
    records = len(memory_sink.records())
    connector.on_message(0, update("BTC-USDT", 10, 10), NOW)  # idle keep-alive
    assert len(memory_sink.records()) == records
    connector.on_message(0, update("BTC-USDT", 10, 3, bids=[("100.0", "2")]), NOW)  # reset: seqId < prevSeqId
    connector.on_message(0, update("BTC-USDT", 3, 4, bids=[("100.0", "3")]), NOW)
    connector.on_message(0, update("BTC-USDT", 4, 4), NOW)
    counters = connector.counters("BTC/USDT")
    assert (counters.gaps, counters.resyncs, counters.frames_applied) == (0, 0, 2)
    assert connector.book("BTC/USDT").best_bid() == (100.0, 3.0)
    assert memory_sink.of_kind(Kind.LEVEL)["sequence"].tolist() == [10] * 4 + [3, 4]  # the snapshot's, then two


def test_a_reset_right_after_the_snapshot_still_follows_it(memory_sink) -> None:
    """An update naming the snapshot's seqId as its previous comes next, whatever its own seqId."""
    connector = subscribed(memory_sink, "BTC-USDT")
    connector.snapshot_requests(MONOTONIC)
    connector.on_message(0, update("BTC-USDT", 9, 10), NOW)  # a keep-alive the snapshot has
    connector.on_message(0, update("BTC-USDT", 10, 2, bids=[("100.0", "5")]), NOW)
    connector.on_snapshot("BTC-USDT", rest_books(10, BIDS, ASKS), NOW)
    counters = connector.counters("BTC/USDT")
    assert (counters.frames_applied, counters.frames_dropped, counters.gaps) == (1, 1, 0)
    assert connector.book("BTC/USDT").best_bid() == (100.0, 5.0) and connector.feeds["BTC-USDT"].last_id == 2


def test_a_snapshot_older_than_a_buffered_reset_is_fetched_again(memory_sink) -> None:
    """A reset's low seqId does not make it look like an update the snapshot has: its prevSeqId
    (the last seqId before maintenance) is above an older cache's snapshot, so that is refetched."""
    connector = subscribed(memory_sink, "BTC-USDT")
    connector.snapshot_requests(MONOTONIC)
    connector.on_message(0, update("BTC-USDT", 1000, 3, bids=[("100.0", "5")]), NOW)
    connector.on_message(0, update("BTC-USDT", 3, 4, bids=[("100.0", "6")]), NOW)
    connector.on_snapshot("BTC-USDT", rest_books(995, BIDS, ASKS), NOW)
    counters = connector.counters("BTC/USDT")
    assert (counters.stale_snapshots, counters.snapshots, counters.frames_dropped) == (1, 0, 0)
    assert connector.feeds["BTC-USDT"].state == SyncState.BUFFERING and len(memory_sink.of_kind(Kind.LEVEL)) == 0
    assert connector.snapshot_requests(MONOTONIC) == []
    assert len(connector.snapshot_requests(MONOTONIC + SECOND // 2)) == 1
    connector.on_snapshot("BTC-USDT", rest_books(1000, BIDS, ASKS), NOW)
    assert connector.book("BTC/USDT").best_bid() == (100.0, 6.0) and connector.feeds["BTC-USDT"].last_id == 4


def test_a_snapshot_still_sent_in_the_stream_is_ignored(memory_sink) -> None:
    connector = subscribed(memory_sink, "BTC-USDT")
    connector.on_message(0, book("snapshot", "BTC-USDT", BIDS, ASKS, 100, -1), NOW)
    connector.on_message(0, update("BTC-USDT", 100, 101, bids=[("99.0", "4")]), NOW)
    assert connector.connection_counters[0].ignored_frames == 1
    assert connector.book("BTC/USDT").best_bid() is None and connector.counters("BTC/USDT").snapshots == 0
    assert connector.snapshot_requests(MONOTONIC) == [SnapshotRequest("BTC-USDT", BTC_BOOKS_URL)]
    connector.on_snapshot("BTC-USDT", rest_books(100, [("100.0", "1")], ASKS), NOW)
    assert connector.book("BTC/USDT").bid_levels() == [(100.0, 1.0), (99.0, 4.0)]


def test_the_checksum_field_is_not_read_in_todays_generation(memory_sink) -> None:
    """OKX sends 0 since 2026-06-23, before the stream lost its snapshot: a REST-seeded book
    never had a checksum to check (the recorded generation's connector verifies them)."""
    connector = live(memory_sink)
    connector.on_message(0, update("BTC-USDT", 10, 11, bids=[("100.0", "2")], checksum=12345), NOW)
    counters = connector.counters("BTC/USDT")
    assert (counters.frames_applied, counters.resyncs) == (1, 0)


def test_a_429s_retry_after_pauses_every_snapshot_request(memory_sink) -> None:
    connector = subscribed(memory_sink, "BTC-USDT", "ETH-USDT-SWAP")
    assert [request.native_symbol for request in connector.snapshot_requests(MONOTONIC)] == ["BTC-USDT",
                                                                                             "ETH-USDT-SWAP"]
    connector.on_snapshot_failed("BTC-USDT", MONOTONIC, retry_after_s=2.0)
    connector.on_snapshot("ETH-USDT-SWAP", rest_books(5, [("10", "1")], [("11", "1")]), NOW)
    connector.on_message(0, update("ETH-USDT-SWAP", 6, 7), NOW)  # a gap: ETH wants a snapshot too
    assert connector.counters("BTC/USDT").snapshot_failures == 1
    assert connector.snapshot_requests(MONOTONIC + SECOND) == []
    assert connector.snapshot_requests(MONOTONIC + 2 * SECOND - 1) == []
    assert [request.native_symbol for request in connector.snapshot_requests(MONOTONIC + 2 * SECOND)] == [
        "BTC-USDT", "ETH-USDT-SWAP"]


def test_rest_error_answers_and_unreadable_books_are_counted_and_fetched_again(memory_sink) -> None:
    connector = subscribed(memory_sink, "BTC-USDT")
    counters = connector.counters("BTC/USDT")
    bodies = [b'{"code":"51001","msg":"Instrument ID does not exist","data":[]}', b'{"code":"0","data":[]}',
              b'{"code":"0","msg":"","data":[{"asks":[["101"]],"bids":[],"ts":"1","seqId":3}]}',
              b'{"code":"0","msg":"","data":[{"asks":[],"bids":[],"ts":"1","seqId":"3"}]}', b"<html>"]
    delay = 0
    for attempt, body in enumerate(bodies, 1):
        assert len(connector.snapshot_requests(MONOTONIC + delay)) == 1
        connector.on_snapshot("BTC-USDT", body, NOW)
        assert (counters.parse_errors, connector.feeds["BTC-USDT"].state) == (attempt, SyncState.BUFFERING)
        assert connector.snapshot_requests(MONOTONIC + delay) == []  # anchors the backoff
        delay += int(min(30.0, 0.5 * 2 ** (attempt - 1)) * SECOND)
    assert len(connector.snapshot_requests(MONOTONIC + delay)) == 1
    connector.on_snapshot("BTC-USDT", rest_books(3, BIDS, ASKS), NOW)
    assert connector.feeds["BTC-USDT"].state == SyncState.LIVE


def test_at_most_40_rest_books_are_asked_a_minute(memory_sink) -> None:
    """OKX allows 40 book requests per 2 s per IP; the base counts its budget per minute."""
    symbol_ids = {f"C{index}/USDT": index for index in range(45)}
    connector = OkxConnector(memory_sink, 7, symbol_ids)
    connector.load_instruments(instruments_body(*(
        {"instType": "SPOT", "instId": f"C{index}-USDT", "baseCcy": f"C{index}", "quoteCcy": "USDT", "tickSz": "0.1",
         "lotSz": "1"} for index in range(45))))
    connector.on_open(0, NOW)
    for index in range(45):
        connector.on_message(0, ack(f"C{index}-USDT"), NOW)
    asked = []
    for millisecond in range(59_000):
        for request in connector.snapshot_requests(MONOTONIC + millisecond * 1_000_000):
            asked.append(request.native_symbol)
            connector.on_snapshot(request.native_symbol, rest_books(1, BIDS, ASKS), NOW)
    assert len(asked) == 40
    assert len(connector.snapshot_requests(MONOTONIC + 60 * SECOND)) == 4  # the in-flight limit, again


def test_books_are_kept_to_400_levels(memory_sink) -> None:
    connector = subscribed(memory_sink, "BTC-USDT")
    connector.snapshot_requests(MONOTONIC)
    asks = [(f"{101 + tick}", "1") for tick in range(BOOK_DEPTH)]
    connector.on_snapshot("BTC-USDT", rest_books(1, BIDS, asks), NOW)
    connector.on_message(0, update("BTC-USDT", 1, 2, asks=[("100.5", "1")]), NOW)
    book_ = connector.book("BTC/USDT")
    assert len(book_.asks) == BOOK_DEPTH and float(100 + BOOK_DEPTH) not in book_.asks
    assert memory_sink.books()[1][1] == book_.asks


def test_trades_acks_errors_and_pings(memory_sink) -> None:
    connector = subscribed(memory_sink, "BTC-USDT")
    trade = ('{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT","tradeId":"338476307",'
             '"px":"30236","sz":"0.0002","side":"sell","ts":"1652459224818"}]}')
    connector.on_message(0, trade, NOW)
    trades = memory_sink.of_kind(Kind.TRADE)
    assert (trades["aux"].tolist(), trades["side"].tolist(), trades["price"].tolist()) == ([338476307], [Side.ASK],
                                                                                           [30236.0])
    assert trades["exchange_ts"].tolist() == [1652459224818000000]
    error = '{"event":"error","code":"60018","msg":"Wrong URL or channel:books,instId:ETH-USDT-SWAP","connId":"a"}'
    # a book still waiting for its ack would never sync: the connection is replaced (with backoff)
    assert connector.on_message(0, error, NOW) is ConnectionAction.RECONNECT
    counters = connector.connection_counters[0]
    assert (counters.subscribe_acks, counters.subscribe_errors, counters.last_error) == (
        1, 1, "60018 Wrong URL or channel:books,instId:ETH-USDT-SWAP")
    assert connector.feeds["ETH-USDT-SWAP"].state == SyncState.SUBSCRIBING
    assert connector.outgoing_messages(MONOTONIC) == []
    assert connector.outgoing_messages(MONOTONIC + 24 * SECOND) == []
    assert [message.text for message in connector.outgoing_messages(MONOTONIC + 25 * SECOND)] == ["ping"]
    assert connector.on_message(0, "pong", NOW) is ConnectionAction.CONTINUE
    assert counters.ignored_frames == 1 and counters.malformed_frames == 0
    connector.on_close(0, NOW)
    assert connector.outgoing_messages(MONOTONIC + 60 * SECOND) == []


def test_bad_input_is_counted_and_dropped(memory_sink) -> None:
    connector = live(memory_sink)
    before = dict(connector.book("BTC/USDT").bids)
    for data in ('{"arg":', "[1]", "17", b"\xff", '{"arg":{"channel":"books"},"action":"update","data":[]}',
                 '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[]}',
                 update("ETH-BTC", 1, 2, bids=[("1", "1")]), '{"event":"subscribe","arg":{"instId":["x"]}}'):
        assert connector.on_message(0, data, NOW) is ConnectionAction.CONTINUE
    counters = connector.connection_counters[0]
    assert (counters.malformed_frames, counters.unknown_symbol_frames, counters.ignored_frames) == (5, 1, 1)
    assert connector.book("BTC/USDT").bids == before and connector.counters("BTC/USDT").resyncs == 0
    connector.on_message(0, '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"px":"x"}]}', NOW)
    assert connector.counters("BTC/USDT").parse_errors == 1 and connector.counters("BTC/USDT").resyncs == 0
    # Book frames of ours that cannot be read: their levels are lost, so resync.
    for frame in (update("BTC-USDT", 10, 11, bids=[("x", "1")]), '{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{"bids":[["100"]],"asks":[],'
                  '"ts":"1","prevSeqId":10,"seqId":11}]}',
                  book("update", "BTC-USDT", bids=[("100", "1")]),  # no seqId in today's generation
                  '{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":7}'):
        connector.on_snapshot("BTC-USDT", rest_books(10, BIDS, ASKS), NOW)
        assert connector.feeds["BTC-USDT"].state == SyncState.LIVE
        connector.on_message(0, frame, NOW)
        assert connector.feeds["BTC-USDT"].state == SyncState.BUFFERING
    assert connector.counters("BTC/USDT").parse_errors == 5
    assert memory_sink.of_kind(Kind.CLEAR)["reason"].tolist() == [Reason.MALFORMED] * 4


# ---- the recorded generation: snapshot in the stream, checksums ---------------------------------------


def stream_connector(sink) -> OkxStreamSeededConnector:
    connector = OkxStreamSeededConnector(sink, 7, SYMBOL_IDS)
    connector.load_instruments(SPOT)
    connector.on_open(0, NOW)
    return connector


def stream_live(sink) -> OkxStreamSeededConnector:
    """BTC-USDT live at seqId 10."""
    connector = stream_connector(sink)
    connector.on_message(0, book("snapshot", "BTC-USDT", BIDS, ASKS, 10, -1), NOW)
    assert connector.feeds["BTC-USDT"].state == SyncState.LIVE
    return connector


def test_recorded_generation_snapshot_updates_and_deletes_chain_by_seq_id(memory_sink) -> None:
    connector = stream_live(memory_sink)
    connector.on_message(0, update("BTC-USDT", 10, 11, bids=[("100.5", "0.1")]), NOW)
    connector.on_message(0, update("BTC-USDT", 11, 12, bids=[("99.5", "0")], asks=[("101.0", "0"), ("102", "1")]), NOW)
    connector.on_message(0, update("BTC-USDT", 12, 13, bids=[("90", "0")]), NOW)  # an unknown level
    connector.on_message(0, update("BTC-USDT", 13, 13), NOW)  # keep-alive
    connector.on_message(0, update("BTC-USDT", 13, 2, bids=[("100.0", "2")]), NOW)  # reset after maintenance
    book_ = connector.book("BTC/USDT")
    assert book_.bid_levels() == [(100.5, 0.1), (100.0, 2.0)]
    assert book_.ask_levels() == [(101.5, 3.0), (102.0, 1.0)]
    counters = connector.counters("BTC/USDT")
    assert (counters.frames_applied, counters.gaps, counters.checksums_ok, counters.resyncs) == (4, 0, 0, 0)
    assert memory_sink.books()[1] == (book_.bids, book_.asks)
    levels = memory_sink.of_kind(Kind.LEVEL)
    assert levels["sequence"].tolist()[-1] == 2 and levels["exchange_ts"].tolist()[-1] == 1700000000123000000


def test_recorded_generation_gap_clears_and_resubscribes_the_one_instrument(memory_sink) -> None:
    connector = stream_live(memory_sink)
    connector.on_message(0, book("snapshot", "ETH-USDT-SWAP", [("10", "1")], [("11", "1")], 5, -1), NOW)
    connector.on_message(0, update("BTC-USDT", 12, 13, bids=[("100.5", "1")]), NOW)
    counters = connector.counters("BTC/USDT")
    assert (counters.gaps, counters.resyncs, counters.frames_dropped) == (1, 1, 1)
    clear, _status = memory_sink.batches[-1]
    assert (clear["kind"], clear["reason"], clear["symbol_id"]) == (Kind.CLEAR, Reason.SEQUENCE_GAP, 1)
    assert [orjson.loads(message.text) for message in connector.outgoing_messages(MONOTONIC)] == [
        {"op": "unsubscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]},
        {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]},
    ]
    connector.on_message(0, update("BTC-USDT", 13, 14, bids=[("100.5", "1")]), NOW)
    assert connector.book("BTC/USDT").best_bid() is None  # nothing applies until the fresh snapshot
    connector.on_message(0, book("snapshot", "BTC-USDT", BIDS, ASKS, 20, -1), NOW)
    assert memory_sink.books()[1] == ({100.0: 1.5, 99.5: 2.0}, {101.0: 0.5, 101.5: 3.0})
    assert connector.counters("ETH/USDT:PERP").resyncs == 0 and 2 in memory_sink.books()
    assert connector.snapshot_requests(MONOTONIC) == []  # no REST in this generation


def test_recorded_generation_checksums_are_verified_when_non_zero_from_the_exact_strings(memory_sink) -> None:
    connector = stream_connector(memory_sink)
    connector.on_message(0, book("snapshot", "BTC-USDT", BIDS, ASKS, checksum=crc(BIDS, ASKS)), NOW)
    asks = [("101.0", "0.50"), ("101.5", "3.0")]
    connector.on_message(0, book("update", "BTC-USDT", asks=[("101.5", "3.0")], checksum=crc(BIDS, asks)), NOW)
    connector.on_message(0, book("update", "BTC-USDT", asks=[("101.5", "3.0")], checksum=0), NOW)  # not sent
    counters = connector.counters("BTC/USDT")
    assert (counters.checksums_ok, counters.checksums_failed, counters.frames_applied) == (2, 0, 2)
    assert crc(BIDS, [("101.0", "0.5"), ("101.5", "3")]) != crc(BIDS, asks)  # the texts matter, not the values
    connector.on_message(0, book("update", "BTC-USDT", bids=[("100.0", "1")], checksum=12345), NOW)
    assert (counters.checksums_failed, counters.resyncs) == (1, 1)
    assert memory_sink.of_kind(Kind.CLEAR)["reason"].tolist() == [Reason.CHECKSUM]
    assert len(connector.outgoing_messages(MONOTONIC)) == 2


def test_the_documented_checksum_examples() -> None:
    assert interleaved_checksum([("3366.1", "7"), ("3366", "6")], [("3366.8", "9"), ("3368", "8")]) == -1881014294
    assert interleaved_checksum([("3366.1", "7")], [("3366.8", "9"), ("3368", "8"), ("3372", "8")]) == 831078360


def test_recorded_generation_books_are_truncated_to_400_levels(memory_sink) -> None:
    connector = stream_connector(memory_sink)
    asks = [(f"{101 + tick}", "1") for tick in range(BOOK_DEPTH)]
    connector.on_message(0, book("snapshot", "BTC-USDT", BIDS, asks, 1, -1), NOW)
    connector.on_message(0, update("BTC-USDT", 1, 2, asks=[("100.5", "1")]), NOW)
    book_ = connector.book("BTC/USDT")
    assert len(book_.asks) == BOOK_DEPTH and float(100 + BOOK_DEPTH) not in book_.asks
    assert memory_sink.books()[1][1] == book_.asks


def test_recorded_generation_trades_acks_errors_and_pings(memory_sink) -> None:
    connector = stream_connector(memory_sink)
    trade = ('{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT","tradeId":"338476307",'
             '"px":"30236","sz":"0.0002","side":"buy","ts":"1652459224818"}]}')
    connector.on_message(0, trade, NOW)
    assert memory_sink.of_kind(Kind.TRADE)["side"].tolist() == [Side.BID]
    connector.on_message(0, '{"event":"subscribe","arg":{"channel":"books","instId":"BTC-USDT"},"connId":"a"}', NOW)
    connector.on_message(0, '{"event":"error","code":"60018","msg":"instId:ETH-USDT-SWAP doesn\'t exist",'
                            '"arg":{"channel":"books","instId":"ETH-USDT-SWAP"},"connId":"a"}', NOW)
    connector.on_message(0, '{"event":"error","code":"60012","msg":"Invalid request","connId":"a"}', NOW)
    counters = connector.connection_counters[0]
    assert (counters.subscribe_acks, counters.subscribe_errors, counters.last_error) == (1, 2,
                                                                                      "60012 Invalid request")
    assert connector.counters("ETH/USDT:PERP").subscribe_errors == 1
    assert connector.outgoing_messages(0) == []
    texts = [message.text for message in connector.outgoing_messages(26 * SECOND)]
    assert [orjson.loads(text)["op"] for text in texts[:-1]] == ["unsubscribe", "subscribe"]  # the refused retry
    assert texts[-1] == "ping"
    assert connector.on_message(0, "pong", NOW) is ConnectionAction.CONTINUE
    assert counters.ignored_frames == 1 and counters.malformed_frames == 0


def test_recorded_generation_bad_book_frames_resubscribe(memory_sink) -> None:
    connector = stream_live(memory_sink)
    connector.on_message(0, update("BTC-USDT", 10, 11, bids=[("x", "1")]), NOW)
    connector.on_message(0, '{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":7}', NOW)
    assert connector.counters("BTC/USDT").parse_errors == 2
    assert memory_sink.of_kind(Kind.CLEAR)["reason"].tolist() == [Reason.MALFORMED]
    assert connector.feeds["BTC-USDT"].state == SyncState.SUBSCRIBING
