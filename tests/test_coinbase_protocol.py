"""Coinbase protocol on crafted frames: the URL or option picks the generation, instruments,
subscriptions, snapshot + updates + deletes, trimming, a crossed book clears and
resubscribes, Advanced Trade sequence gaps, the ticker cross-check, and bad input counted
and dropped without touching a book."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest

from actors.connectors import load_exchange_module
from actors.connectors.base import ConnectionAction, Instrument, SyncState
from actors.connectors.coinbase import (
    ADVANCED,
    EXCHANGE,
    PRO,
    CoinbaseConnector,
    CoinbaseSimulatedVenue,
    api_of,
    parse_products,
    rfc3339_ns,
)
from shm.records import Kind, Reason, Side

SECOND = 1_000_000_000
NOW = 1_700_000_000 * SECOND
SYMBOL_IDS = {"BTC/USD": 1, "ETH/USD": 2}
PRODUCTS = orjson.dumps(
    [
        {"id": "BTC-USD", "base_currency": "BTC", "quote_currency": "USD", "quote_increment": "0.01",
         "base_increment": "0.00000001", "status": "online"},
        {"id": "ETH-USD", "base_currency": "ETH", "quote_currency": "USD", "quote_increment": "0.01",
         "base_increment": "0.00000001", "status": "online"},
        {"id": "SOL-EUR", "base_currency": "SOL", "quote_currency": "EUR", "quote_increment": "0.001",
         "base_increment": "0.001", "status": "online"},
    ]
)


def connector_for(sink, api: str = EXCHANGE, **options) -> CoinbaseConnector:
    connector = CoinbaseConnector(sink, 6, SYMBOL_IDS, api=api, **options)
    connector.load_instruments(PRODUCTS)
    connector.on_open(0, NOW)
    return connector


def snapshot(product: str, bids, asks) -> str:
    return orjson.dumps({"type": "snapshot", "product_id": product, "bids": bids, "asks": asks}).decode()


def l2update(product: str, *changes) -> str:
    return orjson.dumps(
        {"type": "l2update", "product_id": product, "time": "2023-10-06T17:35:55.440295Z", "changes": list(changes)}
    ).decode()


def advanced(sequence: int, kind: str, product: str, bids=(), asks=()) -> str:
    updates = [{"side": "bid", "price_level": p, "new_quantity": q} for p, q in bids]
    updates += [{"side": "offer", "price_level": p, "new_quantity": q} for p, q in asks]
    return orjson.dumps(
        {"channel": "l2_data", "timestamp": "2023-02-09T20:32:50.714964855Z", "sequence_num": sequence,
         "events": [{"type": kind, "product_id": product, "updates": updates}]}
    ).decode()


def test_the_url_selects_the_generation_unless_told() -> None:
    assert api_of("wss://ws-feed.exchange.coinbase.com") == EXCHANGE
    assert api_of("wss://ws-feed.pro.coinbase.com") == PRO
    assert api_of("wss://advanced-trade-ws.coinbase.com") == ADVANCED
    assert api_of("ws://127.0.0.1:8765") == EXCHANGE
    assert CoinbaseConnector(None, 0, {}, ws_base_url="wss://advanced-trade-ws.coinbase.com").api == ADVANCED
    with pytest.raises(ValueError):
        CoinbaseConnector(None, 0, {}, api="v3")
    with pytest.raises(ValueError):
        CoinbaseConnector(None, 0, {}, api=ADVANCED, ticker_cross_check=True)


def test_registry_and_products_to_instruments() -> None:
    module = load_exchange_module("coinbase")
    assert module.CONNECTOR is CoinbaseConnector and module.SIMULATED_VENUE is CoinbaseSimulatedVenue
    instruments = {instrument.canonical: instrument for instrument in parse_products(PRODUCTS)}
    assert instruments["BTC/USD"] == Instrument("BTC/USD", "BTC-USD", "BTC", "USD", tick_size=0.01, lot_size=1e-8)
    assert instruments["SOL/EUR"].native == "SOL-EUR" and instruments["SOL/EUR"].lot_size == 0.001


def test_from_settings_trims_to_the_snapshot_depth_and_keeps_the_url(memory_sink) -> None:
    settings = SimpleNamespace(ws_url="wss://advanced-trade-ws.coinbase.com", rest_url="", snapshot_depth=50,
                               stale_after_s=5.0, max_streams_per_connection=20)
    connector = CoinbaseConnector.from_settings(memory_sink, 6, SYMBOL_IDS, settings)
    assert (connector.api, connector.depth, connector.stale_after_s) == (ADVANCED, 50, 5.0)
    assert connector.symbols_per_connection == 20
    assert connector.instruments_url == "https://api.exchange.coinbase.com/products"


def test_rfc3339_keeps_nanoseconds() -> None:
    assert rfc3339_ns("2023-02-09T20:32:50.714964855Z") == 1675974770714964855
    assert rfc3339_ns("2021-04-17T16:43:37.075687Z") == 1618677817075687000


def test_subscriptions_per_generation(memory_sink) -> None:
    exchange = CoinbaseConnector(memory_sink, 6, SYMBOL_IDS)
    exchange.load_instruments(PRODUCTS)
    assert [orjson.loads(text) for text in exchange.on_open(0, NOW)] == [
        {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"],
         "channels": ["level2_batch", "matches", "heartbeat"]}
    ]
    pro = connector_for(memory_sink, PRO, ticker_cross_check=True, trades=False)
    assert orjson.loads(pro.subscribe_messages(0, pro.connections[0])[0])["channels"] == ["level2", "ticker"]
    at = CoinbaseConnector(memory_sink, 6, SYMBOL_IDS, api=ADVANCED)
    at.load_instruments(PRODUCTS)
    assert [orjson.loads(text) for text in at.on_open(0, NOW)] == [
        {"type": "subscribe", "channel": "level2", "product_ids": ["BTC-USD", "ETH-USD"]},
        {"type": "subscribe", "channel": "heartbeats"},
    ]


def test_snapshot_updates_and_deletes(memory_sink) -> None:
    connector = connector_for(memory_sink)
    connector.on_message(0, snapshot("BTC-USD", [["100.00", "1.5"], ["99.50", "2"]], [["101.00", "3"]]), NOW)
    feed = connector.feeds_by_canonical["BTC/USD"]
    assert feed.state == SyncState.LIVE
    connector.on_message(0, l2update("BTC-USD", ["buy", "100.50", "0.7"], ["sell", "101.00", "0.00000000"],
                                     ["sell", "102.00", "4"], ["buy", "98.00", "0"]), NOW + 1)
    book = connector.book("BTC/USD")
    assert book.bid_levels() == [(100.5, 0.7), (100.0, 1.5), (99.5, 2.0)]
    assert book.ask_levels() == [(102.0, 4.0)]
    counters = connector.counters("BTC/USD")
    assert (counters.snapshots, counters.frames_applied, counters.levels_applied) == (1, 1, 4)
    assert counters.last_exchange_ts == 1696613755440295000
    assert memory_sink.books()[1] == (book.bids, book.asks)


def test_depth_limit_trims_the_whole_book(memory_sink) -> None:
    connector = connector_for(memory_sink, depth_limit=2)
    connector.on_message(0, snapshot("BTC-USD", [["100", "1"], ["99", "1"], ["98", "1"]], [["101", "1"]]), NOW)
    connector.on_message(0, l2update("BTC-USD", ["buy", "100.5", "1"]), NOW)
    assert connector.book("BTC/USD").bid_levels() == [(100.5, 1.0), (100.0, 1.0)]


def test_a_crossed_book_clears_and_resubscribes_only_that_product(memory_sink) -> None:
    connector = connector_for(memory_sink)
    connector.on_message(0, snapshot("BTC-USD", [["100", "1"]], [["101", "1"]]), NOW)
    connector.on_message(0, snapshot("ETH-USD", [["10", "1"]], [["11", "1"]]), NOW)
    assert connector.on_message(0, l2update("BTC-USD", ["buy", "101.5", "1"]), NOW) == ConnectionAction.CONTINUE
    assert connector.counters("BTC/USD").crossed == 1
    assert connector.feeds_by_canonical["BTC/USD"].state == SyncState.SUBSCRIBING
    assert connector.feeds_by_canonical["ETH/USD"].state == SyncState.LIVE
    clears = memory_sink.of_kind(Kind.CLEAR)
    assert clears["reason"].tolist() == [Reason.CROSSED] and clears["symbol_id"].tolist() == [1]
    assert [orjson.loads(message.text) for message in connector.outgoing_messages(0)] == [
        {"type": "unsubscribe", "product_ids": ["BTC-USD"], "channels": ["level2_batch"]},
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["level2_batch"]},
    ]
    connector.on_message(0, l2update("BTC-USD", ["buy", "99", "1"]), NOW)  # the old subscription's tail
    assert connector.counters("BTC/USD").frames_dropped == 2
    connector.on_message(0, snapshot("BTC-USD", [["100", "2"]], [["102", "1"]]), NOW)
    assert connector.feeds_by_canonical["BTC/USD"].state == SyncState.LIVE
    assert connector.book("BTC/USD").bid_levels() == [(100.0, 2.0)]


def test_matches_are_trades_and_last_match_is_ignored(memory_sink) -> None:
    connector = connector_for(memory_sink)
    match = {"type": "match", "trade_id": 7, "side": "buy", "size": "0.5", "price": "100.25", "product_id": "ETH-USD",
             "sequence": 1, "time": "2023-10-06T17:35:55.440295Z"}
    connector.on_message(0, orjson.dumps(match), NOW)
    connector.on_message(0, orjson.dumps(match | {"type": "last_match", "trade_id": 6}), NOW)
    connector.on_message(0, orjson.dumps(match | {"size": "0"}), NOW)
    (trade,) = memory_sink.of_kind(Kind.TRADE)
    assert (trade["price"], trade["size"], trade["aux"], trade["side"]) == (100.25, 0.5, 7, Side.ASK)  # maker bought
    assert connector.counters("ETH/USD").parse_errors == 1


def test_ticker_cross_check_skips_the_first_and_resyncs_on_disagreement(memory_sink) -> None:
    connector = connector_for(memory_sink, PRO, ticker_cross_check=True)
    connector.on_message(0, snapshot("BTC-USD", [["100", "1"]], [["101", "1"]]), NOW)
    ticker = {"type": "ticker", "product_id": "BTC-USD", "best_bid": "90", "best_ask": "91", "sequence": 1}
    connector.on_message(0, orjson.dumps(ticker), NOW)  # sent on subscribe: stale, not compared
    connector.on_message(0, orjson.dumps(ticker | {"best_bid": "100.00", "best_ask": "101"}), NOW)
    counters = connector.counters("BTC/USD")
    assert (counters.cross_checks, counters.cross_check_mismatches) == (1, 0)
    connector.on_message(0, orjson.dumps(ticker | {"best_bid": "100.00", "best_ask": "100.5"}), NOW)
    assert (counters.cross_checks, counters.cross_check_mismatches, counters.resyncs) == (2, 1, 1)
    assert memory_sink.of_kind(Kind.CLEAR)["reason"].tolist() == [Reason.CROSS_CHECK]


def test_exchange_bad_input_is_counted_and_dropped(memory_sink) -> None:
    connector = connector_for(memory_sink)
    connector.on_message(0, snapshot("BTC-USD", [["100", "1"]], [["101", "1"]]), NOW)
    connector.on_message(0, snapshot("ETH-USD", [["10", "1"]], [["11", "1"]]), NOW)
    for frame in (b"{not json", b"[1,2]", b'{"type":"l2update","changes":[]}', l2update("DOGE-USD", ["buy", "1", "1"]),
                  b'{"type":"heartbeat","product_id":"BTC-USD","sequence":1}',
                  b'{"type":"error","message":"Failed to subscribe","reason":"level2 needs auth"}'):
        assert connector.on_message(0, frame, NOW) == ConnectionAction.CONTINUE
    counters = connector.connection_counters[0]
    assert (counters.malformed_frames, counters.unknown_symbol_frames, counters.ignored_frames) == (3, 1, 1)
    assert counters.subscribe_errors == 1 and "level2 needs auth" in counters.last_error
    assert connector.feeds_by_canonical["BTC/USD"].state == SyncState.LIVE
    # A book frame that cannot be read: counted, the book is not trusted any more.
    for frame in (l2update("BTC-USD", ["hold", "100", "1"]), l2update("ETH-USD", ["buy", "-1", "1"])):
        assert connector.on_message(0, frame, NOW) == ConnectionAction.CONTINUE
    for symbol in SYMBOL_IDS:
        assert connector.counters(symbol).parse_errors == 1
        assert connector.feeds_by_canonical[symbol].state == SyncState.SUBSCRIBING
    assert set(memory_sink.of_kind(Kind.CLEAR)["reason"].tolist()) == {Reason.MALFORMED}
    assert memory_sink.books() == {}  # no corrupted book was ever published


def test_advanced_snapshot_updates_and_offer_side(memory_sink) -> None:
    connector = connector_for(memory_sink, ADVANCED)
    connector.on_message(0, advanced(1, "snapshot", "BTC-USD", [("100", "1"), ("99", "2")], [("101", "3")]), NOW)
    connector.on_message(0, advanced(2, "update", "BTC-USD", [("99", "0")], [("100.5", "1")]), NOW)
    book = connector.book("BTC/USD")
    assert book.bid_levels() == [(100.0, 1.0)] and book.ask_levels() == [(100.5, 1.0), (101.0, 3.0)]
    assert connector.counters("BTC/USD").last_exchange_ts == 1675974770714964855


def test_advanced_sequence_gap_resyncs_the_connections_live_books(memory_sink) -> None:
    connector = connector_for(memory_sink, ADVANCED)
    connector.on_message(0, advanced(1, "snapshot", "BTC-USD", [("100", "1")], [("101", "1")]), NOW)
    connector.on_message(0, advanced(2, "snapshot", "ETH-USD", [("10", "1")], [("11", "1")]), NOW)
    connector.on_message(0, b'{"channel":"heartbeats","sequence_num":3,"events":[]}', NOW)
    connector.on_message(0, advanced(5, "update", "BTC-USD", [("100", "2")]), NOW)  # 4 was lost
    for symbol in SYMBOL_IDS:
        assert connector.counters(symbol).gaps == 1
        assert connector.feeds_by_canonical[symbol].state == SyncState.SUBSCRIBING
    resubscription = [orjson.loads(message.text)["type"] for message in connector.outgoing_messages(0)]
    assert resubscription == ["unsubscribe", "subscribe"]
    connector.on_message(0, advanced(6, "snapshot", "BTC-USD", [("100", "3")], [("101", "1")]), NOW)
    assert connector.feeds_by_canonical["BTC/USD"].state == SyncState.LIVE
    connector.on_open(0, NOW)  # a new connection counts afresh
    connector.on_message(0, advanced(0, "snapshot", "BTC-USD", [("100", "3")], [("101", "1")]), NOW)
    assert connector.counters("BTC/USD").gaps == 1


def test_advanced_bad_input_is_counted_and_dropped(memory_sink) -> None:
    connector = connector_for(memory_sink, ADVANCED)
    connector.on_message(0, advanced(1, "snapshot", "BTC-USD", [("100", "1")], [("101", "1")]), NOW)
    for frame in (b"nope", b'{"channel":"l2_data","sequence_num":2,"events":{}}',
                  b'{"channel":"l2_data","sequence_num":3,"events":[7]}',
                  b'{"type":"error","message":"rate limited"}'):
        assert connector.on_message(0, frame, NOW) == ConnectionAction.CONTINUE
    assert connector.connection_counters[0].malformed_frames == 3
    assert connector.connection_counters[0].subscribe_errors == 1
    assert connector.feeds_by_canonical["BTC/USD"].state == SyncState.LIVE
    bad = orjson.loads(advanced(4, "update", "BTC-USD", [("100", "2")]))
    bad["events"][0]["updates"][0]["side"] = "ask"  # Advanced Trade only says "offer"
    connector.on_message(0, orjson.dumps(bad), NOW)
    assert connector.counters("BTC/USD").parse_errors == 1
    assert connector.feeds_by_canonical["BTC/USD"].state == SyncState.SUBSCRIBING


def _recorded_times(recorded) -> list[str]:
    from sim.recorded import LineKind, read_recorded

    times = []
    for path in sorted(recorded.glob("COINBASE.ws.*")):
        for line in read_recorded(path):
            if line.kind == LineKind.RECEIVED:
                time = orjson.loads(line.payload).get("time")
                if isinstance(time, str):
                    times.append(time)
    return times


def test_the_inline_time_parse_is_rfc3339_ns_on_every_recorded_time(recorded) -> None:
    """on_message reads an l2update's time with micros_stamp_ns (the C kernel's, where built):
    bit for bit rfc3339_ns's generic reading on every time of the recording."""
    from actors.connectors import base

    times = _recorded_times(recorded)
    assert len(times) > 9_000
    inline = [base.micros_stamp_ns(text) for text in times]
    kernel = base.micros_stamp_ns
    base.micros_stamp_ns = lambda text: None  # rfc3339_ns's own reading
    try:
        generic = [base.rfc3339_ns(text) for text in times]
    finally:
        base.micros_stamp_ns = kernel
    if base.KERNEL_PATH == "c":
        assert inline == generic
    else:
        assert inline == [None] * len(times)


ODD_TIMES = [
    "2021-04-17T16:43:37.075687Z", "2021-04-17T16:43:37.075688Z",  # the same second: inline
    "2021-04-17T16:43:38.000001Z", "2021-04-17T16:43:38.1Z", "2021-04-17T16:43:38.123456789Z",  # other layouts
    "2021-04-17T16:43:38.-12345Z", "2021-04-17T16:43:38.12a456Z", "2021-04-17T16:43:38.123456+", "",
    "2021-04-17T16:43:38", "not a time", "2021-02-30T16:43:38.123456Z",
]


def test_typed_l2updates_have_the_generic_paths_outcome(sink_factory) -> None:
    """The same l2updates as text (the typed path, its inline time parse included) and as bytes
    (the generic path): the same records, counters, books and rejections, frame by frame."""
    typed, generic = (connector_for(sink_factory(), api=PRO) for _ in range(2))
    frames = [snapshot("BTC-USD", [["100.00", "1"]], [["101.00", "2"]])]
    for number, time in enumerate(ODD_TIMES):
        frames.append(orjson.dumps({"type": "l2update", "product_id": "BTC-USD", "time": time,
                                    "changes": [["buy", f"99.{number:02d}", "1.5"]]}).decode())
        frames.append(snapshot("BTC-USD", [["100.00", "1"]], [["101.00", "2"]]))  # again live after a bad one
    frames += [l2update("BTC-USD", ["sell", "101.00", "0"], ["buy", "100.50", "3"]),
               l2update("BTC-USD", ["sell", "100.25", "1"]),  # crossed
               snapshot("BTC-USD", [["100.00", "1"]], [["101.00", "2"]]),
               l2update("BTC-USD", ["buy", "0", "1"]),
               snapshot("BTC-USD", [["100.00", "1"]], [["101.00", "2"]]),
               l2update("BTC-USD", ["hold", "100", "1"]), l2update("SOL-EUR", ["buy", "1", "1"])]
    for number, frame in enumerate(frames):
        typed.frame_rejected = generic.frame_rejected = False
        assert typed.on_message(0, frame, NOW + number) == generic.on_message(0, frame.encode(), NOW + number)
        assert typed.output.sink.records().tobytes() == generic.output.sink.records().tobytes(), frame
        assert typed.counters("BTC/USD") == generic.counters("BTC/USD"), frame
        assert typed.connection_counters == generic.connection_counters
        assert typed.book("BTC/USD").bids == generic.book("BTC/USD").bids and typed.frame_rejected == generic.frame_rejected
    counters = typed.counters("BTC/USD")
    assert counters.parse_errors >= 5 and counters.crossed == 1
