"""Bybit v5 protocol on crafted frames: instruments across categories, subscriptions per
category (spot's 10-topic limit), snapshot, delta, mid-stream snapshot and ``u == 1``
resets, a ``u`` gap (CLEAR + unsubscribe/subscribe), truncation, acks and refusals,
trades, pings, and bad input counted and dropped."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest

from actors.connectors import load_exchange_module
from actors.connectors.base import ConnectionAction, Instrument, SyncState
from actors.connectors.bybit import (
    BybitConnector,
    BybitSimulatedVenue,
    category_of_canonical,
    parse_instruments_info,
    trade_id_number,
)
from shm.records import Kind, Reason, Side

SECOND = 1_000_000_000
NOW = 1_700_000_000 * SECOND
SYMBOL_IDS = {"BTC/USDT": 1, "BTC/USDT:PERP": 2, "BTC/USD:PERP": 3, "ETH/USDT": 4}
Levels = Sequence[tuple[str, str]]


def instruments_body(category: str, entries: list[dict]) -> bytes:
    return orjson.dumps({"retCode": 0, "retMsg": "OK", "result": {"category": category, "list": entries}})


def entry(symbol: str, base: str, quote: str, tick: str, lot: str, contract: str | None = None, **extra) -> dict:
    lot_filter = {"qtyStep": lot} if contract else {"basePrecision": lot}
    fields = {"symbol": symbol, "status": "Trading", "baseCoin": base, "quoteCoin": quote,
              "priceFilter": {"tickSize": tick}, "lotSizeFilter": lot_filter}
    if contract:
        fields["contractType"] = contract
    return fields | extra


SPOT = instruments_body("spot", [entry("BTCUSDT", "BTC", "USDT", "0.01", "0.000001"),
                                 entry("ETHUSDT", "ETH", "USDT", "0.01", "0.00001")])
LINEAR = instruments_body("linear", [
    entry("BTCUSDT", "BTC", "USDT", "0.10", "0.001", "LinearPerpetual"),
    entry("BTCPERP", "BTC", "USDC", "0.50", "0.001", "LinearPerpetual"),
    entry("BTCUSDT-26DEC25", "BTC", "USDT", "0.10", "0.001", "LinearFutures"),
    entry("NEWUSDT", "NEW", "USDT", "0.10", "1", "LinearPerpetual", status="PreLaunch"),
])
INVERSE = instruments_body("inverse", [entry("BTCUSD", "BTC", "USD", "0.50", "1", "InversePerpetual"),
                                       entry("BTCUSDZ25", "BTC", "USD", "0.50", "1", "InverseFutures")])
BIDS = [("100.0", "1.000"), ("99.5", "2.500")]
ASKS = [("101.0", "0.500"), ("101.5", "3.000")]


def connector_for(sink, depth: int = 50, symbol_ids: dict[str, int] = SYMBOL_IDS) -> BybitConnector:
    connector = BybitConnector(sink, 7, symbol_ids, snapshot_limit=depth)
    for body in (SPOT, LINEAR, INVERSE):
        connector.load_instruments(body)
    for connection in range(len(connector.connections)):
        connector.on_open(connection, NOW)
    return connector


def book(kind: str, symbol: str, u: int, bids: Levels = (), asks: Levels = (), depth: int = 50) -> str:
    return orjson.dumps({
        "topic": f"orderbook.{depth}.{symbol}", "type": kind, "ts": 1_700_000_000_123,
        "data": {"s": symbol, "b": [list(level) for level in bids], "a": [list(level) for level in asks],
                 "u": u, "seq": 7_961_638_724 + u},
        "cts": 1_700_000_000_120,
    }).decode()


def as_book(levels: Levels) -> dict[float, float]:
    return {float(price): float(size) for price, size in levels}


# ---- instruments and plan ------------------------------------------------------------------


def test_instruments_map_across_categories_and_skip_dated_futures() -> None:
    assert parse_instruments_info(INVERSE) == (
        "inverse", [Instrument("BTC/USD:PERP", "inverse:BTCUSD", "BTC", "USD", 0.5, 1.0, perpetual=True)])
    _category, linear = parse_instruments_info(LINEAR)
    assert [(i.canonical, i.native) for i in linear] == [("BTC/USDT:PERP", "linear:BTCUSDT"),
                                                       ("BTC/USDC:PERP", "linear:BTCPERP")]
    _category, spot = parse_instruments_info(SPOT)
    assert spot[0] == Instrument("BTC/USDT", "spot:BTCUSDT", "BTC", "USDT", 0.01, 1e-6)
    assert [category_of_canonical(s) for s in ("BTC/USDT", "BTC/USDC:PERP", "BTC/USD:PERP")] == [
        "spot", "linear", "inverse"]
    with pytest.raises(ValueError, match="instruments-info"):
        parse_instruments_info('{"ret_code":0,"result":[{"name":"BTCUSD"}]}')  # the retired v2 body


def test_one_connection_per_category_with_the_instruments_of_every_body(memory_sink) -> None:
    connector = BybitConnector(memory_sink, 7, SYMBOL_IDS | {"DOGE/USDT": 9})
    assert [url.split("?")[1] for url in connector.instruments_urls] == [
        "category=spot&limit=1000", "category=linear&limit=1000", "category=inverse&limit=1000"]
    assert connector.instruments_url == connector.instruments_urls[0]
    connector.load_instruments(SPOT)
    assert connector.missing_symbols == ["BTC/USDT:PERP", "BTC/USD:PERP", "DOGE/USDT"]
    connector.load_instruments(LINEAR)
    connector.load_instruments(INVERSE)
    assert connector.missing_symbols == ["DOGE/USDT"]
    plan = connector.connection_plan()
    assert [(spec.url, spec.symbols) for spec in plan] == [
        ("wss://stream.bybit.com/v5/public/spot", ("BTC/USDT", "ETH/USDT")),
        ("wss://stream.bybit.com/v5/public/linear", ("BTC/USDT:PERP",)),
        ("wss://stream.bybit.com/v5/public/inverse", ("BTC/USD:PERP",)),
    ]
    assert load_exchange_module("bybit").CONNECTOR is BybitConnector
    assert load_exchange_module("bybit").SIMULATED_VENUE is BybitSimulatedVenue


def test_depths_are_checked_per_category_and_the_v2_recordings_are_not_read() -> None:
    with pytest.raises(ValueError, match="spot book depth"):
        BybitConnector(None, 1, {"BTC/USDT": 1}, snapshot_limit=500)
    assert BybitConnector(None, 1, {"BTC/USDT:PERP": 1}, snapshot_limit=500).depth == 500
    with pytest.raises(ValueError, match="below the subscribed depth"):
        BybitConnector(None, 1, {"BTC/USDT": 1}, snapshot_limit=200, depth_limit=50)
    assert load_exchange_module("bybit").RECORDED_OPTIONS is None  # coby verify reports them unread


def test_spot_subscriptions_are_split_into_ten_topics(memory_sink) -> None:
    symbols = {f"C{index}/USDT": index for index in range(6)}
    body = instruments_body("spot", [entry(f"C{i}USDT", f"C{i}", "USDT", "0.01", "0.1") for i in range(6)])
    connector = BybitConnector(memory_sink, 7, symbols)
    connector.load_instruments(body)
    requests = [orjson.loads(text) for text in connector.on_open(0, NOW)]
    assert [len(request["args"]) for request in requests] == [10, 2]
    assert requests[0]["op"] == "subscribe"
    assert requests[0]["args"][:2] == ["orderbook.50.C0USDT", "publicTrade.C0USDT"]


# ---- books ---------------------------------------------------------------------------------


def test_snapshot_then_deltas_apply_and_are_written(memory_sink) -> None:
    connector = connector_for(memory_sink)
    connector.on_message(1, book("snapshot", "BTCUSDT", 100, BIDS, ASKS), NOW)
    assert connector.feeds["linear:BTCUSDT"].state == SyncState.LIVE
    connector.on_message(1, book("delta", "BTCUSDT", 101, [("99.5", "0"), ("100.5", "0.100")], [("102.0", "1")]), NOW)
    perp = connector.book("BTC/USDT:PERP")
    assert perp.bid_levels() == [(100.5, 0.1), (100.0, 1.0)]
    assert perp.ask_levels() == [(101.0, 0.5), (101.5, 3.0), (102.0, 1.0)]
    assert memory_sink.books()[2] == (perp.bids, perp.asks)
    assert connector.book("BTC/USDT").bids == {}  # spot BTCUSDT is another book on another connection
    counters = connector.counters("BTC/USDT:PERP")
    assert (counters.frames_applied, counters.gaps, counters.last_exchange_ts) == (1, 0, 1_700_000_000_120 * 10**6)
    assert memory_sink.of_kind(Kind.LEVEL)["sequence"].tolist()[-1] == 101


def test_a_mid_stream_snapshot_and_u_equal_one_replace_the_book(memory_sink) -> None:
    connector = connector_for(memory_sink)
    connector.on_message(0, book("snapshot", "BTCUSDT", 500, BIDS, ASKS), NOW)
    connector.on_message(0, book("snapshot", "BTCUSDT", 900, [("98.0", "1")], [("99.0", "1")]), NOW)
    assert connector.book("BTC/USDT").bids == {98.0: 1.0}
    # A service restart: u starts again at 1, on a frame typed "delta".
    connector.on_message(0, book("delta", "BTCUSDT", 1, [("97.0", "2")], [("98.5", "2")]), NOW)
    connector.on_message(0, book("delta", "BTCUSDT", 2, [("97.5", "1")]), NOW)
    assert memory_sink.books()[1] == ({97.0: 2.0, 97.5: 1.0}, {98.5: 2.0})
    counters = connector.counters("BTC/USDT")
    assert (counters.snapshots, counters.gaps, counters.resyncs) == (3, 0, 0)


def test_a_u_gap_clears_and_resubscribes_that_symbol_only(memory_sink) -> None:
    connector = connector_for(memory_sink)
    connector.on_message(0, book("snapshot", "BTCUSDT", 10, BIDS, ASKS), NOW)
    connector.on_message(0, book("snapshot", "ETHUSDT", 10, BIDS, ASKS), NOW)
    action = connector.on_message(0, book("delta", "BTCUSDT", 12, [("99.0", "1")]), NOW)
    assert action is ConnectionAction.CONTINUE
    counters = connector.counters("BTC/USDT")
    assert (counters.gaps, counters.resyncs, counters.frames_dropped) == (1, 1, 1)
    clear, _status = memory_sink.batches[-1]
    assert (clear["kind"], clear["reason"], clear["symbol_id"]) == (Kind.CLEAR, Reason.SEQUENCE_GAP, 1)
    requests = [(message.connection, orjson.loads(message.text)) for message in connector.outgoing_messages(SECOND)]
    assert [(connection, r["op"], r["args"]) for connection, r in requests] == [
        (0, "unsubscribe", ["orderbook.50.BTCUSDT"]), (0, "subscribe", ["orderbook.50.BTCUSDT"])]
    connector.on_message(0, book("delta", "BTCUSDT", 13, [("99.0", "1")]), NOW)  # the old stream's tail
    assert connector.counters("BTC/USDT").frames_dropped == 2
    connector.on_message(0, book("snapshot", "BTCUSDT", 20, BIDS, ASKS), NOW)
    assert memory_sink.books()[1] == (as_book(BIDS), as_book(ASKS))
    assert connector.counters("ETH/USDT").resyncs == 0 and 4 in memory_sink.books()


def test_books_are_truncated_to_the_subscribed_depth(memory_sink) -> None:
    connector = connector_for(memory_sink, depth=1, symbol_ids={"BTC/USDT:PERP": 2})
    # Depth 1 is snapshots only; a deeper frame is cut to the top level.
    connector.on_message(0, book("snapshot", "BTCUSDT", 5, BIDS, ASKS, depth=1), NOW)
    assert connector.book("BTC/USDT:PERP").bid_levels() == [(100.0, 1.0)]
    assert connector.book("BTC/USDT:PERP").ask_levels() == [(101.0, 0.5)]
    connector = connector_for(memory_sink, depth=50, symbol_ids={"BTC/USDT:PERP": 2})
    asks = [(f"{101 + tick}.0", "1") for tick in range(50)]
    connector.on_message(0, book("snapshot", "BTCUSDT", 5, BIDS, asks), NOW)
    connector.on_message(0, book("delta", "BTCUSDT", 6, asks=[("100.5", "1")]), NOW)  # pushes 150.0 out
    asks_now = connector.book("BTC/USDT:PERP").asks
    assert len(asks_now) == 50 and 150.0 not in asks_now and 100.5 in asks_now
    assert memory_sink.books()[2][1] == asks_now


# ---- control frames and trades --------------------------------------------------------------


def test_acks_refusals_pongs_and_pings(memory_sink) -> None:
    connector = connector_for(memory_sink)
    request_id = orjson.loads(connector.on_open(1, NOW)[0])["req_id"]
    connector.on_message(1, '{"success":true,"ret_msg":"","conn_id":"c","req_id":"' + request_id
                         + '","op":"subscribe"}', NOW)
    request_id = orjson.loads(connector.on_open(2, NOW)[0])["req_id"]
    connector.on_message(2, '{"success":false,"ret_msg":"error:handler not found,topic:orderbook.50.BTCUSD",'
                            '"conn_id":"c","req_id":"' + request_id + '","op":"subscribe"}', NOW)
    connector.on_message(2, '{"success":true,"ret_msg":"pong","conn_id":"c","op":"ping"}', NOW)
    assert connector.connection_counters[1].subscribe_acks == 1
    counters = connector.connection_counters[2]
    assert (counters.subscribe_errors, counters.ignored_frames) == (1, 1)
    assert counters.last_error.startswith("error:handler not found")
    assert connector.counters("BTC/USD:PERP").subscribe_errors == 1
    assert connector.outgoing_messages(0) == []
    due = [(message.connection, orjson.loads(message.text)) for message in connector.outgoing_messages(21 * SECOND)]
    assert [(connection, r["op"]) for connection, r in due if r["op"] != "ping"] == [
        (2, "unsubscribe"), (2, "subscribe")]  # the refused symbol retried after a backoff
    assert sorted(connection for connection, r in due if r["op"] == "ping") == [0, 1, 2]  # every 20 s, each


def test_trades_are_written_with_aggressor_and_id(memory_sink) -> None:
    connector = connector_for(memory_sink)
    trades = {"topic": "publicTrade.BTCUSD", "type": "snapshot", "ts": 1672304486868, "data": [
        {"T": 1672304486865, "s": "BTCUSD", "S": "Buy", "v": "100", "p": "16578.50", "L": "PlusTick",
         "i": "20f43950-d8dd-5b31-9112-a178eb6023af", "BT": False},
        {"T": 1672304486866, "s": "BTCUSD", "S": "Sell", "v": "0", "p": "16578.50", "i": "1"},
        {"T": 1672304486867, "s": "ETHUSD", "S": "Sell", "v": "1", "p": "1.0", "i": "2"},
    ]}
    connector.on_message(2, orjson.dumps(trades), NOW)
    written = memory_sink.of_kind(Kind.TRADE)
    assert written["side"].tolist() == [Side.BID] and written["symbol_id"].tolist() == [3]
    assert written["aux"].tolist() == [0x20F43950D8DD5B31]
    assert written["exchange_ts"].tolist() == [1672304486865 * 10**6]
    assert connector.counters("BTC/USD:PERP").parse_errors == 1  # the zero-size trade
    assert connector.connection_counters[2].unknown_symbol_frames == 1
    assert trade_id_number("2290000000061666327") == 2290000000061666327


def test_bad_input_is_counted_and_dropped(memory_sink) -> None:
    connector = connector_for(memory_sink)
    connector.on_message(0, book("snapshot", "BTCUSDT", 10, BIDS, ASKS), NOW)
    for data in ('{"topic":"orderbook', "[1]", b"\xff", '{"topic":7}', '{"topic":"tickers.BTCUSDT","data":{}}',
                 book("delta", "XRPUSDT", 11), book("delta", "BTCUSDT", 11, depth=200),
                 '{"topic":"publicTrade.BTCUSDT","data":7}'):
        assert connector.on_message(0, data, NOW) is ConnectionAction.CONTINUE
    counters = connector.connection_counters[0]
    assert (counters.malformed_frames, counters.unknown_symbol_frames, counters.ignored_frames) == (5, 1, 2)
    assert connector.book("BTC/USDT").bids == as_book(BIDS)
    # Book frames of a known symbol that cannot be read: never raised, the book resyncs.
    for bad in (book("delta", "BTCUSDT", 11, [("100.0",)]), book("delta", "BTCUSDT", 11).replace('"u":11', '"u":"11"'),
                book("snapshot", "BTCUSDT", 11).replace('"b":[]', '"b":[{"p":"1","s":"2"}]'),
                book("delta", "BTCUSDT", 11, [("x", "1")])):
        connector.on_message(0, book("snapshot", "BTCUSDT", 10, BIDS, ASKS), NOW)
        assert connector.on_message(0, bad, NOW) is ConnectionAction.CONTINUE
        assert connector.feeds["spot:BTCUSDT"].state == SyncState.SUBSCRIBING
    assert connector.counters("BTC/USDT").parse_errors == 4
    assert set(memory_sink.of_kind(Kind.CLEAR)["reason"].tolist()) == {Reason.MALFORMED}
    assert 1 not in memory_sink.books()
