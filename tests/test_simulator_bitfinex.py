"""The Bitfinex module against its own simulator over real sockets on 127.0.0.1: books equal
the venue's truth level by level at the subscribed len, an injected bad checksum
resubscribes that symbol in place, and an injected SEQ_ALL gap reconnects and converges."""

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
from actors.connectors.bitfinex import BitfinexConnector, BitfinexSimulatedVenue
from shm.records import Kind, Reason
from sim.market import default_market
from sim.server import Simulator, VenueServer

VENUE = "bitfinex"
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT": 2, "NKN/USDT": 3}


class RuntimeStandIn:
    """What actors/connector.py does around a stream-seeded module: a websockets client per
    planned connection, the instruments request, and a timer that sends ``outgoing_messages``."""

    def __init__(self, connector: BitfinexConnector, http: aiohttp.ClientSession) -> None:
        self.connector = connector
        self.http = http
        self.sockets: dict[int, ClientConnection] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        async with self.http.get(self.connector.instruments_url) as response:
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
    venue: BitfinexSimulatedVenue
    connector: BitfinexConnector
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
async def harness(sink_factory, depth: int = 25, seed: int = 7) -> AsyncIterator[Harness]:
    market = default_market((VENUE,), seed=seed)
    simulator = Simulator(market, cadence_s=0.01)
    venue = BitfinexSimulatedVenue(market, VENUE)
    server = simulator.add_venue(venue)
    sink = sink_factory()
    async with simulator, aiohttp.ClientSession() as http:
        connector = BitfinexConnector(
            sink, 3, SYMBOL_IDS, ws_base_url=f"{server.ws_url}/ws/2", rest_base_url=server.http_url,
            snapshot_limit=depth,
        )
        runtime = RuntimeStandIn(connector, http)
        await runtime.start()
        try:
            yield Harness(simulator, server, venue, connector, sink, depth)
        finally:
            await runtime.stop()


def run(scenario, timeout: float = 20.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


def test_books_equal_the_simulators_truth_level_by_level(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, depth=25) as h:
            await wait_until(h.all_live)
            steps = h.simulator.market.step_number
            await wait_until(lambda: h.simulator.market.step_number >= steps + 40)
            await h.settled()
            h.assert_records_equal_truth()
            counters = [h.connector.counters(symbol) for symbol in SYMBOL_IDS]
            assert sum(c.checksums_ok for c in counters) >= 40
            assert sum(c.trades for c in counters) > 0
            assert sum(c.checksums_failed + c.resyncs + c.parse_errors + c.crossed + c.gaps for c in counters) == 0
            assert all(len(h.connector.book(symbol).bids) == 25 for symbol in SYMBOL_IDS)  # venue has 60
            connection = h.connector.connection_counters[0]
            assert connection.sequence_gaps == connection.malformed_frames == connection.unknown_symbol_frames == 0

    run(scenario())


def test_bad_checksum_resubscribes_that_symbol_and_converges(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(h.all_live)
            h.venue.corrupt_checksums("ETH/USDT")
            await wait_until(lambda: h.connector.counters("ETH/USDT").checksums_failed == 1)
            await wait_until(lambda: h.connector.counters("ETH/USDT").snapshots == 2)
            await h.settled()
            h.assert_records_equal_truth()
            assert h.connector.counters("ETH/USDT").resubscribes == 1
            assert h.connector.counters("BTC/USDT").resyncs == 0
            assert h.server.connections_accepted == 1  # resubscribed in place, no reconnect
            clears = h.sink.of_kind(Kind.CLEAR)
            assert clears["reason"].tolist() == [Reason.CHECKSUM] and clears["symbol_id"].tolist() == [2]

    run(scenario())


def test_dropped_update_is_caught_by_the_checksum_and_resyncs_to_truth(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(h.all_live)
            # Changes outside the subscribed window cannot be missed (a level entering it is sent
            # whole), so withhold enough of them that one falls inside it.
            h.server.faults.drop_updates("BTC/USDT", 20)
            await wait_until(lambda: h.connector.counters("BTC/USDT").checksums_failed >= 1)
            await wait_until(lambda: h.connector.counters("BTC/USDT").snapshots >= 2)
            await h.settled()
            h.assert_records_equal_truth()
            assert h.connector.counters("ETH/USDT").resyncs == 0

    run(scenario())


def test_sequence_gap_reconnects_and_resyncs_every_book_to_truth(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(h.all_live)
            h.venue.skip_sequence()
            await wait_until(lambda: h.connector.connection_counters[0].sequence_gaps == 1)
            await wait_until(lambda: h.server.connections_accepted == 2)
            await wait_until(lambda: all(h.connector.counters(symbol).snapshots == 2 for symbol in SYMBOL_IDS))
            await h.settled()
            h.assert_records_equal_truth()
            clears = h.sink.of_kind(Kind.CLEAR)
            assert Reason.SEQUENCE_GAP in clears["reason"].tolist()
            assert all(h.connector.counters(symbol).gaps == 1 for symbol in SYMBOL_IDS)
            assert h.connector.connection_counters[0].sequence_gaps == 1  # the new connection's numbering is whole

    run(scenario())
