"""Binance USD-M futures protocol: parse functions, the two-route connection plan, and the
``pu`` sync rule on crafted sequences (straddle without +1, drop, gap, bad input)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest

from actors.connectors import load_exchange_module
from actors.connectors.base import ConnectionAction, Instrument, SyncState
from actors.connectors.binance_futures import (
    BinanceFuturesConnector,
    depth_weight,
    parse_futures_depth_update,
    parse_futures_exchange_info,
    route_of,
    snapshot_url,
)
from shm.records import Kind, Reason, Side, Status

SYMBOL_IDS = {"BTC/USDT:PERP": 1, "ETH/USDT:PERP": 2}
INSTRUMENTS = [
    Instrument("BTC/USDT:PERP", "BTCUSDT", "BTC", "USDT", tick_size=0.1, lot_size=0.001, perpetual=True),
    Instrument("ETH/USDT:PERP", "ETHUSDT", "ETH", "USDT", tick_size=0.01, lot_size=0.001, perpetual=True),
]
NOW = 1_700_000_000_000_000_000

Levels = Sequence[tuple[str, str]]


def make_connector(sink, **options) -> BinanceFuturesConnector:
    connector = BinanceFuturesConnector(
        sink, 2, SYMBOL_IDS, rest_base_url="http://rest.test", ws_base_url="ws://ws.test", **options
    )
    connector.use_instruments(INSTRUMENTS)
    return connector


def depth(symbol: str, first: int, last: int, previous: int, bids: Levels = (), asks: Levels = ()) -> str:
    event = {
        "e": "depthUpdate",
        "E": 1,
        "T": 1,
        "s": symbol,
        "U": first,
        "u": last,
        "pu": previous,
        "b": [list(level) for level in bids],
        "a": [list(level) for level in asks],
    }
    return orjson.dumps({"stream": f"{symbol.lower()}@depth@100ms", "data": event}).decode()


def snapshot(last_update_id: int, bids: Levels, asks: Levels) -> str:
    return orjson.dumps(
        {
            "lastUpdateId": last_update_id,
            "E": 1,
            "T": 1,
            "bids": [list(b) for b in bids],
            "asks": [list(a) for a in asks],
        }
    ).decode()


def synced(connector: BinanceFuturesConnector, last_update_id: int = 100) -> BinanceFuturesConnector:
    connector.on_open(0, NOW)
    connector.snapshot_requests(NOW)
    connector.on_snapshot("BTCUSDT", snapshot(last_update_id, [("30000.0", "1")], [("30000.1", "2")]), NOW)
    connector.on_snapshot("ETHUSDT", snapshot(last_update_id, [("2000.00", "1")], [("2000.01", "2")]), NOW)
    return connector


# ---- parse functions and plan ------------------------------------------------------------


def test_exchange_info_keeps_trading_perpetuals_only() -> None:
    def symbol(name: str, contract: str, status: str = "TRADING") -> dict:
        return {
            "symbol": name,
            "contractType": contract,
            "status": status,
            "baseAsset": "BTC",
            "quoteAsset": "USDT",
            "filters": [
                {"filterType": "PRICE_FILTER", "tickSize": "0.10"},
                {"filterType": "LOT_SIZE", "stepSize": "0.001"},
            ],
        }

    body = orjson.dumps(
        {
            "symbols": [
                symbol("BTCUSDT", "PERPETUAL"),
                symbol("BTCUSDT_260925", "CURRENT_QUARTER"),
                symbol("BTCSTUSDT", "", "PENDING_TRADING"),
            ]
        }
    )
    assert parse_futures_exchange_info(body) == [INSTRUMENTS[0]]


def test_depth_update_parse_adds_pu() -> None:
    event = orjson.loads(depth("BTCUSDT", 157, 160, 149, bids=[("0.0024", "10")]))["data"]
    assert parse_futures_depth_update(event) == ("BTCUSDT", 157, 160, 149, [["0.0024", "10"]], [], 1_000_000)
    for bad in ({"pu": "149"}, {"pu": None}, {"U": 161}):
        with pytest.raises((TypeError, ValueError)):
            parse_futures_depth_update(event | bad)
    with pytest.raises(KeyError):
        parse_futures_depth_update({key: value for key, value in event.items() if key != "pu"})


def test_streams_are_routed_by_kind() -> None:
    assert [route_of(s) for s in ("x@depth", "x@depth@100ms", "x@bookTicker")] == ["public"] * 3
    assert [route_of(s) for s in ("x@aggTrade", "x@markPrice", "x@kline_1m")] == ["market"] * 3
    assert snapshot_url("https://f", "BTCUSDT", 500) == "https://f/fapi/v1/depth?symbol=BTCUSDT&limit=500"
    assert [depth_weight(limit) for limit in (5, 50, 100, 500, 1000)] == [2, 2, 5, 10, 20]


def test_connection_plan_has_a_book_route_and_a_trade_route(memory_sink) -> None:
    connector = make_connector(memory_sink, book_ticker_cross_check=True)
    plan = connector.connection_plan()
    assert [spec.url for spec in plan] == [
        (
            "ws://ws.test/public/stream?streams="
            "btcusdt@depth@100ms/btcusdt@bookTicker/ethusdt@depth@100ms/ethusdt@bookTicker"
        ),
        "ws://ws.test/market/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade",
    ]
    assert plan[0].symbols == plan[1].symbols == ("BTC/USDT:PERP", "ETH/USDT:PERP")
    assert connector.snapshot_requests_per_minute == 60  # 1200 weight / 20 per 1000-level snapshot


def test_groups_of_symbols_get_a_trade_twin_each(memory_sink) -> None:
    connector = BinanceFuturesConnector(memory_sink, 2, SYMBOL_IDS, ws_base_url="ws://ws.test")
    connector.streams_per_connection = 1
    connector.use_instruments(INSTRUMENTS)
    assert [spec.url for spec in connector.connection_plan()] == [
        "ws://ws.test/public/stream?streams=btcusdt@depth@100ms",
        "ws://ws.test/public/stream?streams=ethusdt@depth@100ms",
        "ws://ws.test/market/stream?streams=btcusdt@aggTrade",
        "ws://ws.test/market/stream?streams=ethusdt@aggTrade",
    ]


def test_snapshot_limit_must_be_one_the_endpoint_takes(memory_sink) -> None:
    with pytest.raises(ValueError, match="snapshot_limit"):
        BinanceFuturesConnector(memory_sink, 2, SYMBOL_IDS, snapshot_limit=5000)


def test_registry_loads_binance_futures() -> None:
    module = load_exchange_module("binance_futures")
    assert module.CONNECTOR is BinanceFuturesConnector


# ---- sync rule ---------------------------------------------------------------------------


def test_straddle_has_no_plus_one_and_uses_pu_afterwards(memory_sink) -> None:
    connector = make_connector(memory_sink)
    connector.on_open(0, NOW)
    connector.snapshot_requests(NOW)
    connector.on_message(0, depth("BTCUSDT", 90, 99, 80, bids=[("29999.0", "5")]), NOW)  # u < L: dropped
    connector.on_message(0, depth("BTCUSDT", 100, 110, 99, bids=[("30000.0", "3")]), NOW)  # U <= L <= u
    connector.on_message(0, depth("BTCUSDT", 115, 120, 110, asks=[("30000.1", "0")]), NOW)  # pu == prev u
    connector.on_snapshot("BTCUSDT", snapshot(100, [("30000.0", "1")], [("30000.1", "2")]), NOW)
    counters = connector.counters("BTC/USDT:PERP")
    assert (counters.frames, counters.frames_dropped, counters.frames_applied, counters.gaps) == (3, 1, 2, 0)
    book = connector.book("BTC/USDT:PERP")
    assert (book.bid_levels(), book.ask_levels()) == ([(30000.0, 3.0)], [])
    connector.on_message(0, depth("BTCUSDT", 125, 126, 120, asks=[("30000.5", "1")]), NOW)
    assert memory_sink.books()[1] == (book.bids, {30000.5: 1.0})


def test_an_event_ending_at_the_snapshot_id_is_applied_not_dropped(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    connector.on_message(0, depth("BTCUSDT", 95, 100, 90, bids=[("30000.0", "4")]), NOW)
    counters = connector.counters("BTC/USDT:PERP")
    assert (counters.frames_dropped, counters.frames_applied, counters.gaps) == (0, 1, 0)
    assert connector.book("BTC/USDT:PERP").bids == {30000.0: 4.0}


def test_pu_mismatch_is_a_gap_that_clears_and_resyncs(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    connector.on_message(0, depth("BTCUSDT", 100, 105, 99, bids=[("30000.0", "2")]), NOW)
    connector.on_message(0, depth("BTCUSDT", 106, 108, 104, bids=[("29999.9", "1")]), NOW + 1)  # pu != 105
    counters = connector.counters("BTC/USDT:PERP")
    assert (counters.gaps, counters.resyncs) == (1, 1)
    clear, status = memory_sink.records()[-2:]
    assert (clear["kind"], clear["reason"], clear["symbol_id"]) == (Kind.CLEAR, Reason.SEQUENCE_GAP, 1)
    assert (status["kind"], status["aux"]) == (Kind.STATUS, Status.RESYNCING)
    assert 1 not in memory_sink.books() and 2 in memory_sink.books()
    assert [request.native_symbol for request in connector.snapshot_requests(NOW + 1)] == ["BTCUSDT"]
    connector.on_message(0, depth("BTCUSDT", 109, 112, 108, asks=[("30001.0", "1")]), NOW + 2)
    connector.on_snapshot("BTCUSDT", snapshot(107, [("29999.9", "1")], [("30000.1", "2")]), NOW + 3)
    book = connector.book("BTC/USDT:PERP")
    assert (book.bids, book.asks) == ({29999.9: 1.0}, {30000.1: 2.0, 30001.0: 1.0})
    assert memory_sink.books()[1] == (book.bids, book.asks)


def test_snapshot_the_buffer_cannot_bridge_is_fetched_again(memory_sink) -> None:
    connector = make_connector(memory_sink)
    connector.on_open(0, NOW)
    connector.snapshot_requests(NOW)
    connector.on_message(0, depth("BTCUSDT", 200, 205, 190, bids=[("30000.0", "1")]), NOW)
    connector.on_snapshot("BTCUSDT", snapshot(150, [("30000.0", "9")], []), NOW)
    counters = connector.counters("BTC/USDT:PERP")
    assert (counters.stale_snapshots, connector.feeds["BTCUSDT"].state) == (1, SyncState.BUFFERING)


# ---- the trade route, tickers, bad input ------------------------------------------------


def test_the_trade_connection_never_touches_a_book(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    books = memory_sink.books()
    assert connector.on_open(1, NOW) == []
    connector.on_close(1, NOW, Reason.DISCONNECTED)
    assert memory_sink.books() == books and connector.feeds["BTCUSDT"].state == SyncState.LIVE
    trade = (
        '{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":2,"a":9,"s":"BTCUSDT","p":"30000.0","q":"0.5",'
        '"f":1,"l":2,"T":1,"m":false}}'
    )
    connector.on_message(1, trade, NOW)
    (record,) = memory_sink.of_kind(Kind.TRADE)
    assert (record["price"], record["size"], record["side"], record["aux"]) == (30000.0, 0.5, Side.BID, 9)


def test_subscribe_by_message_acks_per_route(memory_sink) -> None:
    connector = make_connector(memory_sink, subscribe_by_message=True)
    assert [spec.url for spec in connector.connection_plan()] == ["ws://ws.test/public/ws", "ws://ws.test/market/ws"]
    (book_request,) = connector.on_open(0, NOW)
    (trade_request,) = connector.on_open(1, NOW)
    assert orjson.loads(book_request)["params"] == ["btcusdt@depth@100ms", "ethusdt@depth@100ms"]
    assert orjson.loads(trade_request) == {
        "method": "SUBSCRIBE",
        "params": ["btcusdt@aggTrade", "ethusdt@aggTrade"],
        "id": 2,
    }
    connector.on_message(1, '{"result":null,"id":2}', NOW)
    assert connector.snapshot_requests(NOW) == []  # the trade route's ack makes no book live
    connector.on_message(0, '{"result":null,"id":1}', NOW)
    assert {request.native_symbol for request in connector.snapshot_requests(NOW)} == {"BTCUSDT", "ETHUSDT"}


def test_book_ticker_is_recognised_by_its_event_type(memory_sink) -> None:
    connector = synced(make_connector(memory_sink, book_ticker_cross_check=True))
    ticker = (
        '{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":%d,"s":"BTCUSDT",'
        '"b":"30000.0","B":"%s","a":"30000.1","A":"2","T":1,"E":1}}'
    )
    connector.on_message(0, depth("BTCUSDT", 100, 101, 99, bids=[("30000.0", "3")]), NOW)
    connector.on_message(0, ticker % (101, "3"), NOW)
    counters = connector.counters("BTC/USDT:PERP")
    assert (counters.cross_checks, counters.cross_check_mismatches) == (1, 0)
    connector.on_message(0, ticker % (101, "4"), NOW)
    assert (counters.cross_check_mismatches, counters.resyncs) == (1, 1)
    assert memory_sink.records()[-2]["reason"] == Reason.CROSS_CHECK


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1]",
        '{"stream":"x","data":7}',
        '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","s":"BTCUSDT","U":100,"u":101}}',
        depth("BTCUSDT", 100, 101, 99).replace('"pu":99', '"pu":"99"'),
        depth("BTCUSDT", 100, 101, 99, bids=[("nan", "1")]),
        depth("BTCUSDT", 100, 101, 99, asks=[("30000.1",)]),
        depth("XRPUSDT", 100, 101, 99, bids=[("1", "1")]),
        (
            '{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":"x","s":"BTCUSDT",'
            '"b":"1","B":"1","a":"1","A":"1"}}'
        ),
        '{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","s":"BTCUSDT","p":"1","q":"-1","a":1,"T":1,"m":true}}',
        b"\xff",
    ],
)
def test_bad_frames_are_counted_never_raised_and_never_published(memory_sink, frame: str | bytes) -> None:
    connector = synced(make_connector(memory_sink))
    published = memory_sink.books()
    assert connector.on_message(0, frame, NOW) == ConnectionAction.CONTINUE
    connection = connector.connection_counters[0]
    errors = connector.counters("BTC/USDT:PERP").parse_errors
    assert errors + connection.malformed_frames + connection.unknown_symbol_frames == 1
    books = memory_sink.books()
    assert books.get(1) in (published[1], None)  # untouched, or cleared for a resync
    if 1 in books:
        assert books[1] == (connector.book("BTC/USDT:PERP").bids, connector.book("BTC/USDT:PERP").asks)
    assert books[2] == published[2]
