"""The aggregator: drains every connector ring, keeps each exchange's book per market,
consolidates them per instrument (:mod:`engine.cob`) into shared memory, and publishes a
summary of each book on the bus.

Trust rules (what keeps a bad exchange book out of the consolidated one):

- A market book enters its instruments only through ``SNAPSHOT_END`` (it is then
  IN_SYNC); snapshot levels are built aside and swapped in whole, so no reader ever sees
  half a snapshot.
- ``CLEAR`` and every ``STATUS`` record (connecting, resyncing, disconnected, …) drop the
  affected books and exclude them until their next snapshot.
- Records a producer had to drop (ring overflow) → every book of that exchange is dropped
  until the producer re-sends snapshots (which it does after any refused write).
- A producer process that died → its books are dropped and marked DISCONNECTED; the
  restarted connector starts with fresh snapshots.
- No record (not even a heartbeat) for ``aggregator.stale_after_s`` → the exchange is
  STALE and excluded until records flow again; its books come back whole, as kept.
- A book crossed within one exchange is an error of that exchange: it is excluded (ERROR,
  CROSSED) and the connector is asked to re-send its snapshots. Books crossed *across*
  exchanges are shown as they are: that is an arbitrage, not an error.
- A market converted at a live rate is in only while its rate book is in sync.

Publishing is batched: records are applied as they are drained, and each changed
instrument is republished at most every ``aggregator.publish_interval_ms`` (the first
change after a quiet spell is published at once). Metrics are computed for every
published book; buckets at most every ``buckets.refresh_ms`` (each slot says which book
generation its buckets were computed on; clients compute them on demand for any book).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import psutil
import zmq
import zmq.asyncio

from engine.actor import Actor
from engine.bus import Publisher
from engine.cob import ConsolidatedBook, Conversion, MemberSpec
from engine.instruments import InstrumentPlan, Member, instrument_plans
from engine.microstructure import (
    AnalyticsSettings, SideArrays, fill_buckets, fill_metrics, kernel, kernel_metrics_arguments,
)
from shm import wake
from shm.book import FIRST_EXCHANGE, ORDERS, PRICE, SIZE, BookWriter, slot_field_run
from shm.records import ALL_SYMBOLS, Kind, Reason, Side, Status
from shm.ring import Ring

_LIVENESS_CHECK_S = 0.2
DRAIN_QUANTUM = 16384  # records taken from one ring per pass: a flooding exchange cannot starve the others
BUSY_YIELD_S = 0.02  # the event loop (heartbeat, signals) runs this often, busy or idle
TOP_SEARCH_ROWS = 64
EXCHANGE_BLOCK = ("exchange_included", "exchange_receive_ts")  # the slot's per-exchange fields, first and last


class ExchangeBook:
    """The aggregator's copy of one exchange's book of one market."""

    __slots__ = (
        "bids", "asks", "bid_orders", "ask_orders", "staging", "status", "reason", "since_ns",
        "sequence", "exchange_ts", "receive_ts",
    )

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.bid_orders: dict[float, int] = {}  # only levels whose exchange gives a count
        self.ask_orders: dict[float, int] = {}
        self.staging: tuple[dict, dict, dict, dict] | None = None
        self.status = Status.UNKNOWN
        self.reason = Reason.NONE
        self.since_ns = 0
        self.sequence = 0
        self.exchange_ts = 0
        self.receive_ts = 0

    def drop(self, status: Status, reason: Reason, now_ns: int) -> bool:
        """Forget the book; True if its visible state changed."""
        changed = self.status != status or bool(self.bids) or bool(self.asks)
        self.bids, self.asks, self.bid_orders, self.ask_orders, self.staging = {}, {}, {}, {}, None
        if self.status != status:
            self.status, self.reason, self.since_ns = status, reason, now_ns
        return changed

    def mid(self) -> float | None:
        if not (self.bids and self.asks):
            return None
        return (max(self.bids) + min(self.asks)) / 2


@dataclass
class Instrument:
    """One consolidated book and what publishing it needs.

    A plain instrument has one column per exchange id, so its working top has the
    published layout and a publish is one copy; a synthetic one has a column per member
    market, summed into its exchange's column when published.
    """

    index: int
    plan: InstrumentPlan
    book: ConsolidatedBook
    writer: BookWriter
    columns: list[int]  # column of each plan member
    column_exchange: np.ndarray  # exchange id of each column
    direct: bool  # column == exchange id
    analytics: AnalyticsSettings
    rates: list[float] = field(default_factory=list)  # per column: the rate it is in with

    def member(self, column: int) -> Member:
        return self.plan.members[self.columns.index(column)]

    def members_by_column(self) -> list[tuple[int, Member]]:
        return list(zip(self.columns, self.plan.members))
    records_applied: int = 0
    last_publish: float = 0.0
    last_buckets: float = 0.0
    buckets_due: bool = True
    buckets_computed: int = 0  # how many times the buckets were computed
    slot_buckets: list[int] = field(default_factory=list)  # per slot: which computation its buckets hold
    views: list[dict[str, np.ndarray]] = field(default_factory=list)  # per slot: its fields as arrays
    exchange_image: np.ndarray | None = None  # the slot's per-exchange fields as bytes, filled, then copied whole
    exchange_fields: dict[str, memoryview] = field(default_factory=dict)  # typed views of the image, by field
    exchange_best: tuple[np.ndarray, ...] = ()  # the image's best bid and best ask per exchange, as arrays
    member_exchanges: list[int] = field(default_factory=list)  # the exchanges with a market in the instrument
    member_books: list[tuple[int, int, "ExchangeBook"]] = field(default_factory=list)  # (column, exchange, book)
    tops: tuple[np.ndarray, ...] = ()  # per column: best bid, its size, best ask, its size (reused)
    column_exchange_ids: np.ndarray | None = None  # int64 column → exchange id, None when direct
    message_fields: list[tuple[str, int]] = field(default_factory=list)  # metrics on the bus: (name, word)
    imbalance_slot: slice = field(default_factory=lambda: slice(0))
    cross_spread_bps_slot: int = 0

    def __post_init__(self) -> None:
        self.slot_buckets = [-1] * self.writer.slot_count
        self.tops = tuple(np.zeros(len(self.column_exchange)) for _ in range(4))
        if not self.direct:
            self.column_exchange_ids = self.column_exchange.astype(np.int64)
        slots = self.writer.slots
        names = slots.dtype.names
        first, last = (names.index(name) for name in EXCHANGE_BLOCK)
        block, self.exchange_image, fields = slot_field_run(slots.dtype, names[first : last + 1])
        self.exchange_fields = {name: memoryview(view) for name, view in fields.items()}
        self.exchange_best = (fields["exchange_best_bid"], fields["exchange_best_ask"])
        self.views = [
            {name: slots[name][index : index + 1] if not slots.dtype[name].shape else slots[name][index]
             for name in slots.dtype.names}
            for index in range(self.writer.slot_count)
        ]
        metric_slots = _metric_slots(slots.dtype["metrics"])
        for index, views in enumerate(self.views):  # copied as bytes: a struct copy goes field by field
            views["buckets_bytes"] = slots["buckets"][index : index + 1].view(np.uint8)
            # the metrics record as float64 (what the bus message reads) and its generation
            views["metrics_floats"] = slots["metrics"][index : index + 1].view(np.float64)
            views["metrics_generation"] = views["metrics_floats"].view(np.uint64)[metric_slots["generation"]]
            views["exchange_bytes"] = memoryview(slots[index : index + 1].view(np.uint8))[block]
            if kernel is not None:
                views["metrics_arguments"] = kernel_metrics_arguments(self.analytics, views["metrics"][0])
        self.message_fields = [(name, metric_slots[name].start) for name in ("mid", "vw_mid", "spread_bps")]
        self.imbalance_slot = metric_slots["imbalance"]
        self.cross_spread_bps_slot = metric_slots["cross_spread_bps"].start


def _side_arrays(levels: np.ndarray, count: int) -> SideArrays:
    """The first ``count`` rows of a published level matrix as the analytics take them."""
    return SideArrays(levels[:count, PRICE], levels[:count, SIZE], levels[:count, ORDERS], levels[:count, FIRST_EXCHANGE:])


def _metric_slots(dtype: np.dtype) -> dict[str, slice]:
    """Where each float64 or uint64 field of a metrics record lies in the record seen as 8-byte words."""
    return {
        name: slice(offset // 8, (offset + field.itemsize) // 8)
        for name, (field, offset, *_) in dtype.fields.items()
        if field.base.itemsize == 8
    }


class AggregatorActor(Actor):
    async def setup(self) -> None:
        directory = self.directory
        self.exchange_ids: dict[str, int] = directory["exchanges"]
        self.exchange_names = {index: name for name, index in self.exchange_ids.items()}
        self.symbols: list[str] = directory["symbols"]
        self.rings: dict[int, Ring] = {}
        for name, segment in directory["segments"]["rings"].items():
            handle = Ring.attach(segment)
            handle.become_consumer()
            handle.request_resnapshot()  # whatever is queued is relative to books we do not have
            self.rings[self.exchange_ids[name]] = handle
        self.mode = directory.get("mode", "live")  # "replay" in a replay session: said on every message
        self.storage_feed: Ring | None = None
        if feed := directory["segments"].get("storage_feed"):
            self.storage_feed = Ring.attach(feed)
            self.storage_feed.become_producer()
        self.storage_refused_at = 0.0
        self.exchange_count = max(len(self.exchange_ids), 1)
        self.books = [[ExchangeBook() for _ in range(self.exchange_count)] for _ in self.symbols]
        config = self.config
        self.depth = config.shm.book_depth
        self.instruments: list[Instrument] = []
        # (symbol id, exchange id) → the (instrument, column) pairs that market feeds
        self.feeds: dict[tuple[int, int], list[tuple[Instrument, int]]] = {}
        self.rate_users: dict[tuple[int, int], list[tuple[Instrument, int]]] = {}
        for index, plan in enumerate(instrument_plans(config)):
            writer = BookWriter.attach(directory["segments"]["books"][plan.name])
            direct = all(member.rate_book is None for member in plan.members) and len(
                {member.exchange for member in plan.members}
            ) == len(plan.members)
            if direct:
                columns = [member.exchange for member in plan.members]
                column_exchange = np.arange(writer.exchanges)
            else:
                columns = list(range(len(plan.members)))
                column_exchange = np.array([member.exchange for member in plan.members], dtype=np.intp)
            specs = [MemberSpec(int(exchange), -1) for exchange in column_exchange]
            for member, column in zip(plan.members, columns):
                specs[column] = MemberSpec(member.exchange, member.symbol)
            instrument = Instrument(
                index, plan, ConsolidatedBook(plan.name, specs, writer.depth, plan.tick), writer, columns,
                column_exchange, direct,
                AnalyticsSettings(
                    tuple(config.metrics.imbalance_bps), tuple(config.metrics.depth_steps_bps),
                    config.metrics.dominance_bps, config.metrics.liquidity_decay_bps, config.buckets.bps,
                    plan.absolute_unit,
                ),
                rates=[0.0] * len(specs),
            )
            instrument.member_books = [
                (column, member.exchange, self.books[member.symbol][member.exchange])
                for column, member in instrument.members_by_column()
            ]
            instrument.member_exchanges = sorted({member.exchange for member in plan.members})
            self.instruments.append(instrument)
            for member, column in zip(plan.members, columns):
                self.feeds.setdefault((member.symbol, member.exchange), []).append((instrument, column))
                if member.rate_book is not None:
                    rate_exchange, rate_symbol = member.rate_book
                    self.rate_users.setdefault((rate_symbol, rate_exchange), []).append((instrument, column))
        self.feeds_by_market = [  # [symbol id][exchange id] → (instrument, column, its book)
            [[(instrument, column, instrument.book) for instrument, column in self.feeds.get((symbol, exchange), ())]
             for exchange in range(self.exchange_count)]
            for symbol in range(len(self.symbols))
        ]
        self.dirty: set[int] = set(range(len(self.instruments)))
        self.last_activity = {index: time.monotonic() for index in self.rings}
        self.stale: set[int] = set()
        self.producers: dict[int, tuple[int, psutil.Process | None]] = {}
        self.context = zmq.asyncio.Context()
        self.doorbell = self.context.socket(zmq.PULL)
        self.doorbell.bind(directory["endpoints"]["doorbell_aggregator"])
        # Draining uses a blocking-API shadow of the same socket: on the asyncio socket a
        # NOBLOCK recv returns a future instead of raising zmq.Again.
        self.doorbell_drain = zmq.Socket.shadow(self.doorbell.underlying)
        # Publishing is fire and forget (NOBLOCK) and never awaited: a plain socket on a shadow of
        # the same context skips the asyncio socket's future bookkeeping (~20 µs a message).
        self.publisher = Publisher(zmq.Context.shadow(self.context.underlying), directory["endpoints"]["bus_publish"])
        settings = config.aggregator
        self.publish_interval = settings.publish_interval_ms / 1000
        self.buckets_interval = config.buckets.refresh_ms / 1000
        self.stale_after = settings.stale_after_s
        self.doorbell_timeout_ms = settings.doorbell_timeout_ms

    async def run(self) -> None:
        next_liveness = next_yield = 0.0
        while not self.stopping.is_set():
            self.drain()
            now = time.monotonic()
            if now >= next_liveness:
                self.check_liveness(now)
                self.refresh_rates()
                next_liveness = now + _LIVENESS_CHECK_S
            wait_s = self.publish_due(now)
            if now >= next_yield:  # heartbeat and signal handlers: a turn of the loop at most this often,
                await asyncio.sleep(0)  # busy or idle (each turn costs tens of µs a frame would wait for)
                next_yield = time.monotonic() + BUSY_YIELD_S
            self.wait_for_records(wait_s)

    def wait_for_records(self, wait_s: float | None) -> None:
        """Block on the doorbell until a producer writes (or a publish/liveness check is due);
        return at once if a ring already holds records.

        The wait is ZeroMQ's own poll, in C with the GIL released, not the event loop's: a
        wake-up through asyncio costs tens of microseconds the first record of a quiet
        spell would wait for. A wait is at most ``aggregator.doorbell_timeout_ms``. Checking
        the rings here (``prepare_to_wait``) is what makes a second pass over empty rings
        after each drain unnecessary.
        """
        timeout_ms = self.doorbell_timeout_ms if wait_s is None else min(self.doorbell_timeout_ms, wait_s * 1000)
        waiting = [ring.prepare_to_wait() for ring in self.rings.values()]
        try:
            if not all(waiting):
                return
            if wake.CAN_WAIT:  # asleep on every ring's write index at once: a producer's write wakes it
                wake.wait_any([(ring.write_word, ring.read_position) for ring in self.rings.values()],
                              max(timeout_ms, 0.0) / 1000)
                return
            doorbell = self.doorbell_drain
            if doorbell.poll(max(round(timeout_ms), 0)):
                while doorbell.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # the rings pending, without an exception
                    doorbell.recv(zmq.NOBLOCK)
        finally:
            for ring in self.rings.values():
                ring.done_waiting()

    # ---- applying records ------------------------------------------------------------

    def drain(self) -> int:
        total = 0
        now_ns = time.time_ns()
        for exchange, ring in self.rings.items():
            missed = ring.take_missed()
            if missed:
                self.log.warning(
                    "ring_records_missed",
                    exchange=self.exchange_names[exchange],
                    records=missed,
                    hint="the aggregator fell behind; books dropped until the connector re-sends snapshots",
                )
                self.drop_exchange(exchange, Status.RESYNCING, Reason.RING_OVERFLOW, now_ns)
            applied = 0
            while applied < DRAIN_QUANTUM and len(batch := ring.read(DRAIN_QUANTUM - applied)):
                self.apply(batch)
                if self.storage_feed is not None:
                    self.forward_to_storage(batch)
                ring.commit(len(batch))
                applied += len(batch)
            total += applied
            if applied:
                self.last_activity[exchange] = time.monotonic()
                if exchange in self.stale:
                    self.stale.discard(exchange)
                    self.refresh_exchange(exchange, now_ns)
        return total

    def forward_to_storage(self, batch: np.ndarray) -> None:
        """Every applied record goes on to storage, in order; the aggregator never waits for it.

        A batch the feed cannot take is refused whole and counted by the ring (storage
        reports the loss from its side); this log line repeats at most every 5 s.
        """
        if not self.storage_feed.write(batch):
            now = time.monotonic()
            if now - self.storage_refused_at >= 5.0:
                self.storage_refused_at = now
                self.log.error("storage_feed_full", records=len(batch),
                               hint="storage is not keeping up: check its log and the database; raise "
                                    "storage.feed_records for longer stalls")

    def apply(self, batch: np.ndarray) -> None:
        books = self.books
        feeds = self.feeds_by_market
        dirty = self.dirty
        symbol_count = len(self.symbols)
        level, bid, in_sync = Kind.LEVEL, Side.BID, Status.IN_SYNC  # locals: enum lookups cost per record
        for record in batch.tolist():
            (exchange_ts, receive_ts, price, size, sequence, aux, symbol_id, orders, exchange, kind, side,
             _flags, reason) = record
            receive_ts = receive_ts or time.time_ns()
            if symbol_id == ALL_SYMBOLS:
                if kind == Kind.STATUS:
                    for index in range(symbol_count):
                        self.change_status(index, exchange, Status(aux), Reason(reason), receive_ts)
                continue
            if symbol_id >= symbol_count or exchange >= self.exchange_count:
                continue
            book = books[symbol_id][exchange]
            if kind == level:
                is_bid = side == bid
                staging = book.staging
                if staging is not None:
                    levels, counts = (staging[0], staging[2]) if is_bid else (staging[1], staging[3])
                elif book.status == in_sync:
                    levels, counts = (book.bids, book.bid_orders) if is_bid else (book.asks, book.ask_orders)
                    for instrument, column, consolidated in feeds[symbol_id][exchange]:
                        if consolidated.included[column]:
                            if consolidated.converted[column] is None:
                                (consolidated.bids if is_bid else consolidated.asks).set(column, price, size, orders)
                            else:
                                consolidated.set_level(column, is_bid, price, size, orders)
                            instrument.records_applied += 1
                            dirty.add(instrument.index)
                else:
                    continue  # a delta for a book we do not trust: its snapshot will follow
                if size > 0.0:
                    levels[price] = size
                    if orders:
                        counts[price] = orders
                    elif counts:
                        counts.pop(price, None)
                else:
                    levels.pop(price, None)
                    if counts:
                        counts.pop(price, None)
                book.sequence, book.exchange_ts, book.receive_ts = sequence, exchange_ts, receive_ts
            elif kind == Kind.SNAPSHOT_BEGIN:
                book.staging = ({}, {}, {}, {})
            elif kind == Kind.SNAPSHOT_END:
                if book.staging is not None:
                    self.swap_in(symbol_id, exchange, book, receive_ts)
                    book.sequence, book.exchange_ts, book.receive_ts = sequence, exchange_ts, receive_ts
            elif kind == Kind.CLEAR:
                self.change_status(symbol_id, exchange, Status.RESYNCING, Reason(reason), receive_ts)
            elif kind == Kind.STATUS:
                self.change_status(symbol_id, exchange, Status(aux), Reason(reason), receive_ts)
            elif kind == Kind.TRADE:
                self.publisher.publish(
                    f"trade.{self.symbols[symbol_id]}",
                    {
                        "exchange": self.exchange_names[exchange],
                        "price": price,
                        "size": size,
                        "side": Side(side).name.lower(),
                        "trade_id": aux,
                        "exchange_ts": exchange_ts,
                        "receive_ts": receive_ts,
                        "mode": self.mode,
                    },
                )
            elif kind == Kind.HEARTBEAT:
                book.exchange_ts = max(book.exchange_ts, exchange_ts)

    def swap_in(self, symbol_id: int, exchange: int, book: ExchangeBook, now_ns: int) -> None:
        """A complete snapshot replaces the book; instruments already holding it take the difference."""
        old = (book.bids, book.asks)
        book.bids, book.asks, book.bid_orders, book.ask_orders = book.staging
        book.staging = None
        for instrument, column in self.feeds.get((symbol_id, exchange), ()):
            if instrument.book.included[column]:
                instrument.book.replace(column, old, (book.bids, book.asks), (book.bid_orders, book.ask_orders))
                self.dirty.add(instrument.index)
        if book.status != Status.IN_SYNC:
            book.status, book.reason, book.since_ns = Status.IN_SYNC, Reason.NONE, now_ns
            self.publish_status(symbol_id, exchange, book)
            self.refresh_market(symbol_id, exchange)
        self.refresh_rate_users(symbol_id, exchange)

    def change_status(self, symbol_id: int, exchange: int, status: Status, reason: Reason, now_ns: int) -> None:
        book = self.books[symbol_id][exchange]
        if status == Status.IN_SYNC:
            return  # only a complete snapshot makes a book trusted
        if book.drop(status, reason, now_ns):
            self.publish_status(symbol_id, exchange, book)
            self.refresh_market(symbol_id, exchange)
            self.refresh_rate_users(symbol_id, exchange)

    def drop_exchange(self, exchange: int, status: Status, reason: Reason, now_ns: int) -> None:
        for symbol_id in range(len(self.symbols)):
            self.change_status(symbol_id, exchange, status, reason, now_ns)

    # ---- membership ------------------------------------------------------------------

    def member_rate(self, instrument: Instrument, column: int) -> float | None:
        """The rate a member is converted at now: 1.0 for exact members, None while unknown."""
        rate_book = instrument.member(column).rate_book
        if rate_book is None:
            return 1.0
        rate_exchange, rate_symbol = rate_book
        source = self.books[rate_symbol][rate_exchange]
        if source.status != Status.IN_SYNC or rate_exchange in self.stale:
            return None
        return source.mid()

    def refresh_member(self, instrument: Instrument, column: int, force: bool = False) -> None:
        """Bring a member in or out so that it is in exactly when its book can be trusted."""
        member = instrument.member(column)
        book = self.books[member.symbol][member.exchange]
        rate = self.member_rate(instrument, column)
        wanted = book.status == Status.IN_SYNC and member.exchange not in self.stale and rate is not None
        consolidated = instrument.book
        if wanted and (force or not consolidated.included[column]):
            conversion = None if member.rate_book is None else Conversion(rate, instrument.plan.tick)
            consolidated.include(column, (book.bids, book.asks), (book.bid_orders, book.ask_orders), conversion)
            instrument.rates[column] = rate
            self.dirty.add(instrument.index)
        elif not wanted and consolidated.included[column]:
            consolidated.exclude(column)
            self.dirty.add(instrument.index)

    def refresh_market(self, symbol_id: int, exchange: int) -> None:
        for instrument, column in self.feeds.get((symbol_id, exchange), ()):
            self.refresh_member(instrument, column)

    def refresh_rate_users(self, symbol_id: int, exchange: int) -> None:
        for instrument, column in self.rate_users.get((symbol_id, exchange), ()):
            self.refresh_member(instrument, column)

    def refresh_exchange(self, exchange: int, now_ns: int) -> None:
        for symbol_id in range(len(self.symbols)):
            self.refresh_market(symbol_id, exchange)
            self.refresh_rate_users(symbol_id, exchange)
            self.publish_status(symbol_id, exchange, self.books[symbol_id][exchange])

    def refresh_rates(self) -> None:
        """Re-place converted members whose rate moved (their levels move to other grid prices)."""
        for users in self.rate_users.values():
            for instrument, column in users:
                rate = self.member_rate(instrument, column)
                if rate is not None and instrument.book.included[column] and rate != instrument.rates[column]:
                    self.refresh_member(instrument, column, force=True)

    def publish_status(self, symbol_id: int, exchange: int, book: ExchangeBook) -> None:
        status = Status.STALE if exchange in self.stale else book.status
        self.publisher.publish(
            f"status.{self.exchange_names[exchange]}",
            {
                "exchange": self.exchange_names[exchange],
                "symbol": self.symbols[symbol_id],
                "status": status.name.lower(),
                "reason": book.reason.name.lower(),
                "since_ns": book.since_ns,
            },
        )
        self.log.info(
            "book_status",
            exchange=self.exchange_names[exchange],
            symbol=self.symbols[symbol_id],
            status=status.name.lower(),
            reason=book.reason.name.lower(),
        )

    # ---- liveness ----------------------------------------------------------------------

    def check_liveness(self, now: float) -> None:
        now_ns = time.time_ns()
        for exchange, ring in self.rings.items():
            stats_pid = ring.stats()["producer_pid"]
            if stats_pid and not self._alive(exchange, stats_pid):
                if any(book.status != Status.DISCONNECTED for book in self._exchange_books(exchange)):
                    self.log.warning(
                        "producer_died", exchange=self.exchange_names[exchange], pid=stats_pid,
                        hint="books excluded until the restarted connector re-syncs",
                    )
                self.drop_exchange(exchange, Status.DISCONNECTED, Reason.PRODUCER_DIED, now_ns)
            if exchange not in self.stale and now - self.last_activity[exchange] > self.stale_after:
                self.stale.add(exchange)
                self.log.warning("exchange_stale", exchange=self.exchange_names[exchange], silent_s=self.stale_after)
                self.refresh_exchange(exchange, now_ns)

    def _exchange_books(self, exchange: int) -> list[ExchangeBook]:
        return [books[exchange] for books in self.books]

    def _alive(self, exchange: int, pid: int) -> bool:
        known_pid, process = self.producers.get(exchange, (0, None))
        if known_pid != pid:
            try:
                process = psutil.Process(pid)
            except psutil.NoSuchProcess:
                process = None
            self.producers[exchange] = (pid, process)
        if process is None:
            return False
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    # ---- publishing ------------------------------------------------------------------

    def publish_due(self, now: float) -> float | None:
        """Publish every dirty instrument whose interval passed; seconds until the next is due."""
        next_due = None
        for index in list(self.dirty):
            instrument = self.instruments[index]
            due = instrument.last_publish + self.publish_interval
            if now >= due:
                self.dirty.discard(index)
                instrument.last_publish = now
                self.publish(instrument, now)
            else:
                next_due = due - now if next_due is None else min(next_due, due - now)
        return next_due

    def column_tops(self, instrument: Instrument) -> tuple[np.ndarray, ...]:
        """Per column: best bid, its size, best ask, its size (0 where the column has none).

        The C kernel scans each side's working block from its best row and stops once every
        column is found. Without it, the first consolidated rows are searched first and the
        whole top only for a column not found there.
        """
        if kernel is not None:
            for side, price, size in zip((instrument.book.bids, instrument.book.asks), instrument.tops[::2],
                                         instrument.tops[1::2]):
                kernel.column_tops(side.buffer[side.start : side.start + side.count], price, size)
            return instrument.tops
        tops = []
        for side in (instrument.book.bids, instrument.book.asks):
            top = side.top()
            sizes = top[:TOP_SEARCH_ROWS, FIRST_EXCHANGE:]
            present = sizes > 0.0
            first = present.argmax(axis=0) if len(present) else np.zeros(side.members, dtype=np.intp)
            columns = np.arange(side.members)
            found = present[first, columns] if len(present) else np.zeros(side.members, dtype=bool)
            if not found.all() and len(top) > TOP_SEARCH_ROWS:
                for column in np.flatnonzero(~found).tolist():
                    rows = np.flatnonzero(top[:, FIRST_EXCHANGE + column] > 0.0)
                    if len(rows):
                        first[column], found[column] = rows[0], True
            price = np.where(found, top[first, PRICE] if len(top) else 0.0, 0.0)
            size = np.where(found, top[first, FIRST_EXCHANGE + columns] if len(top) else 0.0, 0.0)
            tops += [price, size]
        return tuple(tops)

    def exclude_crossed(self, instrument: Instrument, bids: np.ndarray, asks: np.ndarray) -> bool:
        """Exclude members crossed within their own exchange; True if any was."""
        crossed = [
            column for column, (bid, ask) in enumerate(zip(bids.tolist(), asks.tolist()))
            if bid > 0.0 and ask > 0.0 and bid >= ask
        ]
        now_ns = time.time_ns()
        excluded = False
        for column in crossed:
            member = instrument.member(column)
            if member.rate_book is not None:
                continue  # grid rounding can touch bid and ask; the exchange's own book is checked where it is exact
            book = self.books[member.symbol][member.exchange]
            self.log.error(
                "book_crossed_within_exchange", exchange=self.exchange_names[member.exchange],
                symbol=self.symbols[member.symbol], best_bid=float(bids[column]), best_ask=float(asks[column]),
                hint="excluded; the connector is asked to re-send its snapshots",
            )
            book.drop(Status.ERROR, Reason.CROSSED, now_ns)
            self.publish_status(member.symbol, member.exchange, book)
            self.refresh_market(member.symbol, member.exchange)
            self.rings[member.exchange].request_resnapshot()
            excluded = True
        return excluded

    def publish(self, instrument: Instrument, now: float) -> None:
        consolidated = instrument.book
        tops = self.column_tops(instrument)
        if self.exclude_crossed(instrument, tops[0], tops[2]):
            tops = self.column_tops(instrument)
        writer = instrument.writer
        exchanges = writer.exchanges
        bid_tops, bid_sizes, ask_tops, ask_sizes = (values.tolist() for values in tops)
        if instrument.direct:
            best_bid, best_ask = bid_tops, ask_tops
        else:  # an exchange's best over its markets in the instrument
            best_bid, best_ask = [0.0] * exchanges, [0.0] * exchanges
            for column, exchange in enumerate(instrument.column_exchange.tolist()):
                bid, ask = bid_tops[column], ask_tops[column]
                if bid > best_bid[exchange]:
                    best_bid[exchange] = bid
                if ask > 0.0 and (best_ask[exchange] == 0.0 or ask < best_ask[exchange]):
                    best_ask[exchange] = ask
        best_bid_size, best_ask_size = [0.0] * exchanges, [0.0] * exchanges
        fields = instrument.exchange_fields
        included, status, reason, since = (fields[name] for name in (
            "exchange_included", "exchange_status", "exchange_reason", "exchange_status_since"))
        bid_levels, ask_levels, sequence, exchange_ts, receive_ts = (fields[name] for name in (
            "exchange_bid_levels", "exchange_ask_levels", "exchange_sequence", "exchange_ts", "exchange_receive_ts"))
        stale, member_included = self.stale, consolidated.included
        for column, index, book in instrument.member_books:
            included[index] = member_included[column]
            status[index] = Status.STALE if index in stale else book.status
            reason[index], since[index] = book.reason, book.since_ns
            bid_levels[index], ask_levels[index] = len(book.bids), len(book.asks)
            sequence[index], exchange_ts[index], receive_ts[index] = book.sequence, book.exchange_ts, book.receive_ts
            if bid_tops[column] == best_bid[index]:
                best_bid_size[index] += bid_sizes[column]
            if ask_tops[column] == best_ask[index]:
                best_ask_size[index] += ask_sizes[column]
        for name, values in (("exchange_best_bid", best_bid), ("exchange_best_ask", best_ask),
                             ("exchange_best_bid_size", best_bid_size), ("exchange_best_ask_size", best_ask_size)):
            view = fields[name]
            for index in instrument.member_exchanges:
                view[index] = values[index]
        writer.begin()
        generation = int(writer.generation) + 1
        slot_index = generation % writer.slot_count
        views = instrument.views[slot_index]
        bid_counter, ask_counter = views["bid_levels"], views["ask_levels"]
        bid_side, ask_side = consolidated.bids, consolidated.asks
        if kernel is not None:  # one call: both sides reversed into place (members summed per exchange,
            kernel.publish_sides(  # stale rows zeroed), then the metrics read back from the slot
                bid_side.buffer[bid_side.start : bid_side.start + bid_side.count],
                ask_side.buffer[ask_side.start : ask_side.start + ask_side.count],
                views["bids"], views["asks"], int(bid_counter[0]), int(ask_counter[0]),
                instrument.column_exchange_ids, instrument.exchange_best[0], instrument.exchange_best[1],
                *views["metrics_arguments"],
            )
        else:
            for key, counter, side in (("bids", bid_counter, bid_side), ("asks", ask_counter, ask_side)):
                count, previous, levels, top = side.count, int(counter[0]), views[key], side.top()
                if instrument.direct:
                    levels[:count] = top
                else:
                    levels[:count, :FIRST_EXCHANGE] = top[:, :FIRST_EXCHANGE]
                    levels[:count, FIRST_EXCHANGE:] = 0.0
                    for column, exchange in enumerate(instrument.column_exchange.tolist()):
                        levels[:count, FIRST_EXCHANGE + exchange] += top[:, FIRST_EXCHANGE + column]
                if previous > count:
                    levels[count:previous] = 0.0
            fill_metrics(views["metrics"][0], _side_arrays(views["bids"], bid_side.count),
                         _side_arrays(views["asks"], ask_side.count), *instrument.exchange_best, instrument.analytics)
        bid_counter[0], ask_counter[0] = bid_side.count, ask_side.count
        views["exchange_bytes"][:] = instrument.exchange_image  # every per-exchange field in one copy
        views["records_applied"][0] = instrument.records_applied
        views["metrics_generation"][0] = generation
        if instrument.buckets_due or now - instrument.last_buckets >= self.buckets_interval:
            buckets = views["buckets"][0]
            fill_buckets(buckets, _side_arrays(views["bids"], bid_side.count), _side_arrays(views["asks"], ask_side.count),
                         instrument.analytics)
            buckets["generation"] = generation
            buckets["computed_ts"] = time.time_ns()
            instrument.last_buckets = now
            instrument.buckets_due = False
            instrument.buckets_computed += 1
            instrument.slot_buckets[slot_index] = instrument.buckets_computed
        elif instrument.slot_buckets[slot_index] != instrument.buckets_computed:
            # every slot carries the newest buckets: the previous slot has them (copied only
            # into a slot that holds older ones, so once per slot after each computation)
            views["buckets_bytes"][:] = instrument.views[(generation - 1) % writer.slot_count]["buckets_bytes"]
            instrument.slot_buckets[slot_index] = instrument.buckets_computed
        writer.end()
        metric_values = views["metrics_floats"]
        message = {
            "symbol": instrument.plan.name,
            "mode": self.mode,
            "generation": generation,
            "publish_ts": views["publish_ts"].item(0),
            "best_bid": views["bids"].item(0, PRICE) if bid_side.count else None,
            "best_ask": views["asks"].item(0, PRICE) if ask_side.count else None,
        }
        for name, index in instrument.message_fields:
            message[name] = metric_values.item(index)
        message["imbalance"] = metric_values[instrument.imbalance_slot].tolist()
        message["cross_spread_bps"] = metric_values.item(instrument.cross_spread_bps_slot)
        message["exchanges"] = [
            self.exchange_names[exchange] for column, exchange, _ in instrument.member_books
            if consolidated.included[column]
        ]
        self.publisher.publish(f"book.{instrument.plan.name}", message)

    async def teardown(self) -> None:
        """Release what setup took, also when setup stopped half-way."""
        if (doorbell := getattr(self, "doorbell", None)) is not None:
            doorbell.close(linger=0)
        if (publisher := getattr(self, "publisher", None)) is not None:
            publisher.close()
        if (context := getattr(self, "context", None)) is not None:
            context.term()
        for ring in getattr(self, "rings", {}).values():
            ring.close()
        if (feed := getattr(self, "storage_feed", None)) is not None:
            feed.close()
        for instrument in getattr(self, "instruments", []):
            instrument.writer.close()
