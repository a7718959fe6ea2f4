"""Kraken protocol on crafted frames, both generations: snapshots, updates, deletes,
truncation, two-dict updates, republish, checksum match and mismatch (CLEAR + resubscribe),
exact decimal texts in v2, subscription handling, and bad input counted and dropped."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest

from actors.connectors import load_exchange_module
from actors.connectors.base import ConnectionAction, Instrument, SyncState
from actors.connectors.checksum import kraken_checksum
from actors.connectors.kraken import (
    WS_V1_URL,
    WS_V2_URL,
    KrakenConnector,
    KrakenSimulatedVenue,
    api_version_of,
    parse_asset_pairs,
    parse_v1_book,
    rfc3339_ns,
    seconds_text_ns,
)
from shm.records import Kind, Reason, Side

SECOND = 1_000_000_000
NOW = 1_700_000_000 * SECOND
SYMBOL_IDS = {"BTC/USD": 1, "DOGE/USD": 2}
ASSET_PAIRS = orjson.dumps(
    {
        "error": [],
        "result": {
            "XXBTZUSD": {"wsname": "XBT/USD", "base": "XXBT", "quote": "ZUSD", "pair_decimals": 1, "lot_decimals": 8},
            "XDGUSD": {"wsname": "XDG/USD", "base": "XXDG", "quote": "ZUSD", "pair_decimals": 7, "lot_decimals": 8,
                       "tick_size": "0.0000001"},
            "XBTUSD.d": {"base": "XXBT", "quote": "ZUSD", "pair_decimals": 1, "lot_decimals": 8},
        },
    }
)
Levels = Sequence[tuple[str, str]]


def connector_for(sink, version: int, depth: int = 10) -> KrakenConnector:
    url = WS_V1_URL if version == 1 else WS_V2_URL
    connector = KrakenConnector(sink, 4, SYMBOL_IDS, ws_base_url=url, snapshot_limit=depth)
    connector.load_instruments(ASSET_PAIRS)
    connector.on_open(0, NOW)
    return connector


def v1_levels(levels: Levels, republish: bool = False) -> list[list[str]]:
    return [[price, size, "1700000000.123456"] + (["r"] if republish else []) for price, size in levels]


def v1_snapshot(pair: str, bids: Levels, asks: Levels) -> str:
    return orjson.dumps([42, {"as": v1_levels(asks), "bs": v1_levels(bids)}, "book-10", pair]).decode()


def v1_update(pair: str, checksum: int, bids: Levels = (), asks: Levels = (), republish: bool = False) -> str:
    parts = []
    if asks:
        parts.append({"a": v1_levels(asks, republish)})
    if bids:
        parts.append({"b": v1_levels(bids, republish)})
    parts[-1]["c"] = str(checksum)
    return orjson.dumps([42, *parts, "book-10", pair]).decode()


def v2_book(kind: str, symbol: str, bids: Levels, asks: Levels, checksum: int) -> str:
    """Numbers written as text, trailing zeros kept, as Kraken sends them."""
    def side(levels: Levels) -> str:
        return ",".join(f'{{"price":{price},"qty":{size}}}' for price, size in levels)

    return (
        f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{symbol}","bids":[{side(bids)}],'
        f'"asks":[{side(asks)}],"checksum":{checksum},"timestamp":"2023-10-06T17:35:55.440295Z"}}]}}'
    )


BIDS = [("100.0", "1.00000000"), ("99.5", "2.50000000")]
ASKS = [("101.0", "0.50000000"), ("101.5", "3.00000000")]


def crc(bids: Levels, asks: Levels) -> int:
    return kraken_checksum(sorted(asks, key=lambda level: float(level[0])),
                           sorted(bids, key=lambda level: -float(level[0])))


# ---- parse functions --------------------------------------------------------------------------


def test_asset_pairs_to_instruments_with_aliases() -> None:
    assert parse_asset_pairs(ASSET_PAIRS, 1) == [
        Instrument("BTC/USD", "XBT/USD", "BTC", "USD", tick_size=0.1, lot_size=1e-8),
        Instrument("DOGE/USD", "XDG/USD", "DOGE", "USD", tick_size=1e-7, lot_size=1e-8),
    ]
    assert [instrument.native for instrument in parse_asset_pairs(ASSET_PAIRS, 2)] == ["BTC/USD", "DOGE/USD"]


def test_the_url_selects_the_generation_unless_told() -> None:
    assert (api_version_of(WS_V2_URL), api_version_of(WS_V1_URL), api_version_of("ws://127.0.0.1:9/v2/")) == (2, 1, 2)
    assert KrakenConnector(None, 1, {}, ws_base_url=WS_V1_URL, api_version=2).api_version == 2
    assert load_exchange_module("kraken").CONNECTOR is KrakenConnector
    assert load_exchange_module("kraken").SIMULATED_VENUE is KrakenSimulatedVenue


def test_depth_must_be_one_kraken_offers() -> None:
    with pytest.raises(ValueError, match="one of"):
        KrakenConnector(None, 1, {}, snapshot_limit=5000)
    with pytest.raises(ValueError, match="below the subscribed depth"):
        KrakenConnector(None, 1, {}, snapshot_limit=100, depth_limit=50)


def test_timestamps_are_exact() -> None:
    assert seconds_text_ns("1618678133.365913") == 1618678133365913000
    assert seconds_text_ns("1618678133.3659") == 1618678133365900000
    assert rfc3339_ns("2023-10-06T17:35:55.440295Z") == 1696613755440295000


def test_v1_update_with_asks_and_bids_in_two_dicts() -> None:
    message = orjson.loads(v1_update("XBT/USD", 5, bids=[("1.0", "2")], asks=[("3.0", "4")]))
    assert len(message) == 5
    pair, is_snapshot, bids, asks, checksum, exchange_ts = parse_v1_book(message)
    assert (pair, is_snapshot, checksum, exchange_ts) == ("XBT/USD", False, 5, 1700000000123456000)
    assert ([level[:2] for level in bids], [level[:2] for level in asks]) == ([["1.0", "2"]], [["3.0", "4"]])


# ---- v1 --------------------------------------------------------------------------------------


def test_v1_subscribes_book_and_trades_by_wsname(memory_sink) -> None:
    connector = KrakenConnector(memory_sink, 4, SYMBOL_IDS, ws_base_url=WS_V1_URL, snapshot_limit=25)
    connector.load_instruments(ASSET_PAIRS)
    assert [orjson.loads(text) for text in connector.on_open(0, NOW)] == [
        {"event": "subscribe", "pair": ["XBT/USD", "XDG/USD"], "subscription": {"name": "book", "depth": 25}},
        {"event": "subscribe", "pair": ["XBT/USD", "XDG/USD"], "subscription": {"name": "trade"}},
    ]
    assert connector.connection_plan()[0].url == WS_V1_URL


def test_v1_snapshot_updates_deletes_and_checksums(memory_sink) -> None:
    connector = connector_for(memory_sink, 1)
    connector.on_message(0, v1_snapshot("XBT/USD", BIDS, ASKS), NOW)
    assert connector.feeds["XBT/USD"].state == SyncState.LIVE
    bids = [("100.0", "1.00000000"), ("99.5", "2.50000000"), ("100.5", "0.10000000")]
    connector.on_message(0, v1_update("XBT/USD", crc(bids, ASKS), bids=[("100.5", "0.10000000")]), NOW)
    bids = [("100.0", "1.00000000"), ("100.5", "0.10000000")]
    asks = [("101.5", "3.00000000"), ("102.0", "1.00000000")]
    connector.on_message(
        0,
        v1_update("XBT/USD", crc(bids, asks), bids=[("99.5", "0.00000000")], asks=[("101.0", "0.00000000"),
                                                                                    ("102.0", "1.00000000")]),
        NOW,
    )
    counters = connector.counters("BTC/USD")
    assert (counters.checksums_ok, counters.checksums_failed, counters.frames_applied) == (2, 0, 2)
    book = connector.book("BTC/USD")
    assert book.bid_levels() == [(100.5, 0.1), (100.0, 1.0)]
    assert book.ask_levels() == [(101.5, 3.0), (102.0, 1.0)]
    assert memory_sink.books()[1] == (book.bids, book.asks)
    assert memory_sink.of_kind(Kind.LEVEL)["exchange_ts"].tolist()[-1] == 1700000000123456000


def test_v1_truncates_to_the_subscribed_depth(memory_sink) -> None:
    connector = connector_for(memory_sink, 1, depth=10)
    asks = [(f"{101 + tick}.0", "1.00000000") for tick in range(10)]
    connector.on_message(0, v1_snapshot("XBT/USD", BIDS, asks), NOW)
    # A better ask pushes the 10th out of the window; Kraken does not delete it.
    new_asks = [("100.5", "1.00000000")] + asks[:9]
    connector.on_message(0, v1_update("XBT/USD", crc(BIDS, new_asks), asks=[("100.5", "1.00000000")]), NOW)
    book = connector.book("BTC/USD")
    assert len(book.asks) == 10 and 110.0 not in book.asks
    assert connector.counters("BTC/USD").checksums_ok == 1
    assert memory_sink.books()[1][1] == book.asks


def test_v1_republished_levels_apply_normally(memory_sink) -> None:
    connector = connector_for(memory_sink, 1)
    connector.on_message(0, v1_snapshot("XBT/USD", BIDS, ASKS), NOW)
    asks = [("101.0", "0.75000000"), ("101.5", "3.00000000")]
    connector.on_message(0, v1_update("XBT/USD", crc(BIDS, asks), asks=[("101.0", "0.75000000")], republish=True), NOW)
    assert connector.book("BTC/USD").best_ask() == (101.0, 0.75)
    assert connector.counters("BTC/USD").checksums_ok == 1


def test_v1_checksum_mismatch_clears_and_resubscribes(memory_sink) -> None:
    connector = connector_for(memory_sink, 1)
    connector.on_message(0, v1_snapshot("XBT/USD", BIDS, ASKS), NOW)
    connector.on_message(0, v1_snapshot("XDG/USD", [("0.1000000", "5.00000000")], [("0.1100000", "5.00000000")]), NOW)
    action = connector.on_message(0, v1_update("XBT/USD", 12345, bids=[("100.5", "0.10000000")]), NOW)
    assert action is ConnectionAction.CONTINUE
    counters = connector.counters("BTC/USD")
    assert (counters.checksums_failed, counters.resyncs) == (1, 1)
    clear, _status = memory_sink.batches[-1]
    assert (clear["kind"], clear["reason"], clear["symbol_id"]) == (Kind.CLEAR, Reason.CHECKSUM, 1)
    assert [orjson.loads(message.text) for message in connector.outgoing_messages(SECOND)] == [
        {"event": "unsubscribe", "pair": ["XBT/USD"], "subscription": {"name": "book", "depth": 10}},
        {"event": "subscribe", "pair": ["XBT/USD"], "subscription": {"name": "book", "depth": 10}},
    ]
    connector.on_message(0, v1_snapshot("XBT/USD", BIDS, ASKS), NOW)
    assert memory_sink.books()[1] == ({float(p): float(s) for p, s in BIDS}, {float(p): float(s) for p, s in ASKS})
    assert connector.feeds["XDG/USD"].counters.resyncs == 0 and 2 in memory_sink.books()


def test_v1_trades_and_subscription_errors(memory_sink) -> None:
    connector = connector_for(memory_sink, 1)
    trade = [["354.11000000", "0.89594024", "1618678142.557535", "s", "l", ""],
             ["354.55000000", "1.25690315", "1618678145.715785", "b", "m", ""]]
    connector.on_message(0, orjson.dumps([7, trade, "trade", "XBT/USD"]), NOW)
    trades = memory_sink.of_kind(Kind.TRADE)
    assert trades["side"].tolist() == [Side.ASK, Side.BID]
    assert trades["price"].tolist() == [354.11, 354.55]
    error = {"errorMessage": "Currency pair not supported", "event": "subscriptionStatus", "pair": "XDG/USD",
             "status": "error", "subscription": {"name": "book", "depth": 10}}
    connector.on_message(0, orjson.dumps(error), NOW)
    assert connector.counters("DOGE/USD").subscribe_errors == 1
    assert connector.connection_counters[0].last_error == "Currency pair not supported"


def test_v1_bad_input_is_counted_and_dropped(memory_sink) -> None:
    connector = connector_for(memory_sink, 1)
    connector.on_message(0, v1_snapshot("XBT/USD", BIDS, ASKS), NOW)
    before = dict(connector.book("BTC/USD").bids)
    for data in ('[42,{"b":', '{"event":"heartbeat"}', "[]", '[42,{"b":[]},"book-10","ETH/EUR"]', "17", b"\xff"):
        assert connector.on_message(0, data, NOW) is ConnectionAction.CONTINUE
    counters = connector.connection_counters[0]
    assert (counters.malformed_frames, counters.unknown_symbol_frames, counters.ignored_frames) == (3, 1, 2)
    assert connector.book("BTC/USD").bids == before
    # A book frame of a known pair that cannot be read: its levels are lost, so resync.
    connector.on_message(0, '[42,{"b":[["x","1","1.0"]],"c":"1"},"book-10","XBT/USD"]', NOW)
    connector.on_message(0, '[42,{"b":[["100.0","1","1.0"]],"c":"no"},"book-10","XBT/USD"]', NOW)
    assert connector.counters("BTC/USD").parse_errors == 2
    assert memory_sink.of_kind(Kind.CLEAR)["reason"].tolist() == [Reason.MALFORMED]


# ---- v2 --------------------------------------------------------------------------------------


def test_v2_subscribes_by_symbol_with_snapshot_for_books_only(memory_sink) -> None:
    connector = KrakenConnector(memory_sink, 4, SYMBOL_IDS, snapshot_limit=100)
    connector.load_instruments(ASSET_PAIRS)
    assert [orjson.loads(text) for text in connector.on_open(0, NOW)] == [
        {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD", "DOGE/USD"], "depth": 100,
                                           "snapshot": True}, "req_id": 1},
        {"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD", "DOGE/USD"], "snapshot": False},
         "req_id": 2},
    ]


def test_v2_checksums_use_the_exact_number_texts(memory_sink) -> None:
    connector = connector_for(memory_sink, 2)
    connector.on_message(0, v2_book("snapshot", "BTC/USD", BIDS, ASKS, crc(BIDS, ASKS)), NOW)
    assert connector.feeds["BTC/USD"].state == SyncState.LIVE
    bids = [("100.0", "1.00000000"), ("99.5", "2.00000000")]
    connector.on_message(0, v2_book("update", "BTC/USD", [("99.5", "2.00000000")], [], crc(bids, ASKS)), NOW)
    counters = connector.counters("BTC/USD")
    assert (counters.checksums_ok, counters.checksums_failed) == (2, 0)
    assert counters.last_exchange_ts == 1696613755440295000
    # The same value without its trailing zeros is a different checksum text.
    assert crc([("100.0", "1"), ("99.5", "2")], ASKS) != crc(bids, ASKS)


def test_v2_snapshot_with_a_bad_checksum_is_not_published(memory_sink) -> None:
    connector = connector_for(memory_sink, 2)
    connector.on_message(0, v2_book("snapshot", "BTC/USD", BIDS, ASKS, crc(BIDS, ASKS) ^ 1), NOW)
    assert connector.feeds["BTC/USD"].state == SyncState.SUBSCRIBING
    assert memory_sink.of_kind(Kind.SNAPSHOT_END).size == 0
    messages = [orjson.loads(message.text) for message in connector.outgoing_messages(SECOND)]
    assert [(m["method"], m["params"]["symbol"]) for m in messages] == [("unsubscribe", ["BTC/USD"]),
                                                                       ("subscribe", ["BTC/USD"])]


def test_v2_update_mismatch_clears_and_resubscribes(memory_sink) -> None:
    connector = connector_for(memory_sink, 2)
    connector.on_message(0, v2_book("snapshot", "BTC/USD", BIDS, ASKS, crc(BIDS, ASKS)), NOW)
    connector.on_message(0, v2_book("update", "BTC/USD", [("99.5", "2.00000000")], [], 1), NOW)
    assert memory_sink.of_kind(Kind.CLEAR)["reason"].tolist() == [Reason.CHECKSUM]
    assert len(connector.outgoing_messages(SECOND)) == 2


def test_v2_trades_acks_errors_and_pings(memory_sink) -> None:
    connector = connector_for(memory_sink, 2)
    trade = ('{"channel":"trade","type":"update","data":[{"symbol":"DOGE/USD","side":"sell","price":0.5117,'
             '"qty":40.0,"ord_type":"market","trade_id":4665906,"timestamp":"2023-09-25T07:49:37.708706Z"}]}')
    connector.on_message(0, trade, NOW)
    connector.on_message(0, trade.replace('"update"', '"snapshot"'), NOW)  # past trades: ignored
    trades = memory_sink.of_kind(Kind.TRADE)
    assert (trades["aux"].tolist(), trades["side"].tolist(), trades["size"].tolist()) == ([4665906], [Side.ASK], [40.0])
    connector.on_message(0, '{"method":"subscribe","result":{"channel":"book","symbol":"BTC/USD"},"success":true}', NOW)
    connector.on_message(0, '{"error":"Currency pair not supported DOGE/USD","method":"subscribe","success":false,'
                            '"symbol":"DOGE/USD"}', NOW)
    counters = connector.connection_counters[0]
    assert (counters.subscribe_acks, counters.subscribe_errors) == (1, 1)
    assert connector.counters("DOGE/USD").subscribe_errors == 1
    assert connector.outgoing_messages(0) == []
    methods = [orjson.loads(message.text)["method"] for message in connector.outgoing_messages(31 * SECOND)]
    assert methods == ["unsubscribe", "subscribe", "ping"]  # DOGE/USD retried after the refusal, then the ping


def test_v2_bad_input_is_counted_and_dropped(memory_sink) -> None:
    connector = connector_for(memory_sink, 2)
    connector.on_message(0, v2_book("snapshot", "BTC/USD", BIDS, ASKS, crc(BIDS, ASKS)), NOW)
    for data in ('{"channel":"book"', '{"channel":"book","type":"update","data":7}', '{"channel":"heartbeat"}',
                 '{"channel":"book","type":"update","data":[{"symbol":"ETH/EUR","bids":[],"asks":[]}]}', "[1]"):
        assert connector.on_message(0, data, NOW) is ConnectionAction.CONTINUE
    counters = connector.connection_counters[0]
    assert (counters.malformed_frames, counters.unknown_symbol_frames, counters.ignored_frames) == (3, 1, 1)
    assert connector.feeds["BTC/USD"].state == SyncState.LIVE
    connector.on_message(0, '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":1}]}]}', NOW)
    assert connector.counters("BTC/USD").parse_errors == 1
    assert memory_sink.of_kind(Kind.CLEAR)["reason"].tolist() == [Reason.MALFORMED]
