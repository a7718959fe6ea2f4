"""The Bybit module against its own simulator over real sockets on 127.0.0.1: three
category connections (spot, linear, inverse) on one server, books equal the venue's truth
level by level at the subscribed depth, pings are answered, and an injected ``u`` gap or a
disconnect clears the book and converges to the truth again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from actors.connectors.base import ConnectionAction, SyncState
from actors.connectors.bybit import BybitConnector, BybitSimulatedVenue
from shm.records import Kind, Reason
from sim.market import Market, SymbolSpec, VenueSpec
from sim.server import Simulator, VenueServer

VENUE = "bybit"
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT": 2, "BTC/USDT:PERP": 3, "BTC/USD:PERP": 4}
SYMBOLS = (
    SymbolSpec("BTC/USDT", price="30000.00", tick_size="0.50", lot_size="0.00001", order_size="0.05"),
    SymbolSpec("ETH/USDT", price="2000.00", tick_size="0.05", lot_size="0.0001", order_size="0.5"),
    SymbolSpec("BTC/USDT:PERP", price="30010.0", tick_size="0.10", lot_size="0.001", order_size="0.05"),
    SymbolSpec("BTC/USD:PERP", price="30020.0", tick_size="0.50", lot_size="1", order_size="500"),
)


class RuntimeStandIn:
    """What actors/connector.py does around a stream-seeded module: every instruments URL
    (one per Bybit category), a websockets client per planned connection, and a timer that
    sends ``outgoing_messages`` (resubscriptions and pings)."""

    def __init__(self, connector: BybitConnector, http: aiohttp.ClientSession) -> None:
        self.connector = connector
        self.http = http
        self.sockets: dict[int, ClientConnection] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for url in self.connector.instruments_urls:
            async with self.http.get(url) as response:
                self.connector.load_instruments(await response.read())
        for index, spec in enumerate(self.connector.connection_plan()):
            self._tasks.append(asyncio.create_task(self._connection(index, spec.url)))
        self._tasks.append(asyncio.create_task(self._timer()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, index: int, url: str) -> None:
        while True:
            with contextlib.suppress(ConnectionClosed, OSError):
                async with connect(url, proxy=None, compression=None) as websocket:
                    for message in self.connector.on_open(index, time.time_ns()):
                        await websocket.send(message)
                    self.sockets[index] = websocket
                    async for frame in websocket:
                        if self.connector.on_message(index, frame, time.time_ns()) == ConnectionAction.RECONNECT:
                            break
            self.sockets.pop(index, None)
            self.connector.on_close(index, time.time_ns())
            await asyncio.sleep(0.02)

    async def _timer(self) -> None:
        while True:
            for message in self.connector.outgoing_messages(time.monotonic_ns()):
                socket = self.sockets.get(message.connection)
                if socket is not None:
                    with contextlib.suppress(ConnectionClosed):
                        await socket.send(message.text)
            self.connector.flush(time.time_ns())
            await asyncio.sleep(0.005)


@dataclass
class Harness:
    simulator: Simulator
    server: VenueServer
    connector: BybitConnector
    sink: object
    depth: int

    def all_live(self) -> bool:
        return all(feed.state == SyncState.LIVE for feed in self.connector.feeds.values())

    def equals_truth(self) -> bool:
        market = self.simulator.market
        for symbol in SYMBOL_IDS:
            bids, asks = market.truth(VENUE, symbol, self.depth)
            book = self.connector.book(symbol)
            if book.bid_levels() != bids or book.ask_levels() != asks:
                return False
        return True

    async def settled(self) -> None:
        """Pause the market, then wait until every book is live and equals the truth."""
        self.simulator.pause()
        await wait_until(lambda: self.all_live() and self.equals_truth())

    def assert_records_equal_truth(self) -> None:
        books = self.sink.books()
        for symbol, symbol_id in SYMBOL_IDS.items():
            bids, asks = self.simulator.market.truth(VENUE, symbol, self.depth)
            assert books[symbol_id] == (dict(bids), dict(asks)), symbol


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def harness(sink_factory, depth: int = 50, seed: int = 5) -> AsyncIterator[Harness]:
    market = Market(SYMBOLS, [VenueSpec(VENUE)], seed=seed)
    simulator = Simulator(market, cadence_s=0.01)
    server = simulator.add_venue(BybitSimulatedVenue(market, VENUE))
    sink = sink_factory()
    async with simulator, aiohttp.ClientSession() as http:
        connector = BybitConnector(
            sink, 5, SYMBOL_IDS, ws_base_url=f"{server.ws_url}/v5/public", rest_base_url=server.http_url,
            snapshot_limit=depth,
        )
        connector.application_ping_interval_s = 0.05  # Bybit wants 20 s; a test cannot wait that long
        runtime = RuntimeStandIn(connector, http)
        await runtime.start()
        try:
            yield Harness(simulator, server, connector, sink, depth)
        finally:
            await runtime.stop()


def run(scenario, timeout: float = 20.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


def test_books_equal_the_simulators_truth_level_by_level(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, depth=50) as h:
            assert [spec.url.rsplit("/", 1)[1] for spec in h.connector.connection_plan()] == [
                "spot", "linear", "inverse"]
            await wait_until(h.all_live)
            steps = h.simulator.market.step_number
            await wait_until(lambda: h.simulator.market.step_number >= steps + 40)
            await h.settled()
            h.assert_records_equal_truth()
            counters = [h.connector.counters(symbol) for symbol in SYMBOL_IDS]
            assert all(c.frames_applied >= 10 for c in counters)
            assert sum(c.trades for c in counters) > 0
            assert sum(c.gaps + c.resyncs + c.parse_errors + c.crossed for c in counters) == 0
            assert all(len(h.connector.book(symbol).bids) == 50 for symbol in SYMBOL_IDS)  # truncated: venue has 60
            connections = h.connector.connection_counters
            assert all(c.subscribe_acks >= 1 and c.ignored_frames >= 1 for c in connections)  # acks and pongs
            assert sum(c.malformed_frames + c.unknown_symbol_frames + c.subscribe_errors for c in connections) == 0

    run(scenario())


def test_injected_gap_resubscribes_that_symbol_and_converges(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, depth=50) as h:
            await wait_until(h.all_live)
            h.server.faults.drop_updates("BTC/USDT:PERP")
            await wait_until(lambda: h.connector.counters("BTC/USDT:PERP").gaps >= 1)
            await wait_until(lambda: h.connector.counters("BTC/USDT:PERP").snapshots >= 2)
            await h.settled()
            h.assert_records_equal_truth()
            clears = h.sink.of_kind(Kind.CLEAR)
            assert set(clears[clears["symbol_id"] == 3]["reason"].tolist()) == {Reason.SEQUENCE_GAP}
            assert h.connector.counters("BTC/USDT:PERP").resubscribes >= 1
            assert all(h.connector.counters(symbol).resyncs == 0 for symbol in SYMBOL_IDS if symbol != "BTC/USDT:PERP")
            assert h.server.connections_accepted == 3  # resubscribed in place, no reconnect

    run(scenario())


def test_disconnect_clears_every_book_and_resyncs_to_truth(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, depth=200) as h:
            await wait_until(h.all_live)
            await h.server.disconnect()
            await wait_until(lambda: h.server.connections_accepted == 6)
            await wait_until(lambda: all(h.connector.counters(symbol).snapshots >= 2 for symbol in SYMBOL_IDS))
            await h.settled()
            h.assert_records_equal_truth()
            clears = h.sink.of_kind(Kind.CLEAR)
            assert set(clears["symbol_id"].tolist()) == set(SYMBOL_IDS.values())
            assert set(clears["reason"].tolist()) == {Reason.DISCONNECTED}

    run(scenario())
