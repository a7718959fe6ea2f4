"""The simulator's servers: real WebSocket and HTTP servers on 127.0.0.1, one pair per venue.

Everything runs in the caller's asyncio event loop::

    simulator = Simulator(market, cadence_s=0.1)
    binance = simulator.add_venue(BinanceSpotSimulatedVenue(market, "binance"))
    await simulator.start()          # binds; binance.ws_url / binance.http_url are now known
    binance.faults.drop_updates("BTC/USDT")
    await simulator.stop()

The clock advances the market every ``cadence_s`` and sends each venue's frames to its
connected clients; with ``cadence_s=None`` nothing moves until a test awaits
:meth:`Simulator.step`, which makes a test fully deterministic. Faults are
venue-independent and switched on through :class:`VenueFaults`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable

from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from sim.market import Market, MarketStep
from sim.venue import HttpReply, SimulatedVenue, VenueSession


class VenueFaults:
    """Faults a test (or the demo script) switches on; each is used up as it fires."""

    def __init__(self) -> None:
        self._dropped_updates: dict[str, int] = {}
        self._snapshot_failures: list[HttpReply] = []
        self._malformed_frames: list[str] = []
        self.stalled = False

    def drop_updates(self, symbol: str, count: int = 1) -> None:
        """Sequence gap: the next ``count`` book updates of ``symbol`` are never sent."""
        self._dropped_updates[symbol] = self._dropped_updates.get(symbol, 0) + count

    def fail_snapshots(self, count: int = 1, status: int = 500) -> None:
        """The next ``count`` snapshot requests fail with ``status``."""
        body = '{"code":-1000,"msg":"simulated failure"}'
        self._snapshot_failures.extend([HttpReply(status, body)] * count)

    def rate_limit_snapshots(self, count: int = 1, retry_after_s: int = 1) -> None:
        """The next ``count`` snapshot requests get HTTP 429 with ``Retry-After``."""
        body = '{"code":-1003,"msg":"Too many requests."}'
        reply = HttpReply(429, body, {"Retry-After": str(retry_after_s)})
        self._snapshot_failures.extend([reply] * count)

    def send_malformed(self, text: str = '{"stream":"broken') -> None:
        """Every client gets ``text`` as a frame before the next step's frames."""
        self._malformed_frames.append(text)

    def stall(self) -> None:
        """Stay connected but send nothing (the market keeps moving) until :meth:`resume`."""
        self.stalled = True

    def resume(self) -> None:
        self.stalled = False

    def take_dropped_update(self, symbol: str) -> bool:
        remaining = self._dropped_updates.get(symbol, 0)
        if remaining:
            self._dropped_updates[symbol] = remaining - 1
        return bool(remaining)

    def take_snapshot_failure(self) -> HttpReply | None:
        return self._snapshot_failures.pop(0) if self._snapshot_failures else None

    def take_malformed_frames(self) -> list[str]:
        frames, self._malformed_frames = self._malformed_frames, []
        return frames


class VenueServer:
    """One venue's WebSocket server and HTTP server, and its connected sessions."""

    def __init__(self, venue: SimulatedVenue, host: str = "127.0.0.1", ws_port: int = 0, http_port: int = 0) -> None:
        self.venue = venue
        self.host = host
        self.ws_port = ws_port
        self.http_port = http_port
        self.faults = VenueFaults()
        # (loop time, path and query) of the latest requests, for tests and diagnostics
        self.http_requests: deque[tuple[float, str]] = deque(maxlen=10_000)
        self.connections_accepted = 0
        self._sessions: dict[ServerConnection, VenueSession] = {}
        self._opening: dict[ServerConnection, VenueSession] = {}
        self._ws_server: Server | None = None
        self._http_runner: web.AppRunner | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        self._ws_server = await serve(
            self._serve_session, self.host, self.ws_port, process_request=self._open_session, compression=None
        )
        self.ws_port = self._ws_server.sockets[0].getsockname()[1]
        app = web.Application()
        app.router.add_route("GET", "/{path:.*}", self._serve_http)
        app.router.add_route("POST", "/{path:.*}", self._serve_http)
        self._http_runner = web.AppRunner(app, access_log=None)
        await self._http_runner.setup()
        site = web.TCPSite(self._http_runner, self.host, self.http_port)
        await site.start()
        self.http_port = self._http_runner.addresses[0][1]
        self.venue.bound(self.ws_url, self.http_url)

    async def stop(self) -> None:
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
            self._ws_server = None
        if self._http_runner is not None:
            await self._http_runner.cleanup()
            self._http_runner = None

    async def disconnect(self, code: int = 1000, reason: str = "") -> None:
        """Close every client connection cleanly (clients may reconnect)."""
        await asyncio.gather(*(connection.close(code, reason) for connection in list(self._sessions)))

    async def broadcast(self, step: MarketStep) -> None:
        """Send this venue's part of ``step`` to every session, minus injected faults."""
        venue = self.venue.venue
        faults = self.faults
        changes = tuple(
            change
            for change in step.book_changes
            if change.venue == venue and not faults.take_dropped_update(change.symbol)
        )
        trades = tuple(trade for trade in step.trades if trade.venue == venue)
        encoded = self.venue.encode_step(MarketStep(step.number, step.timestamp_ns, changes, trades))
        malformed = faults.take_malformed_frames()
        if faults.stalled:
            return
        for connection, session in list(self._sessions.items()):
            await _send_all(connection, malformed + session.frames(encoded))

    def _open_session(self, connection: ServerConnection, request: Request) -> Response | None:
        opened = self.venue.open_session(request.path)
        if isinstance(opened, HttpReply):
            return connection.respond(opened.status, opened.body)
        self._opening[connection] = opened
        return None

    async def _serve_session(self, connection: ServerConnection) -> None:
        session = self._opening.pop(connection)
        self._sessions[connection] = session
        self.connections_accepted += 1
        try:
            await _send_all(connection, session.greeting())
            async for message in connection:
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                await _send_all(connection, session.on_client_message(text))
        except ConnectionClosed:
            pass
        finally:
            del self._sessions[connection]

    async def _serve_http(self, request: web.Request) -> web.Response:
        self.http_requests.append((asyncio.get_running_loop().time(), request.path_qs))
        reply = None
        if self.venue.is_snapshot_request(request.path):
            reply = self.faults.take_snapshot_failure()
        if reply is None:
            reply = self.venue.http(request.path, request.query)
        return web.Response(
            status=reply.status, text=reply.body, content_type="application/json", headers=reply.headers
        )


async def _send_all(connection: ServerConnection, frames: Iterable[str | bytes]) -> None:
    try:
        for frame in frames:
            await connection.send(frame)
    except ConnectionClosed:
        pass


class Simulator:
    """The market clock plus every venue's servers, in one event loop."""

    def __init__(self, market: Market, cadence_s: float | None = 0.1, step_s: float = 0.1) -> None:
        """``cadence_s``: wall-clock seconds between steps (None: only manual steps);
        ``step_s``: market seconds per step (the cadence unless given)."""
        self.market = market
        self.cadence_s = cadence_s
        self.step_s = cadence_s if cadence_s is not None else step_s
        self.venue_servers: list[VenueServer] = []
        self.paused = False
        self._clock: asyncio.Task[None] | None = None
        self._step_lock = asyncio.Lock()

    def add_venue(
        self, venue: SimulatedVenue, ws_port: int = 0, http_port: int = 0, host: str = "127.0.0.1"
    ) -> VenueServer:
        server = VenueServer(venue, host, ws_port, http_port)
        self.venue_servers.append(server)
        return server

    async def start(self) -> None:
        for server in self.venue_servers:
            await server.start()
        if self.cadence_s is not None:
            self._clock = asyncio.create_task(self._run_clock(self.cadence_s), name="simulator-clock")

    async def stop(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            try:
                await self._clock
            except asyncio.CancelledError:
                pass
            self._clock = None
        for server in self.venue_servers:
            await server.stop()

    async def __aenter__(self) -> "Simulator":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def pause(self) -> None:
        """Stop the clock's steps (manual :meth:`step` still works)."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    async def step(self) -> MarketStep:
        """Advance the market one step and send every venue's frames."""
        async with self._step_lock:
            step = self.market.step(self.step_s, time.time_ns())
            for server in self.venue_servers:
                await server.broadcast(step)
            return step

    async def _run_clock(self, cadence_s: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at = max(next_at + cadence_s, loop.time())
            await asyncio.sleep(next_at - loop.time())
            if not self.paused:
                await self.step()
