"""The features actor: one CNN row and one RL row per instrument, on every consolidated book.

For each instrument it writes into two rolling shared-memory tensors (``shm.features``:
the CNN input, T × 220, and the RL state, T × 30; layouts in :mod:`engine.features`,
docs/features.md) and then publishes ``features.<symbol>`` on the bus. Row ``n`` of
both tensors is computed from the same book at the same moment.

Cadence: a new book gets a row at once, unless the instrument's previous row is less than
``features.min_interval_ms`` old: then the row is written when that interval is up, from
the newest book by then. An instrument with a book gets a row at least every
``features.max_interval_ms``, new book or not. The actor sleeps on the book segments
themselves (:func:`shm.book.wait_for_publish`: a futex on each book's generation, which
the aggregator wakes as it publishes): no message, no forwarder, one wake-up. Where that is
not available (no C extension, an old kernel), the aggregator's ``book.<symbol>`` message on
the bus is the doorbell instead (its payload is not even decoded), through ZeroMQ's poll.
Either wait is in C without the GIL, so a wake-up costs no event-loop round trip; the loop
runs between two waits.

Ordering: a row is complete in shared memory (``FeatureWriter.append``) before its
messages are sent, so whoever a message wakes can read it. Two messages per row: the
whole row on the bus (``features.<symbol>``, through the supervisor's forwarder, for
remote consumers), and a small one on the actor's own PUB socket
(``endpoints.features_doorbell``, ipc), which is what ``Engine.wait_features`` sleeps on:
one ZeroMQ hop instead of two.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import zmq

from engine import bus
from engine.actor import Actor
from engine.features import LEVELS, BookSampler, FeatureComputer
from shm.book import BookReader, wait_for_publish
from shm.features import FeatureWriter
from shm.wake import CAN_WAIT

_LONGEST_WAIT_S = 0.1  # the event loop (heartbeat, signals) runs at least this often


@dataclass
class _Instrument:
    name: str
    topic: str
    sampler: BookSampler
    computer: FeatureComputer
    cnn: FeatureWriter
    rl: FeatureWriter
    last_row: float = 0.0  # monotonic time of the newest row
    seen: int = 0  # the book generation the last look at the segment found


class FeaturesActor(Actor):
    async def setup(self) -> None:
        directory = self.directory
        settings = self.config.features
        self.min_interval = settings.min_interval_ms / 1000
        self.max_interval = settings.max_interval_ms / 1000
        self.instruments: list[_Instrument] = []
        self.mode = directory.get("mode", "live")  # "replay" in a replay session: said on every row message
        feature_segments = directory["segments"]["features"]
        for name, segment in directory["segments"]["books"].items():
            reader = BookReader.attach(segment)
            members = len(directory["instruments"][name])
            self.instruments.append(
                _Instrument(
                    name, f"features.{name}", BookSampler(reader, LEVELS),
                    FeatureComputer(reader.exchanges, members, settings),
                    FeatureWriter.attach(feature_segments[name]["cnn"]),
                    FeatureWriter.attach(feature_segments[name]["rl"]),
                )
            )
        self.context = zmq.Context()
        endpoint = directory["endpoints"]["bus_subscribe"]
        self.books = None if CAN_WAIT else bus.Subscriber(self.context, endpoint, ["book."])
        self.readers = [instrument.sampler.reader for instrument in self.instruments]
        self.publisher = bus.Publisher(self.context, directory["endpoints"]["bus_publish"])
        self.doorbell = self.context.socket(zmq.PUB)
        self.doorbell.setsockopt(zmq.LINGER, 0)
        self.doorbell.bind(directory["endpoints"]["features_doorbell"])

    async def run(self) -> None:
        while not self.stopping.is_set():
            wait_s = min(self.write_due_rows(time.monotonic()), _LONGEST_WAIT_S)
            await asyncio.sleep(0)
            if self.books is None:
                if self.readers:  # a book published since write_due_rows looked returns at once
                    seen = [instrument.seen for instrument in self.instruments]
                    wait_for_publish(self.readers, seen, max(wait_s, 0.0))
                else:
                    await asyncio.sleep(wait_s)
            elif self.books.socket.poll(max(round(wait_s * 1000), 0)):
                self.drain_book_messages()

    def drain_book_messages(self) -> None:
        """The messages only say "a book changed": generations are read from shared memory."""
        socket = self.books.socket
        while True:
            try:
                socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return

    def write_due_rows(self, now: float) -> float:
        """Write every row that is due; return the seconds until the next one may be.

        Each row's doorbell goes out as soon as the row is readable; the rows' bus messages
        (a kilobyte each, for remote consumers) only once every due row is written, so that
        encoding them never delays another instrument's row."""
        next_due = _LONGEST_WAIT_S
        messages = []
        for instrument in self.instruments:
            sampler = instrument.sampler
            published = instrument.seen = sampler.published
            if not published:
                continue
            since = now - instrument.last_row
            fresh = published != sampler.generation
            if (fresh and since >= self.min_interval) or since >= self.max_interval:
                if (message := self.write_row(instrument, now)) is not None:
                    messages.append((instrument.topic, message))
                next_due = min(next_due, self.max_interval)
            elif fresh:
                next_due = min(next_due, self.min_interval - since)
            else:
                next_due = min(next_due, self.max_interval - since)
        for topic, message in messages:
            self.publisher.publish(topic, message)
        return next_due

    def write_row(self, instrument: _Instrument, now: float) -> dict | None:
        """Compute and append one row, ring its doorbell; return its bus message (None: the
        book could not be read)."""
        if not instrument.sampler.sample():
            self.log.warning("book_unreadable", symbol=instrument.name,
                             hint="the aggregator overwrote every slot while it was copied; retrying")
            return None
        cnn, rl = instrument.computer.compute(instrument.sampler, time.time_ns())
        book_ts = instrument.sampler.publish_ts
        sequence = instrument.cnn.append(cnn, book_ts)
        instrument.rl.append(rl, book_ts)
        written_ts = time.time_ns()
        instrument.last_row = now
        message = {"symbol": instrument.name, "seq": sequence, "ts": book_ts, "written_ts": written_ts}
        self.doorbell.send_multipart(bus.encode(instrument.topic, message), zmq.NOBLOCK)  # PUB drops, never blocks
        message.update(generation=instrument.sampler.generation, cnn=cnn.tobytes(), rl=rl.tobytes(), mode=self.mode)
        return message

    async def teardown(self) -> None:
        if (books := getattr(self, "books", None)) is not None:
            books.close()
        if (publisher := getattr(self, "publisher", None)) is not None:
            publisher.close()
        if (doorbell := getattr(self, "doorbell", None)) is not None:
            doorbell.close(linger=0)
        if (context := getattr(self, "context", None)) is not None:
            context.term()
        for instrument in getattr(self, "instruments", []):
            instrument.sampler.reader.close()
            instrument.cnn.close()
            instrument.rl.close()
