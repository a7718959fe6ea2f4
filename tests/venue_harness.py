"""The shared stand-in runtime of the simulator tests: a venue's simulator on 127.0.0.1, its
sans-IO connector driven in-process over real sockets, and the checks every venue's test
makes (books live, caught up, equal to ``market.truth`` level by level).

``RuntimeStandIn`` follows the runtime contract of ``actors/connectors/base.py`` (module
docstring) the way ``actors/connector.py`` does, minus staleness, pings and the ring's
resnapshot requests: every URL of ``instruments_urls``; per planned connection
``pre_connect`` + ``resolve_connection`` when the spec has one, ``on_open``, ``on_message``
(``SEND`` polls ``outgoing_messages`` at once, ``RECONNECT`` reconnects) and ``on_close``;
and a timer that answers ``snapshot_requests`` (``on_snapshot`` or ``on_snapshot_failed``
with the Retry-After of a refusal), calls ``flush`` and sends ``outgoing_messages``. The
tests use it rather than the real runtime because they need the connector object in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from actors.connectors.base import ConnectionAction, Connector, SyncState
from shm.records import Kind
from sim.market import Market
from sim.server import Simulator, VenueServer
from sim.venue import SimulatedVenue

RECONNECT_DELAY_S = 0.02
TICK_S = 0.005


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        await asyncio.sleep(0.005)


def run(scenario, timeout: float = 20.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


def reasons_of_clears(sink, symbol_id: int) -> list[int]:
    clears = sink.of_kind(Kind.CLEAR)
    return clears[clears["symbol_id"] == symbol_id]["reason"].tolist()


class RuntimeStandIn:
    """What actors/connector.py does around a connector module (see the module docstring)."""

    def __init__(self, connector: Connector, http: aiohttp.ClientSession) -> None:
        self.connector = connector
        self.http = http
        self.sockets: dict[int, ClientConnection] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for url in self.connector.instruments_urls:
            async with self.http.get(url) as response:
                self.connector.load_instruments(await response.read())
        for index in range(len(self.connector.connection_plan())):
            self._tasks.append(asyncio.create_task(self._connection(index)))
        self._tasks.append(asyncio.create_task(self._timer()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _resolve(self, index: int) -> str | None:
        """The URL to connect with: the plan's, or the one ``pre_connect`` resolves to."""
        spec = self.connector.connection_plan()[index]
        if spec.pre_connect is None:
            return spec.url
        request = spec.pre_connect
        try:
            async with self.http.request(request.method, request.url, data=request.body or None) as response:
                body = await response.read()
            if not 200 <= response.status < 300:
                return None
            return self.connector.resolve_connection(index, body, time.time_ns()).url
        except (aiohttp.ClientError, ValueError):
            return None

    async def _connection(self, index: int) -> None:
        while True:
            url = await self._resolve(index)
            if url is None:
                await asyncio.sleep(RECONNECT_DELAY_S)
                continue
            with contextlib.suppress(ConnectionClosed, OSError):
                # close_timeout as the runtime's: a connection left on RECONNECT stops reading, so
                # the venue's close frame waits behind unread frames until the timeout aborts it.
                async with connect(url, proxy=None, compression=None, close_timeout=1) as websocket:
                    for message in self.connector.on_open(index, time.time_ns()):
                        await websocket.send(message)
                    self.sockets[index] = websocket
                    async for frame in websocket:
                        action = self.connector.on_message(index, frame, time.time_ns())
                        if action == ConnectionAction.RECONNECT:
                            break
                        if action == ConnectionAction.SEND:
                            await self._send_outgoing()
            self.sockets.pop(index, None)
            self.connector.on_close(index, time.time_ns())
            await asyncio.sleep(RECONNECT_DELAY_S)

    async def _send_outgoing(self) -> None:
        for message in self.connector.outgoing_messages(time.monotonic_ns()):
            socket = self.sockets.get(message.connection)
            if socket is not None:  # closed: on_open subscribes everything again
                with contextlib.suppress(ConnectionClosed):
                    await socket.send(message.text)

    async def _timer(self) -> None:
        while True:
            for request in self.connector.snapshot_requests(time.monotonic_ns()):
                self._tasks.append(asyncio.create_task(self._fetch(request.native_symbol, request.url)))
            self.connector.flush(time.time_ns())
            await self._send_outgoing()
            await asyncio.sleep(TICK_S)

    async def _fetch(self, native_symbol: str, url: str) -> None:
        try:
            async with self.http.get(url) as response:
                body = await response.read()
                retry_after = response.headers.get("Retry-After")
        except aiohttp.ClientError:
            self.connector.on_snapshot_failed(native_symbol, time.monotonic_ns())
            return
        if response.status == 200:
            self.connector.on_snapshot(native_symbol, body, time.time_ns())
        else:
            retry_after_s = float(retry_after) if retry_after else None
            self.connector.on_snapshot_failed(native_symbol, time.monotonic_ns(), retry_after_s)


def synced_id(feed) -> int:
    """The venue update id a live book stands at (``feed.last_id`` unless a venue says otherwise)."""
    return feed.last_id


@dataclass
class Harness:
    """A running simulator with one venue and its connector, and the checks against the truth."""

    simulator: Simulator
    server: VenueServer
    connector: Connector
    sink: object
    symbol_ids: Mapping[str, int]
    depth: int | None = None  # the window compared with the truth; None: the whole book
    synced_id: Callable[[object], int] = synced_id

    @property
    def market(self) -> Market:
        return self.simulator.market

    @property
    def venue(self) -> SimulatedVenue:
        return self.server.venue

    @property
    def name(self) -> str:
        return self.server.venue.venue

    def all_live(self) -> bool:
        return all(feed.state == SyncState.LIVE for feed in self.connector.feeds.values())

    def equals_truth(self) -> bool:
        for symbol in self.symbol_ids:
            bids, asks = self.market.truth(self.name, symbol, self.depth)
            book = self.connector.book(symbol)
            if book.bid_levels() != bids or book.ask_levels() != asks:
                return False
        return True

    async def settled(self) -> None:
        """Pause the market, then wait until every book is live and equals the truth."""
        self.simulator.pause()
        await wait_until(lambda: self.all_live() and self.equals_truth())

    def caught_up(self) -> bool:
        """Every book in sync and at the venue's latest update id."""
        return all(
            feed.state == SyncState.LIVE
            and self.synced_id(feed) == self.market.book(self.name, feed.instrument.canonical).last_update_id
            for feed in self.connector.feeds.values()
        )

    async def paused_and_caught_up(self) -> None:
        self.simulator.pause()
        await wait_until(self.caught_up)

    def assert_records_equal_truth(self) -> None:
        """What a consumer rebuilds from the sink equals the truth."""
        books = self.sink.books()
        for symbol, symbol_id in self.symbol_ids.items():
            bids, asks = self.market.truth(self.name, symbol, self.depth)
            assert books[symbol_id] == (dict(bids), dict(asks)), symbol

    def assert_books_equal_truth(self) -> None:
        """The connector's books and what a consumer rebuilds from the sink equal the truth."""
        books = self.sink.books()
        for symbol, symbol_id in self.symbol_ids.items():
            truth_bids, truth_asks = self.market.truth(self.name, symbol, self.depth)
            book = self.connector.book(symbol)
            assert book.bid_levels() == truth_bids, symbol
            assert book.ask_levels() == truth_asks, symbol
            assert books[symbol_id] == (dict(truth_bids), dict(truth_asks)), symbol


@contextlib.asynccontextmanager
async def running(
    market: Market,
    venue: SimulatedVenue,
    make_connector: Callable[[VenueServer], Connector],
    sink,
    symbol_ids: Mapping[str, int],
    *,
    depth: int | None = None,
    start_runtime: bool = True,
    synced_id: Callable[[object], int] = synced_id,
) -> AsyncIterator[Harness]:
    """Serve ``venue`` over ``market`` (a step every 10 ms), build the connector for the bound
    server with ``make_connector`` and, unless ``start_runtime`` is False, run it."""
    simulator = Simulator(market, cadence_s=0.01)
    server = simulator.add_venue(venue)
    async with simulator, aiohttp.ClientSession() as http:
        connector = make_connector(server)
        runtime = RuntimeStandIn(connector, http)
        if start_runtime:
            await runtime.start()
        try:
            yield Harness(simulator, server, connector, sink, symbol_ids, depth, synced_id)
        finally:
            await runtime.stop()
