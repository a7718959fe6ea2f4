"""OKX v5 protocol on crafted frames: instruments (spot, swap; dated futures and options
skipped), snapshot, updates, deletes, seqId chaining (keep-alive, reset after maintenance,
gap → CLEAR + resubscribe), checksum when non-zero (mismatch → CLEAR + resubscribe),
trades, acks, errors, ping/pong, and bad input counted and dropped."""

from __future__ import annotations

import math
from collections.abc import Sequence

import orjson
import pytest

from actors.connectors import load_exchange_module
from actors.connectors.base import ConnectionAction, Instrument, SyncState
from actors.connectors.checksum import interleaved_checksum
from actors.connectors.okx import (
    BOOK_DEPTH,
    OkxConnector,
    OkxSimulatedVenue,
    native_symbol,
    parse_instruments,
)
from shm.records import Kind, Reason, Side

SECOND = 1_000_000_000
NOW = 1_700_000_000 * SECOND
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


def crc(bids: Levels, asks: Levels) -> int:
    return interleaved_checksum(sorted(bids, key=lambda level: -float(level[0])),
                                sorted(asks, key=lambda level: float(level[0])))


BIDS = [("100.0", "1.5"), ("99.5", "2")]
ASKS = [("101.0", "0.50"), ("101.5", "3")]


def connector_for(sink) -> OkxConnector:
    connector = OkxConnector(sink, 7, SYMBOL_IDS)
    connector.load_instruments(SPOT)
    connector.on_open(0, NOW)
    return connector


def live(sink) -> OkxConnector:
    """BTC-USDT live at seqId 10."""
    connector = connector_for(sink)
    connector.on_message(0, book("snapshot", "BTC-USDT", BIDS, ASKS, 10, -1), NOW)
    assert connector.feeds["BTC-USDT"].state == SyncState.LIVE
    return connector


# ---- instruments --------------------------------------------------------------------------------


def test_spot_and_swap_instruments_map_and_dated_futures_and_options_are_skipped() -> None:
    assert parse_instruments(SPOT) == [Instrument("BTC/USDT", "BTC-USDT", "BTC", "USDT", 0.1, 1e-8)]
    assert parse_instruments(SWAP) == [Instrument("ETH/USDT:PERP", "ETH-USDT-SWAP", "ETH", "USDT", 0.01, 1.0, True)]
    assert parse_instruments(DERIVATIVES) == []
    assert (native_symbol("BTC/USDT"), native_symbol("BTC/USDT:PERP")) == ("BTC-USDT", "BTC-USDT-SWAP")
    assert load_exchange_module("okx").CONNECTOR is OkxConnector
    assert load_exchange_module("okx").SIMULATED_VENUE is OkxSimulatedVenue


def test_instrument_bodies_accumulate_and_unlisted_perpetuals_come_from_their_name(memory_sink) -> None:
    connector = OkxConnector(memory_sink, 7, SYMBOL_IDS, rest_base_url="http://127.0.0.1:9")
    assert connector.instruments_url == "http://127.0.0.1:9/api/v5/public/instruments?instType=SPOT"
    assert connector.instruments_urls[1] == "http://127.0.0.1:9/api/v5/public/instruments?instType=SWAP"
    connector.load_instruments(SPOT)
    perpetual = connector.feeds_by_canonical["ETH/USDT:PERP"].instrument
    assert (perpetual.native, perpetual.perpetual, math.isnan(perpetual.tick_size)) == ("ETH-USDT-SWAP", True, True)
    connector.load_instruments(SWAP)
    assert connector.feeds_by_canonical["ETH/USDT:PERP"].instrument.tick_size == 0.01
    assert connector.feeds_by_canonical["BTC/USDT"].instrument.tick_size == 0.1
    assert connector.missing_symbols == []


def test_depth_limits_below_the_channels_400_levels_are_refused() -> None:
    assert OkxConnector(None, 1, {}, snapshot_limit=1000, depth_limit=1000).depth == BOOK_DEPTH
    with pytest.raises(ValueError, match="400 levels"):
        OkxConnector(None, 1, {}, snapshot_limit=100)


def test_subscribes_books_and_trades_per_instrument(memory_sink) -> None:
    connector = OkxConnector(memory_sink, 7, SYMBOL_IDS)
    connector.load_instruments(SPOT)
    assert [orjson.loads(text) for text in connector.on_open(0, NOW)] == [
        {"op": "subscribe", "args": [
            {"channel": "books", "instId": "BTC-USDT"}, {"channel": "trades", "instId": "BTC-USDT"},
            {"channel": "books", "instId": "ETH-USDT-SWAP"}, {"channel": "trades", "instId": "ETH-USDT-SWAP"},
        ]}
    ]
    assert connector.connection_plan()[0].url == "wss://ws.okx.com:8443/ws/v5/public"


# ---- books --------------------------------------------------------------------------------------


def test_snapshot_updates_and_deletes_chain_by_seq_id(memory_sink) -> None:
    connector = live(memory_sink)
    connector.on_message(0, book("update", "BTC-USDT", bids=[("100.5", "0.1")], sequence=11, previous=10), NOW)
    connector.on_message(0, book("update", "BTC-USDT", bids=[("99.5", "0")], asks=[("101.0", "0"), ("102", "1")],
                                 sequence=12, previous=11), NOW)
    connector.on_message(0, book("update", "BTC-USDT", bids=[("90", "0")], sequence=13, previous=12), NOW)  # unknown
    book_ = connector.book("BTC/USDT")
    assert book_.bid_levels() == [(100.5, 0.1), (100.0, 1.5)]
    assert book_.ask_levels() == [(101.5, 3.0), (102.0, 1.0)]
    counters = connector.counters("BTC/USDT")
    assert (counters.frames_applied, counters.gaps, counters.checksums_ok, counters.resyncs) == (3, 0, 0, 0)
    assert memory_sink.books()[1] == (book_.bids, book_.asks)
    levels = memory_sink.of_kind(Kind.LEVEL)
    assert levels["sequence"].tolist()[-1] == 13 and levels["exchange_ts"].tolist()[-1] == 1700000000123000000


def test_keep_alive_and_a_sequence_reset_after_maintenance_are_not_gaps(memory_sink) -> None:
    connector = live(memory_sink)
    records = len(memory_sink.records())
    connector.on_message(0, book("update", "BTC-USDT", sequence=10, previous=10), NOW)  # idle keep-alive
    assert len(memory_sink.records()) == records
    connector.on_message(0, book("update", "BTC-USDT", bids=[("100.0", "2")], sequence=3, previous=10), NOW)
    connector.on_message(0, book("update", "BTC-USDT", bids=[("100.0", "3")], sequence=4, previous=3), NOW)
    counters = connector.counters("BTC/USDT")
    assert (counters.gaps, counters.resyncs, counters.frames_applied) == (0, 0, 2)
    assert connector.book("BTC/USDT").best_bid() == (100.0, 3.0)


def test_a_seq_id_gap_clears_and_resubscribes_the_one_instrument(memory_sink) -> None:
    connector = live(memory_sink)
    connector.on_message(0, book("snapshot", "ETH-USDT-SWAP", [("10", "1")], [("11", "1")], 5, -1), NOW)
    action = connector.on_message(0, book("update", "BTC-USDT", bids=[("100.5", "1")], sequence=13, previous=12), NOW)
    assert action is ConnectionAction.CONTINUE
    counters = connector.counters("BTC/USDT")
    assert (counters.gaps, counters.resyncs, counters.frames_dropped) == (1, 1, 1)
    clear, _status = memory_sink.batches[-1]
    assert (clear["kind"], clear["reason"], clear["symbol_id"]) == (Kind.CLEAR, Reason.SEQUENCE_GAP, 1)
    assert [orjson.loads(message.text) for message in connector.outgoing_messages(SECOND)] == [
        {"op": "unsubscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]},
        {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]},
    ]
    connector.on_message(0, book("update", "BTC-USDT", bids=[("100.5", "1")], sequence=14, previous=13), NOW)
    assert connector.book("BTC/USDT").best_bid() is None  # nothing applies until the fresh snapshot
    connector.on_message(0, book("snapshot", "BTC-USDT", BIDS, ASKS, 20, -1), NOW)
    assert memory_sink.books()[1] == ({100.0: 1.5, 99.5: 2.0}, {101.0: 0.5, 101.5: 3.0})
    assert connector.counters("ETH/USDT:PERP").resyncs == 0 and 2 in memory_sink.books()


def test_checksums_are_verified_when_non_zero_from_the_exact_strings(memory_sink) -> None:
    connector = connector_for(memory_sink)
    connector.on_message(0, book("snapshot", "BTC-USDT", BIDS, ASKS, checksum=crc(BIDS, ASKS)), NOW)
    asks = [("101.0", "0.50"), ("101.5", "3.0")]
    connector.on_message(0, book("update", "BTC-USDT", asks=[("101.5", "3.0")], checksum=crc(BIDS, asks)), NOW)
    connector.on_message(0, book("update", "BTC-USDT", asks=[("101.5", "3.0")], checksum=0), NOW)  # deprecated
    counters = connector.counters("BTC/USDT")
    assert (counters.checksums_ok, counters.checksums_failed, counters.frames_applied) == (2, 0, 2)
    assert crc(BIDS, [("101.0", "0.5"), ("101.5", "3")]) != crc(BIDS, asks)  # the texts matter, not the values
    connector.on_message(0, book("update", "BTC-USDT", bids=[("100.0", "1")], checksum=12345), NOW)
    assert (counters.checksums_failed, counters.resyncs) == (1, 1)
    assert memory_sink.of_kind(Kind.CLEAR)["reason"].tolist() == [Reason.CHECKSUM]
    assert len(connector.outgoing_messages(SECOND)) == 2


def test_the_documented_checksum_examples() -> None:
    assert interleaved_checksum([("3366.1", "7"), ("3366", "6")], [("3366.8", "9"), ("3368", "8")]) == -1881014294
    assert interleaved_checksum([("3366.1", "7")], [("3366.8", "9"), ("3368", "8"), ("3372", "8")]) == 831078360


def test_books_are_truncated_to_400_levels(memory_sink) -> None:
    connector = connector_for(memory_sink)
    asks = [(f"{101 + tick}", "1") for tick in range(BOOK_DEPTH)]
    connector.on_message(0, book("snapshot", "BTC-USDT", BIDS, asks, 1, -1), NOW)
    connector.on_message(0, book("update", "BTC-USDT", asks=[("100.5", "1")], sequence=2, previous=1), NOW)
    book_ = connector.book("BTC/USDT")
    assert len(book_.asks) == BOOK_DEPTH and float(100 + BOOK_DEPTH) not in book_.asks
    assert memory_sink.books()[1][1] == book_.asks


# ---- trades, events, pings, bad input -------------------------------------------------------------


def test_trades_acks_errors_and_pings(memory_sink) -> None:
    connector = connector_for(memory_sink)
    trade = ('{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT","tradeId":"338476307",'
             '"px":"30236","sz":"0.0002","side":"buy","ts":"1652459224818"}]}')
    connector.on_message(0, trade, NOW)
    trades = memory_sink.of_kind(Kind.TRADE)
    assert (trades["aux"].tolist(), trades["side"].tolist(), trades["price"].tolist()) == ([338476307], [Side.BID],
                                                                                           [30236.0])
    assert trades["exchange_ts"].tolist() == [1652459224818000000]
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


def test_bad_input_is_counted_and_dropped(memory_sink) -> None:
    connector = live(memory_sink)
    before = dict(connector.book("BTC/USDT").bids)
    for data in ('{"arg":', "[1]", "17", b"\xff", '{"arg":{"channel":"books"},"action":"update","data":[]}',
                 '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[]}',
                 book("update", "ETH-BTC", bids=[("1", "1")])):
        assert connector.on_message(0, data, NOW) is ConnectionAction.CONTINUE
    counters = connector.connection_counters[0]
    assert (counters.malformed_frames, counters.unknown_symbol_frames, counters.ignored_frames) == (5, 1, 1)
    assert connector.book("BTC/USDT").bids == before and connector.counters("BTC/USDT").resyncs == 0
    connector.on_message(0, '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"px":"x"}]}', NOW)
    assert connector.counters("BTC/USDT").parse_errors == 1 and connector.counters("BTC/USDT").resyncs == 0
    # A book frame of ours that cannot be read: its levels are lost, so resync.
    connector.on_message(0, book("update", "BTC-USDT", bids=[("x", "1")], sequence=11, previous=10), NOW)
    connector.on_message(0, '{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":7}', NOW)
    assert connector.counters("BTC/USDT").parse_errors == 3
    assert memory_sink.of_kind(Kind.CLEAR)["reason"].tolist() == [Reason.MALFORMED]
