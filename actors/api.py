"""The api actor: the heatmap dashboard, the HTTP API, /health and /metrics, on ``api.host:api.port``.

One event loop does everything, because each piece is small and most of it is shared:

- every ``api.update_ms`` it reads each instrument's book from shared memory in place and
  builds one heatmap column (engine.web.stream), encoded once and written to every dashboard
  watching that instrument; a history of columns is kept for dashboards that open it later;
- every ``api.ladder_ms`` a ladder per instrument and depth asked for, once a second the
  health panel;
- a bus subscriber feeds trades (the heatmap's bubbles), signals (forwarded to dashboards),
  connector counters and status changes (the health panel, /metrics);
- the supervisor's status is polled every ``supervisor.status_interval_s`` from a thread, so a
  slow answer never stalls the loop (its heartbeat, or the dashboards).

A busy port does not stop the engine: the actor logs it and tries again with backoff, serving
nothing meanwhile (a dashboard is not worth losing the market data for).
"""

from __future__ import annotations

import asyncio
import errno
import time

import zmq
import zmq.asyncio
from aiohttp import web

from engine import bus, control
from engine.actor import Actor
from engine.client import Engine
from engine.web.app import Hub, build_app
from engine.web.health import HealthModel
from engine.web.stream import InstrumentStream
from shm.actor_table import ActorTable

BIND_RETRY_MAX_S = 30.0


class ApiActor(Actor):
    async def setup(self) -> None:
        settings = self.config.api
        self.engine = Engine(self.config.engine.instance)
        self.table = ActorTable.attach(self.directory["segments"]["actors"], writable=False)
        exchange_ids = self.engine.exchanges
        history_columns = round(settings.history_s * 1000 / settings.update_ms)
        streams: dict[str, InstrumentStream] = {}
        members: dict[str, list[int]] = {}
        for index, name in enumerate(self.engine.instruments):
            members[name] = [exchange_ids[exchange] for exchange in self.engine.exchanges_of(name)]
            streams[name] = InstrumentStream(
                index, name, self.engine.book(name), members[name], settings.heatmap_rows, history_columns,
                step=settings.price_steps.get(name),
            )
        supervisor = self.config.supervisor
        self.health = HealthModel(
            self.directory, self.table, {name: self.engine.book(name) for name in streams}, members,
            supervisor.heartbeat_timeout_s, status_max_age_s=max(3.0, 3 * supervisor.status_interval_s),
        )
        self.hub = Hub(self.config, self.engine, self.health, streams, self.log)
        self.context = zmq.asyncio.Context()
        self.bus = bus.Subscriber(self.context, self.directory["endpoints"]["bus_subscribe"],
                                  ["trade.", "signal.", "status.", "counters."])
        self.runner = web.AppRunner(build_app(self.config, self.hub), access_log=None, handle_signals=False)
        await self.runner.setup()
        self.site: web.TCPSite | None = None

    async def run(self) -> None:
        """Until stopped; if a task fails, the actor fails with it (and is restarted clean)
        rather than serve a dashboard that silently stopped moving."""
        tasks = {asyncio.create_task(work()) for work in (self.serve, self.tick, self.read_bus, self.poll_status)}
        stop = asyncio.create_task(self.stopping.wait())
        try:
            while not self.stopping.is_set():
                done, _ = await asyncio.wait(tasks | {stop}, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stop}:
                    task.result()  # raises what the task raised; serve() returns once listening
                    tasks.discard(task)
        finally:
            for task in (*tasks, stop):
                task.cancel()
            await asyncio.gather(*tasks, stop, return_exceptions=True)

    async def serve(self) -> None:
        """Bind the listening socket, retrying while the port is taken."""
        settings = self.config.api
        delay = 1.0
        while True:
            site = web.TCPSite(self.runner, settings.host, settings.port, shutdown_timeout=1.0)
            try:
                await site.start()
            except OSError as error:
                if error.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                    raise
                self.log.error("api_port_unavailable", host=settings.host, port=settings.port, error=str(error),
                               retry_in_s=delay, hint="free the port or choose another api.port (COBY_API__PORT)")
                await asyncio.sleep(delay)
                delay = min(delay * 2, BIND_RETRY_MAX_S)
                continue
            self.site = site
            port = self.runner.addresses[0][1] if self.runner.addresses else settings.port
            host = f"[{settings.host}]" if ":" in settings.host else settings.host
            self.log.info("api_listening", url=f"http://{host}:{port}/", token_required=bool(settings.token))
            return

    async def tick(self) -> None:
        """Columns every ``update_ms``, ladders every ``ladder_ms``, the health panel every second."""
        settings = self.config.api
        interval, ladder_every = settings.update_ms / 1000, settings.ladder_ms / 1000
        next_tick = next_ladder = next_health = time.monotonic()
        while True:
            now = time.monotonic()
            self.hub.tick()
            if now >= next_ladder:
                self.hub.send_ladders()
                next_ladder = now + ladder_every
            if now >= next_health:
                self.hub.send_health()
                next_health = now + 1.0
            next_tick = max(next_tick + interval, time.monotonic())  # a late tick is not made up for
            await asyncio.sleep(next_tick - time.monotonic())

    async def read_bus(self) -> None:
        socket, hub = self.bus.socket, self.hub
        while True:
            frames = await socket.recv_multipart()
            try:
                topic, message = bus.decode(frames)
            except (ValueError, UnicodeDecodeError, IndexError) as error:
                self.log.warning("bad_bus_message", error=str(error))
                continue
            if not isinstance(message, dict):
                continue
            kind, _, rest = topic.partition(".")
            if kind == "trade":
                hub.on_trade(rest, message)
            elif kind == "signal":
                hub.on_signal(message.get("symbol", rest.rpartition(".")[0]), message)
            elif kind == "status":
                self.health.telemetry.on_status(message)
            elif kind == "counters":
                self.health.telemetry.on_counters(message, time.monotonic())

    async def poll_status(self) -> None:
        """The supervisor's status, for /health (is it answering?) and CPU/RSS/rings."""
        endpoint = self.directory["endpoints"]["control"]
        interval = self.config.supervisor.status_interval_s
        supervisor = self.health.supervisor
        while True:
            try:
                reply = await asyncio.to_thread(control.request, endpoint, "status", 2.0)
                supervisor.reply, supervisor.received_at, supervisor.error = reply, time.monotonic(), ""
            except control.ControlError as error:
                supervisor.error = str(error)
            await asyncio.sleep(interval)

    async def teardown(self) -> None:
        if (runner := getattr(self, "runner", None)) is not None:
            await runner.cleanup()
        if (subscriber := getattr(self, "bus", None)) is not None:
            subscriber.close()
        if (context := getattr(self, "context", None)) is not None:
            context.term()
        if (engine := getattr(self, "engine", None)) is not None:
            engine.close()
        if (table := getattr(self, "table", None)) is not None:
            table.close()
