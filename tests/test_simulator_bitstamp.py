"""The Bitstamp connector against its simulator side over real sockets on 127.0.0.1.

A dropped diff is invisible on Bitstamp (no sequence), so the injected fault here is
the one Bitstamp announces: ``bts:request_reconnect``, after which the books are rebuilt."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aiohttp
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from actors.connectors.base import ConnectionAction, SyncState
from actors.connectors.bitstamp import BitstampConnector, BitstampSimulatedVenue
from sim.market import default_market
from sim.server import Simulator

VENUE = "bitstamp"
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT": 2, "NKN/USDT": 3}


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        await asyncio.sleep(0.005)


async def keep_connected(connector: BitstampConnector, url: str) -> None:
    while True:
        with contextlib.suppress(ConnectionClosed, OSError):
            async with connect(url, proxy=None, compression=None) as websocket:
                for message in connector.on_open(0, time.time_ns()):
                    await websocket.send(message)
                async for frame in websocket:
                    if (
                        connector.on_message(0, frame, time.time_ns())
                        == ConnectionAction.RECONNECT
                    ):
                        break
        connector.on_close(0, time.time_ns())
        await asyncio.sleep(0.02)


async def timer(
    connector: BitstampConnector, http: aiohttp.ClientSession, tasks: list
) -> None:
    async def fetch(native: str, url: str) -> None:
        async with http.get(url) as response:
            body = await response.read()
        if response.status == 200:
            connector.on_snapshot(native, body, time.time_ns())
        else:
            connector.on_snapshot_failed(native, time.monotonic_ns())

    while True:
        for request in connector.snapshot_requests(time.monotonic_ns()):
            tasks.append(asyncio.create_task(fetch(request.native_symbol, request.url)))
        connector.flush(time.time_ns())
        await asyncio.sleep(0.005)


def test_books_equal_the_truth_and_rebuild_after_request_reconnect(
    sink_factory,
) -> None:
    async def scenario() -> None:
        market = default_market((VENUE,), seed=6)
        simulator = Simulator(market, cadence_s=0.01)
        server = simulator.add_venue(BitstampSimulatedVenue(market, VENUE))
        sink = sink_factory()
        async with simulator, aiohttp.ClientSession() as http:
            connector = BitstampConnector(
                sink, 1, SYMBOL_IDS, rest_base_url=server.http_url, ws_url=server.ws_url
            )
            async with http.get(connector.instruments_url) as response:
                connector.load_instruments(await response.read())
            tasks: list[asyncio.Task] = [
                asyncio.create_task(keep_connected(connector, server.ws_url))
            ]
            tasks.append(asyncio.create_task(timer(connector, http, tasks)))
            try:
                await wait_until(
                    lambda: all(
                        f.state == SyncState.LIVE for f in connector.feeds.values()
                    )
                )
                steps = market.step_number
                await wait_until(lambda: market.step_number >= steps + 20)
                server.faults.send_malformed(
                    '{"event":"bts:request_reconnect","channel":"","data":""}'
                )
                await wait_until(lambda: server.connections_accepted == 2)
                await wait_until(
                    lambda: all(
                        connector.counters(s).snapshots == 2 for s in SYMBOL_IDS
                    )
                )
                steps = market.step_number
                await wait_until(lambda: market.step_number >= steps + 10)
                simulator.pause()
                await wait_until(  # the last step's frames arrive
                    lambda: all(
                        connector.book(symbol).bid_levels()
                        == market.truth(VENUE, symbol)[0]
                        for symbol in SYMBOL_IDS
                    )
                )
                books = sink.books()
                for symbol, symbol_id in SYMBOL_IDS.items():
                    truth_bids, truth_asks = market.truth(VENUE, symbol)
                    assert connector.book(symbol).bid_levels() == truth_bids, symbol
                    assert connector.book(symbol).ask_levels() == truth_asks, symbol
                    assert books[symbol_id] == (dict(truth_bids), dict(truth_asks)), (
                        symbol
                    )
                counters = [connector.counters(symbol) for symbol in SYMBOL_IDS]
                assert (
                    sum(c.frames_applied for c in counters) > 20
                    and sum(c.trades for c in counters) > 0
                )
                assert sum(c.gaps + c.crossed + c.parse_errors for c in counters) == 0
                assert connector.connection_counters[0].server_shutdowns == 1
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(asyncio.wait_for(scenario(), 20))
