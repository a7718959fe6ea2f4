"""The supervisor: owns every segment, spawns every actor, restarts what dies.

Policy (OTP's one-for-one): when an actor dies — its process exits, or it stays alive but
its heartbeat stops for ``heartbeat_timeout_s`` (then it is killed) — only that actor is
restarted, after an exponential backoff (``restart_backoff_initial_s`` doubling up to
``restart_backoff_max_s``; the backoff resets once the actor has run for
``restart_period_s``). If one actor needs more than ``restart_intensity`` restarts within
``restart_period_s``, restarting is not helping: the supervisor escalates by stopping the
whole engine with an error, so a crash loop is visible instead of infinite.

Shared memory: the supervisor sweeps orphans of dead supervisors, creates every segment
before any actor starts (actors only attach), publishes their names in the instance's
directory segment, and unlinks them all on the way out — also after a failed start.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack
import psutil
import zmq

from engine import bus
from engine import features as feature_layout
from engine.actor import ActorSpec, actor_main
from engine.config import Config
from engine.instruments import book_layout, instrument_plans
from engine.logging import configure_logging
from shm import book, features, ring
from shm.actor_table import ActorState, ActorTable
from shm.ordering import check_platform
from shm.registry import directory_name, read_directory, segment_owner, sweep, write_directory
from shm.ring import Ring
from shm.segment import Segment, SegmentKind, segment_name, unlink_segment

ESCALATED_EXIT_CODE = 3


class StartupError(RuntimeError):
    """The engine cannot start; the message says why and what to do."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports: every probe stays bound until all are chosen, or the
    OS may hand the same port out twice (seen: the demo's simulator then cannot bind)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((host, 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


@dataclass
class _Child:
    spec: ActorSpec
    process: multiprocessing.Process | None = None
    state: ActorState = ActorState.STARTING
    restarts: int = 0
    consecutive_failures: int = 0
    recent_restarts: deque[float] = field(default_factory=deque)
    started_at: float = 0.0
    restart_at: float = 0.0
    held: bool = False  # stopped on request; not restarted until started again
    last_heartbeat: int = 0
    last_heartbeat_change: float = 0.0
    psutil_process: psutil.Process | None = None
    cpu_percent: float = 0.0
    rss_bytes: int = 0


def default_actor_specs(config: Config, with_simulator: bool = False) -> list[ActorSpec]:
    """The actors a config asks for: (simulator,) one connector per exchange, aggregator,
    features, signals (, storage) (, api).

    Slots are assigned by the :class:`Supervisor` that runs them.
    """
    names: list[tuple[str, str, str, dict[str, Any]]] = []
    if with_simulator:
        names.append(("simulator", "simulator", "actors.simulator:SimulatorActor", {}))
    for exchange in config.exchange_ids():
        names.append(
            (f"connector:{exchange}", "connector", "actors.connector:ConnectorActor", {"exchange": exchange})
        )
    names.append(("aggregator", "aggregator", "actors.aggregator:AggregatorActor", {}))
    names.append(("features", "features", "actors.features:FeaturesActor", {}))
    names.append(("signals", "signals", "actors.signals:SignalsActor", {}))
    if config.storage.enabled:
        names.append(("storage", "storage", "actors.storage:StorageActor", {}))
    if config.api.enabled:
        names.append(("api", "api", "actors.api:ApiActor", {}))
    return [ActorSpec(name, kind, target, -1, args) for name, kind, target, args in names]


class Supervisor:
    def __init__(
        self,
        config: Config,
        specs: list[ActorSpec] | None = None,
        extra_directory: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.instance = config.engine.instance
        chosen = specs if specs is not None else default_actor_specs(config)
        self.specs = [replace(spec, slot=index) for index, spec in enumerate(chosen)]
        self.extra_directory = extra_directory or {}
        self.log = configure_logging(config.engine.log_level, config.engine.log_format, actor="supervisor")
        self.children = {spec.name: _Child(spec) for spec in self.specs}
        self.segments: list[Segment] = []
        self.rings: dict[str, Ring] = {}
        self.storage_feed: Ring | None = None  # aggregator → storage: every record it applied, in order
        self.directory: dict[str, Any] = {}
        self.exit_code = 0
        self.exchange_counters: dict[str, dict[str, Any]] = {}
        self._context = zmq.Context()
        self._control: zmq.Socket | None = None
        self._counters: zmq.Socket | None = None
        self._forwarder: bus.Forwarder | None = None
        self._stop_requested = False
        self._started_at = time.monotonic()
        self._last_sample = 0.0
        self._mp = multiprocessing.get_context("spawn")

    # ---- start -----------------------------------------------------------------------

    def start(self) -> None:
        """Sweep, bind, create segments, spawn. Leaves nothing behind if any step fails."""
        check_platform()
        removed = sweep()
        if removed:
            self.log.info("swept_orphan_segments", count=len(removed), names=removed)
        self._refuse_if_running()
        try:
            self._bind_endpoints()
            self._create_segments()
            self._write_directory()
            for child in self.children.values():
                self._spawn(child)
        except BaseException:
            self.shutdown()
            raise

    def _refuse_if_running(self) -> None:
        """Called right after the sweep: a directory still there has a live owner."""
        owner = segment_owner(directory_name(self.instance))
        if owner is not None:
            raise StartupError(
                f"coby instance {self.instance!r} is already running (supervisor pid {owner}): "
                f"stop it with 'coby shutdown', or set engine.instance (COBY_ENGINE__INSTANCE) to run another"
            )

    def _bind_endpoints(self) -> None:
        endpoints = self.config.endpoints
        runtime = Path(self.config.engine.runtime_dir)
        runtime.mkdir(parents=True, exist_ok=True)
        self._control = self._context.socket(zmq.REP)
        self._control.setsockopt(zmq.LINGER, 0)
        self.control_endpoint = bus.bind(self._control, endpoints.control)
        self._forwarder = bus.Forwarder(self._context, endpoints.bus_publish, endpoints.bus_subscribe)
        self._forwarder.start()
        self._counters = bus.Subscriber(self._context, self._forwarder.subscribe_endpoint, ["counters."]).socket
        self._poller = zmq.Poller()
        self._poller.register(self._control, zmq.POLLIN)
        self._poller.register(self._counters, zmq.POLLIN)
        self.doorbell_endpoint = f"ipc://{runtime}/doorbell-aggregator"
        self.signals_endpoint = f"ipc://{runtime}/signals"
        self.features_endpoint = f"ipc://{runtime}/features"
        self.replay_endpoint = f"ipc://{runtime}/replay"

    def _create_segments(self) -> None:
        config, pid = self.config, os.getpid()
        exchanges = config.exchange_ids()
        table_name = segment_name(self.instance, SegmentKind.ACTORS)
        self.table = ActorTable.create(table_name, max(len(self.specs), 1), pid)
        self.segments.append(self.table.segment)
        ring_names = {}
        for exchange in exchanges:
            name = segment_name(self.instance, SegmentKind.RING, exchange)
            self.rings[exchange] = Ring.create(name, config.shm.ring_records, pid)
            self.segments.append(self.rings[exchange].segment)
            ring_names[exchange] = name
        book_names = {}
        feature_names: dict[str, dict[str, str]] = {}
        layout = book_layout(config)
        for plan in instrument_plans(config):
            name = segment_name(self.instance, SegmentKind.BOOK, plan.name)
            writer = book.BookWriter.create(name, layout, pid)
            self.segments.append(writer.segment)
            book_names[plan.name] = name
            feature_names[plan.name] = {}
            for kind in ("cnn", "rl"):
                name = segment_name(self.instance, SegmentKind.FEATURES, f"{plan.name}.{kind}")
                tensor = features.FeatureWriter.create(
                    name, config.shm.feature_rows, feature_layout.width(kind), feature_layout.LAYOUT_VERSION, pid
                )
                self.segments.append(tensor.segment)
                feature_names[plan.name][kind] = name
        self.segment_names = {"actors": table_name, "rings": ring_names, "books": book_names, "features": feature_names}
        if any(spec.kind == "storage" for spec in self.specs):
            name = segment_name(self.instance, SegmentKind.RING, "storage")
            self.storage_feed = Ring.create(name, config.storage.feed_records, pid)
            self.segments.append(self.storage_feed.segment)
            self.segment_names["storage_feed"] = name

    def _write_directory(self) -> None:
        self.directory = {
            "instance": self.instance,
            "supervisor_pid": os.getpid(),
            "started_ns": time.time_ns(),
            "exchanges": self.config.exchange_ids(),
            "symbols": list(self.config.symbols),
            "instruments": {
                plan.name: sorted({member.exchange for member in plan.members}) for plan in instrument_plans(self.config)
            },
            "segments": self.segment_names,
            "actors": {spec.name: spec.slot for spec in self.specs},
            "endpoints": {
                "control": self.control_endpoint,
                "bus_publish": self._forwarder.publish_endpoint,
                "bus_subscribe": self._forwarder.subscribe_endpoint,
                "doorbell_aggregator": self.doorbell_endpoint,
                "signals": self.signals_endpoint,
                "features_doorbell": self.features_endpoint,
                "replay": self.replay_endpoint,
            },
            "layouts": {
                "ring": ring.LAYOUT_VERSION,
                "book": book.LAYOUT_VERSION,
                "features": features.LAYOUT_VERSION,
                "feature_schema": feature_layout.LAYOUT_VERSION,
            },
            **self.extra_directory,
        }
        self.segments.append(write_directory(self.instance, self.directory))

    def _spawn(self, child: _Child) -> None:
        process = self._mp.Process(
            target=actor_main,
            args=(child.spec, self.config, self.directory, os.getpid()),
            name=f"coby:{child.spec.name}",
            daemon=False,
        )
        process.start()
        now = time.monotonic()
        child.process = process
        child.psutil_process = psutil.Process(process.pid)
        child.state = ActorState.STARTING
        child.started_at = now
        child.last_heartbeat = int(self.table.slots[child.spec.slot]["heartbeat"])
        child.last_heartbeat_change = now
        slot = self.table.slots[child.spec.slot]
        slot["pid"] = process.pid
        slot["state"] = int(ActorState.STARTING)
        slot["started_ns"] = time.time_ns()
        self.log.info("actor_spawned", child=child.spec.name, pid=process.pid)

    # ---- run -------------------------------------------------------------------------

    def run(self, duration_s: float | None = None, on_tick: Callable[[], None] | None = None) -> int:
        """Supervise until shutdown (signal, control request, escalation or ``duration_s``)."""
        in_main_thread = threading.current_thread() is threading.main_thread()
        signals = (signal.SIGTERM, signal.SIGINT) if in_main_thread else ()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            while not self._stop_requested:
                ready = dict(self._poller.poll(50))
                if self._control in ready:
                    self._answer_control()
                if self._counters in ready:
                    self._take_counters()
                self._watch_children()
                if on_tick is not None:
                    on_tick()
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            self.shutdown()  # our handlers stay in place: a second Ctrl-C must not cut the clean-up short
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.exit_code

    def _on_signal(self, signum: int, frame: object) -> None:
        self.log.info("shutdown_requested", signal=signal.Signals(signum).name)
        self.request_stop()

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut the engine down (safe from a signal handler or thread)."""
        self._stop_requested = True

    def _watch_children(self) -> None:
        now = time.monotonic()
        supervisor = self.config.supervisor
        for child in self.children.values():
            if child.held or child.state == ActorState.FAILED:
                continue
            if child.state == ActorState.BACKOFF:
                if now >= child.restart_at:
                    self._spawn(child)
                continue
            process = child.process
            if process is None:
                continue
            if process.exitcode is not None:
                self._on_death(child, f"exited with code {process.exitcode}")
                continue
            beat = int(self.table.slots[child.spec.slot]["heartbeat"])
            if beat != child.last_heartbeat:
                child.last_heartbeat, child.last_heartbeat_change = beat, now
                if child.state == ActorState.STARTING:
                    child.state = ActorState.RUNNING
                    self.table.slots[child.spec.slot]["state"] = int(ActorState.RUNNING)
            elif now - child.last_heartbeat_change > self._heartbeat_limit(child):
                self.log.error(
                    "actor_hung",
                    child=child.spec.name,
                    pid=process.pid,
                    silent_s=round(now - child.last_heartbeat_change, 2),
                    hint="its event loop stopped beating; killing it so it restarts clean",
                )
                process.kill()
                process.join(5)
                self._on_death(child, "heartbeat stopped")
        if now - self._last_sample >= supervisor.status_interval_s:
            self._last_sample = now
            self._sample_resources()

    def _heartbeat_limit(self, child: _Child) -> float:
        timeout = self.config.supervisor.heartbeat_timeout_s
        # Spawning imports numpy, zmq, uvloop…: the first beat may take a few seconds.
        return max(timeout, 20.0) if child.state == ActorState.STARTING else timeout

    def _on_death(self, child: _Child, how: str) -> None:
        supervisor = self.config.supervisor
        now = time.monotonic()
        if child.process is not None:
            child.process.join(0)
        child.process = None
        child.psutil_process = None
        if now - child.started_at >= supervisor.restart_period_s:
            child.consecutive_failures = 0
        while child.recent_restarts and now - child.recent_restarts[0] > supervisor.restart_period_s:
            child.recent_restarts.popleft()
        if len(child.recent_restarts) >= supervisor.restart_intensity:
            child.state = ActorState.FAILED
            self.table.slots[child.spec.slot]["state"] = int(ActorState.FAILED)
            self.log.error(
                "restart_intensity_exceeded",
                child=child.spec.name,
                restarts=len(child.recent_restarts),
                period_s=supervisor.restart_period_s,
                hint="the actor keeps dying; read its log lines above, fix the cause, then start coby again",
            )
            self.exit_code = ESCALATED_EXIT_CODE
            self._stop_requested = True
            return
        delay = min(
            supervisor.restart_backoff_initial_s * 2**child.consecutive_failures,
            supervisor.restart_backoff_max_s,
        )
        child.consecutive_failures += 1
        child.recent_restarts.append(now)
        child.restarts += 1
        child.state = ActorState.BACKOFF
        child.restart_at = now + delay
        slot = self.table.slots[child.spec.slot]
        slot["state"] = int(ActorState.BACKOFF)
        slot["restarts"] = child.restarts
        self.log.warning("actor_died", child=child.spec.name, how=how, restart_in_s=round(delay, 2))

    def _take_counters(self) -> None:
        """Keep the newest ``counters.<exchange>`` of every connector for ``status``."""
        while True:
            try:
                frames = self._counters.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                topic, message = bus.decode(frames)
                self.exchange_counters[topic.removeprefix("counters.")] = message
            except (ValueError, UnicodeDecodeError, IndexError) as error:
                self.log.warning("bad_counters_message", error=str(error))

    def _sample_resources(self) -> None:
        for child in self.children.values():
            if child.psutil_process is None:
                continue
            try:
                with child.psutil_process.oneshot():
                    child.cpu_percent = child.psutil_process.cpu_percent(None)
                    child.rss_bytes = child.psutil_process.memory_info().rss
            except psutil.Error:
                child.cpu_percent, child.rss_bytes = 0.0, 0

    # ---- control ---------------------------------------------------------------------

    def _answer_control(self) -> None:
        try:
            request = msgpack.unpackb(self._control.recv(), raw=False)
            reply = self._handle(request) if isinstance(request, dict) else None
            if reply is None:
                reply = {"ok": False, "error": f"malformed control request {request!r}: send a map with 'command'"}
        except Exception as error:  # a bad request must never take the supervisor down
            self.log.warning("control_request_failed", error=str(error))
            reply = {"ok": False, "error": f"could not handle the request: {error}"}
        self._control.send(msgpack.packb(reply, use_bin_type=True))

    def _handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        command = request.get("command")
        if command == "status":
            return {"ok": True, **self.status()}
        if command == "shutdown":
            self._stop_requested = True
            return {"ok": True}
        if command in ("restart", "stop", "start"):
            child = self.children.get(request.get("actor", ""))
            if child is None:
                return {"ok": False, "error": f"no actor {request.get('actor')!r}; actors: {sorted(self.children)}"}
            getattr(self, f"_{command}_child")(child)
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {command!r}; commands: status, restart, stop, start, shutdown"}

    def _terminate(self, child: _Child) -> None:
        process = child.process
        if process is not None and process.exitcode is None:
            process.terminate()
            process.join(self.config.supervisor.shutdown_timeout_s)
            if process.exitcode is None:
                process.kill()
                process.join(5)
        child.process = None
        child.psutil_process = None

    def _restart_child(self, child: _Child) -> None:
        self._terminate(child)
        child.held = False
        child.restarts += 1
        self.table.slots[child.spec.slot]["restarts"] = child.restarts
        self._spawn(child)

    def _stop_child(self, child: _Child) -> None:
        child.held = True
        self._terminate(child)
        child.state = ActorState.STOPPED
        self.table.slots[child.spec.slot]["state"] = int(ActorState.STOPPED)

    def _start_child(self, child: _Child) -> None:
        if child.held or child.state == ActorState.FAILED:
            child.held = False
            self._spawn(child)

    def status(self) -> dict[str, Any]:
        """Safe to call from another thread: each child's process is read once, as a restart may clear it."""
        now = time.monotonic()
        actors = []
        for child in self.children.values():
            process = child.process
            alive = process is not None and process.exitcode is None
            actors.append(
                {
                    "name": child.spec.name,
                    "pid": process.pid if alive else None,
                    "state": child.state.name.lower(),
                    "restarts": child.restarts,
                    "heartbeat_age_s": round(now - child.last_heartbeat_change, 3) if alive else None,
                    "cpu_percent": child.cpu_percent if alive else 0.0,
                    "rss_bytes": child.rss_bytes if alive else 0,
                }
            )
        rings = {}
        for exchange, handle in self.rings.items():
            stats = handle.stats()
            stats["fill_ratio"] = stats["fill"] / stats["capacity"]
            rings[exchange] = stats
        reply = {
            "instance": self.instance,
            "pid": os.getpid(),
            "uptime_s": round(now - self._started_at, 3),
            "actors": actors,
            "rings": rings,
            "exchanges": self.exchange_counters,
        }
        if self.storage_feed is not None:
            stats = self.storage_feed.stats()
            reply["storage_feed"] = {**stats, "fill_ratio": stats["fill"] / stats["capacity"]}
        return reply

    # ---- stop ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every actor (TERM, then KILL after the timeout) and remove every segment."""
        children = [c for c in self.children.values() if c.process is not None and c.process.exitcode is None]
        for child in children:
            child.process.terminate()
        deadline = time.monotonic() + self.config.supervisor.shutdown_timeout_s
        for child in children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.exitcode is None:
                self.log.warning("actor_killed_on_shutdown", child=child.spec.name)
                child.process.kill()
                child.process.join(5)
            child.state = ActorState.STOPPED
        if self._counters is not None:
            self._counters.close(linger=0)
            self._counters = None
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        if self._control is not None:
            self._control.close(linger=0)
            self._control = None
        for handle in self.rings.values():
            handle.close()
        self.rings = {}
        for segment in self.segments:
            unlink_segment(segment.name)
        self.segments = []
        self._context.term()
        if any(child.started_at for child in self.children.values()):
            self.log.info("supervisor_stopped", exit_code=self.exit_code)


def running_directory(instance: str) -> dict[str, Any] | None:
    """The directory of a live instance, or None."""
    try:
        return read_directory(instance)
    except (FileNotFoundError, RuntimeError):
        return None
