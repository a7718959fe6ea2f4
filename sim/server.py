"""The simulator's servers: real WebSocket and HTTP servers on 127.0.0.1, one pair per venue.

Everything runs in the caller's asyncio event loop::

    simulator = Simulator(market, cadence_s=0.1)
    binance = simulator.add_venue(BinanceSpotSimulatedVenue(market, "binance"))
    await simulator.start()          # binds; binance.ws_url / binance.http_url are now known
    binance.faults.drop_updates("BTC/USDT")
    await simulator.stop()

The clock advances the market every ``cadence_s`` and sends each venue's frames to its
connected clients; with ``cadence_s=None`` nothing moves until a test awaits
:meth:`Simulator.step`, which makes a test fully deterministic.

Faults are switched on per venue through :class:`VenueFaults` (and, for the connection
itself, :meth:`VenueServer.disconnect` and :meth:`VenueServer.reset_connections`). Each one
is used up as it fires, so a test scripts exactly what goes wrong. The server applies them
the same way to every venue: on the market step (lost, duplicated, reordered updates), on the
encoded frames (a level's value or shape corrupted, a copy under an unknown symbol, see
:mod:`sim.faults`), on the connection (stalls, refused upgrades, rejected subscriptions) and on
REST (failed, rate-limited and banned snapshots); what only the venue can render (a wrong
checksum, a maintenance notice, its subscription error) comes from the venue's hooks in
:class:`sim.venue.SimulatedVenue`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from sim import faults as frame_faults
from sim.market import BookChange, Market, MarketStep
from sim.venue import Frame, HttpReply, SimulatedVenue, VenueSession


@dataclass(slots=True)
class _FrameFault:
    """A change to the next book frame of ``symbol`` that holds one of its changed levels."""

    symbol: str
    kind: str  # a key of sim.faults.BAD_VALUES, "wrong_shape", "unknown_symbol" or "duplicate"


class VenueFaults:
    """Faults a test (or the demo script) switches on; each is used up as it fires."""

    def __init__(self) -> None:
        self._dropped_updates: dict[str, int] = {}
        self._reordered_updates: set[str] = set()
        self._held_updates: dict[str, BookChange] = {}
        self._frame_faults: list[_FrameFault] = []
        self._snapshot_failures: list[HttpReply] = []
        self._malformed_frames: list[Frame] = []
        self._rejected_subscriptions = 0
        self.refused_upgrades: tuple[int, str] | None = None
        self.stalled = False
        self.fired: list[tuple[str, int]] = []  # (what, wall-clock ns) of each fault as it fired

    def drop_updates(self, symbol: str, count: int = 1) -> None:
        """Sequence gap: the next ``count`` book updates of ``symbol`` are never sent."""
        self._dropped_updates[symbol] = self._dropped_updates.get(symbol, 0) + count

    def duplicate_updates(self, symbol: str, count: int = 1) -> None:
        """The next ``count`` book frames of ``symbol`` are sent twice in a row (on the wire:
        venues that render updates from a book window would otherwise merge the copy)."""
        self._frame_faults.extend(_FrameFault(symbol, "duplicate") for _ in range(count))

    def reorder_updates(self, symbol: str) -> None:
        """The next book update of ``symbol`` is held back and sent after the one that follows it."""
        self._reordered_updates.add(symbol)

    def corrupt_level(self, symbol: str, kind: str) -> None:
        """The next book frame of ``symbol`` has one level's value replaced (``kind`` a key of
        :data:`sim.faults.BAD_VALUES`: NaN, negative, zero, absurd prices and sizes) or the level
        replaced by an object of the wrong shape (``kind="wrong_shape"``); the frame is the
        update, so the update is lost with it."""
        if kind != "wrong_shape" and kind not in frame_faults.BAD_VALUES:
            raise ValueError(f"unknown level fault {kind!r}; one of {sorted(frame_faults.BAD_VALUES)} or wrong_shape")
        self._frame_faults.append(_FrameFault(symbol, kind))

    def send_unknown_symbol(self, symbol: str) -> None:
        """Before the next book frame of ``symbol``, a copy of it naming a symbol nobody subscribed."""
        self._frame_faults.append(_FrameFault(symbol, "unknown_symbol"))

    def reject_subscriptions(self, count: int = 1) -> None:
        """The next ``count`` subscribe messages get the venue's own error reply instead of an ack."""
        self._rejected_subscriptions += count

    def refuse_upgrades(self, status: int = 503, body: str = "Service Unavailable") -> None:
        """Refuse every WebSocket upgrade with ``status`` (the venue unreachable, or refusing the
        subscription named in the URL) until :meth:`accept_upgrades`."""
        self.refused_upgrades = (status, body)

    def accept_upgrades(self) -> None:
        self.refused_upgrades = None

    def ban_snapshots(self, count: int = 1, retry_after_s: int = 1) -> None:
        """The next ``count`` snapshot requests get HTTP 418 (IP banned) with ``Retry-After``."""
        body = '{"code":-1003,"msg":"Way too many requests; IP banned."}'
        self._snapshot_failures.extend([HttpReply(418, body, {"Retry-After": str(retry_after_s)})] * count)

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

    def send_frames(self, frames: Iterable[Frame]) -> None:
        """Every client gets ``frames`` (text or binary) before the next step's frames."""
        self._malformed_frames.extend(frames)

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

    def take_malformed_frames(self) -> list[Frame]:
        frames, self._malformed_frames = self._malformed_frames, []
        if frames:
            self.fire("frames")
        return frames

    def fire(self, what: str) -> None:
        """Note that a fault fired now (tests wait on it and time recovery from it)."""
        self.fired.append((what, time.time_ns()))

    def take_subscription_rejection(self) -> bool:
        if not self._rejected_subscriptions:
            return False
        self._rejected_subscriptions -= 1
        return True

    def reshape_changes(self, changes: Iterable[BookChange]) -> list[BookChange]:
        """A step's changes after the lost, duplicated and reordered updates."""
        shaped: list[BookChange] = []
        for change in changes:
            symbol = change.symbol
            if self.take_dropped_update(symbol):
                self.fire(f"drop {symbol}")
                continue
            if symbol in self._reordered_updates:
                self._reordered_updates.discard(symbol)
                self._held_updates[symbol] = change
                continue
            shaped.append(change)
            held = self._held_updates.pop(symbol, None)
            if held is not None:
                shaped.append(held)
                self.fire(f"reorder {symbol}")
        return shaped

    def apply_frame_faults(
        self, venue: SimulatedVenue, changes: Iterable[BookChange], frames: list[Frame]
    ) -> tuple[list[Frame], list[_FrameFault]]:
        """``frames`` (one session's) with every pending frame fault that finds its frame
        applied; returns the faults that fired."""
        pending = self._frame_faults
        if not pending:
            return frames, []
        by_symbol = {change.symbol: change for change in changes}
        fired = []
        for fault in pending:
            change = by_symbol.get(fault.symbol)
            if change is None:
                continue
            for position, frame in enumerate(frames):
                replacement = venue.fault_frames(frame, change, fault.kind)
                if replacement is not None:
                    frames = frames[:position] + replacement + frames[position + 1 :]
                    fired.append(fault)
                    break
        return frames, fired

    def frame_faults_fired(self, fired: Iterable[_FrameFault]) -> None:
        for fault in fired:
            if fault in self._frame_faults:
                self._frame_faults.remove(fault)
                self.fire(f"{fault.kind} {fault.symbol}")


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

    def reset_connections(self) -> int:
        """Drop every client connection with a TCP RST (no close frame, no FIN): what a
        crashed venue host or a middlebox killing the flow looks like. Returns how many."""
        connections = list(self._sessions)
        for connection in connections:
            transport = connection.transport
            raw = transport.get_extra_info("socket")
            if raw is not None:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return len(connections)

    async def broadcast(self, step: MarketStep) -> None:
        """Send this venue's part of ``step`` to every session, with the injected faults."""
        venue = self.venue.venue
        faults = self.faults
        changes = faults.reshape_changes(change for change in step.book_changes if change.venue == venue)
        trades = tuple(trade for trade in step.trades if trade.venue == venue)
        encoded = self.venue.encode_step(MarketStep(step.number, step.timestamp_ns, tuple(changes), trades))
        malformed = faults.take_malformed_frames()
        if faults.stalled:
            return
        fired: list[_FrameFault] = []
        for connection, session in list(self._sessions.items()):
            frames, fired_here = faults.apply_frame_faults(self.venue, changes, session.frames(encoded))
            fired.extend(fired_here)
            await _send_all(connection, malformed + frames)
        faults.frame_faults_fired(fired)

    def _open_session(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.faults.refused_upgrades is not None:
            status, body = self.faults.refused_upgrades
            return connection.respond(status, body)
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
                refusal = self.venue.subscription_refusal(text)
                if refusal is not None and self.faults.take_subscription_rejection():
                    self.faults.fire("subscription rejected")
                    await _send_all(connection, refusal)
                    continue
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
            if reply is not None:
                self.faults.fire(f"snapshot {reply.status}")
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
