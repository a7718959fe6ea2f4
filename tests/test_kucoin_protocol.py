"""KuCoin protocol on crafted frames: connection flow, sync rules, gaps, bad input,
instrument mapping."""

from __future__ import annotations

import orjson
import pytest

from actors.connectors import load_exchange_module
from actors.connectors.base import ConnectionAction, SyncState
from actors.connectors.kucoin import KucoinConnector, parse_symbols
from shm.records import Kind, Reason

SYMBOLS = orjson.dumps(
    {
        "code": "200000",
        "data": [
            {
                "symbol": "BTC-USDT",
                "baseCurrency": "BTC",
                "quoteCurrency": "USDT",
                "priceIncrement": "0.1",
                "baseIncrement": "0.00000001",
                "enableTrading": True,
            },
            {
                "symbol": "BCHSV-USDT",
                "name": "BSV-USDT",
                "baseCurrency": "BSV",
                "quoteCurrency": "USDT",
                "priceIncrement": "0.001",
                "baseIncrement": "0.0001",
                "enableTrading": True,
            },
            {
                "symbol": "OLD-USDT",
                "baseCurrency": "OLD",
                "quoteCurrency": "USDT",
                "priceIncrement": "0.1",
                "baseIncrement": "1",
                "enableTrading": False,
            },
        ],
    }
)
BULLET = orjson.dumps(
    {
        "code": "200000",
        "data": {
            "token": "tok",
            "instanceServers": [
                {
                    "endpoint": "wss://ws.example/",
                    "protocol": "websocket",
                    "pingInterval": 18000,
                    "pingTimeout": 10000,
                }
            ],
        },
    }
)


def snapshot(sequence: int, bids=(("100.0", "1"),), asks=(("101.0", "1"),)) -> bytes:
    return orjson.dumps(
        {
            "code": "200000",
            "data": {"sequence": str(sequence), "bids": bids, "asks": asks},
        }
    )


def l2(start: int, end: int, bids=(), asks=(), symbol: str = "BTC-USDT") -> bytes:
    data = {
        "sequenceStart": start,
        "sequenceEnd": end,
        "symbol": symbol,
        "changes": {"bids": bids, "asks": asks},
    }
    return orjson.dumps(
        {
            "type": "message",
            "topic": f"/market/level2:{symbol}",
            "subject": "trade.l2update",
            "data": data,
        }
    )


def subscribed(memory_sink, **options) -> KucoinConnector:
    connector = KucoinConnector(
        memory_sink, 1, {"BTC/USDT": 1, "BSV/USDT": 2}, **options
    )
    connector.load_instruments(SYMBOLS)
    assert connector.on_open(0, 1) == []
    assert (
        connector.on_message(0, b'{"id":"c1","type":"welcome"}', 2)
        == ConnectionAction.SEND
    )
    messages = [orjson.loads(message.text) for message in connector.outgoing_messages(0)]
    assert [message["topic"] for message in messages] == [
        "/market/level2:BTC-USDT,BCHSV-USDT",
        "/market/match:BTC-USDT,BCHSV-USDT",
    ]
    assert (
        connector.on_message(
            0, orjson.dumps({"id": messages[0]["id"], "type": "ack"}), 3
        )
        == ConnectionAction.CONTINUE
    )
    assert connector.feeds["BTC-USDT"].state == SyncState.BUFFERING
    return connector


def synced(memory_sink, sequence: int = 10) -> KucoinConnector:
    connector = subscribed(memory_sink)
    requests = {
        request.native_symbol: request.url for request in connector.snapshot_requests(0)
    }
    assert (
        requests["BTC-USDT"]
        == "https://api.kucoin.com/api/v1/market/orderbook/level2_100?symbol=BTC-USDT"
    )
    connector.on_snapshot("BTC-USDT", snapshot(sequence), 4)
    assert connector.feeds["BTC-USDT"].state == SyncState.LIVE
    return connector


def test_instruments_map_base_and_quote_and_skip_disabled() -> None:
    instruments = {
        instrument.native: instrument for instrument in parse_symbols(SYMBOLS)
    }
    assert set(instruments) == {"BTC-USDT", "BCHSV-USDT"}
    assert (instruments["BCHSV-USDT"].canonical, instruments["BTC-USDT"].tick_size) == (
        "BSV/USDT",
        0.1,
    )
    assert load_exchange_module("kucoin").CONNECTOR is KucoinConnector
    with pytest.raises(ValueError):
        parse_symbols(b'{"code":"400001","msg":"nope"}')


def test_connection_plan_needs_a_token_then_pings_at_its_interval(memory_sink) -> None:
    connector = KucoinConnector(memory_sink, 1, {"BTC/USDT": 1})
    connector.load_instruments(SYMBOLS)
    (spec,) = connector.connection_plan()
    assert (spec.pre_connect.method, spec.pre_connect.url) == (
        "POST",
        "https://api.kucoin.com/api/v1/bullet-public",
    )
    resolved = connector.resolve_connection(0, BULLET, 0)
    assert resolved.url.startswith("wss://ws.example/?token=tok&connectId=")
    assert (resolved.ping_interval_s, resolved.symbols) == (None, ("BTC/USDT",))
    connector.on_open(0, 1)
    second = 1_000_000_000
    assert connector.outgoing_messages(10 * second) == []  # the ping schedule starts here
    assert connector.outgoing_messages(27 * second) == []
    (ping,) = connector.outgoing_messages(28 * second)  # pingInterval 18 s from the bullet answer
    assert (ping.connection, orjson.loads(ping.text)["type"]) == (0, "ping")
    assert connector.outgoing_messages(29 * second) == []
    connector.on_close(0, 2)
    assert connector.outgoing_messages(100 * second) == [], "no pings for a closed connection"
    with pytest.raises(ValueError):
        connector.resolve_connection(0, b'{"code":"500000"}', 0)


def test_sync_drops_covered_deltas_and_applies_the_straddling_one(memory_sink) -> None:
    connector = subscribed(memory_sink)
    connector.snapshot_requests(0)
    connector.on_message(0, l2(9, 9, bids=[["99.0", "5", "9"]]), 5)  # in the snapshot
    connector.on_message(
        0, l2(10, 11, bids=[["99.5", "2", "11"], ["99.5", "7", "10"]]), 6
    )
    connector.on_message(
        0, l2(12, 12, asks=[["0", "0", "12"]]), 7
    )  # price "0": sequence only
    connector.on_snapshot("BTC-USDT", snapshot(10), 8)
    counters = connector.counters("BTC/USDT")
    assert (counters.frames_dropped, counters.frames_applied, counters.gaps) == (
        1,
        2,
        0,
    )
    book = connector.book("BTC/USDT")
    assert book.bid_levels() == [
        (100.0, 1.0),
        (99.5, 2.0),
    ]  # per-change sequence order: 7 then 2
    connector.on_message(
        0,
        l2(
            13,
            14,
            bids=[["99.5", "0", "14"], ["98", "3", "13"]],
            asks=[["0", "0", "14"]],
        ),
        9,
    )
    assert book.bid_levels() == [(100.0, 1.0), (98.0, 3.0)]
    assert memory_sink.books()[1] == (book.bids, book.asks)


def test_gap_clears_and_resyncs(memory_sink) -> None:
    connector = synced(memory_sink)
    connector.on_message(0, l2(11, 11, bids=[["99", "1", "11"]]), 5)
    connector.on_message(0, l2(13, 13, bids=[["98", "1", "13"]]), 6)
    counters = connector.counters("BTC/USDT")
    assert (counters.gaps, counters.resyncs) == (1, 1)
    clears = memory_sink.of_kind(Kind.CLEAR)
    assert clears["reason"].tolist() == [Reason.SEQUENCE_GAP]
    assert connector.feeds["BTC-USDT"].state == SyncState.BUFFERING
    assert [
        request.native_symbol for request in connector.snapshot_requests(10**12)
    ] == ["BTC-USDT"]
    connector.on_message(0, l2(14, 14, asks=[["102", "1", "14"]]), 7)
    connector.on_snapshot("BTC-USDT", snapshot(13), 8)
    assert connector.book("BTC/USDT").ask_levels() == [(101.0, 1.0), (102.0, 1.0)]


def test_a_snapshot_older_than_the_buffer_is_fetched_again(memory_sink) -> None:
    connector = subscribed(memory_sink)
    connector.snapshot_requests(0)
    connector.on_message(0, l2(20, 20, bids=[["99", "1", "20"]]), 5)
    connector.on_snapshot("BTC-USDT", snapshot(10), 6)
    assert connector.counters("BTC/USDT").stale_snapshots == 1
    assert connector.feeds["BTC-USDT"].state == SyncState.BUFFERING


@pytest.mark.parametrize(
    "frame",
    [
        b"not json",
        b'{"type":"message","subject":"trade.l2update","data":[1]}',
        l2(11, 11, bids=[["99", "1"]]),  # a change without its sequence
        l2(11, 11, bids=[["99", "1", "11"], ["98", "1"]]),  # the same among changes to sort
        l2(11, 11, bids=[["-1", "1", "11"]]),
        l2(11, 11, bids=[["99", "x", "11"]]),
        l2(12, 11),
        orjson.dumps(
            {
                "type": "message",
                "subject": "trade.l2update",
                "data": {"symbol": "BTC-USDT"},
            }
        ),
    ],
)
def test_bad_input_is_counted_and_never_corrupts_a_book(
    memory_sink, frame: bytes
) -> None:
    connector = synced(memory_sink)
    assert connector.on_message(0, frame, 5) == ConnectionAction.CONTINUE
    counters = connector.counters("BTC/USDT")
    bad = counters.parse_errors + connector.connection_counters[0].malformed_frames
    assert bad == 1
    book = connector.book("BTC/USDT")
    assert not book or book.bid_levels() == [
        (100.0, 1.0)
    ]  # unchanged, or cleared for a resync
    assert memory_sink.books().get(1) in (None, ({100.0: 1.0}, {101.0: 1.0}))


def test_unknown_symbol_trades_tickers_and_errors(memory_sink) -> None:
    connector = synced(memory_sink)
    connector.on_message(0, l2(11, 11, symbol="NOPE-USDT"), 5)
    assert connector.connection_counters[0].unknown_symbol_frames == 1
    match = {
        "symbol": "BTC-USDT",
        "sequence": "77",
        "side": "sell",
        "size": "0.5",
        "price": "100",
        "time": "1619378327739050725",
        "tradeId": "6085c09769bc506996295e36",
    }
    connector.on_message(
        0,
        orjson.dumps({"type": "message", "subject": "trade.l3match", "data": match}),
        6,
    )
    (trade,) = memory_sink.of_kind(Kind.TRADE)
    assert (trade["aux"], trade["price"], trade["size"], trade["exchange_ts"]) == (
        77,
        100.0,
        0.5,
        1619378327739050725,
    )
    error = b'{"id":"1","type":"error","code":404,"data":"topic /market/level2:XXX is not found"}'
    assert connector.on_message(0, error, 7) == ConnectionAction.RECONNECT
    assert connector.connection_counters[0].last_error.startswith("404")
    assert (
        connector.on_message(0, b'{"id":"1","type":"pong"}', 8)
        == ConnectionAction.CONTINUE
    )


def test_a_time_a_record_cannot_stamp_is_a_bad_frame(memory_sink) -> None:
    """A ``time`` whose nanoseconds pass int64 (after 2262) used to be taken when the frame packed no
    record (sequence-only changes), and a later re-send of the book raised OverflowError."""
    connector = synced(memory_sink)
    connector.on_message(0, l2(11, 11, asks=[["0", "0", "11"]]).decode(), 5)
    for frame in (l2(12, 13, asks=[["0", "0", "12"], ["0", "0", "13"]]), l2(12, 12, asks=[["0", "0", "12"]])):
        late = frame.replace(b'"symbol"', b'"time":9300000000000,"symbol"')
        for data in (late.decode(), late):  # the typed path, and the generic one
            connector.on_message(0, data, 6)
    counters = connector.counters("BTC/USDT")
    assert (counters.parse_errors, counters.last_exchange_ts, connector.feeds["BTC-USDT"].last_id) == (4, 5, 11)
    connector.request_full_resend()
    connector.flush(7)
    assert len(memory_sink.of_kind(Kind.SNAPSHOT_END)) == 2


def test_ticker_disagreeing_with_the_book_resyncs(memory_sink) -> None:
    connector = KucoinConnector(
        memory_sink, 1, {"BTC/USDT": 1}, ticker_cross_check=True, await_welcome=False
    )
    connector.load_instruments(SYMBOLS)
    assert len(connector.on_open(0, 1)) == 3
    connector.on_message(0, b'{"id":"1","type":"ack"}', 2)
    connector.snapshot_requests(0)
    connector.on_snapshot("BTC-USDT", snapshot(10), 3)
    ticker = {
        "sequence": "10",
        "bestBid": "100.0",
        "bestBidSize": "1",
        "bestAsk": "101.0",
        "bestAskSize": "2",
    }
    frame = {
        "type": "message",
        "topic": "/market/ticker:BTC-USDT",
        "subject": "trade.ticker",
        "data": ticker,
    }
    connector.on_message(0, orjson.dumps(frame), 4)
    counters = connector.counters("BTC/USDT")
    assert (
        counters.cross_checks,
        counters.cross_check_mismatches,
        counters.resyncs,
    ) == (1, 1, 1)


def test_typed_l2updates_have_the_generic_paths_outcome(sink_factory) -> None:
    """The same l2updates as text frames (the typed path) and as bytes (the generic path, which
    the typed one never takes): the same records, counters, books and rejections, frame by frame,
    buffered before the snapshot and live after it."""
    typed, generic = (subscribed(sink_factory()) for _ in range(2))
    bodies = [
        ((9, 9), [["99.0", "5", "9"]], []),  # buffered, then in the snapshot
        ((10, 11), [["99.5", "2", "11"], ["99.5", "7", "10"]], []),  # buffered, sorted by change sequence
        "snapshot",
        ((12, 12), [], [["0", "0", "12"]]),  # price "0": sequence only
        ((13, 14), [["99.5", "0", "14"], ["98", "3", "13"]], [["0", "0", "14"]]),
        ((15, 15), [["97.5", "1e-8", "15"]], [["101.5", "2.25", "15"]]),
        ((16, 16), [["97", 5, "16"]], []),  # a JSON number size
        ((17, 17), [["97", "1", "+17"], ["96", "1", "017"], ["95", "1", " 17"]], []),  # sequences int() reads
        ((18, 18), [["0.0", "1", "18"]], []),  # refused: the book resyncs
        "snapshot",
        ((19, 19), [["99", " 1", "19"]], []),  # a size only float() reads: the generic path's
        ((20, 20), [["99", "1", "20"], ["98", "1", "x"]], []),  # a sequence that does not sort
        "snapshot",
        ((21, 21), [["101", "1", "21"]], []),  # crossed
        "snapshot",
        ((22, 22), [["99", "1e16", "22"]], []),
        "snapshot",
        ((23, 24), [], [["1e13", "1", "23"]]),
        "snapshot",
        ((25, 25), [["99", "1", "25"]], []), ((27, 27), [["99", "2", "27"]], []),  # a gap
    ]
    snapshots = 0
    for number, body in enumerate(bodies):
        for connector in (typed, generic):
            connector.frame_rejected = False
            if body == "snapshot":
                connector.snapshot_requests(10**12 * (snapshots + 1))
                connector.on_snapshot("BTC-USDT", snapshot(10 if not snapshots else bodies[number - 1][0][1]), 8)
        if body == "snapshot":
            snapshots += 1
        else:
            (start, end), bids, asks = body
            frame = l2(start, end, bids=bids, asks=asks)
            assert typed.on_message(0, frame.decode(), 10 + number) == generic.on_message(0, frame, 10 + number)
        assert typed.output.sink.records().tobytes() == generic.output.sink.records().tobytes(), body
        assert typed.counters("BTC/USDT") == generic.counters("BTC/USDT"), body
        assert typed.connection_counters == generic.connection_counters
        typed_book, generic_book = typed.book("BTC/USDT"), generic.book("BTC/USDT")
        assert (typed_book.bids, typed_book.asks) == (generic_book.bids, generic_book.asks)
        assert typed.frame_rejected == generic.frame_rejected
    counters = typed.counters("BTC/USDT")
    assert (counters.gaps, counters.crossed) == (1, 1) and counters.parse_errors >= 4
