"""The KuCoin connector against its simulator side over real sockets on 127.0.0.1.

The stand-in runtime does what actors/connector.py must add for KuCoin: the
``pre_connect`` token request and
``resolve_connection`` before every connect; it subscribes on open (``await_welcome=False``)
rather than after the simulator's welcome greeting."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from actors.connectors.base import ConnectionAction, SyncState
from actors.connectors.kucoin import KucoinConnector, KucoinSimulatedVenue
from shm.records import Kind, Reason
from sim.market import default_market
from sim.server import Simulator

VENUE = "kucoin"
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT": 2, "NKN/USDT": 3}


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        await asyncio.sleep(0.005)


async def keep_connected(
    connector: KucoinConnector, index: int, http: aiohttp.ClientSession
) -> None:
    while True:
        spec = connector.connection_plan()[index]
        async with http.get(spec.pre_connect.url) as response:
            spec = connector.resolve_connection(
                index, await response.read(), time.time_ns()
            )
        with contextlib.suppress(ConnectionClosed, OSError):
            async with connect(spec.url, proxy=None, compression=None) as websocket:
                for message in connector.on_open(index, time.time_ns()):
                    await websocket.send(message)
                async for frame in websocket:
                    action = connector.on_message(index, frame, time.time_ns())
                    if action == ConnectionAction.SEND:
                        for message in connector.outgoing_messages(time.monotonic_ns()):
                            await websocket.send(message.text)
                    elif action == ConnectionAction.RECONNECT:
                        break
        connector.on_close(index, time.time_ns())
        await asyncio.sleep(0.02)


async def timer(
    connector: KucoinConnector, http: aiohttp.ClientSession, tasks: list
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


@contextlib.asynccontextmanager
async def running(sink) -> AsyncIterator[tuple[Simulator, object, KucoinConnector]]:
    market = default_market((VENUE,), seed=4)
    simulator = Simulator(market, cadence_s=0.01)
    venue = KucoinSimulatedVenue(market, VENUE)
    server = simulator.add_venue(venue)
    async with simulator, aiohttp.ClientSession() as http:
        connector = KucoinConnector(
            sink,
            1,
            SYMBOL_IDS,
            rest_base_url=server.http_url,
            ticker_cross_check=True,
            await_welcome=False,
        )
        async with http.get(connector.instruments_url) as response:
            connector.load_instruments(await response.read())
        tasks: list[asyncio.Task] = [
            asyncio.create_task(keep_connected(connector, 0, http))
        ]
        tasks.append(asyncio.create_task(timer(connector, http, tasks)))
        try:
            yield simulator, server, connector
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def all_live(connector: KucoinConnector) -> bool:
    return all(feed.state == SyncState.LIVE for feed in connector.feeds.values())


async def caught_up_and_equal(
    simulator: Simulator, connector: KucoinConnector, sink
) -> None:
    simulator.pause()
    market = simulator.market
    await wait_until(
        lambda: all(
            feed.state == SyncState.LIVE
            and feed.last_id
            == market.book(VENUE, feed.instrument.canonical).last_update_id
            for feed in connector.feeds.values()
        )
    )
    books = sink.books()
    for symbol, symbol_id in SYMBOL_IDS.items():
        truth_bids, truth_asks = market.truth(
            VENUE, symbol
        )  # the simulator's books are < 100 deep
        assert connector.book(symbol).bid_levels() == truth_bids, symbol
        assert connector.book(symbol).ask_levels() == truth_asks, symbol
        assert books[symbol_id] == (dict(truth_bids), dict(truth_asks)), symbol


def test_books_equal_the_simulators_truth_and_a_gap_resyncs(sink_factory) -> None:
    async def scenario() -> None:
        sink = sink_factory()
        async with running(sink) as (simulator, server, connector):
            await wait_until(lambda: all_live(connector))
            steps = simulator.market.step_number
            await wait_until(lambda: simulator.market.step_number >= steps + 20)
            server.faults.drop_updates("BTC/USDT")
            await wait_until(lambda: connector.counters("BTC/USDT").gaps == 1)
            clears = sink.of_kind(Kind.CLEAR)
            assert clears[clears["symbol_id"] == 1]["reason"].tolist() == [
                Reason.SEQUENCE_GAP
            ]
            await wait_until(lambda: connector.counters("BTC/USDT").snapshots == 2)
            await caught_up_and_equal(simulator, connector, sink)
            counters = [connector.counters(symbol) for symbol in SYMBOL_IDS]
            assert (
                sum(c.trades for c in counters) > 0
                and sum(c.cross_checks for c in counters) > 0
            )
            assert (
                sum(
                    c.cross_check_mismatches + c.parse_errors + c.crossed
                    for c in counters
                )
                == 0
            )
            assert connector.counters("ETH/USDT").resyncs == 0

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_simulator_answers_bullet_ping_and_unknown_topics(sink_factory) -> None:
    async def scenario() -> None:
        market = default_market((VENUE,), seed=1)
        simulator = Simulator(market, cadence_s=None)
        venue = KucoinSimulatedVenue(market, VENUE)
        server = simulator.add_venue(venue)
        async with simulator, aiohttp.ClientSession() as http:
            async with http.get(f"{server.http_url}/api/v1/bullet-public") as response:
                bullet = orjson.loads(await response.read())["data"]
            url = f"{bullet['instanceServers'][0]['endpoint']}?token={bullet['token']}&connectId=x"
            async with connect(url, proxy=None) as websocket:
                assert orjson.loads(await websocket.recv()) == {"id": "x", "type": "welcome"}
                await websocket.send('{"id":"9","type":"ping"}')
                assert orjson.loads(await websocket.recv()) == {
                    "id": "9",
                    "type": "pong",
                }
                await websocket.send(
                    '{"id":"3","type":"subscribe","topic":"/market/level2:NOPE-USDT"}'
                )
                assert orjson.loads(await websocket.recv())["code"] == 404

    asyncio.run(asyncio.wait_for(scenario(), 10))
