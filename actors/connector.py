"""The connector actor: one process per exchange, the IO around a sans-IO exchange module.

The exchange module (``actors/connectors/<exchange>.py``) owns the protocol and the books;
this actor owns everything that touches the outside world, once for every exchange:

- the instrument metadata request at start (retried with backoff until it answers);
- one WebSocket task per connection of the module's plan: make the connection's
  ``pre_connect`` request if it has one (KuCoin's token), connect, send the module's
  subscribe messages, hand every frame to the module, and reconnect with exponential
  backoff and jitter after any close, error, or a connected-but-silent stream (no
  frame for the connection's ``stale_after_s``: treated as down, never trusted);
- REST snapshots the module asks for, at most a few in flight, answering 429/418 with
  their ``Retry-After`` so the module backs off (418 means the IP is banned: logged as an
  error);
- a 20 ms timer that sends what the module wants sent (application pings,
  re-subscriptions), flushes what the module owes the ring (re-sent snapshots after an
  overflow or when the aggregator restarted) and writes a HEARTBEAT record when nothing
  else was written for a second, so the aggregator can tell quiet from dead;
- the ring doorbell: one byte on the aggregator's PULL socket when it is asleep;
- bad input: every frame (or snapshot body) the module counts as bad and drops is logged with
  a sample, the first of a connection at once, then at most one line a minute with the count
  since (a venue sending garbage must not flood the log, nor go unseen);
- with ``record_dir`` in its spec (``coby record``), a copy of all traffic in the recorded
  format, which ``coby verify`` replays.

A restarted connector announces itself with a CONNECTING status for every symbol, so
the aggregator drops whatever it held from the previous process before new snapshots.
"""

from __future__ import annotations

import asyncio
import random
import time

from dataclasses import asdict

import aiohttp
import websockets
import zmq
import zmq.asyncio

from actors.connectors import load_exchange_module
from actors.connectors.base import ConnectionAction, ConnectionSpec, Connector, SnapshotRequest
from engine.actor import Actor
from engine.bus import Publisher, RingDoorbell
from shm.records import ALL_SYMBOLS, Kind, Reason, Status, empty_records
from shm.ring import Ring
from sim.recorded import RecordingWriter

_TIMER_S = 0.02
_HEARTBEAT_S = 1.0
_COUNTERS_S = 1.0
_MAX_FRAME_BYTES = 16 * 2**20
_BAD_FRAME_LOG_INTERVAL_S = 60.0
# A connection that stayed up this long worked: the next reconnect starts from the initial
# backoff again. (It took twice reconnect_backoff_max_s, 60 s by default, so a venue dropping
# connections every few seconds pushed every later recovery towards 30 s; flapping still
# reconnects at most about once every 2 s.)
_HEALTHY_CONNECTION_S = 2.0
_SAMPLE_CHARS = 300


def frame_sample(data: str | bytes) -> str:
    """The start of a frame for the log: text as is, binary as its repr; with its size."""
    text = data if isinstance(data, str) else repr(data[:_SAMPLE_CHARS])
    return text[:_SAMPLE_CHARS] + (f"… ({len(data)} bytes)" if len(data) > _SAMPLE_CHARS else "")


class BadFrameLog:
    """Logs bad frames once with a sample, then summarises at most once per interval."""

    def __init__(self, log, interval_s: float = _BAD_FRAME_LOG_INTERVAL_S) -> None:
        self.log = log
        self.interval_s = interval_s
        self.total = 0
        self._unlogged: dict[str, int] = {}
        self._last_logged: dict[str, float] = {}

    def rejected(self, source: str, data: str | bytes, now: float) -> None:
        """``source`` names where it came from (``connection 0``, ``snapshot BTCUSDT``)."""
        self.total += 1
        unlogged = self._unlogged.get(source, 0) + 1
        last = self._last_logged.get(source)
        if last is not None and now - last < self.interval_s:
            self._unlogged[source] = unlogged
            return
        self._unlogged[source] = 0
        self._last_logged[source] = now
        self.log.warning(
            "bad_frame_dropped" if last is None else "bad_frames_dropped",
            source=source, count=unlogged, sample=frame_sample(data),
            hint="counted in counters (malformed, parse errors, unknown symbol); the book resyncs if it lost an update",
        )


class ConnectorActor(Actor):
    def log_context(self) -> dict[str, str]:
        return {"exchange": self.spec.arguments["exchange"]}

    async def setup(self) -> None:
        self.exchange = self.spec.arguments["exchange"]
        self.settings = self.config.exchanges[self.exchange]
        directory = self.directory
        self.exchange_id: int = directory["exchanges"][self.exchange]
        self.ring = Ring.attach(directory["segments"]["rings"][self.exchange])
        self.ring.become_producer()
        self.context = zmq.Context()
        self.doorbell = RingDoorbell(self.context, directory["endpoints"]["doorbell_aggregator"], self.ring.write_word)
        self.ring.doorbell = self.doorbell
        symbol_ids = {symbol: directory["symbols"].index(symbol) for symbol in self.settings.symbols}
        self.symbol_ids = list(symbol_ids.values())
        module = load_exchange_module(self.exchange)
        self.connector: Connector = module.CONNECTOR.from_settings(self.ring, self.exchange_id, symbol_ids, self.settings)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.rest_timeout_s))
        record_dir = self.spec.arguments.get("record_dir")
        self.recorder = None
        if record_dir:
            kept = ("snapshot_depth", "stale_after_s", "max_streams_per_connection")
            settings = {key: getattr(self.settings, key) for key in kept}
            self.recorder = RecordingWriter(record_dir, self.exchange, list(self.settings.symbols), settings)
        self.bus_context = zmq.asyncio.Context()
        self.publisher = Publisher(self.bus_context, directory["endpoints"]["bus_publish"])
        self.snapshots_in_flight: set[asyncio.Task[None]] = set()
        self.background: set[asyncio.Task[None]] = set()
        self.open_sockets: dict[int, tuple[websockets.ClientConnection, float]] = {}
        self.last_frame: dict[int, float] = {}
        self.silenced: set[int] = set()
        self.last_write_check = (0, time.monotonic())
        self.bad_frames = BadFrameLog(self.log)
        self._announce(Status.CONNECTING, Reason.STARTUP)

    def _announce(self, status: Status, reason: Reason) -> None:
        record = empty_records(1)
        record["kind"], record["exchange_id"], record["symbol_id"] = Kind.STATUS, self.exchange_id, ALL_SYMBOLS
        record["aux"], record["reason"], record["receive_ts"] = status, reason, time.time_ns()
        self.ring.write(record)

    async def run(self) -> None:
        await self._load_instruments()
        if self.stopping.is_set():
            return
        missing = self.connector.missing_symbols
        if missing:
            self.log.error(
                "symbols_not_listed",
                symbols=missing,
                hint="the exchange does not list these symbols; fix exchanges.<name>.symbols in config.yaml",
            )
        plan = self.connector.connection_plan()
        tasks = [asyncio.create_task(self._connection(index, spec)) for index, spec in enumerate(plan)]
        tasks.append(asyncio.create_task(self._timer()))
        tasks.append(asyncio.create_task(self._publish_counters()))
        try:
            await self.stopping.wait()
        finally:
            for task in tasks + list(self.snapshots_in_flight):
                task.cancel()
            await asyncio.gather(*tasks, *self.snapshots_in_flight, return_exceptions=True)

    async def _load_instruments(self) -> None:
        """Every metadata request of the venue, each retried with backoff until it answers."""
        for url in self.connector.instruments_urls:
            await self._load_instruments_from(url)
            if self.stopping.is_set():
                return

    async def _load_instruments_from(self, url: str) -> None:
        delay = self.settings.reconnect_backoff_initial_s
        while not self.stopping.is_set():
            try:
                async with self.http.get(url) as response:
                    body = await response.read()
                    if response.status == 200:
                        if self.recorder:
                            self.recorder.metadata(url, time.time_ns(), body)
                        instruments = self.connector.load_instruments(body)
                        self.log.info("instruments_loaded", count=len(instruments), url=url)
                        return
                    retry_after = _retry_after(response.headers)
                    self.log.warning("instruments_request_refused", status=response.status, url=url)
                    if retry_after is not None:
                        delay = max(delay, retry_after)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as error:
                self.log.warning(
                    "instruments_request_failed", url=url, error=str(error) or type(error).__name__,
                    hint="check exchanges.<name>.rest_url and the network; retrying",
                )
            await self._sleep(_jittered(delay))
            delay = min(delay * 2, self.settings.reconnect_backoff_max_s)

    async def _connection(self, index: int, spec: ConnectionSpec) -> None:
        """Keep connection ``index`` up for as long as the actor runs."""
        backoff = self.settings.reconnect_backoff_initial_s
        while not self.stopping.is_set():
            opened_at = None
            reason = Reason.DISCONNECTED
            try:
                target = await self._resolve(index, spec)
                async with websockets.connect(
                    target.url,
                    ping_interval=target.ping_interval_s,
                    max_size=_MAX_FRAME_BYTES,
                    open_timeout=self.settings.rest_timeout_s,
                    close_timeout=1,
                ) as socket:
                    opened_at = time.monotonic()
                    self.log.info("connected", connection=index, url=target.url)
                    if self.recorder:
                        self.recorder.opened(index, target.url, time.time_ns())
                    for message in self.connector.on_open(index, time.time_ns()):
                        if self.recorder:
                            self.recorder.sent(index, time.time_ns(), message)
                        await socket.send(message)
                    self.open_sockets[index] = (socket, spec.stale_after_s)
                    self.last_frame[index] = opened_at
                    reason = await self._receive(index, socket)
            except (OSError, asyncio.TimeoutError, websockets.WebSocketException, aiohttp.ClientError, ValueError) as error:
                self.log.warning(
                    "connection_failed" if opened_at is None else "connection_lost",
                    connection=index, error=str(error) or type(error).__name__,
                )
            finally:
                self.open_sockets.pop(index, None)
            if index in self.silenced:
                self.silenced.discard(index)
                reason = Reason.STALE_STREAM
            if opened_at is not None:
                self.connector.on_close(index, time.time_ns(), reason)
                if self.recorder:
                    self.recorder.closed(index)
                if time.monotonic() - opened_at >= _HEALTHY_CONNECTION_S:
                    backoff = self.settings.reconnect_backoff_initial_s
            if self.stopping.is_set():
                return
            delay = _jittered(backoff)
            self.log.info("reconnecting", connection=index, in_s=round(delay, 3), reason=reason.name.lower())
            await self._sleep(delay)
            backoff = min(backoff * 2, self.settings.reconnect_backoff_max_s)

    async def _resolve(self, index: int, spec: ConnectionSpec) -> ConnectionSpec:
        """The spec to connect with: ``spec`` itself, or what the venue's ``pre_connect``
        request (e.g. KuCoin's token) resolves it to. Failures raise; the caller backs off."""
        request = spec.pre_connect
        if request is None:
            return spec
        async with self.http.request(request.method, request.url, data=request.body or None) as response:
            body = await response.read()
            if response.status // 100 != 2:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message=f"pre-connect {request.url}"
                )
        if self.recorder:
            self.recorder.metadata(request.url, time.time_ns(), body)
        return self.connector.resolve_connection(index, body, time.time_ns())

    async def _send_outgoing(self) -> None:
        """Send what the module wants sent (pings, re-subscriptions) on connections that are open."""
        for message in self.connector.outgoing_messages(time.monotonic_ns()):
            entry = self.open_sockets.get(message.connection)
            if entry is None:
                continue  # closed: its on_open subscribes everything again
            if self.recorder:
                self.recorder.sent(message.connection, time.time_ns(), message.text)
            try:
                await entry[0].send(message.text)
            except websockets.ConnectionClosed:
                pass  # the connection's own task sees the close and reconnects

    async def _receive(self, index: int, socket: websockets.ClientConnection) -> Reason:
        """Hand every frame to the module. Silence is watched by the timer, not per frame:
        ``asyncio.wait_for`` around each ``recv`` costs ~25 µs, several times the module."""
        connector = self.connector
        on_message = connector.on_message
        last_frame = self.last_frame
        while True:
            try:
                data = await socket.recv()
            except websockets.ConnectionClosed as closed:
                if index not in self.silenced:
                    self.log.warning("disconnected", connection=index, code=closed.code, reason=closed.reason)
                return Reason.DISCONNECTED
            last_frame[index] = time.monotonic()
            received_at = time.time_ns()
            if self.recorder:
                self.recorder.received(index, received_at, data)
            action = on_message(index, data, received_at)
            if connector.frame_rejected:
                connector.frame_rejected = False
                self.bad_frames.rejected(f"connection {index}", data, time.monotonic())
            if action == ConnectionAction.SEND:
                await self._send_outgoing()
            elif action == ConnectionAction.RECONNECT:
                self.log.warning("reconnect_requested", connection=index)
                return Reason.DISCONNECTED

    async def _timer(self) -> None:
        while True:
            now_ns = time.time_ns()
            if self.ring.take_resnapshot_request():
                self.log.info("resend_requested", hint="the aggregator restarted; re-sending every book")
                self.connector.request_full_resend()
            for request in self.connector.snapshot_requests(time.monotonic_ns()):
                task = asyncio.create_task(self._snapshot(request))
                self.snapshots_in_flight.add(task)
                task.add_done_callback(self.snapshots_in_flight.discard)
            self.connector.flush(now_ns)
            await self._send_outgoing()
            self._heartbeat(now_ns)
            self._close_silent_connections()
            await asyncio.sleep(_TIMER_S)

    def _close_silent_connections(self) -> None:
        now = time.monotonic()
        for index, (socket, stale_after_s) in list(self.open_sockets.items()):
            silent = now - self.last_frame[index]
            if silent > stale_after_s and index not in self.silenced:
                self.silenced.add(index)
                self.log.warning(
                    "stream_silent", connection=index, silent_s=round(silent, 3),
                    hint="connected but nothing arrived; reconnecting and resyncing",
                )
                closing = asyncio.create_task(socket.close(1000, "stale stream"))
                self.background.add(closing)
                closing.add_done_callback(self.background.discard)

    async def _publish_counters(self) -> None:
        """``counters.<exchange>`` on the bus every second (``coby status`` shows them)."""
        interval_s = float(self.spec.arguments.get("counters_interval_s", _COUNTERS_S))  # tests take them faster
        while True:
            await asyncio.sleep(interval_s)
            self.publisher.publish(f"counters.{self.exchange}", self.counters())

    def counters(self) -> dict:
        """Per-symbol and per-connection counters of the exchange module, plus the ring's."""
        listed = [symbol for symbol in self.settings.symbols if symbol not in self.connector.missing_symbols]
        return {
            "exchange": self.exchange,
            "symbols": {symbol: asdict(self.connector.counters(symbol)) for symbol in listed},
            "connections": [asdict(counters) for counters in self.connector.connection_counters],
            "ring": self.ring.stats(),
            "bad_frames": self.bad_frames.total,
        }

    def _heartbeat(self, now_ns: int) -> None:
        written = self.ring.stats()["written_records"]
        last_written, last_time = self.last_write_check
        now = time.monotonic()
        if written != last_written:
            self.last_write_check = (written, now)
        elif now - last_time >= _HEARTBEAT_S:
            record = empty_records(1)
            record["kind"], record["exchange_id"], record["symbol_id"] = Kind.HEARTBEAT, self.exchange_id, ALL_SYMBOLS
            record["receive_ts"] = now_ns
            self.ring.write(record)
            self.last_write_check = (written + 1, now)

    async def _snapshot(self, request: SnapshotRequest) -> None:
        try:
            async with self.http.get(request.url) as response:
                body = await response.read()
                if response.status == 200:
                    received_at = time.time_ns()
                    if self.recorder:
                        self.recorder.snapshot(request.url, received_at, body)
                    self.connector.on_snapshot(request.native_symbol, body, received_at)
                    if self.connector.frame_rejected:
                        self.connector.frame_rejected = False
                        self.bad_frames.rejected(f"snapshot {request.native_symbol}", body, time.monotonic())
                    return
                retry_after = _retry_after(response.headers)
                if response.status == 418:
                    self.log.error(
                        "rest_banned", url=request.url, retry_after_s=retry_after,
                        hint="the exchange banned this IP for too many requests; lower the symbol count or snapshot depth",
                    )
                else:
                    self.log.warning("snapshot_refused", url=request.url, status=response.status, retry_after_s=retry_after)
                self.connector.on_snapshot_failed(request.native_symbol, time.monotonic_ns(), retry_after)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            self.log.warning("snapshot_failed", url=request.url, error=str(error) or type(error).__name__)
            self.connector.on_snapshot_failed(request.native_symbol, time.monotonic_ns(), None)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def teardown(self) -> None:
        if (recorder := getattr(self, "recorder", None)) is not None:
            recorder.close()
        if (http := getattr(self, "http", None)) is not None:
            await http.close()
        if (ring := getattr(self, "ring", None)) is not None:
            self._announce(Status.DISCONNECTED, Reason.SHUTDOWN)
            ring.doorbell = None
            ring.close()
        if (doorbell := getattr(self, "doorbell", None)) is not None:
            doorbell.close()
        if (publisher := getattr(self, "publisher", None)) is not None:
            publisher.close()
            self.bus_context.term()
        if (context := getattr(self, "context", None)) is not None:
            context.term()


def _jittered(backoff: float) -> float:
    """Equal jitter (half fixed, half random): reconnecting clients must not stampede together."""
    return random.uniform(backoff / 2, backoff)


def _retry_after(headers: "aiohttp.typedefs.LooseHeaders") -> float | None:
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None

