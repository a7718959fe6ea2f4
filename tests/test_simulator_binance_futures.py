"""The Binance USD-M futures module against its own simulator side, over real sockets on
127.0.0.1: books equal the simulator's truth level by level, a gap resyncs to it again,
and streams arrive only on their 2026 route."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import connect

from actors.connectors.binance_futures import (
    BinanceFuturesConnector,
    BinanceFuturesSimulatedVenue,
)
from shm.records import Reason
from sim.market import Market, SymbolSpec, VenueSpec
from sim.venue import HttpReply
from tests.venue_harness import reasons_of_clears, run, running, wait_until

VENUE = "binance_futures"
SYMBOL_IDS = {"BTC/USDT:PERP": 1, "ETH/USDT:PERP": 2}
SPECS = [
    SymbolSpec("BTC/USDT:PERP", price="30000.0", tick_size="0.1", lot_size="0.001", order_size="0.05"),
    SymbolSpec(
        "ETH/USDT:PERP", price="2000.00", tick_size="0.01", lot_size="0.001", order_size="0.5", volatility=0.0002
    ),
    SymbolSpec("BTC/USDT", price="30000.00", tick_size="0.50", lot_size="0.00001"),  # spot: not a futures symbol
]


def synced_id(feed) -> int:
    """A book in sync stands at the venue's latest id, or at a snapshot no event followed
    yet, which names the next id."""
    return feed.last_id - (not feed.bridged)


def harness(sink_factory, seed: int = 4, start_runtime: bool = True, **options):
    market = Market(SPECS, [VenueSpec(VENUE)], seed=seed)
    sink = sink_factory()

    def connector(server) -> BinanceFuturesConnector:
        connector = BinanceFuturesConnector(
            sink,
            2,
            SYMBOL_IDS,
            rest_base_url=server.http_url,
            ws_base_url=server.ws_url,
            book_ticker_cross_check=True,
            **options,
        )
        connector.snapshot_retry_initial_s = 0.05
        return connector

    venue = BinanceFuturesSimulatedVenue(market)
    return running(market, venue, connector, sink, SYMBOL_IDS, start_runtime=start_runtime, synced_id=synced_id)

def test_books_equal_the_simulators_truth_with_trades_on_the_market_route(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(h.all_live)
            plan = h.connector.connection_plan()
            assert [spec.url.split("?")[0].removeprefix(h.server.ws_url) for spec in plan] == [
                "/public/stream",
                "/market/stream",
            ]
            steps = h.market.step_number
            await wait_until(lambda: h.market.step_number >= steps + 30)
            await h.paused_and_caught_up()
            h.assert_books_equal_truth()
            counters = [h.connector.counters(symbol) for symbol in SYMBOL_IDS]
            assert sum(c.frames_applied for c in counters) >= 30 and sum(c.trades for c in counters) > 0
            assert sum(c.cross_checks for c in counters) > 0
            assert sum(c.gaps + c.cross_check_mismatches + c.parse_errors + c.crossed for c in counters) == 0
            assert h.connector.connection_counters[1].frames > 0  # the trades came on their own connection

    run(scenario())


def test_injected_gap_clears_resyncs_and_converges_again(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(h.all_live)
            h.server.faults.drop_updates("ETH/USDT:PERP")
            await wait_until(lambda: h.connector.counters("ETH/USDT:PERP").gaps == 1)
            assert reasons_of_clears(h.sink, 2) == [Reason.SEQUENCE_GAP]
            await wait_until(lambda: h.connector.counters("ETH/USDT:PERP").snapshots == 2)
            await h.paused_and_caught_up()
            h.assert_books_equal_truth()
            assert h.connector.counters("BTC/USDT:PERP").resyncs == 0

    run(scenario())


def test_subscribe_by_message_on_both_routes(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, subscribe_by_message=True) as h:
            assert [spec.url.removeprefix(h.server.ws_url) for spec in h.connector.connection_plan()] == [
                "/public/ws",
                "/market/ws",
            ]
            await wait_until(h.all_live)
            await wait_until(lambda: sum(h.connector.counters(symbol).trades for symbol in SYMBOL_IDS) > 0)
            await h.paused_and_caught_up()
            h.assert_books_equal_truth()
            assert [counters.subscribe_acks for counters in h.connector.connection_counters] == [1, 1]

    run(scenario())


def test_rest_lists_only_perpetuals_and_checks_the_limit(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, start_runtime=False) as h, aiohttp.ClientSession() as http:
            base = h.server.http_url
            async with http.get(f"{base}/fapi/v1/exchangeInfo") as response:
                instruments = h.connector.parse_instruments(await response.read())
            assert sorted(i.canonical for i in instruments) == ["BTC/USDT:PERP", "ETH/USDT:PERP"]
            assert {i.native for i in instruments} == {"BTCUSDT", "ETHUSDT"}
            async with http.get(f"{base}/fapi/v1/depth?symbol=ETHUSDT&limit=5") as response:
                body = orjson.loads(await response.read())
            book = h.market.book(VENUE, "ETH/USDT:PERP")
            assert body["lastUpdateId"] == book.last_update_id + 1 and len(body["bids"]) == 5 and "T" in body
            tick = max(book.bids)
            assert body["bids"][0] == [f"{tick // 100}.{tick % 100:02d}", f"{book.bids[tick] / 1000:.3f}"]
            for path, status in [("/fapi/v1/depth?symbol=ETHUSDT&limit=7", 400), ("/api/v3/depth", 404)]:
                async with http.get(base + path) as response:
                    assert response.status == status, path

    run(scenario())


def test_a_stream_is_delivered_only_on_its_route(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, start_runtime=False) as h:
            h.simulator.pause()
            streams = "btcusdt@aggTrade/btcusdt@depth@100ms"
            async with connect(f"{h.server.ws_url}/public/stream?streams={streams}", proxy=None) as public:
                await wait_until(lambda: h.server.session_count == 1)
                while not (await h.simulator.step()).trades:
                    pass
                step = await h.simulator.step()
                while not any(change.symbol == "BTC/USDT:PERP" for change in step.book_changes):
                    step = await h.simulator.step()
                await public.close()
                received = [orjson.loads(frame)["stream"] async for frame in public]
            assert received and set(received) == {"btcusdt@depth@100ms"}
            frame = None
            async with connect(f"{h.server.ws_url}/market/ws/btcusdt@aggTrade", proxy=None) as market_route:
                await wait_until(lambda: h.server.session_count == 1)
                while not any(trade.symbol == "BTC/USDT:PERP" for trade in (await h.simulator.step()).trades):
                    pass
                frame = orjson.loads(await market_route.recv())
            assert (frame["e"], frame["s"]) == ("aggTrade", "BTCUSDT")

    run(scenario())


@pytest.mark.parametrize("path", ["/private/stream?streams=btcusdt@depth", "/public/stream?streams=btcusdt@kline_1m"])
def test_unknown_routes_and_streams_are_refused(path: str) -> None:
    venue = BinanceFuturesSimulatedVenue(Market(SPECS, [VenueSpec(VENUE)]))
    assert isinstance(venue.open_session(path), HttpReply)
    assert not isinstance(venue.open_session("/stream?streams=btcusdt@depth"), HttpReply)  # unrouted: public
