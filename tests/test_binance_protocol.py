"""Binance spot protocol: parse functions on canonical payloads, and the sync state machine
on crafted sequences (straddle, drop, gap, stale snapshot, overflow)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from actors.connectors import UnknownExchangeError, load_exchange_module
from actors.connectors.base import ConnectionAction, Instrument, SyncState
from actors.connectors.binance import (
    BinanceSpotConnector,
    combined_stream_url,
    depth_weight,
    parse_agg_trade,
    parse_book_ticker,
    parse_depth_snapshot,
    parse_depth_update,
    parse_exchange_info,
    snapshot_url,
    stream_names,
    subscribe_message,
)
from shm.records import Kind, Reason, Side, Status

SYMBOL_IDS = {"BNB/BTC": 1, "ETH/USDT": 2}
INSTRUMENTS = [
    Instrument("BNB/BTC", "BNBBTC", "BNB", "BTC", tick_size=1e-7, lot_size=0.001),
    Instrument("ETH/USDT", "ETHUSDT", "ETH", "USDT", tick_size=0.01, lot_size=0.0001),
]
NOW = 1_700_000_000_000_000_000
SECOND = 1_000_000_000

Levels = Sequence[tuple[str, str]]


def make_connector(sink, **options) -> BinanceSpotConnector:
    connector = BinanceSpotConnector(
        sink, 5, SYMBOL_IDS, rest_base_url="http://rest.test", ws_base_url="ws://ws.test", **options
    )
    connector.use_instruments(INSTRUMENTS)
    return connector


def depth(
    symbol: str, first: int, last: int, bids: Levels = (), asks: Levels = (), wrapped: bool = True, event_ms: int = 1
) -> str:
    event = {
        "e": "depthUpdate",
        "E": event_ms,
        "s": symbol,
        "U": first,
        "u": last,
        "b": [list(level) for level in bids],
        "a": [list(level) for level in asks],
    }
    message = {"stream": f"{symbol.lower()}@depth@100ms", "data": event} if wrapped else event
    return orjson.dumps(message).decode()


def snapshot(last_update_id: int, bids: Levels, asks: Levels) -> str:
    return orjson.dumps(
        {
            "lastUpdateId": last_update_id,
            "bids": [list(level) for level in bids],
            "asks": [list(level) for level in asks],
        }
    ).decode()


def open_and_request(connector: BinanceSpotConnector, now: int = NOW) -> set[str]:
    connector.on_open(0, now)
    return {request.native_symbol for request in connector.snapshot_requests(now)}


def synced(connector: BinanceSpotConnector, last_update_id: int = 100) -> BinanceSpotConnector:
    """Both symbols synced on snapshots at ``last_update_id`` with nothing buffered."""
    open_and_request(connector)
    connector.on_snapshot("BNBBTC", snapshot(last_update_id, [("0.0024", "10")], [("0.0026", "100")]), NOW)
    connector.on_snapshot("ETHUSDT", snapshot(last_update_id, [("2000.00", "1")], [("2000.01", "2")]), NOW)
    return connector


def kinds(records: np.ndarray) -> list[int]:
    return records["kind"].tolist()


# ---- parse functions -----------------------------------------------------------------------


def test_exchange_info_to_instruments() -> None:
    body = orjson.dumps(
        {
            "symbols": [
                {
                    "symbol": "BNBBTC",
                    "status": "TRADING",
                    "baseAsset": "BNB",
                    "quoteAsset": "BTC",
                    "filters": [
                        {"filterType": "PRICE_FILTER", "minPrice": "0.00000010", "tickSize": "0.00000010"},
                        {"filterType": "LOT_SIZE", "minQty": "0.00100000", "stepSize": "0.00100000"},
                    ],
                },
                {
                    "symbol": "OLDBTC",
                    "status": "BREAK",
                    "baseAsset": "OLD",
                    "quoteAsset": "BTC",
                    "filters": [],
                },
            ]
        }
    )
    assert parse_exchange_info(body) == [INSTRUMENTS[0]]


def test_depth_snapshot_parse() -> None:
    last_update_id, bids, asks = parse_depth_snapshot(
        '{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],"asks":[["4.00000200","12.00000000"]]}'
    )
    assert (last_update_id, bids, asks) == (1027024, [(4.0, 431.0)], [(4.000002, 12.0)])
    with pytest.raises(ValueError):
        parse_depth_snapshot('{"lastUpdateId":"1","bids":[],"asks":[]}')


def test_depth_update_parse_keeps_level_texts() -> None:
    event = orjson.loads(
        '{"e":"depthUpdate","E":1672515782136,"s":"BNBBTC","U":157,"u":160,'
        '"b":[["0.0024","10"]],"a":[["0.0026","100"]]}'
    )
    assert parse_depth_update(event) == (
        "BNBBTC",
        157,
        160,
        0,
        [["0.0024", "10"]],
        [["0.0026", "100"]],
        1672515782136000000,
    )


@pytest.mark.parametrize(
    "change",
    [{"U": "157"}, {"u": 156}, {"U": 0, "u": 0}, {"E": 1.5}, {"b": {"0.1": "1"}}, {"a": None}, {"U": True}],
)
def test_depth_update_parse_rejects_malformed_events(change: dict[str, object]) -> None:
    event = {"e": "depthUpdate", "E": 1, "s": "BNBBTC", "U": 157, "u": 160, "b": [], "a": []} | change
    with pytest.raises((TypeError, ValueError)):
        parse_depth_update(event)


def test_agg_trade_parse_takes_the_aggressor_from_m() -> None:
    event = orjson.loads(
        '{"e":"aggTrade","E":1633998523963,"s":"NKNUSDT","a":15683430,"p":"0.35280000","q":"58.00000000",'
        '"f":19862790,"l":19862790,"T":1633998523963,"m":false,"M":true}'
    )
    assert parse_agg_trade(event) == ("NKNUSDT", 0.3528, 58.0, Side.BID, 15683430, 1633998523963000000)
    assert parse_agg_trade(event | {"m": True})[3] == Side.ASK  # buyer was the maker: a seller hit the bid
    with pytest.raises(ValueError):
        parse_agg_trade(event | {"q": "0"})


def test_book_ticker_parse() -> None:
    event = orjson.loads(
        '{"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}'
    )
    assert parse_book_ticker(event) == ("BNBUSDT", 400900217, (25.3519, 31.21), (25.3652, 40.66))


def test_stream_names_urls_and_subscribe_message() -> None:
    assert stream_names("BNBBTC") == ["bnbbtc@depth@100ms", "bnbbtc@aggTrade"]
    assert stream_names("BNBBTC", book_ticker=True)[-1] == "bnbbtc@bookTicker"
    assert combined_stream_url("wss://h:9443", ["a@x", "b@y"]) == "wss://h:9443/stream?streams=a@x/b@y"
    assert orjson.loads(subscribe_message(["a@x"], 7)) == {"method": "SUBSCRIBE", "params": ["a@x"], "id": 7}
    assert snapshot_url("https://api", "BNBBTC", 500) == "https://api/api/v3/depth?symbol=BNBBTC&limit=500"
    assert [depth_weight(limit) for limit in (100, 101, 500, 1000, 5000)] == [5, 25, 25, 50, 250]


def test_connection_plan_splits_streams_over_connections(memory_sink) -> None:
    connector = BinanceSpotConnector(memory_sink, 5, SYMBOL_IDS | {"MISSING/USDT": 3}, ws_base_url="ws://ws.test")
    connector.streams_per_connection = 2  # one symbol (depth + aggTrade) per connection
    assert connector.use_instruments(INSTRUMENTS) == INSTRUMENTS
    assert connector.missing_symbols == ["MISSING/USDT"]
    plan = connector.connection_plan()
    assert [spec.url for spec in plan] == [
        "ws://ws.test/stream?streams=bnbbtc@depth@100ms/bnbbtc@aggTrade",
        "ws://ws.test/stream?streams=ethusdt@depth@100ms/ethusdt@aggTrade",
    ]
    assert [spec.symbols for spec in plan] == [("BNB/BTC",), ("ETH/USDT",)]
    assert plan[0].ping_interval_s is None and plan[0].stale_after_s == 60.0


def test_registry_loads_binance_and_names_the_known_ones() -> None:
    module = load_exchange_module("binance")
    assert module.CONNECTOR is BinanceSpotConnector
    with pytest.raises(UnknownExchangeError, match="known exchanges: binance"):
        load_exchange_module("mtgox")


# ---- sync state machine --------------------------------------------------------------------


def test_straddle_drops_what_the_snapshot_has_and_applies_the_rest(memory_sink) -> None:
    connector = make_connector(memory_sink)
    assert open_and_request(connector) == {"BNBBTC", "ETHUSDT"}
    connector.on_message(0, depth("BNBBTC", 95, 99, bids=[("0.0023", "5")]), NOW)
    connector.on_message(0, depth("BNBBTC", 100, 102, bids=[("0.0024", "11")], asks=[("0.0027", "1")]), NOW)
    connector.on_message(0, depth("BNBBTC", 103, 103, asks=[("0.0026", "0")]), NOW)
    connector.on_snapshot("BNBBTC", snapshot(100, [("0.0024", "10")], [("0.0026", "100")]), NOW)
    book = connector.book("BNB/BTC")
    assert book.bid_levels() == [(0.0024, 11.0)]
    assert book.ask_levels() == [(0.0027, 1.0)]
    counters = connector.counters("BNB/BTC")
    assert (counters.frames, counters.frames_dropped, counters.frames_applied, counters.gaps) == (3, 1, 2, 0)
    snapshot_records = memory_sink.records()[memory_sink.records()["symbol_id"] == 1]
    assert Kind.SNAPSHOT_END in kinds(snapshot_records)
    assert set(snapshot_records[snapshot_records["kind"] == Kind.SNAPSHOT_END]["sequence"].tolist()) == {103}
    connector.on_message(0, depth("BNBBTC", 104, 104, bids=[("0.0025", "1")]), NOW)
    assert connector.book("BNB/BTC").best_bid() == (0.0025, 1.0)
    assert memory_sink.books()[1] == (connector.book("BNB/BTC").bids, connector.book("BNB/BTC").asks)


def test_first_live_event_after_an_empty_buffer_must_straddle(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    connector.on_message(0, depth("BNBBTC", 90, 100, bids=[("0.0001", "1")]), NOW)  # u <= L: dropped
    connector.on_message(0, depth("BNBBTC", 99, 101, bids=[("0.0024", "3")]), NOW)  # U <= L+1 <= u
    counters = connector.counters("BNB/BTC")
    assert (counters.frames_dropped, counters.frames_applied, counters.gaps) == (1, 1, 0)
    assert connector.book("BNB/BTC").bids == {0.0024: 3.0}


def test_gap_clears_the_book_and_resyncs(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    connector.on_message(0, depth("BNBBTC", 101, 101, bids=[("0.0024", "12")]), NOW)
    assert connector.snapshot_requests(NOW) == []
    connector.on_message(0, depth("BNBBTC", 103, 104, bids=[("0.0023", "1")]), NOW + 1)  # 102 is missing
    counters = connector.counters("BNB/BTC")
    assert (counters.gaps, counters.resyncs) == (1, 1)
    clear, status = memory_sink.records()[-2:]
    assert (clear["kind"], clear["reason"], clear["symbol_id"]) == (Kind.CLEAR, Reason.SEQUENCE_GAP, 1)
    assert (status["kind"], status["aux"]) == (Kind.STATUS, Status.RESYNCING)
    assert 1 not in memory_sink.books() and 2 in memory_sink.books()
    assert [request.native_symbol for request in connector.snapshot_requests(NOW + 1)] == ["BNBBTC"]
    connector.on_message(0, depth("BNBBTC", 105, 105, asks=[("0.0030", "4")]), NOW + 2)
    connector.on_snapshot("BNBBTC", snapshot(104, [("0.0023", "1")], [("0.0026", "100")]), NOW + 3)
    book = connector.book("BNB/BTC")
    assert book.bid_levels() == [(0.0023, 1.0)] and book.ask_levels() == [(0.0026, 100.0), (0.003, 4.0)]
    assert memory_sink.books()[1] == (book.bids, book.asks)


def test_snapshot_older_than_the_first_buffered_event_is_fetched_again(memory_sink) -> None:
    connector = make_connector(memory_sink)
    open_and_request(connector)
    connector.on_message(0, depth("BNBBTC", 200, 205, bids=[("0.0024", "1")]), NOW)
    connector.on_snapshot("BNBBTC", snapshot(150, [("0.0024", "10")], [("0.0026", "100")]), NOW)
    counters = connector.counters("BNB/BTC")
    assert (counters.stale_snapshots, counters.snapshots) == (1, 0)
    assert connector.feeds["BNBBTC"].state == SyncState.BUFFERING
    assert Kind.SNAPSHOT_BEGIN not in kinds(memory_sink.records())
    first_poll = NOW + 1  # the backoff counts from here: the first monotonic time the module sees
    assert connector.snapshot_requests(first_poll) == []
    retry_at = first_poll + int(connector.snapshot_retry_initial_s * SECOND)
    assert connector.snapshot_requests(retry_at - 1) == []
    assert [request.native_symbol for request in connector.snapshot_requests(retry_at)] == ["BNBBTC"]
    connector.on_snapshot("BNBBTC", snapshot(203, [("0.0024", "10")], [("0.0026", "100")]), retry_at)
    assert connector.feeds["BNBBTC"].state == SyncState.LIVE
    assert connector.book("BNB/BTC").bids == {0.0024: 1.0}
    assert connector.feeds["BNBBTC"].last_id == 205


def test_snapshot_published_with_an_empty_buffer_then_stream_starts_after_it(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    connector.on_message(0, depth("BNBBTC", 110, 112, bids=[("0.0024", "1")]), NOW)
    counters = connector.counters("BNB/BTC")
    assert (counters.gaps, counters.resyncs, counters.frames_applied) == (1, 1, 0)
    assert memory_sink.records()[-2]["reason"] == Reason.SEQUENCE_GAP
    assert connector.feeds["BNBBTC"].buffer[0][:2] == (110, 112)  # kept as the first buffered event


def test_a_break_while_buffering_restarts_the_buffer(memory_sink) -> None:
    connector = make_connector(memory_sink)
    open_and_request(connector)
    connector.on_message(0, depth("BNBBTC", 10, 11), NOW)
    connector.on_message(0, depth("BNBBTC", 13, 14), NOW)
    feed = connector.feeds["BNBBTC"]
    assert [delta[:2] for delta in feed.buffer] == [(13, 14)]
    assert (feed.counters.gaps, feed.counters.frames_dropped) == (1, 1)


def test_events_before_the_subscription_is_live_are_dropped(memory_sink) -> None:
    connector = make_connector(memory_sink)
    connector.on_message(0, depth("BNBBTC", 1, 2), NOW)
    assert connector.counters("BNB/BTC").frames_dropped == 1
    assert connector.snapshot_requests(NOW) == []


# ---- overflow ------------------------------------------------------------------------------


def test_ring_overflow_resends_every_book_once_there_is_room(sink_factory) -> None:
    sink = sink_factory(capacity=40)
    connector = synced(make_connector(sink))
    sink.consume()
    update_id = 101
    while sink.refused == 0:  # the consumer stalls: fill the ring until a frame is refused
        connector.on_message(0, depth("BNBBTC", update_id, update_id, bids=[("0.0024", str(update_id))]), NOW)
        update_id += 1
    connector.on_message(0, depth("BNBBTC", update_id, update_id, asks=[("0.0030", "2")]), NOW)
    assert connector.book("BNB/BTC").asks[0.003] == 2.0  # the local book stays exact
    assert sink.refused == 1  # nothing more is written for books the consumer cannot trust
    sink.consume()
    connector.flush(NOW)
    resent = sink.batches[-2:]
    assert sorted(int(batch["symbol_id"][0]) for batch in resent) == [1, 2]
    assert all(batch["kind"][0] == Kind.SNAPSHOT_BEGIN and batch["kind"][-2] == Kind.SNAPSHOT_END for batch in resent)
    assert next(batch for batch in resent if batch["symbol_id"][0] == 1)["sequence"][0] == update_id
    connector.on_message(0, depth("BNBBTC", update_id + 1, update_id + 1, bids=[("0.0001", "5")]), NOW)
    book = connector.book("BNB/BTC")
    assert sink.books()[1] == (book.bids, book.asks) and book.bids[0.0024] == update_id - 1
    assert connector.output.batches_lost == 1


def test_resend_waits_for_enough_room(sink_factory) -> None:
    sink = sink_factory(capacity=1000)
    connector = synced(make_connector(sink))
    sink.consume()
    sink.capacity = 5  # one book's snapshot batch (begin, 2 levels, end, status) but not two
    written = len(sink.batches)
    connector.request_full_resend()
    connector.flush(NOW)
    assert [(int(batch["symbol_id"][0]), int(batch["kind"][0])) for batch in sink.batches[written:]] == [
        (1, Kind.SNAPSHOT_BEGIN)
    ]
    sink.consume()
    connector.flush(NOW)
    assert [(int(batch["symbol_id"][0]), int(batch["kind"][0])) for batch in sink.batches[written + 1 :]] == [
        (2, Kind.SNAPSHOT_BEGIN)
    ]
    assert sink.refused == 0


@pytest.mark.parametrize("event_ms", [10**13, -1])
def test_a_delta_whose_event_time_no_record_can_hold_is_malformed(memory_sink, event_ms) -> None:
    """``E`` past April 2262 (or negative) in a delta with no level: it packs no record, and
    kept as the last exchange time it made the book's next re-send raise OverflowError."""
    connector = synced(make_connector(memory_sink))
    connector.on_message(0, depth("BNBBTC", 101, 101, event_ms=event_ms), NOW)
    counters = connector.counters("BNB/BTC")
    assert counters.parse_errors == 1 and connector.frame_rejected
    assert connector.feeds["BNBBTC"].state == SyncState.BUFFERING  # resynced from a new snapshot
    connector.request_full_resend()
    connector.flush(NOW)
    assert counters.last_exchange_ts <= 2**63 - 1


def test_consumer_restart_gets_fresh_snapshots(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    before = len(memory_sink.batches)
    connector.request_full_resend()
    connector.on_message(0, '{"stream":"x","data":{"e":"kline"}}', NOW)  # any frame flushes
    assert [int(batch["symbol_id"][0]) for batch in memory_sink.batches[before:]] == [1, 2]


# ---- connection life, snapshots, trades, cross-check ----------------------------------------


def test_close_clears_every_book_of_the_connection(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    connector.on_close(0, NOW, Reason.STALE_STREAM)
    batch = memory_sink.batches[-1]
    assert kinds(batch) == [Kind.CLEAR, Kind.STATUS, Kind.CLEAR, Kind.STATUS]
    assert set(batch["reason"].tolist()) == {Reason.STALE_STREAM}
    assert batch["aux"][1] == Status.STALE
    assert memory_sink.books() == {}
    assert all(feed.state == SyncState.IDLE for feed in connector.feeds.values())
    assert open_and_request(connector, NOW + 1) == {"BNBBTC", "ETHUSDT"}


def test_subscribe_by_message_waits_for_the_ack(memory_sink) -> None:
    connector = make_connector(memory_sink, subscribe_by_message=True)
    assert connector.connection_plan()[0].url == "ws://ws.test/ws"
    (message,) = connector.on_open(0, NOW)
    assert orjson.loads(message) == {
        "method": "SUBSCRIBE",
        "params": ["bnbbtc@depth@100ms", "bnbbtc@aggTrade", "ethusdt@depth@100ms", "ethusdt@aggTrade"],
        "id": 1,
    }
    assert connector.snapshot_requests(NOW) == []
    assert connector.on_message(0, '{"result":null,"id":1}', NOW) == ConnectionAction.CONTINUE
    assert {request.native_symbol for request in connector.snapshot_requests(NOW)} == {"BNBBTC", "ETHUSDT"}
    connector.on_message(0, depth("BNBBTC", 100, 101, bids=[("0.0024", "1")], wrapped=False), NOW)
    connector.on_snapshot("BNBBTC", snapshot(100, [("0.0024", "10")], [("0.0026", "100")]), NOW)
    assert connector.book("BNB/BTC").bids == {0.0024: 1.0}


@pytest.mark.parametrize(
    "reply",
    ['{"code":2,"msg":"Invalid request: unknown stream","id":1}', '{"error":{"code":3,"msg":"Invalid JSON"},"id":1}'],
)
def test_subscribe_error_asks_for_a_reconnect(memory_sink, reply: str) -> None:
    connector = make_connector(memory_sink, subscribe_by_message=True)
    connector.on_open(0, NOW)
    assert connector.on_message(0, reply, NOW) == ConnectionAction.RECONNECT
    assert connector.connection_counters[0].subscribe_errors == 1
    assert connector.connection_counters[0].last_error.startswith(("2:", "3:"))


def test_server_shutdown_asks_for_a_reconnect(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    assert connector.on_message(0, '{"e":"serverShutdown","E":1}', NOW) == ConnectionAction.RECONNECT
    assert connector.connection_counters[0].server_shutdowns == 1


def test_snapshot_failures_back_off_and_429_pauses_every_request(memory_sink) -> None:
    connector = make_connector(memory_sink)
    open_and_request(connector)
    connector.on_snapshot_failed("BNBBTC", NOW)
    connector.on_snapshot_failed("ETHUSDT", NOW, retry_after_s=5)
    assert connector.snapshot_requests(NOW + 4 * SECOND) == []  # BNBBTC's backoff is over, the pause is not
    assert {request.native_symbol for request in connector.snapshot_requests(NOW + 5 * SECOND)} == {"BNBBTC", "ETHUSDT"}
    connector.on_snapshot_failed("BNBBTC", NOW + 5 * SECOND)
    second_backoff = int(2 * connector.snapshot_retry_initial_s * SECOND)
    assert connector.snapshot_requests(NOW + 5 * SECOND + second_backoff - 1) == []
    assert [r.native_symbol for r in connector.snapshot_requests(NOW + 5 * SECOND + second_backoff)] == ["BNBBTC"]
    connector.on_snapshot("BNBBTC", "<html>bad gateway</html>", NOW + 6 * SECOND)
    assert connector.counters("BNB/BTC").parse_errors == 1 and connector.counters("BNB/BTC").snapshot_failures == 2


def test_snapshot_requests_respect_the_weight_budget(memory_sink) -> None:
    connector = make_connector(memory_sink, snapshot_limit=5000)
    assert connector.snapshot_requests_per_minute == 12  # 3000 weight / 250 per 5000-level snapshot
    connector.snapshot_requests_per_minute = 1
    assert len(open_and_request(connector)) == 1
    connector.on_snapshot_failed("BNBBTC", NOW)
    assert connector.snapshot_requests(NOW + 30 * SECOND) == []
    assert len(connector.snapshot_requests(NOW + 61 * SECOND)) == 1


def test_trades_become_trade_records(memory_sink) -> None:
    connector = make_connector(memory_sink)
    frame = (
        '{"stream":"bnbbtc@aggTrade","data":{"e":"aggTrade","E":2,"s":"BNBBTC","a":12345,'
        '"p":"0.001","q":"100","f":100,"l":105,"T":1,"m":true,"M":true}}'
    )
    connector.on_message(0, frame, NOW)
    (trade,) = memory_sink.of_kind(Kind.TRADE)
    assert (trade["price"], trade["size"], trade["side"], trade["aux"]) == (0.001, 100.0, Side.ASK, 12345)
    assert (trade["exchange_ts"], trade["receive_ts"], trade["symbol_id"]) == (1_000_000, NOW, 1)


def test_book_ticker_cross_check_waits_for_the_depth_event_and_catches_a_mismatch(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    ticker = '{"stream":"bnbbtc@bookTicker","data":{"u":%d,"s":"BNBBTC","b":"%s","B":"%s","a":"0.0026","A":"100"}}'
    connector.on_message(0, ticker % (101, "0.0024", "12"), NOW)  # arrives before its depth event
    connector.on_message(0, depth("BNBBTC", 101, 101, bids=[("0.0024", "12")]), NOW)
    counters = connector.counters("BNB/BTC")
    assert (counters.cross_checks, counters.cross_check_mismatches, counters.resyncs) == (1, 0, 0)
    connector.on_message(0, ticker % (101, "0.0024", "13"), NOW)  # same id, different size
    assert (counters.cross_checks, counters.cross_check_mismatches, counters.resyncs) == (2, 1, 1)
    assert memory_sink.records()[-2]["reason"] == Reason.CROSS_CHECK


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1,2,3]",
        '"text"',
        '{"stream":"x","data":5}',
        '{"stream":"bnbbtc@depth@100ms","data":{"e":"depthUpdate","s":"BNBBTC"}}',
        depth("BNBBTC", 101, 101, bids=[("NaN", "1")]),
        depth("BNBBTC", 101, 101, bids=[("0.0024", "-1")]),
        depth("BNBBTC", 101, 101, asks=[("0.0026",)]),
        depth("BNBBTC", 101, 101, asks=[("inf", "1")]),
        '{"stream":"bnbbtc@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BNBBTC","U":101,"u":101,"b":"x","a":[]}}',
        '{"stream":"bnbbtc@aggTrade","data":{"e":"aggTrade","s":"BNBBTC","p":"-1","q":"1","a":1,"T":1,"m":true}}',
        '{"stream":"bnbbtc@bookTicker","data":{"u":"x","s":"BNBBTC","b":"1","B":"1","a":"1","A":"1"}}',
        depth("XYZBTC", 101, 101, bids=[("1", "1")]),
        b"\xff\xfe",
    ],
)
def test_bad_frames_are_counted_never_raised_and_never_published(memory_sink, frame: str | bytes) -> None:
    connector = synced(make_connector(memory_sink))
    published = memory_sink.books()
    assert connector.on_message(0, frame, NOW) == ConnectionAction.CONTINUE
    bnb = connector.counters("BNB/BTC")
    connection = connector.connection_counters[0]
    assert bnb.parse_errors + connection.malformed_frames + connection.unknown_symbol_frames == 1
    books = memory_sink.books()
    assert books.get(1) in (published[1], None)  # untouched, or cleared for a resync
    if 1 in books:
        assert books[1] == (connector.book("BNB/BTC").bids, connector.book("BNB/BTC").asks)
    assert books[2] == published[2]


def test_a_bad_level_in_a_live_frame_resyncs_the_book(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    connector.on_message(0, depth("BNBBTC", 101, 101, bids=[("0.0020", "1"), ("bad", "1")]), NOW)
    counters = connector.counters("BNB/BTC")
    assert (counters.parse_errors, counters.resyncs) == (1, 1)
    assert memory_sink.records()[-2]["reason"] == Reason.MALFORMED
    assert 1 not in memory_sink.books()
    assert connector.feeds["BNBBTC"].state == SyncState.BUFFERING


def test_depth_limit_truncates_and_writes_the_trimmed_levels_as_deletes(memory_sink) -> None:
    connector = make_connector(memory_sink, depth_limit=2)
    open_and_request(connector)
    connector.on_snapshot("BNBBTC", snapshot(100, [("0.0024", "1"), ("0.0023", "1"), ("0.0022", "1")], []), NOW)
    assert connector.book("BNB/BTC").bid_prices == [0.0023, 0.0024]
    connector.on_message(0, depth("BNBBTC", 101, 101, bids=[("0.0025", "1")]), NOW)
    assert connector.book("BNB/BTC").bid_prices == [0.0024, 0.0025]
    deletes = memory_sink.batches[-1]
    assert deletes["price"].tolist() == [0.0025, 0.0023] and deletes["size"].tolist() == [1.0, 0.0]
    assert memory_sink.books()[1] == (connector.book("BNB/BTC").bids, connector.book("BNB/BTC").asks)


def test_crossed_book_is_cleared_and_resynced(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    connector.on_message(0, depth("BNBBTC", 101, 101, bids=[("0.0030", "1")]), NOW)
    counters = connector.counters("BNB/BTC")
    assert (counters.crossed, counters.resyncs) == (1, 1)
    assert memory_sink.records()[-2]["reason"] == Reason.CROSSED
    assert 1 not in memory_sink.books()
