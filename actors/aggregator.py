"""The aggregator: drains every connector ring, keeps each exchange's book, publishes the
consolidated book per symbol into shared memory and a summary on the bus.

Trust rules (what keeps a bad exchange book out of the consolidated one):

- A book enters the consolidation only through ``SNAPSHOT_END`` (it is then IN_SYNC);
  snapshot levels are built aside and swapped in whole, so no reader ever sees half a
  snapshot.
- ``CLEAR`` and every ``STATUS`` record (connecting, resyncing, disconnected, …) drop the
  affected books and exclude them until their next snapshot.
- Records a producer had to drop (ring overflow) → every book of that exchange is dropped
  until the producer re-sends snapshots (which it does after any refused write).
- A producer process that died → its books are dropped and marked DISCONNECTED; the
  restarted connector starts with fresh snapshots.
- No record (not even a heartbeat) for ``aggregator.stale_after_s`` → the exchange is
  STALE and excluded until records flow again.

Publishing is batched: records are applied as they are drained and each changed symbol
is republished at most every ``aggregator.publish_interval_ms``.
"""

from __future__ import annotations

import time

import numpy as np
import psutil
import zmq
import zmq.asyncio

from engine.actor import Actor
from engine.bus import Publisher
from shm.book import BookWriter
from shm.records import ALL_SYMBOLS, Kind, Reason, Side, Status
from shm.ring import Ring

_LIVENESS_CHECK_S = 0.2


class ExchangeBook:
    """The aggregator's copy of one exchange's book for one symbol."""

    __slots__ = ("bids", "asks", "staging", "status", "reason", "since_ns", "sequence", "exchange_ts", "receive_ts")

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.staging: tuple[dict[float, float], dict[float, float]] | None = None
        self.status = Status.UNKNOWN
        self.reason = Reason.NONE
        self.since_ns = 0
        self.sequence = 0
        self.exchange_ts = 0
        self.receive_ts = 0

    def drop(self, status: Status, reason: Reason, now_ns: int) -> bool:
        """Forget the book; True if its visible state changed."""
        changed = self.status != status or bool(self.bids) or bool(self.asks)
        self.bids, self.asks, self.staging = {}, {}, None
        if self.status != status:
            self.status, self.reason, self.since_ns = status, reason, now_ns
        return changed


def consolidate(
    sides: list[tuple[int, dict[float, float]]], depth: int, exchanges: int, descending: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-exchange levels at exact prices: top ``depth`` prices, totals, breakdown."""
    counts = [len(levels) for _, levels in sides]
    total = sum(counts)
    if total == 0:
        return np.empty(0), np.empty(0), np.empty((0, exchanges))
    prices = np.empty(total)
    sizes = np.empty(total)
    owners = np.empty(total, dtype=np.intp)
    offset = 0
    for (exchange, levels), count in zip(sides, counts):
        prices[offset : offset + count] = np.fromiter(levels.keys(), float, count)
        sizes[offset : offset + count] = np.fromiter(levels.values(), float, count)
        owners[offset : offset + count] = exchange
        offset += count
    unique, inverse = np.unique(prices, return_inverse=True)
    breakdown = np.zeros((len(unique), exchanges))
    breakdown[inverse, owners] = sizes
    if descending:
        unique, breakdown = unique[::-1], breakdown[::-1]
    unique, breakdown = unique[:depth], breakdown[:depth]
    return unique, breakdown.sum(axis=1), breakdown


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
        self.writers = [BookWriter.attach(directory["segments"]["books"][s]) for s in self.symbols]
        self.depth = self.config.shm.book_depth
        self.exchange_count = max(len(self.exchange_ids), 1)
        self.books = [[ExchangeBook() for _ in range(self.exchange_count)] for _ in self.symbols]
        self.records_applied = [0] * len(self.symbols)
        self.dirty: set[int] = set(range(len(self.symbols)))
        self.last_publish = [0.0] * len(self.symbols)
        self.last_activity = {index: time.monotonic() for index in self.rings}
        self.stale: set[int] = set()
        self.producers: dict[int, tuple[int, psutil.Process | None]] = {}
        self.context = zmq.asyncio.Context()
        self.doorbell = self.context.socket(zmq.PULL)
        self.doorbell.bind(directory["endpoints"]["doorbell_aggregator"])
        # Draining uses a blocking-API shadow of the same socket: on the asyncio socket a
        # NOBLOCK recv returns a future instead of raising zmq.Again.
        self.doorbell_drain = zmq.Socket.shadow(self.doorbell.underlying)
        self.publisher = Publisher(self.context, directory["endpoints"]["bus_publish"])
        settings = self.config.aggregator
        self.publish_interval = settings.publish_interval_ms / 1000
        self.stale_after = settings.stale_after_s
        self.doorbell_timeout_ms = settings.doorbell_timeout_ms

    async def run(self) -> None:
        next_liveness = 0.0
        while not self.stopping.is_set():
            drained = self.drain()
            now = time.monotonic()
            if now >= next_liveness:
                self.check_liveness(now)
                next_liveness = now + _LIVENESS_CHECK_S
            wait_s = self.publish_due(now)
            if drained == 0:
                await self.sleep(wait_s)

    async def sleep(self, wait_s: float | None) -> None:
        """Block on the doorbell until a producer writes (or a publish/liveness check is due)."""
        timeout_ms = self.doorbell_timeout_ms if wait_s is None else min(self.doorbell_timeout_ms, wait_s * 1000)
        waiting = [ring.prepare_to_wait() for ring in self.rings.values()]
        try:
            if all(waiting) and await self.doorbell.poll(max(timeout_ms, 0)):
                while True:
                    try:
                        self.doorbell_drain.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
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
            while len(batch := ring.read()):
                self.apply(batch)
                ring.commit(len(batch))
                applied += len(batch)
            total += applied
            if applied:
                self.last_activity[exchange] = time.monotonic()
                if exchange in self.stale:
                    self.stale.discard(exchange)
                    self.dirty.update(range(len(self.symbols)))
        return total

    def apply(self, batch: np.ndarray) -> None:
        books = self.books
        symbol_count = len(self.symbols)
        for record in batch.tolist():
            (exchange_ts, receive_ts, price, size, sequence, aux, symbol_id, _orders, exchange, kind, side, _flags, reason) = record
            receive_ts = receive_ts or time.time_ns()
            if symbol_id == ALL_SYMBOLS:
                if kind == Kind.STATUS:
                    for index in range(symbol_count):
                        self.change_status(index, exchange, Status(aux), Reason(reason), receive_ts)
                continue
            if symbol_id >= symbol_count or exchange >= self.exchange_count:
                continue
            book = books[symbol_id][exchange]
            if kind == Kind.LEVEL:
                if book.staging is not None:
                    levels = book.staging[0] if side == Side.BID else book.staging[1]
                elif book.status == Status.IN_SYNC:
                    levels = book.bids if side == Side.BID else book.asks
                    self.dirty.add(symbol_id)
                else:
                    continue  # a delta for a book we do not trust: its snapshot will follow
                if size > 0.0:
                    levels[price] = size
                else:
                    levels.pop(price, None)
                book.sequence, book.exchange_ts, book.receive_ts = sequence, exchange_ts, receive_ts
                self.records_applied[symbol_id] += 1
            elif kind == Kind.SNAPSHOT_BEGIN:
                book.staging = ({}, {})
            elif kind == Kind.SNAPSHOT_END:
                if book.staging is None:
                    continue
                book.bids, book.asks = book.staging
                book.staging = None
                book.sequence, book.exchange_ts, book.receive_ts = sequence, exchange_ts, receive_ts
                if book.status != Status.IN_SYNC:
                    book.status, book.reason, book.since_ns = Status.IN_SYNC, Reason.NONE, receive_ts
                    self.publish_status(symbol_id, exchange, book)
                self.dirty.add(symbol_id)
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
                    },
                )
            elif kind == Kind.HEARTBEAT:
                book.exchange_ts = max(book.exchange_ts, exchange_ts)

    def change_status(self, symbol_id: int, exchange: int, status: Status, reason: Reason, now_ns: int) -> None:
        book = self.books[symbol_id][exchange]
        if status == Status.IN_SYNC:
            return  # only a complete snapshot makes a book trusted
        if book.drop(status, reason, now_ns):
            self.dirty.add(symbol_id)
            self.publish_status(symbol_id, exchange, book)

    def drop_exchange(self, exchange: int, status: Status, reason: Reason, now_ns: int) -> None:
        for symbol_id in range(len(self.symbols)):
            self.change_status(symbol_id, exchange, status, reason, now_ns)

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
                for symbol_id in range(len(self.symbols)):
                    self.dirty.add(symbol_id)
                    self.publish_status(symbol_id, exchange, self.books[symbol_id][exchange])

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
        """Publish every dirty symbol whose interval passed; seconds until the next is due."""
        next_due = None
        for symbol_id in list(self.dirty):
            due = self.last_publish[symbol_id] + self.publish_interval
            if now >= due:
                self.dirty.discard(symbol_id)
                self.last_publish[symbol_id] = now
                self.publish(symbol_id)
            else:
                next_due = due - now if next_due is None else min(next_due, due - now)
        return next_due

    def publish(self, symbol_id: int) -> None:
        writer = self.writers[symbol_id]
        books = self.books[symbol_id]
        included = [
            index for index, book in enumerate(books) if book.status == Status.IN_SYNC and index not in self.stale
        ]
        slot = writer.begin()
        for side, descending in (("bid", True), ("ask", False)):
            levels = [(index, books[index].bids if descending else books[index].asks) for index in included]
            prices, sizes, breakdown = consolidate(levels, self.depth, self.exchange_count, descending)
            count = len(prices)
            previous = int(slot[f"{side}_levels"])
            slot[f"{side}_price"][:count] = prices
            slot[f"{side}_size"][:count] = sizes
            slot[f"{side}_exchange_size"][:count] = breakdown
            if previous > count:
                slot[f"{side}_price"][count:previous] = 0.0
                slot[f"{side}_size"][count:previous] = 0.0
                slot[f"{side}_exchange_size"][count:previous] = 0.0
            slot[f"{side}_orders"][:max(count, previous)] = 0
            slot[f"{side}_levels"] = count
        for index, book in enumerate(books):
            best_bid = max(book.bids) if book.bids else 0.0
            best_ask = min(book.asks) if book.asks else 0.0
            slot["exchange_status"][index] = Status.STALE if index in self.stale else book.status
            slot["exchange_reason"][index] = book.reason
            slot["exchange_status_since"][index] = book.since_ns
            slot["exchange_best_bid"][index] = best_bid
            slot["exchange_best_bid_size"][index] = book.bids.get(best_bid, 0.0)
            slot["exchange_best_ask"][index] = best_ask
            slot["exchange_best_ask_size"][index] = book.asks.get(best_ask, 0.0)
            slot["exchange_bid_levels"][index] = len(book.bids)
            slot["exchange_ask_levels"][index] = len(book.asks)
            slot["exchange_sequence"][index] = book.sequence
            slot["exchange_ts"][index] = book.exchange_ts
            slot["exchange_receive_ts"][index] = book.receive_ts
        slot["records_applied"] = self.records_applied[symbol_id]
        generation = writer.end(slot)
        best_bid = float(slot["bid_price"][0]) if slot["bid_levels"] else None
        best_ask = float(slot["ask_price"][0]) if slot["ask_levels"] else None
        self.publisher.publish(
            f"book.{self.symbols[symbol_id]}",
            {
                "symbol": self.symbols[symbol_id],
                "generation": generation,
                "publish_ts": int(slot["publish_ts"]),
                "best_bid": best_bid,
                "best_ask": best_ask,
                "exchanges": [self.exchange_names[index] for index in included],
            },
        )

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
        for writer in getattr(self, "writers", []):
            writer.close()
