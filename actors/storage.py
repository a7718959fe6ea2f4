"""The storage actor: every event the engine saw, written in batches, nothing lost.

Sources, each read without loss or without blocking anyone:

- the **storage feed**, a shared-memory ring into which the aggregator copies every record
  it applied (book levels, snapshots, clears, statuses, heartbeats, trades), in order. A
  record's ``position`` is its index in that ring (it never wraps: indices are 64-bit
  counts), so ``(run_id, position)`` names it for good; ``run_id`` is the supervisor's start
  time. The feed's read index moves on only once the batch holding the records is durable
  (committed to the database, or appended to the spool), so a storage process killed
  mid-batch re-reads what it had not secured and the database's keys drop the repeats;
- the **feature tensors** in shared memory (rows newer than the last one stored; a tensor
  holds ``shm.feature_rows`` rows, so a stall longer than that loses the oldest);
- ``signal.`` messages on the bus;
- the **consolidated books**, sampled every ``storage.snapshot_interval_ms``: the top
  ``storage.snapshot_depth`` levels per side, per-exchange state, metrics and buckets,
  stamped with the feed position they follow (their sequence point).

OHLCV bars (1 s and 1 min; per exchange, and ``*`` across the exchanges of a symbol) are
derived from the trades as they are stored and written with them in one transaction, so a
bar never counts a trade the database does not have. Bars are keyed by the trade's exchange
time (its receive time where the exchange gives none).

While the database is down or slow (:class:`engine.storage.DatabaseUnavailable`) batches go
to the disk spool (``storage.spool_dir``) and are written back in order once it answers; new
batches queue behind the spool, so order is kept. The spool's size is capped
(``storage.spool_max_bytes``); past it storage stops reading the feed, which then fills and
the aggregator counts what it refuses (said in the log of both).

Records the replay actor wrote (``Flag.REPLAYED``) are not stored again.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from engine.actor import Actor
from engine.bus import Subscriber
from engine.storage import ALL_EXCHANGES, DatabaseUnavailable, EventBatch, configured_backend, snapshot_payload
from engine.storage.spool import Spool, SpoolFull
from shm.book import BookReader
from shm.features import FeatureReader
from shm.records import Flag, Kind
from shm.ring import Ring

BAR_INTERVALS_S = (1, 60)
LATE_S = 10  # seconds a bar stays open for trades stamped out of order
FEATURE_ROWS_SLACK = 256
BAR_FIELDS = ("open_ts", "open", "high", "low", "close", "volume", "notional", "trades")  # Bar's, in order
DATABASE_RETRY_S = 1.0  # while the database is away, batches go straight to the spool between tries


@dataclass
class Bar:
    open_ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    notional: float = 0.0
    trades: int = 0


@dataclass
class Bars:
    """The bars being filled, per (interval, exchange or ``*``, symbol) and bar start.

    Recent bars stay open for late trades: venues' clocks differ, so the ``*`` bars of a symbol
    get trades slightly out of time order. A bar is kept while its start is within
    ``max(LATE_S, 2 intervals)`` of the newest bar of its key; a trade for an older one is
    stored but not counted (``late``).
    """

    bars: dict[tuple[int, str, str], dict[int, Bar]] = field(default_factory=dict)
    changed: set[tuple[tuple[int, str, str], int]] = field(default_factory=set)
    late: int = 0

    def seed(self, stored: Any) -> None:
        """Continue from stored bars (after a restart): ``ohlcv`` rows read back, or a batch's columns."""
        columns = [stored[name].tolist() for name in ("interval_s", "exchange", "symbol", *BAR_FIELDS)]
        for interval, exchange, symbol, *values in zip(*columns):
            self.bars.setdefault((interval, str(exchange), str(symbol)), {})[values[0]] = Bar(*values)

    def add(self, exchange: str, symbol: str, ts: int, price: float, size: float) -> None:
        for interval in BAR_INTERVALS_S:
            open_ts = ts - ts % (interval * 1_000_000_000)
            for venue in (exchange, ALL_EXCHANGES):
                key = (interval, venue, symbol)
                open_bars = self.bars.setdefault(key, {})
                bar = open_bars.get(open_ts)
                if bar is None:
                    if open_bars and open_ts < max(open_bars) - _keep_ns(interval):
                        self.late += 1
                        continue
                    bar = open_bars[open_ts] = Bar(open_ts, price, price, price, price)
                bar.high, bar.low, bar.close = max(bar.high, price), min(bar.low, price), price
                bar.volume += size
                bar.notional += price * size
                bar.trades += 1
                self.changed.add((key, open_ts))

    def take_changed(self) -> dict[str, list] | None:
        """The bars that changed since the last call, as ``ohlcv`` columns; old bars are let go."""
        if not self.changed:
            return None
        columns: dict[str, list] = {name: [] for name in ("interval_s", "exchange", "symbol", *BAR_FIELDS)}
        for key, open_ts in sorted(self.changed):
            bar = self.bars[key][open_ts]
            for name, value in zip(("interval_s", "exchange", "symbol"), key):
                columns[name].append(value)
            for name in BAR_FIELDS:
                columns[name].append(getattr(bar, name))
        for key in {key for key, _ in self.changed}:
            open_bars = self.bars[key]
            oldest = max(open_bars) - _keep_ns(key[0])
            for open_ts in [open_ts for open_ts in open_bars if open_ts < oldest]:
                del open_bars[open_ts]
        self.changed.clear()
        return columns


def _keep_ns(interval_s: int) -> int:
    return max(LATE_S, 2 * interval_s) * 1_000_000_000


@dataclass
class Pending:
    """What the next write holds: its batch and how far it takes each source."""

    batch: EventBatch
    feed_records: int  # feed records to commit once the batch is durable
    feature_sequences: dict[tuple[str, str], int]


class StorageActor(Actor):
    async def setup(self) -> None:
        directory = self.directory
        settings = self.config.storage
        self.settings = settings
        self.run_id = int(directory["started_ns"])
        self.exchange_names = [name for name, _ in sorted(directory["exchanges"].items(), key=lambda item: item[1])]
        self.symbols: list[str] = list(directory["symbols"])
        self.feed = Ring.attach(directory["segments"]["storage_feed"])
        self.feed.become_consumer()
        self.backend = configured_backend(settings)
        self.migrated = False
        self.spool = Spool(settings.spool_dir, max_bytes=settings.spool_max_bytes, fsync=settings.spool_fsync,
                           fsync_interval_ms=settings.spool_fsync_ms)
        self.database_up = True
        self.held: Pending | None = None  # a batch neither the database nor the spool took yet
        self.retry_at = 0.0
        self.spool_full_logged = False
        self.books = {name: BookReader.attach(segment) for name, segment in directory["segments"]["books"].items()}
        self.next_snapshot = {name: 0.0 for name in self.books}
        self.feature_readers = {
            (name, kind): FeatureReader.attach(segment)
            for name, kinds in directory["segments"]["features"].items() for kind, segment in kinds.items()
        }
        self.feature_layout = int(directory["layouts"]["feature_schema"])
        self.context = zmq.Context()
        self.signals = Subscriber(self.context, directory["endpoints"]["bus_subscribe"], ["signal."])
        self.spooled_batches = 0
        self.bars = Bars()
        self.late_reported = 0
        self.resume()

    def resume(self) -> None:
        """Pick up where a previous storage process of this run stopped.

        Feed records it had secured are re-read (the feed commits only after a write) and
        their rows skipped by the database's keys; bars continue from the stored ones, and
        trades at positions already stored are not counted into them again.
        """
        stored, self.feature_sequences = -1, {key: 0 for key in self.feature_readers}
        try:
            self.ensure_schema()
            stored = self.backend.last_position(self.run_id, since_ns=self.run_id)
            self.feature_sequences = {  # row sequences start again with every run
                key: self.backend.last_feature_sequence(*key, since_ns=self.run_id) for key in self.feature_readers
            }
            since = time.time_ns() - 2 * max(BAR_INTERVALS_S) * 1_000_000_000
            for rows in self.backend.read("ohlcv", since, time.time_ns() + 3600 * 1_000_000_000):
                self.bars.seed(rows)
        except DatabaseUnavailable as error:
            self.database_down(error)
        for entry in self.spool.iterate():  # what the database does not have yet
            batch = EventBatch.from_bytes(entry.payload)
            self.bars.seed(batch.columns("ohlcv"))
            for table in ("book_events", "trades"):
                columns = batch.columns(table)
                mine = columns["position"][columns["run_id"] == self.run_id]
                stored = max(stored, int(mine.max())) if len(mine) else stored
        self.counted_up_to = stored

    def ensure_schema(self) -> None:
        """Connect and bring the database to this code's schema, once (DatabaseUnavailable if it is away)."""
        if not self.migrated:
            self.backend.open()
            self.backend.migrate()
            self.migrated = True

    async def run(self) -> None:
        """Flush on a worker thread, so a slow or hanging database never stops the heartbeat."""
        flush_s = self.settings.flush_ms / 1000
        next_flush = time.monotonic() + flush_s
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= next_flush or self.feed.available() >= self.settings.batch_records:
                await asyncio.to_thread(self.flush)
                next_flush = time.monotonic() + flush_s
            await asyncio.sleep(min(max(next_flush - time.monotonic(), 0.0), 0.05))

    def flush(self) -> None:
        """Secure one batch of everything new: database first, spool when it is away.

        A batch neither could take (spool full) is held and tried again before anything new is
        read, so nothing taken from the bus or counted into bars is dropped meanwhile.
        """
        spool_only = not self.database_up and time.monotonic() < self.retry_at
        if not spool_only and not self.drain_spool():
            spool_only = True
        if self.held is None:
            self.held = self.collect()
        if self.held is not None and self.secure(self.held, spool_only):
            self.held = None
        self.spool.flush()

    def secure(self, pending: Pending, spool_only: bool) -> bool:
        """Write ``pending`` to the database, or else to the spool; False if neither took it."""
        if not spool_only:
            try:
                self.ensure_schema()
                self.backend.write(pending.batch)
                self.database_answered()
                self.mark_secured(pending)
                return True
            except DatabaseUnavailable as error:
                self.database_down(error)
        try:
            self.spool.append(pending.batch.to_bytes())
        except SpoolFull as error:
            if not self.spool_full_logged:
                self.spool_full_logged = True
                self.log.error("spool_full", error=str(error),
                               hint="storage stops reading the feed until the database is back or "
                                    "storage.spool_max_bytes is raised; the feed then fills and loses events")
            return False
        self.spooled_batches += 1
        self.mark_secured(pending)
        return True

    def mark_secured(self, pending: Pending) -> None:
        self.feed.commit(pending.feed_records)
        self.feature_sequences.update(pending.feature_sequences)

    def database_down(self, error: Exception) -> None:
        self.retry_at = time.monotonic() + DATABASE_RETRY_S
        if self.database_up:
            self.database_up = False
            self.log.error("database_unavailable", error=str(error),
                           hint="spooling to disk until it answers again; nothing is lost meanwhile")

    def drain_spool(self) -> bool:
        """Write spooled batches back, oldest first; True once the spool is empty."""
        for entry in self.spool.iterate():
            try:
                self.ensure_schema()
                self.backend.write(EventBatch.from_bytes(entry.payload))
            except DatabaseUnavailable as error:
                self.database_down(error)
                return False
            self.database_answered()
            self.spool.acknowledge(entry)
        return True

    def database_answered(self) -> None:
        if not self.database_up:
            self.database_up = True
            self.spool_full_logged = False
            self.log.info("database_back", spooled_batches=self.spooled_batches)

    # ---- collecting ----------------------------------------------------------------------

    def collect(self) -> Pending | None:
        missed = self.feed.take_missed()
        if missed:
            self.log.error("storage_feed_overflowed", records=missed,
                           hint="these events were never stored: storage fell behind the aggregator")
        position = self.feed.read_position
        records = self.feed.read(self.settings.batch_records)
        tables: dict[str, Any] = {}
        if len(records):
            tables.update(self.records_to_tables(records, position))
        snapshots = self.consolidated_snapshots(position + len(records))
        if snapshots:
            tables["consolidated_snapshots"] = snapshots
        features, sequences = self.new_feature_rows()
        if features:
            tables["features"] = features
        if signals := self.new_signals():
            tables["signals"] = signals
        if self.bars.late > self.late_reported:
            self.log.warning("late_trades_not_in_bars", trades=self.bars.late - self.late_reported,
                             hint=f"stored, but stamped over {LATE_S} s before their bar's newest: a venue's clock is off")
            self.late_reported = self.bars.late
        if bars := self.bars.take_changed():
            tables["ohlcv"] = bars
        if not tables and not len(records):
            return None
        return Pending(EventBatch(**tables), len(records), sequences)

    def records_to_tables(self, records: np.ndarray, position: int) -> dict[str, Any]:
        positions = np.arange(position, position + len(records), dtype=np.int64)
        keep = (records["flags"] & Flag.REPLAYED) == 0
        if not keep.all():
            records, positions = records[keep], positions[keep]
        unstamped = records["receive_ts"] == 0
        if unstamped.any():  # never in practice; the key needs a time, and the nearest one is kept
            stamped = records["receive_ts"][~unstamped]
            records = records.copy()  # not the feed's own records
            records["receive_ts"][unstamped] = int(stamped.max()) if len(stamped) else time.time_ns()
        batch = EventBatch.from_records(records, run_id=self.run_id, positions=positions,
                                        exchanges=self.exchange_names, symbols=self.symbols)
        trades = (records["kind"] == Kind.TRADE) & (positions > self.counted_up_to)
        for record in records[trades].tolist():
            (exchange_ts, receive_ts, price, size, _sequence, _aux, symbol_id, _orders, exchange, *_rest) = record
            self.bars.add(self.exchange_names[exchange], self.symbols[symbol_id], exchange_ts or receive_ts, price, size)
        if len(positions):
            self.counted_up_to = max(self.counted_up_to, int(positions[-1]))
        return {name: batch.columns(name) for name in ("book_events", "trades", "status_events", "record_blocks")}

    def consolidated_snapshots(self, position: int) -> dict[str, list] | None:
        interval = self.settings.snapshot_interval_ms / 1000
        if interval <= 0:
            return None
        now = time.monotonic()
        columns: dict[str, list] = {name: [] for name in ("run_id", "position", "symbol", "ts", "generation", "payload")}
        for name, reader in self.books.items():
            if now < self.next_snapshot[name] or reader.generation == 0:
                continue
            self.next_snapshot[name] = now + interval
            slot = reader.snapshot()
            for column, value in (("run_id", self.run_id), ("position", position), ("symbol", name),
                                  ("ts", int(slot["publish_ts"])), ("generation", int(slot["generation"])),
                                  ("payload", snapshot_payload(slot, self.settings.snapshot_depth))):
                columns[column].append(value)
        return columns if columns["symbol"] else None

    def new_feature_rows(self) -> tuple[dict[str, list] | None, dict[tuple[str, str], int]]:
        columns: dict[str, list] = {name: [] for name in ("symbol", "kind", "sequence", "ts", "layout_version", "values")}
        reached = {}
        for (name, kind), reader in self.feature_readers.items():
            stored = self.feature_sequences.get((name, kind), 0)
            if reader.rows_written <= stored:
                continue
            # The newest rows, with room for rows appended while this runs (latest() counts from
            # the newest row it sees, not from ``stored``); those already stored are dropped below.
            window = reader.latest(min(reader.rows_written - stored + FEATURE_ROWS_SLACK, reader.rows))
            values, stamps, sequences = window.values.copy(), window.timestamps.copy(), window.sequences.copy()
            if not window.valid():
                continue  # overwritten while copied: taken at the next flush
            new = sequences > stored
            values, stamps, sequences = values[new], stamps[new], sequences[new]
            count = len(sequences)
            if not count:
                continue
            if int(sequences[0]) > stored + 1:
                self.log.warning("feature_rows_lost", symbol=name, kind=kind, rows=int(sequences[0]) - stored - 1,
                                 hint="storage fell more than shm.feature_rows behind the features actor")
            columns["symbol"] += [name] * count
            columns["kind"] += [kind] * count
            columns["sequence"] += sequences.astype(np.int64).tolist()
            columns["ts"] += stamps.tolist()
            columns["layout_version"] += [self.feature_layout] * count
            columns["values"] += [row.tobytes() for row in values]
            reached[(name, kind)] = int(sequences[-1])
        return (columns if columns["symbol"] else None), reached

    def new_signals(self) -> dict[str, list] | None:
        columns: dict[str, list] = {name: [] for name in ("symbol", "kind", "signal_id", "state", "ts", "payload")}
        while (message := self.signals.receive(0)) is not None:
            _, signal = message
            try:
                row = (str(signal["symbol"]), str(signal["kind"]), int(signal["id"]), str(signal["state"]),
                       int(signal["ts"]), json.dumps(signal, separators=(",", ":"), default=str))
            except (KeyError, TypeError, ValueError) as error:
                self.log.warning("bad_signal_message", error=str(error), sample=str(signal)[:200])
                continue
            for column, value in zip(columns, row):
                columns[column].append(value)
        return columns if columns["symbol"] else None

    async def teardown(self) -> None:
        """Secure what is pending, then release everything setup took (also half-way)."""
        if getattr(self, "spool", None) is not None and getattr(self, "feed", None) is not None:
            try:
                self.flush()
            except Exception:
                self.log.exception("final_flush_failed", hint="the feed keeps what was not secured for the next start")
        if (subscriber := getattr(self, "signals", None)) is not None:
            subscriber.close()
        if (context := getattr(self, "context", None)) is not None:
            context.term()
        for reader in [*getattr(self, "books", {}).values(), *getattr(self, "feature_readers", {}).values()]:
            reader.close()
        if (spool := getattr(self, "spool", None)) is not None:
            spool.close()
        if (backend := getattr(self, "backend", None)) is not None:
            backend.close()
        if (feed := getattr(self, "feed", None)) is not None:
            feed.close()
