"""The simulator: its market model, its Binance wire format, and the Binance connector
driven against it over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from actors.connectors.base import SyncState
from actors.connectors.binance import BinanceSpotConnector, BinanceSpotSimulatedVenue
from shm.records import Reason, Side
from sim.market import Market, SymbolSpec, VenueSpec, default_market
from sim.recorded import LineKind, RecordedLine, parse_line
from tests.venue_harness import (
    RuntimeStandIn,
    reasons_of_clears,
    run,
    running,
    wait_until,
)

VENUE = "binance"
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT": 2, "NKN/USDT": 3}


# ---- market model ---------------------------------------------------------------------------


def run_market(seed: int, steps: int) -> list[tuple]:
    market = default_market((VENUE, "other"), seed=seed)
    return [
        (step.book_changes, [(t.venue, t.symbol, t.trade_id, t.price_ticks, t.lots, t.aggressor) for t in step.trades])
        for step in (market.step(0.1, number) for number in range(steps))
    ]


def test_market_is_deterministic_for_a_seed() -> None:
    assert run_market(seed=11, steps=150) == run_market(seed=11, steps=150)
    assert run_market(seed=11, steps=20) != run_market(seed=12, steps=20)


def test_market_books_stay_uncrossed_with_contiguous_update_ids() -> None:
    market = default_market((VENUE, "other"), seed=5)
    last_ids = {key: book.last_update_id for key, book in market.books.items()}
    for number in range(300):
        step = market.step(0.1, number)
        for change in step.book_changes:
            key = (change.venue, change.symbol)
            assert change.first_update_id == change.previous_update_id + 1 == last_ids[key] + 1
            assert change.last_update_id - change.first_update_id + 1 >= len(change.bids) + len(change.asks)
            last_ids[key] = change.last_update_id
        for key, book in market.books.items():
            assert max(book.bids) < min(book.asks), key
            assert book.last_update_id == last_ids[key]
            assert all(lots > 0 for lots in book.bids.values()) and all(lots > 0 for lots in book.asks.values())


def test_venues_differ_by_offset_and_each_keeps_its_own_book() -> None:
    market = Market(
        [SymbolSpec("BTC/USDT", price="30000.00", tick_size="0.50", lot_size="0.001")],
        [
            VenueSpec("a", shock_rate=0, dislocation_rate=0),
            VenueSpec("b", offset_bps=50.0, shock_rate=0, dislocation_rate=0),
        ],
        seed=1,
    )
    for number in range(50):
        market.step(0.1, number)
    (a_bid, _), (b_bid, _) = market.truth("a", "BTC/USDT", 1)[0][0], market.truth("b", "BTC/USDT", 1)[0][0]
    assert 1.003 < b_bid / a_bid < 1.007
    assert market.book("a", "BTC/USDT").last_update_id != market.book("b", "BTC/USDT").last_update_id


def test_scripted_liquidity_shock_and_dislocation() -> None:
    calm, shocked = default_market((VENUE,), seed=2), default_market((VENUE,), seed=2)
    shocked.liquidity_shock(VENUE, "ETH/USDT", Side.ASK, levels=5)
    calm_trades, shocked_trades = [
        [trade for trade in market.step(0.1, 0).trades if trade.symbol == "ETH/USDT" and trade.aggressor == Side.BID]
        for market in (calm, shocked)
    ]
    swept = shocked_trades[len(calm_trades) :]
    assert len(swept) == 5 and len({trade.price_ticks for trade in swept}) == 5
    assert not {trade.price_ticks for trade in swept} & set(shocked.book(VENUE, "ETH/USDT").asks)
    best_bid = calm.truth(VENUE, "BTC/USDT", 1)[0][0][0]
    calm.dislocate(VENUE, "BTC/USDT", bps=100.0, seconds=5.0)
    for number in range(1, 11):
        calm.step(0.1, number)
    assert calm.truth(VENUE, "BTC/USDT", 1)[0][0][0] > best_bid * 1.005


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "wss://ws.kraken.com <-> 1618678132.3858151",
            RecordedLine(LineKind.WS_OPEN, 1618678132385815100, "wss://ws.kraken.com", ""),
        ),
        (
            'wss://ws.kraken.com <- 1618678132.8253062: {"event":"subscribe"}',
            RecordedLine(LineKind.SENT, 1618678132825306200, "wss://ws.kraken.com", '{"event":"subscribe"}'),
        ),
        (
            '1618678134.213106: [992,{"b":[]},"book-1000"]',
            RecordedLine(LineKind.RECEIVED, 1618678134213106000, "", '[992,{"b":[]},"book-1000"]'),
        ),
        (
            "https://api.binance.com/api/v3/depth?symbol=NKNUSDT&limit=1000 -> 1633998512.320639: {\"lastUpdateId\":1}",
            RecordedLine(
                LineKind.HTTP_RESPONSE,
                1633998512320639000,
                "https://api.binance.com/api/v3/depth?symbol=NKNUSDT&limit=1000",
                '{"lastUpdateId":1}',
            ),
        ),
        (
            'configuration: {"l2_book":["NKN-USDT"]}',
            RecordedLine(LineKind.CONFIGURATION, 0, "", '{"l2_book":["NKN-USDT"]}'),
        ),
        (  # Huobi: a gzip binary frame recorded as a Python bytes literal
            "1618678070.7361841: b'\\x1f\\x8b\\x08'",
            RecordedLine(LineKind.RECEIVED, 1618678070736184100, "", b"\x1f\x8b\x08"),
        ),
    ],
)
def test_recorded_line_kinds(line: str, expected: RecordedLine) -> None:
    assert parse_line(line) == expected


# ---- the Binance connector in the shared stand-in runtime ------------------------------------


def harness(sink_factory, seed: int = 3, start_runtime: bool = True, **options):
    market = default_market((VENUE,), seed=seed)
    sink = sink_factory()

    def connector(server) -> BinanceSpotConnector:
        connector = BinanceSpotConnector(
            sink,
            1,
            SYMBOL_IDS,
            rest_base_url=server.http_url,
            ws_base_url=server.ws_url,
            book_ticker_cross_check=True,
            **options,
        )
        connector.snapshot_retry_initial_s = 0.05
        return connector

    venue = BinanceSpotSimulatedVenue(market, VENUE)
    return running(market, venue, connector, sink, SYMBOL_IDS, start_runtime=start_runtime)


# ---- the connector against the simulator -----------------------------------------------------


def test_connector_book_equals_the_simulators_truth(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(lambda: all(feed.state == SyncState.LIVE for feed in h.connector.feeds.values()))
            steps = h.market.step_number
            await wait_until(lambda: h.market.step_number >= steps + 30)
            await h.paused_and_caught_up()
            h.assert_books_equal_truth()
            counters = [h.connector.counters(symbol) for symbol in SYMBOL_IDS]
            assert sum(c.frames_applied for c in counters) >= 30 and sum(c.trades for c in counters) > 0
            assert sum(c.cross_checks for c in counters) > 0
            assert sum(c.gaps + c.cross_check_mismatches + c.parse_errors + c.crossed for c in counters) == 0

    run(scenario())


def test_injected_gap_clears_resyncs_and_converges_again(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(lambda: all(feed.state == SyncState.LIVE for feed in h.connector.feeds.values()))
            h.server.faults.drop_updates("BTC/USDT")
            await wait_until(lambda: h.connector.counters("BTC/USDT").gaps == 1)
            assert reasons_of_clears(h.sink, 1) == [Reason.SEQUENCE_GAP]
            await wait_until(lambda: h.connector.counters("BTC/USDT").snapshots == 2)
            await h.paused_and_caught_up()
            h.assert_books_equal_truth()
            assert h.connector.counters("BTC/USDT").resyncs == 1
            assert h.connector.counters("ETH/USDT").resyncs == 0

    run(scenario())


def test_subscribe_by_message_on_raw_ws(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, subscribe_by_message=True) as h:
            await wait_until(lambda: all(feed.state == SyncState.LIVE for feed in h.connector.feeds.values()))
            await h.paused_and_caught_up()
            h.assert_books_equal_truth()
            assert h.connector.connection_counters[0].subscribe_acks == 1

    run(scenario())


def test_disconnect_clears_then_reconnects_and_resyncs(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(lambda: all(feed.state == SyncState.LIVE for feed in h.connector.feeds.values()))
            await h.server.disconnect()
            await wait_until(lambda: h.server.connections_accepted == 2)
            assert reasons_of_clears(h.sink, 2) == [Reason.DISCONNECTED]
            await wait_until(lambda: all(h.connector.counters(symbol).snapshots == 2 for symbol in SYMBOL_IDS))
            await h.paused_and_caught_up()
            h.assert_books_equal_truth()

    run(scenario())


def test_snapshot_failures_and_429_are_retried_after_retry_after(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, start_runtime=False) as h, aiohttp.ClientSession() as http:
            h.server.faults.fail_snapshots(1)
            h.server.faults.rate_limit_snapshots(1, retry_after_s=1)
            runtime = RuntimeStandIn(h.connector, http)
            await runtime.start()
            try:
                await wait_until(lambda: all(feed.state == SyncState.LIVE for feed in h.connector.feeds.values()))
                await h.paused_and_caught_up()
                h.assert_books_equal_truth()
            finally:
                await runtime.stop()
            depth_requests = [(at, path) for at, path in h.server.http_requests if path.startswith("/api/v3/depth")]
            assert len(depth_requests) == len(SYMBOL_IDS) + 2
            rate_limited_at = depth_requests[1][0]
            assert all(at >= rate_limited_at + 1.0 for at, _ in depth_requests[len(SYMBOL_IDS) :])
            assert sum(h.connector.counters(symbol).snapshot_failures for symbol in SYMBOL_IDS) == 2

    run(scenario())


def test_stall_then_resume_is_a_gap_that_resyncs(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(lambda: all(feed.state == SyncState.LIVE for feed in h.connector.feeds.values()))
            h.server.faults.stall()
            await asyncio.sleep(0.05)
            frames = h.connector.connection_counters[0].frames
            steps = h.market.step_number
            await wait_until(lambda: h.market.step_number >= steps + 10)
            assert h.connector.connection_counters[0].frames == frames  # connected, but silent
            h.server.faults.resume()
            await wait_until(lambda: all(h.connector.counters(symbol).gaps == 1 for symbol in SYMBOL_IDS))
            await h.paused_and_caught_up()
            h.assert_books_equal_truth()

    run(scenario())


def test_malformed_frame_is_counted_and_harmless(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(lambda: all(feed.state == SyncState.LIVE for feed in h.connector.feeds.values()))
            h.server.faults.send_malformed()
            await wait_until(lambda: h.connector.connection_counters[0].malformed_frames == 1)
            await h.paused_and_caught_up()
            h.assert_books_equal_truth()
            assert all(h.connector.counters(symbol).resyncs == 0 for symbol in SYMBOL_IDS)

    run(scenario())


# ---- the simulator's Binance wire format -----------------------------------------------------


def test_rest_answers_in_binance_format(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, start_runtime=False) as h, aiohttp.ClientSession() as http:
            base = h.server.http_url
            async with http.get(f"{base}/api/v3/exchangeInfo") as response:
                instruments = {i.canonical: i for i in h.connector.parse_instruments(await response.read())}
            assert (instruments["BTC/USDT"].native, instruments["BTC/USDT"].tick_size) == ("BTCUSDT", 0.5)
            assert (instruments["NKN/USDT"].tick_size, instruments["NKN/USDT"].lot_size) == (0.0001, 1.0)
            async with http.get(f"{base}/api/v3/depth?symbol=NKNUSDT&limit=5") as response:
                body = orjson.loads(await response.read())
            book = h.market.book(VENUE, "NKN/USDT")
            assert body["lastUpdateId"] == book.last_update_id and len(body["bids"]) == 5
            assert body["bids"][0] == [f"0.{max(book.bids):04d}0000", f"{book.bids[max(book.bids)]}.00000000"]
            refused = [("/api/v3/depth?symbol=NOPE", 400), ("/api/v3/depth?symbol=BTCUSDT&limit=0", 400), ("/x", 404)]
            for path, status in refused:
                async with http.get(base + path) as response:
                    assert response.status == status, path

    run(scenario())


def test_websocket_streams_subscriptions_and_refusals(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, start_runtime=False) as h:
            h.simulator.pause()
            async with connect(f"{h.server.ws_url}/ws", proxy=None) as websocket:
                await websocket.send('{"method":"SUBSCRIBE","params":["nknusdt@depth@100ms"],"id":7}')
                assert orjson.loads(await websocket.recv()) == {"result": None, "id": 7}
                await websocket.send('{"method":"SUBSCRIBE","params":["nope@depth"],"id":8}')
                assert orjson.loads(await websocket.recv())["code"] == 2
                await websocket.send('{"method":"LIST_SUBSCRIPTIONS","id":9}')
                assert orjson.loads(await websocket.recv()) == {"result": ["nknusdt@depth@100ms"], "id": 9}
                await wait_until(lambda: h.server.session_count == 1)
                changes = []
                while not changes:  # a quiet step may leave NKN/USDT untouched
                    changes = [c for c in (await h.simulator.step()).book_changes if c.symbol == "NKN/USDT"]
                (change,) = changes
                event = orjson.loads(await websocket.recv())  # raw on /ws: no combined wrapper
                assert (event["e"], event["s"], event["U"], event["u"]) == (
                    "depthUpdate",
                    "NKNUSDT",
                    change.first_update_id,
                    change.last_update_id,
                )
            combined = f"{h.server.ws_url}/stream?streams=btcusdt@aggTrade/btcusdt@depth"
            async with connect(combined, proxy=None) as websocket:
                await wait_until(lambda: h.server.session_count == 1)
                while not any(change.symbol == "BTC/USDT" for change in (await h.simulator.step()).book_changes):
                    pass
                frame = orjson.loads(await websocket.recv())
                assert frame["stream"] in ("btcusdt@aggTrade", "btcusdt@depth") and frame["data"]["s"] == "BTCUSDT"
            with pytest.raises(InvalidStatus):
                async with connect(f"{h.server.ws_url}/stream?streams=nope@depth", proxy=None):
                    pass

    run(scenario())
