"""The replay actor: stored exchange traffic written back into the rings, as the connectors wrote it.

It plays every exchange's connector at once (the single producer of each ring), so the
aggregator, features, signals and every consumer run unchanged. Records keep their stored
timestamps and carry ``Flag.REPLAYED``; the engine's directory says ``mode: replay``.

Pacing: records received before the range's start only rebuild the books (from each book's
last snapshot before it) and go in at once; the range itself is paced by receive time at
``speed`` × real time (0: as fast as the rings take it). One frame (an exchange's records with
one receive time: a whole snapshot, or one update) is one ring write.

The aggregator drops what was queued before it attached (a consumer starts fresh), so the
replay writes nothing until every ring has its consumer, and when the aggregator asks for fresh
books (it restarted, or excluded a book) every book is cleared and rebuilt from its last snapshot
before the replay's position, as a seek does.

Control, on ``endpoints.replay`` (ZeroMQ REQ/REP, msgpack; ``coby replay-control``):
``status``, ``pause``, ``resume``, ``speed`` (``value``), ``seek`` (``to_ns``: every book is
cleared and rebuilt from its last snapshot before that time). ``replay.progress`` goes out on
the bus twice a second (and once more when the range is done).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import msgpack
import numpy as np
import zmq

from engine.actor import Actor, ActorSpec
from engine.bus import Publisher, RingDoorbell
from engine.config import Config
from engine.storage import configured_backend
from engine.storage.replay import ReplayChunk, ReplaySource, chosen_names
from engine.supervisor import default_actor_specs
from shm.records import ALL_SYMBOLS, Flag, Kind, Reason, Status, empty_records
from shm.ring import Ring

PROGRESS_S = 0.5
YIELD_EVERY_FRAMES = 256
MAX_SPEED = 0.0


def replay_session(
    config: Config,
    start_ns: int,
    end_ns: int,
    speed: float,
    exchanges: Sequence[str] | None = None,
    symbols: Sequence[str] | None = None,
) -> tuple[Config, list[ActorSpec]]:
    """The engine of a replay session: the config's exchanges and symbols (their ids are the
    stored data's columns), the replay actor in place of the connectors, nothing stored again
    (the api actor too, when the config has it on: the dashboard shows the replay).

    ``exchanges`` and ``symbols`` (default: all of the config's) are what is replayed; ValueError
    names the choices when one is not in the config.
    """
    session = replace(config, storage=replace(config.storage, enabled=False))
    arguments: dict[str, Any] = {"start_ns": int(start_ns), "end_ns": int(end_ns), "speed": float(speed)}
    for what, chosen, known in (("exchanges", exchanges, list(config.exchange_ids())),
                                ("symbols", symbols, list(config.symbols))):
        if chosen is not None:
            arguments[what] = chosen_names(what, chosen, known)
    kept = [spec for spec in default_actor_specs(session) if spec.kind in ("aggregator", "features", "signals", "api")]
    replay = ActorSpec("replay", "replay", "actors.replay:ReplayActor", -1, arguments)
    return session, [replay, *kept]


class ReplayActor(Actor):
    async def setup(self) -> None:
        arguments = self.spec.arguments
        self.start_ns, self.end_ns = int(arguments["start_ns"]), int(arguments["end_ns"])
        self.speed = float(arguments.get("speed", 1.0))
        if self.speed < 0.0:
            raise ValueError(f"replay speed must be 0 (as fast as possible) or positive, got {self.speed}")
        directory = self.directory
        self.exchanges = [name for name, _ in sorted(directory["exchanges"].items(), key=lambda item: item[1])]
        self.symbols = list(directory["symbols"])
        self.backend = configured_backend(self.config.storage)
        self.backend.open()
        self.context = zmq.Context()
        self.rings, self.doorbells = [], []
        for name in self.exchanges:
            ring = Ring.attach(directory["segments"]["rings"][name])
            doorbell = RingDoorbell(self.context, directory["endpoints"]["doorbell_aggregator"], ring.write_word)
            ring.doorbell = doorbell
            ring.become_producer()
            self.rings.append(ring)
            self.doorbells.append(doorbell)
        self.control = self.context.socket(zmq.REP)
        self.control.bind(directory["endpoints"]["replay"])
        self.publisher = Publisher(self.context, directory["endpoints"]["bus_publish"])
        self.paused = False
        self.done = False
        self.position_ns = self.start_ns
        self.records_written = 0
        self.frames_written = 0
        self.seek_to: int | None = None
        self.next_progress = 0.0
        self.frames = self._frames(self.start_ns)
        self.anchor: tuple[float, int] | None = None  # (monotonic, receive_ts) pacing is measured from

    def _frames(self, start_ns: int) -> Iterator[tuple[np.ndarray, bool]]:
        """(records of one exchange and receive time, catch-up?) in stored order from ``start_ns``."""
        arguments = self.spec.arguments
        for chunk in ReplaySource(self.backend, start_ns, self.end_ns, self.exchanges, self.symbols,
                                  only_exchanges=arguments.get("exchanges"), only_symbols=arguments.get("symbols")):
            yield from _split_frames(chunk)

    async def run(self) -> None:
        # Records written before the aggregator attaches are skipped by it (a consumer starts
        # fresh), snapshots included: wait for it, so that the first books are not lost.
        while not self.stopping.is_set() and not all(ring.stats()["consumer_pid"] for ring in self.rings):
            self.answer_control()
            await asyncio.sleep(0.01)
        while not self.stopping.is_set():
            self.answer_control()
            if any([ring.take_resnapshot_request() for ring in self.rings]):  # a list: every ring's request taken
                self.log.info("resend_requested", hint="the aggregator restarted; rebuilding every book from its "
                                                       "last snapshot before the replay's position")
                self.rebuild_books(self.position_ns)
            if self.seek_to is not None:
                self.restart_at(self.seek_to)
            now = time.monotonic()
            if now >= self.next_progress:
                self.publish_progress()
                self.next_progress = now + PROGRESS_S
            if self.paused or self.done:
                await asyncio.sleep(0.02)
                continue
            frame = next(self.frames, None)
            if frame is None:
                self.done = True
                self.position_ns = self.end_ns
                self.publish_progress()
                self.log.info("replay_done", records=self.records_written)
                continue
            records, catch_up = frame
            receive_ts = int(records["receive_ts"][0])
            if not catch_up:
                await self.pace(receive_ts)
                self.position_ns = receive_ts
            await self.write(records)

    async def pace(self, receive_ts: int) -> None:
        """Wait until ``receive_ts`` is due at the current speed (control stays answered meanwhile)."""
        if self.speed == MAX_SPEED:
            return
        if self.anchor is None:
            self.anchor = (time.monotonic(), receive_ts)
        started, first = self.anchor
        due = started + (receive_ts - first) / 1e9 / self.speed
        while (wait := due - time.monotonic()) > 0 and not self.stopping.is_set():
            await asyncio.sleep(min(wait, 0.05))
            self.answer_control()
            if self.paused or self.seek_to is not None or self.anchor is None:
                return  # pausing, seeking and speed changes re-anchor; this frame goes out as it is

    async def write(self, records: np.ndarray) -> None:
        ring = self.rings[int(records["exchange_id"][0])]
        # Wait for room rather than retry a refused write: a refusal counts as records lost, and
        # the aggregator would drop the exchange's books for it. A replayed record is never dropped.
        while ring.free() < len(records):
            await asyncio.sleep(0.001)
        ring.write(records)
        self.records_written += len(records)
        self.frames_written += 1
        if self.frames_written % YIELD_EVERY_FRAMES == 0:  # unpaced, the heartbeat and control still run
            await asyncio.sleep(0)

    def restart_at(self, to_ns: int) -> None:
        """Seek: the range now starts at ``to_ns``, every book rebuilt from its last snapshot before it."""
        self.seek_to = None
        self.start_ns = max(to_ns, 0)
        self.rebuild_books(self.start_ns)
        self.log.info("replay_seek", to_ns=self.start_ns)

    def rebuild_books(self, at_ns: int) -> None:
        """Clear every book, then go on from ``at_ns``, each book rebuilt from its last snapshot before it."""
        for exchange, ring in enumerate(self.rings):
            clear = empty_records(1)
            clear["kind"], clear["exchange_id"], clear["symbol_id"] = Kind.STATUS, exchange, ALL_SYMBOLS
            clear["aux"], clear["reason"], clear["flags"] = Status.RESYNCING, Reason.NONE, Flag.REPLAYED
            clear["receive_ts"] = time.time_ns()
            ring.write(clear)  # a ring too full for it counts lost records, which drops the books all the same
        at_ns = min(at_ns, self.end_ns - 1)  # a range already done: its books as they ended
        self.frames = self._frames(at_ns)
        self.position_ns, self.anchor, self.done = at_ns, None, False

    def answer_control(self) -> None:
        while True:
            try:
                raw = self.control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = self.handle(msgpack.unpackb(raw, raw=False))
            except (ValueError, TypeError, KeyError, msgpack.UnpackException) as error:
                reply = {"ok": False, "error": f"bad replay request: {error}"}
            self.control.send(msgpack.packb(reply, use_bin_type=True))

    def handle(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise ValueError("a request is a map with a 'command'")
        command = request.get("command")
        if command == "pause":
            self.paused = True
        elif command == "resume":
            self.paused, self.anchor = False, None
        elif command == "speed":
            speed = float(request["value"])
            if speed < 0.0:
                raise ValueError(f"speed must be 0 (as fast as possible) or positive, got {speed}")
            self.speed, self.anchor = speed, None
        elif command == "seek":
            to_ns = int(request["to_ns"])
            if not 0 <= to_ns < self.end_ns:
                raise ValueError(f"seek to {to_ns}: outside the replayed range (it ends at {self.end_ns})")
            self.seek_to = to_ns
        elif command != "status":
            return {"ok": False, "error": f"unknown command {command!r}; commands: status, pause, resume, speed, seek"}
        return {"ok": True, **self.progress()}

    def progress(self) -> dict[str, Any]:
        return {"position_ns": self.position_ns, "start_ns": self.start_ns, "end_ns": self.end_ns,
                "fraction": min(max((self.position_ns - self.start_ns) / max(self.end_ns - self.start_ns, 1), 0.0), 1.0),
                "speed": self.speed, "paused": self.paused, "done": self.done, "records": self.records_written}

    def publish_progress(self) -> None:
        self.publisher.publish("replay.progress", self.progress())

    async def teardown(self) -> None:
        if (control := getattr(self, "control", None)) is not None:
            control.close(linger=0)
        for ring in getattr(self, "rings", []):
            ring.doorbell = None
        for doorbell in getattr(self, "doorbells", []):
            doorbell.close()
        if (publisher := getattr(self, "publisher", None)) is not None:
            publisher.close()
        if (context := getattr(self, "context", None)) is not None:
            context.term()
        for ring in getattr(self, "rings", []):
            ring.close()
        if (backend := getattr(self, "backend", None)) is not None:
            backend.close()


def _split_frames(chunk: ReplayChunk) -> Iterator[tuple[np.ndarray, bool]]:
    """Runs of records with one exchange and one receive time (a frame, as its connector wrote it)."""
    records = chunk.records
    if not len(records):
        return
    exchange, receive_ts = records["exchange_id"], records["receive_ts"]
    breaks = np.flatnonzero((exchange[1:] != exchange[:-1]) | (receive_ts[1:] != receive_ts[:-1])) + 1
    bounds = [0, *breaks.tolist(), len(records)]
    for start, stop in zip(bounds, bounds[1:]):
        yield records[start:stop], bool(chunk.catch_up[start])
