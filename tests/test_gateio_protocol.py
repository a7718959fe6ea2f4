"""Gate.io v4 spot protocol: parse functions, subscribe and ack routing, the sync rule on
crafted sequences, ``"full": true`` replacement, and bad input."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest

from actors.connectors import load_exchange_module
from actors.connectors.base import ConnectionAction, Instrument, SyncState
from actors.connectors.gateio import (
    GateioConnector,
    milliseconds_text_to_ns,
    parse_currency_pairs,
    parse_order_book,
    parse_order_book_update,
    parse_trade,
    ping_message,
)
from shm.records import Kind, Reason, Side, Status

SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT": 2}
INSTRUMENTS = [
    Instrument("BTC/USDT", "BTC_USDT", "BTC", "USDT", tick_size=0.01, lot_size=0.0001),
    Instrument("ETH/USDT", "ETH_USDT", "ETH", "USDT", tick_size=0.01, lot_size=0.001),
]
NOW = 1_700_000_000_000_000_000

Levels = Sequence[tuple[str, str]]


def make_connector(sink, **options) -> GateioConnector:
    connector = GateioConnector(
        sink, 11, SYMBOL_IDS, rest_base_url="http://rest.test", ws_base_url="ws://ws.test", **options
    )
    connector.use_instruments(INSTRUMENTS)
    return connector


def update(pair: str, first: int, last: int, bids: Levels = (), asks: Levels = (), full: bool = False) -> str:
    result = {
        "t": 1606294781123,
        "e": "depthUpdate",
        "E": 1606294781,
        "s": pair,
        "U": first,
        "u": last,
        "b": [list(level) for level in bids],
        "a": [list(level) for level in asks],
    }
    if full:
        result["full"] = True
    return orjson.dumps(
        {"time": 1606294781, "channel": "spot.order_book_update", "event": "update", "result": result}
    ).decode()


def order_book(snapshot_id: int, bids: Levels, asks: Levels) -> str:
    return orjson.dumps({"id": snapshot_id, "current": 1, "update": 1, "asks": asks, "bids": bids}).decode()


def ack(channel: str = "spot.order_book_update", request_id: int | None = None) -> str:
    message = {"time": 1, "channel": channel, "event": "subscribe", "result": {"status": "success"}}
    if request_id is not None:
        message["id"] = request_id
    return orjson.dumps(message).decode()


def subscribed(connector: GateioConnector) -> GateioConnector:
    """Both book subscriptions acknowledged (acks without ids, as recorded)."""
    connector.on_open(0, NOW)
    connector.on_message(0, ack(), NOW)
    connector.on_message(0, ack(), NOW)
    return connector


def synced(connector: GateioConnector, snapshot_id: int = 100) -> GateioConnector:
    subscribed(connector)
    connector.snapshot_requests(NOW)
    connector.on_snapshot("BTC_USDT", order_book(snapshot_id, [("19137.74", "1")], [("19137.75", "2")]), NOW)
    connector.on_snapshot("ETH_USDT", order_book(snapshot_id, [("2000.00", "1")], [("2000.01", "2")]), NOW)
    return connector


# ---- parse functions ---------------------------------------------------------------------


def test_currency_pairs_to_instruments() -> None:
    body = orjson.dumps(
        [
            {
                "id": "BTC_USDT",
                "base": "BTC",
                "quote": "USDT",
                "precision": 2,
                "amount_precision": 4,
                "trade_status": "tradable",
            },
            {
                "id": "OLD_USDT",
                "base": "OLD",
                "quote": "USDT",
                "precision": 2,
                "amount_precision": 4,
                "trade_status": "untradable",
            },
            {
                "id": "ETH_USDT",
                "base": "ETH",
                "quote": "USDT",
                "precision": 2,
                "amount_precision": 3,
                "trade_status": "sellable",
            },
        ]
    )
    assert parse_currency_pairs(body) == INSTRUMENTS


def test_order_book_parse_needs_the_id() -> None:
    assert parse_order_book(order_book(7, [("1.5", "2")], [])) == (7, [(1.5, 2.0)], [])
    with pytest.raises(KeyError):
        parse_order_book('{"current":1,"update":1,"asks":[],"bids":[]}')  # asked without with_id=true
    with pytest.raises(ValueError):
        parse_order_book('{"id":"7","asks":[],"bids":[]}')


def test_order_book_update_parse() -> None:
    result = orjson.loads(update("BTC_USDT", 48776301, 48776306, bids=[("19137.74", "0.0001")]))["result"]
    assert parse_order_book_update(result) == (
        "BTC_USDT",
        48776301,
        48776306,
        [["19137.74", "0.0001"]],
        [],
        1606294781123000000,
        False,
    )
    assert parse_order_book_update(result | {"full": True})[-1] is True
    for bad in ({"U": "1"}, {"u": 48776300}, {"t": 1.5}, {"b": None}, {"full": 1}):
        with pytest.raises((TypeError, ValueError)):
            parse_order_book_update(result | bad)


def test_trade_parse_takes_the_taker_side_and_the_fractional_milliseconds() -> None:
    result = {
        "id": 816995772,
        "create_time": 1619093543,
        "create_time_ms": "1619093543708.2642",
        "side": "sell",
        "currency_pair": "DIS_USDT",
        "amount": "0.2010000000",
        "price": "121.5800000000",
    }
    assert parse_trade(result) == ("DIS_USDT", 121.58, 0.201, Side.ASK, 816995772, 1619093543708264200)
    assert parse_trade(result | {"side": "buy"})[3] == Side.BID
    for bad in ({"side": "short"}, {"amount": "0"}, {"id": "1"}, {"create_time_ms": "12a"}, {"create_time_ms": None}):
        with pytest.raises((KeyError, TypeError, ValueError)):
            parse_trade(result | bad)
    assert milliseconds_text_to_ns(1619093543708) == milliseconds_text_to_ns("1619093543708") == 1619093543708000000


def test_subscribe_messages_one_book_request_per_pair_and_one_for_trades(memory_sink) -> None:
    connector = make_connector(memory_sink)
    assert connector.connection_plan()[0].url == "ws://ws.test/ws/v4/"
    assert connector.connection_plan()[0].ping_interval_s is None  # Gate's pings are spot.ping messages
    messages = [orjson.loads(message) for message in connector.on_open(0, NOW)]
    assert messages == [
        {
            "time": 1_700_000_000,
            "id": 1,
            "channel": "spot.order_book_update",
            "event": "subscribe",
            "payload": ["BTC_USDT", "100ms"],
        },
        {
            "time": 1_700_000_000,
            "id": 2,
            "channel": "spot.order_book_update",
            "event": "subscribe",
            "payload": ["ETH_USDT", "100ms"],
        },
        {
            "time": 1_700_000_000,
            "id": 3,
            "channel": "spot.trades",
            "event": "subscribe",
            "payload": ["BTC_USDT", "ETH_USDT"],
        },
    ]
    assert orjson.loads(ping_message(NOW)) == {"time": 1_700_000_000, "channel": "spot.ping"}
    connector = make_connector(memory_sink)
    connector.on_open(0, NOW)
    second = 1_000_000_000
    assert connector.outgoing_messages(1 * second) == []  # the schedule starts at the first poll
    (ping,) = connector.outgoing_messages(6 * second)
    assert (ping.connection, orjson.loads(ping.text)) == (0, {"time": NOW // second, "channel": "spot.ping"})
    assert connector.snapshot_url(INSTRUMENTS[0]) == (
        "http://rest.test/api/v4/spot/order_book?currency_pair=BTC_USDT&limit=100&with_id=true"
    )


def test_depth_and_snapshot_are_capped_at_the_channels_100_levels(memory_sink) -> None:
    connector = GateioConnector(memory_sink, 11, SYMBOL_IDS, snapshot_limit=1000, depth_limit=None)
    assert (connector.snapshot_limit, connector.depth_limit) == (100, 100)


def test_registry_loads_gateio() -> None:
    assert load_exchange_module("gateio").CONNECTOR is GateioConnector


# ---- acks ----------------------------------------------------------------------------------


def test_acks_are_matched_by_id_and_make_only_their_pair_live(memory_sink) -> None:
    connector = make_connector(memory_sink)
    connector.on_open(0, NOW)
    connector.on_message(0, update("ETH_USDT", 5, 6, bids=[("2000.00", "1")]), NOW)  # before its ack: dropped
    connector.on_message(0, ack("spot.trades", 3), NOW)
    assert connector.snapshot_requests(NOW) == []
    connector.on_message(0, ack(request_id=2), NOW)
    assert [request.native_symbol for request in connector.snapshot_requests(NOW)] == ["ETH_USDT"]
    assert connector.feeds["BTC_USDT"].state == SyncState.SUBSCRIBING
    assert connector.counters("ETH/USDT").frames_dropped == 1
    connector.on_message(0, ack(request_id=1), NOW)
    assert [request.native_symbol for request in connector.snapshot_requests(NOW)] == ["BTC_USDT"]


def test_subscribe_error_asks_for_a_reconnect(memory_sink) -> None:
    connector = make_connector(memory_sink)
    connector.on_open(0, NOW)
    error = (
        '{"time":1,"id":1,"channel":"spot.order_book_update","event":"subscribe",'
        '"error":{"code":2,"message":"unknown currency pair BTC_USDT"},"result":null}'
    )
    assert connector.on_message(0, error, NOW) == ConnectionAction.RECONNECT
    counters = connector.connection_counters[0]
    assert (counters.subscribe_errors, counters.last_error) == (1, "2: unknown currency pair BTC_USDT")


# ---- sync rule -----------------------------------------------------------------------------


def test_drop_u_below_id_plus_one_straddle_then_contiguous(memory_sink) -> None:
    connector = subscribed(make_connector(memory_sink))
    connector.snapshot_requests(NOW)
    connector.on_message(0, update("BTC_USDT", 95, 100, bids=[("19000.00", "5")]), NOW)  # u < id+1: dropped
    connector.on_message(0, update("BTC_USDT", 101, 103, bids=[("19137.74", "3")]), NOW)  # U <= id+1 <= u
    connector.on_message(0, update("BTC_USDT", 104, 104, asks=[("19137.75", "0")]), NOW)
    connector.on_snapshot("BTC_USDT", order_book(100, [("19137.74", "1")], [("19137.75", "2")]), NOW)
    counters = connector.counters("BTC/USDT")
    assert (counters.frames, counters.frames_dropped, counters.frames_applied, counters.gaps) == (3, 1, 2, 0)
    book = connector.book("BTC/USDT")
    assert (book.bids, book.asks) == ({19137.74: 3.0}, {})
    assert memory_sink.books()[1] == (book.bids, book.asks)


def test_gap_clears_the_book_and_resyncs(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    connector.on_message(0, update("BTC_USDT", 101, 101, bids=[("19137.74", "2")]), NOW)
    connector.on_message(0, update("BTC_USDT", 103, 104, bids=[("19137.70", "1")]), NOW + 1)  # 102 missing
    counters = connector.counters("BTC/USDT")
    assert (counters.gaps, counters.resyncs) == (1, 1)
    clear, status = memory_sink.records()[-2:]
    assert (clear["kind"], clear["reason"], clear["symbol_id"]) == (Kind.CLEAR, Reason.SEQUENCE_GAP, 1)
    assert (status["kind"], status["aux"]) == (Kind.STATUS, Status.RESYNCING)
    assert 1 not in memory_sink.books() and 2 in memory_sink.books()
    assert [request.native_symbol for request in connector.snapshot_requests(NOW + 1)] == ["BTC_USDT"]
    connector.on_snapshot("BTC_USDT", order_book(103, [("19137.70", "1")], [("19137.75", "2")]), NOW + 2)
    book = connector.book("BTC/USDT")
    assert (book.bids, book.asks) == ({19137.70: 1.0}, {19137.75: 2.0})
    assert memory_sink.books()[1] == (book.bids, book.asks)


def test_snapshot_behind_the_buffer_is_fetched_again(memory_sink) -> None:
    connector = subscribed(make_connector(memory_sink))
    connector.snapshot_requests(NOW)
    connector.on_message(0, update("BTC_USDT", 200, 201, bids=[("1.00", "1")]), NOW)
    connector.on_snapshot("BTC_USDT", order_book(150, [("1.00", "9")], []), NOW)
    assert connector.counters("BTC/USDT").stale_snapshots == 1
    assert connector.feeds["BTC_USDT"].state == SyncState.BUFFERING


# ---- full: true ----------------------------------------------------------------------------


def test_full_update_replaces_a_live_book_and_becomes_the_new_base(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    connector.on_message(0, update("BTC_USDT", 101, 101, bids=[("19137.74", "2")]), NOW)
    connector.on_message(
        0, update("BTC_USDT", 500, 510, bids=[("19000.00", "7")], asks=[("19001.00", "1")], full=True), NOW
    )
    book = connector.book("BTC/USDT")
    assert (book.bids, book.asks) == ({19000.0: 7.0}, {19001.0: 1.0})  # nothing of the old book survives
    batch = memory_sink.batches[-1]
    assert (batch["kind"][0], batch["kind"][-2], batch["sequence"][0]) == (Kind.SNAPSHOT_BEGIN, Kind.SNAPSHOT_END, 510)
    assert memory_sink.books()[1] == (book.bids, book.asks)
    connector.on_message(0, update("BTC_USDT", 511, 512, asks=[("19001.00", "0")]), NOW)
    assert book.asks == {} and connector.counters("BTC/USDT").gaps == 0
    connector.on_message(0, update("BTC_USDT", 514, 514), NOW)
    assert connector.counters("BTC/USDT").gaps == 1


def test_full_update_while_buffering_syncs_without_the_snapshot(memory_sink) -> None:
    connector = subscribed(make_connector(memory_sink))
    assert {request.native_symbol for request in connector.snapshot_requests(NOW)} == {"BTC_USDT", "ETH_USDT"}
    connector.on_message(0, update("BTC_USDT", 50, 52, bids=[("1.00", "1")]), NOW)
    connector.on_message(0, update("BTC_USDT", 40, 60, bids=[("2.00", "1")], asks=[("3.00", "1")], full=True), NOW)
    feed = connector.feeds["BTC_USDT"]
    assert (feed.state, feed.last_id, feed.counters.frames_dropped) == (SyncState.LIVE, 60, 1)
    connector.on_snapshot("BTC_USDT", order_book(55, [("9.00", "9")], []), NOW)  # the answer comes late: ignored
    assert connector.book("BTC/USDT").bids == {2.0: 1.0}
    assert memory_sink.books()[1] == ({2.0: 1.0}, {3.0: 1.0})
    assert connector.snapshot_requests(NOW + 1) == []


def test_full_update_before_the_ack_is_dropped(memory_sink) -> None:
    connector = make_connector(memory_sink)
    connector.on_open(0, NOW)
    connector.on_message(0, update("BTC_USDT", 1, 2, bids=[("1.00", "1")], full=True), NOW)
    assert connector.counters("BTC/USDT").frames_dropped == 1 and 1 not in memory_sink.books()


def test_full_update_with_a_bad_level_resyncs(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    connector.on_message(0, update("BTC_USDT", 200, 210, bids=[("1.00", "1"), ("x", "1")], full=True), NOW)
    counters = connector.counters("BTC/USDT")
    assert (counters.parse_errors, counters.resyncs) == (1, 1)
    assert memory_sink.records()[-2]["reason"] == Reason.MALFORMED
    assert 1 not in memory_sink.books()


def test_crossed_full_update_resyncs(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    connector.on_message(0, update("BTC_USDT", 200, 210, bids=[("5.00", "1")], asks=[("4.00", "1")], full=True), NOW)
    assert connector.counters("BTC/USDT").crossed == 1 and 1 not in memory_sink.books()


# ---- trades and bad input ------------------------------------------------------------------


def test_trades_become_trade_records(memory_sink) -> None:
    connector = make_connector(memory_sink)
    frame = (
        '{"time":1,"channel":"spot.trades","event":"update","result":{"id":12345,"create_time":1,'
        '"create_time_ms":"1000.5","side":"buy","currency_pair":"ETH_USDT","amount":"0.5","price":"2000.01"}}'
    )
    connector.on_message(0, frame, NOW)
    (trade,) = memory_sink.of_kind(Kind.TRADE)
    assert (trade["price"], trade["size"], trade["side"], trade["aux"]) == (2000.01, 0.5, Side.BID, 12345)
    assert (trade["exchange_ts"], trade["receive_ts"], trade["symbol_id"]) == (1_000_500_000, NOW, 2)


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1]",
        '{"channel":"spot.order_book_update","event":"update","result":[1]}',
        '{"channel":"spot.order_book_update","event":"update","result":{"s":"BTC_USDT","U":101}}',
        update("BTC_USDT", 101, 101, bids=[("inf", "1")]),
        update("BTC_USDT", 101, 101, bids=[("19137.74", "-1")]),
        update("BTC_USDT", 101, 101, asks=[("19137.75",)]),
        update("DOGE_USDT", 101, 101, bids=[("1", "1")]),
        (
            '{"channel":"spot.trades","event":"update","result":{"currency_pair":"BTC_USDT","price":"1",'
            '"amount":"1","side":"?","id":1,"create_time_ms":"1"}}'
        ),
        b"\xfe",
    ],
)
def test_bad_frames_are_counted_never_raised_and_never_published(memory_sink, frame: str | bytes) -> None:
    connector = synced(make_connector(memory_sink))
    published = memory_sink.books()
    assert connector.on_message(0, frame, NOW) == ConnectionAction.CONTINUE
    connection = connector.connection_counters[0]
    errors = connector.counters("BTC/USDT").parse_errors
    assert errors + connection.malformed_frames + connection.unknown_symbol_frames == 1
    books = memory_sink.books()
    assert books.get(1) in (published[1], None)  # untouched, or cleared for a resync
    if 1 in books:
        assert books[1] == (connector.book("BTC/USDT").bids, connector.book("BTC/USDT").asks)
    assert books[2] == published[2]


def test_pongs_and_other_channels_are_ignored(memory_sink) -> None:
    connector = synced(make_connector(memory_sink))
    connector.on_message(0, '{"time":1,"channel":"spot.pong","event":"","result":null}', NOW)
    connector.on_message(
        0, '{"time":1,"channel":"spot.tickers","event":"update","result":{"currency_pair":"BTC_USDT"}}', NOW
    )
    assert connector.connection_counters[0].ignored_frames == 2
