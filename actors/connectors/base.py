"""Exchange-independent, sans-IO building blocks of every connector module.

A connector module never opens a socket and never reads a clock: the IO runtime
(``actors/connector.py``) owns sockets, timers and HTTP, and drives the module with
bytes and nanosecond timestamps. Everything here is therefore testable by feeding
recorded or crafted frames.

How the runtime drives a :class:`Connector`. Two clocks: ``snapshot_requests`` and
``on_snapshot_failed`` take ``time.monotonic_ns()`` (they schedule; the wall clock may be
slewed or stepped — on our CI host it runs 0.5% fast — and a Retry-After honoured on it
can expire early); every other timestamp is ``time.time_ns()`` (it stamps records):

1. For each URL of ``connector.instruments_urls`` (usually one): ``GET`` it and pass the
   body to ``connector.load_instruments(body)``.
2. ``connector.connection_plan()`` lists one :class:`ConnectionSpec` per WebSocket
   connection (URL, ping and staleness intervals). Index ``i`` in that list is the
   connection index used below.
3. After every (re)connect of connection ``i``: send each text message returned by
   ``connector.on_open(i, now)``.
4. For every received frame: ``action = connector.on_message(i, data, receive_ts)``;
   if ``action is ConnectionAction.RECONNECT`` close connection ``i`` and reconnect.
5. When connection ``i`` closes, or the runtime closes it because nothing arrived for
   ``stale_after_s``: ``connector.on_close(i, now, reason)`` (``Reason.DISCONNECTED``
   or ``Reason.STALE_STREAM``); its books are cleared.
6. Every few milliseconds: for each :class:`SnapshotRequest` in
   ``connector.snapshot_requests(monotonic_now)``, ``GET request.url`` and answer with
   ``connector.on_snapshot(request.native_symbol, body, now)`` or, on any failure,
   ``connector.on_snapshot_failed(request.native_symbol, monotonic_now, retry_after_s)``
   (pass the ``Retry-After`` seconds of a 429). Every request must be answered one way or the
   other; the connector schedules retries with backoff itself.
7. On the same timer: ``connector.flush(now)``. After a refused ring write (ring full)
   the connector owes the consumer a full snapshot of every book; ``flush`` writes them
   as soon as ``sink.free()`` has room (``on_message`` also tries). When the ring says a
   consumer asked for fresh books (``Ring.take_resnapshot_request()``), call
   ``connector.request_full_resend()``.

8. On the same timer: for each :class:`OutgoingMessage` of
   ``connector.outgoing_messages(monotonic_now)``, send ``message.text`` on connection
   ``message.connection`` if it is open, else drop it (``on_open`` subscribes everything
   again). This is every message a venue sends of its own accord: application-level
   pings (scheduled by the module, e.g. with :class:`KeepAlive`), re-subscriptions of
   resyncing symbols, subscriptions a venue only accepts after its greeting.
   ``ConnectionAction.SEND`` from ``on_message`` means "poll it now", not at the next tick.

And one optional step (its default does nothing): ``spec.pre_connect`` (an
:class:`HttpRequest`, e.g. KuCoin's token POST): before every (re)connect of connection
``i``, send it and pass the 2xx body to ``connector.resolve_connection(i, body, now)``,
which returns the spec to connect with (the URL with a token); on failure or ValueError
retry with the reconnect backoff.

The sink (``shm.ring.Ring`` in production) has two methods:
``write(batch) -> bool`` copies a whole batch of ``RECORD_DTYPE`` records or writes
nothing and returns False (the connector reuses the batch's memory right after the
call), and ``free() -> int`` is the room in records; a sink may add a third,
``write_records(buffer, count) -> bool``, the same for the first ``count`` records
packed in a byte buffer (the ring's cheaper path for delta frames). The ring must hold the largest
snapshot batch (every level of a book plus 3 records; a connector's ``depth_limit``
bounds it), or that book can never be re-sent.

Record semantics are those of :mod:`shm.records`; what a connector writes:

- a delta frame's levels: one batch of ``LEVEL`` records, ``sequence`` = the venue's
  last update id of the frame;
- a synced book: ``SNAPSHOT_BEGIN``, ``LEVEL``\\* (bids best first, then asks best
  first), ``SNAPSHOT_END``, ``STATUS(IN_SYNC)`` as one batch;
- a book it stops trusting: ``CLEAR(reason)`` + ``STATUS`` as one batch;
- connection changes: one ``STATUS`` per symbol of that connection, one batch;
- trades: one ``TRADE`` record each (``aux`` = trade id, ``side`` = aggressor).

The REST-seeded machinery (:class:`RestSeededConnector`) is the official Binance
procedure made generic: buffer deltas from the moment the subscription is live, fetch
a snapshot, drop deltas it already contains, require the first remaining delta to
bridge it, then require continuity; any break clears the book and starts over while
the stream keeps buffering. A venue supplies the three id rules as a :class:`SyncRule`.
"""

from __future__ import annotations

import math
import struct
import sys
from datetime import datetime, timezone
from functools import lru_cache
from abc import ABC, abstractmethod
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import numpy as np

from shm.records import RECORD_DTYPE, Kind, Reason, Side, Status

INF = math.inf

MAX_PRICE = 1e12
"""The highest price a level may have: no asset trades near a trillion per unit, so a larger one is a
corrupt frame (a flipped exponent, a size in the price field), refused like NaN or a negative."""

MAX_SIZE = 1e15
"""The largest size a level may have (a quadrillion units: far beyond any real book, sub-cent coins
included); a larger one is refused as corrupt."""

MAX_EXCHANGE_TS = 2**63 - 1
"""The latest exchange time (ns) a record can hold (int64: April 2262). A frame with a later one, or
a negative one, is malformed whether or not it changes a level: kept as the feed's last exchange
time it would break the book's next re-send and the counters' encoding."""

Level = tuple[float, float]
"""One (price, size) pair; size is the new absolute size, 0 deletes the level."""


# ---------------------------------------------------------------------------------------
# Instruments


_last_second: tuple[str, int] = ("", 0)  # the latest whole second seen, and its epoch ns


def rfc3339_ns(text: str) -> int:
    """``"2021-04-17T16:43:37.075687Z"`` (up to 9 fraction digits) → ns since the epoch.

    The microsecond form (Coinbase's, one per frame) takes a fast path: the C kernel's
    :func:`micros_stamp_ns` where it is built, else the whole second remembered from the
    previous stamp (consecutive frames share it; ~0.3 µs a frame saved, bench/connectors.py)."""
    global _last_second
    stamp_ns = micros_stamp_ns(text)
    if stamp_ns is not None:
        return stamp_ns
    if len(text) == 27 and text[26] == "Z" and text[19] == ".":
        whole = text[:19]
        last_whole, seconds_ns = _last_second
        if whole != last_whole:
            seconds_ns = _epoch_seconds(whole) * 1_000_000_000
            _last_second = (whole, seconds_ns)
        return seconds_ns + int(text[20:26]) * 1000
    whole, _, fraction = text.rstrip("Z").partition(".")
    return _epoch_seconds(whole) * 1_000_000_000 + int((fraction + "000000000")[:9])


@lru_cache(maxsize=256)
def _epoch_seconds(whole: str) -> int:
    """Whole seconds change once a second while every frame carries a stamp: parsing each
    with datetime cost ~5 µs, a cached lookup ~0.1 µs (bench/connectors.py, Coinbase)."""
    return int(datetime.fromisoformat(whole).replace(tzinfo=timezone.utc).timestamp())


def canonical_symbol(base: str, quote: str, perpetual: bool = False) -> str:
    """The engine's symbol name: ``BASE/QUOTE``, ``BASE/QUOTE:PERP`` for perpetuals."""
    symbol = f"{base.upper()}/{quote.upper()}"
    return f"{symbol}:PERP" if perpetual else symbol


@dataclass(frozen=True, slots=True)
class Instrument:
    """One tradable instrument of one venue, with the venue's own name for it."""

    canonical: str
    native: str
    base: str
    quote: str
    tick_size: float
    lot_size: float
    perpetual: bool = False


# ---------------------------------------------------------------------------------------
# Exact L2 book


def parse_levels(raw: Iterable[Sequence[object]]) -> list[Level]:
    """``[[price, size], ...]`` decimal strings (or numbers) as floats, validated.

    Raises ValueError/TypeError on anything that is not a finite positive price with a
    finite non-negative size, so a frame is rejected before it touches a book.
    """
    levels = []
    for price_text, size_text in raw:
        price = float(price_text)
        size = float(size_text)
        if not (0.0 < price <= MAX_PRICE and 0.0 <= size <= MAX_SIZE):
            raise ValueError(f"invalid level {price_text!r} {size_text!r}")
        levels.append((price, size))
    return levels


class L2Book:
    """The exact price-level book of one (venue, symbol).

    Each side is a dict (price → size) plus an ascending list of its prices, kept in
    step with :func:`bisect.insort`: updating an existing level touches only the dict,
    a new or deleted level one C-level list shift. Best prices are therefore always at
    hand (``bid_prices[-1]``, ``ask_prices[0]``), which keeps the per-frame crossed-book
    check and sorted output cheap. Prices are floats parsed from the venue's decimal
    strings: the same string always gives the same float, so keys match exactly.
    """

    __slots__ = ("bids", "asks", "bid_prices", "ask_prices")

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.bid_prices: list[float] = []  # ascending: best bid last
        self.ask_prices: list[float] = []  # ascending: best ask first

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()
        self.bid_prices.clear()
        self.ask_prices.clear()

    def load(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Replace the whole book (a snapshot); zero sizes are skipped."""
        self.bids = {price: size for price, size in bids if size}
        self.asks = {price: size for price, size in asks if size}
        self.bid_prices = sorted(self.bids)
        self.ask_prices = sorted(self.asks)

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Apply parsed levels of absolute sizes; a delete of an unknown level is a no-op.

        Live frames take :func:`apply_frame`'s loop instead, which also parses and packs records.
        """
        _apply_side(self.bids, self.bid_prices, bids)
        _apply_side(self.asks, self.ask_prices, asks)

    def set_level(self, side: Side, price: float, size: float) -> None:
        if side == Side.BID:
            _apply_side(self.bids, self.bid_prices, ((price, size),))
        else:
            _apply_side(self.asks, self.ask_prices, ((price, size),))

    def best_bid(self) -> Level | None:
        if not self.bid_prices:
            return None
        price = self.bid_prices[-1]
        return price, self.bids[price]

    def best_ask(self) -> Level | None:
        if not self.ask_prices:
            return None
        price = self.ask_prices[0]
        return price, self.asks[price]

    def is_crossed(self) -> bool:
        """Best bid at or above best ask: the book cannot be the venue's."""
        return bool(self.bid_prices and self.ask_prices and self.bid_prices[-1] >= self.ask_prices[0])

    def bid_levels(self, depth: int | None = None) -> list[Level]:
        """Bids best (highest) first, at most ``depth`` of them."""
        prices = self.bid_prices
        if depth is not None:
            prices = prices[len(prices) - depth :] if depth else []
        bids = self.bids
        return [(price, bids[price]) for price in reversed(prices)]

    def ask_levels(self, depth: int | None = None) -> list[Level]:
        """Asks best (lowest) first, at most ``depth`` of them."""
        prices = self.ask_prices if depth is None else self.ask_prices[:depth]
        asks = self.asks
        return [(price, asks[price]) for price in prices]

    def truncate(self, depth: int) -> tuple[list[float], list[float]]:
        """Keep the best ``depth`` levels per side; returns the removed bid and ask prices.

        Venues subscribed at a limited depth do not always delete the levels that fall
        out of the window, so the book is trimmed after every frame.
        """
        removed_bids: list[float] = []
        removed_asks: list[float] = []
        if len(self.bid_prices) > depth:
            cut = len(self.bid_prices) - depth
            removed_bids = self.bid_prices[:cut]
            del self.bid_prices[:cut]
            for price in removed_bids:
                del self.bids[price]
        if len(self.ask_prices) > depth:
            removed_asks = self.ask_prices[depth:]
            del self.ask_prices[depth:]
            for price in removed_asks:
                del self.asks[price]
        return removed_bids, removed_asks


def _apply_side(book: dict[float, float], prices: list[float], levels: Iterable[Level]) -> None:
    for price, size in levels:
        if size:
            if price not in book:
                insort(prices, price)
            book[price] = size
        elif book.pop(price, None) is not None:
            del prices[bisect_left(prices, price)]


# ---------------------------------------------------------------------------------------
# Records


class ExchangeSettings(Protocol):
    """What a connector reads of its ``exchanges.<name>`` config section."""

    ws_url: str
    rest_url: str
    snapshot_depth: int
    stale_after_s: float
    max_streams_per_connection: int


class RecordSink(Protocol):
    """Where records go: ``shm.ring.Ring`` in production, an in-memory list in tests; it may
    also offer ``write_records(buffer, count) -> bool`` (module docstring)."""

    def write(self, batch: np.ndarray) -> bool: ...

    def free(self) -> int: ...


class RecordOutput:
    """The sink plus the bookkeeping of refused writes (the ring counts what it accepts).

    A refused batch is lost; ``overflowed`` tells the connector that every book now
    has to be re-sent in full.
    """

    __slots__ = ("sink", "overflowed", "batches_lost", "records_lost")

    def __init__(self, sink: RecordSink) -> None:
        self.sink = sink
        self.overflowed = False
        self.batches_lost = 0
        self.records_lost = 0

    def write(self, batch: np.ndarray) -> bool:
        if self.sink.write(batch):
            return True
        self.lost(batch)
        return False

    def lost(self, batch: np.ndarray) -> None:
        self.overflowed = True
        self.batches_lost += 1
        self.records_lost += len(batch)

    def free(self) -> int:
        return self.sink.free()


_RECORD = struct.Struct("<qqddQQIIHBBHH")  # RECORD_DTYPE field for field, 64 bytes
# exchange_ts, receive_ts, price, size, sequence. Where the native long is 8 bytes little-endian
# (every LP64 platform we run on) "@llddL" packs exactly the bytes of "<qqddQ", ~20 ns a record
# faster: its ints skip the generic byte-array conversion the "<q" codes go through.
_HEAD_FORMAT = "@llddL" if struct.calcsize("@llddL") == 40 and sys.byteorder == "little" else "<qqddQ"
pack_record_head = struct.Struct(_HEAD_FORMAT).pack_into
SIDE_OFFSET = RECORD_DTYPE.fields["side"][1]
RECORD_SIZE = RECORD_DTYPE.itemsize
BID_SIDE = int(Side.BID)  # plain ints: reading an IntEnum member costs more than packing it
ASK_SIDE = int(Side.ASK)
assert _RECORD.size == RECORD_SIZE and RECORD_DTYPE.names[:5] == (
    "exchange_ts",
    "receive_ts",
    "price",
    "size",
    "sequence",
)


def _apply_level_python(
    levels: dict[float, float],
    prices: list[float],
    price: float,
    size: float,
    scratch: bytearray,
    offset: int,
    exchange_ts: int,
    receive_ts: int,
    sequence: int,
    side: int,
) -> int:
    """:func:`apply_level` without the C extension: the same book change and record bytes."""
    try:  # packed first: a value the record cannot hold leaves the book as it was, as in C
        pack_record_head(scratch, offset, exchange_ts, receive_ts, price, size, sequence)
    except struct.error as error:
        raise ValueError(f"a timestamp or sequence the record cannot hold: {error}") from None
    scratch[offset + SIDE_OFFSET] = side
    if size:
        if price not in levels:
            insort(prices, price)
        levels[price] = size
    elif levels.pop(price, None) is not None:
        del prices[bisect_left(prices, price)]
    return offset + RECORD_SIZE


def _apply_side_python(
    levels: dict[float, float],
    prices: list[float],
    raw_levels: Sequence[Sequence[object]],
    scratch: bytearray,
    offset: int,
    exchange_ts: int,
    receive_ts: int,
    sequence: int,
    side: int,
) -> int:
    """:func:`apply_side` without the C extension: the same validation, book changes and bytes."""
    for level in raw_levels:
        try:
            price_text = level[0]
            size_text = level[1]
        except LookupError:
            raise ValueError(f"a level needs a price and a size, got {level!r}") from None
        price = float(price_text)
        size = float(size_text)
        if not (0.0 < price <= MAX_PRICE and 0.0 <= size <= MAX_SIZE):
            raise ValueError(f"invalid level {price_text!r} {size_text!r}")
        offset = _apply_level_python(
            levels, prices, price, size, scratch, offset, exchange_ts, receive_ts, sequence, side
        )
    return offset


def _apply_sequenced_side_python(
    levels: dict[float, float],
    prices: list[float],
    changes: Sequence[Sequence[object]],
    scratch: bytearray,
    offset: int,
    exchange_ts: int,
    receive_ts: int,
    side: int,
) -> int:
    """:func:`apply_sequenced_side` without the C extension."""
    for change in changes:
        price_text, size_text, change_sequence = change
        if price_text == "0":
            continue
        offset = _apply_side_python(
            levels, prices, ((price_text, size_text),), scratch, offset, exchange_ts, receive_ts, int(change_sequence), side
        )
    return offset


def _change_sequence_python(change: Sequence[object]) -> int:
    """:func:`change_sequence` without the C extension."""
    if len(change) != 3:
        raise ValueError(f"bad change {change!r}")
    return int(change[2])


def _apply_sequenced_frame_python(
    book: L2Book,
    records: SymbolRecords,
    raw_bids: Sequence[Sequence[object]],
    raw_asks: Sequence[Sequence[object]],
    _sequence: int,
    exchange_ts: int,
    receive_ts: int,
) -> int:
    """:func:`apply_sequenced_frame` without the C extension."""
    if len(raw_bids) > 1:
        raw_bids = sorted(raw_bids, key=_change_sequence_python)
    if len(raw_asks) > 1:
        raw_asks = sorted(raw_asks, key=_change_sequence_python)
    needed = len(raw_bids) + len(raw_asks)
    scratch = records.scratch if needed <= records.capacity else records.reserve(needed)
    offset = 0
    if raw_bids:
        offset = _apply_sequenced_side_python(
            book.bids, book.bid_prices, raw_bids, scratch, 0, exchange_ts, receive_ts, BID_SIDE
        )
    if raw_asks:
        offset = _apply_sequenced_side_python(
            book.asks, book.ask_prices, raw_asks, scratch, offset, exchange_ts, receive_ts, ASK_SIDE
        )
    return offset // RECORD_SIZE


def _micros_stamp_ns_python(text: str) -> None:
    """:func:`micros_stamp_ns` without the C extension: always "read it with rfc3339_ns"."""
    return None


# The per-level hot path of every venue whose levels need no checksum tokens:
#   apply_side(levels, prices, raw_levels, scratch, offset, exchange_ts, receive_ts, sequence, side)
#     -> offset: each raw level's [0] and [1] read by float() (decimal texts or JSON numbers),
#     validated (0 < price <= MAX_PRICE, 0 <= size <= MAX_SIZE, else ValueError with the levels
#     before it applied), set (size != 0) or deleted (size 0; unknown price: a no-op) on the book
#     side (its dict and ascending price list), its LEVEL record head and side packed at
#     ``offset`` in ``scratch``; returns the offset after the last record.
#   apply_level(levels, prices, price, size, scratch, offset, exchange_ts, receive_ts, sequence, side)
#     -> offset: the same for one level the venue already parsed and validated as floats
#     (Coinbase's changes).
#   apply_sequenced_side(levels, prices, changes, scratch, offset, exchange_ts, receive_ts, side)
#     -> offset: apply_side for changes that carry their own sequence, exactly [price, size,
#     sequence] (KuCoin's): each record gets int(sequence), and a change whose price is the
#     text "0" only advances the sequence, so it is skipped.
#   change_sequence(change) -> int: int(change[2]) of a [price, size, sequence] change, the order
#     of a side's changes; a change of another length is a ValueError (a bad frame).
#   apply_sequenced_frame(book, records, raw_bids, raw_asks, sequence, exchange_ts, receive_ts)
#     -> count: apply_frame for such changes: each side sorted by change_sequence when it has more
#     than one (a price may change twice in one delta), applied with apply_sequenced_side into the
#     records' scratch (reserved first); ``sequence`` is unused: each record has its change's own, so
#     that a consumer can rebuild the book at any sequence the venue quotes (a ticker's).
# A timestamp or sequence that does not fit the record raises ValueError in both, at the first
# record packed (a frame that packs none is fine).
#   micros_stamp_ns(text) -> int | None: a "YYYY-MM-DDTHH:MM:SS.ffffffZ" stamp (digits only, a
#     valid date and time of 1970-2261) as ns since the epoch, exactly as rfc3339_ns reads it;
#     None for any other text (and always None without the C extension): rfc3339_ns reads it.
try:
    from actors.connectors import _kernel
except ImportError:  # not compiled (no C compiler at install): the Python twins below
    _kernel = None

if _kernel is not None:
    if (_kernel.RECORD_BYTES, _kernel.SIDE_OFFSET) != (RECORD_SIZE, SIDE_OFFSET):
        raise ImportError("actors/connectors/_kernel.c packs another record layout than shm/records.py: "
                          "rebuild it (pip install -e .)")
    _kernel.configure(MAX_PRICE, MAX_SIZE)
    apply_level = _kernel.apply_level
    apply_side = _kernel.apply_side
    apply_sequenced_side = _kernel.apply_sequenced_side
    change_sequence = _kernel.change_sequence
    apply_sequenced_frame = _kernel.apply_sequenced_frame
    micros_stamp_ns = _kernel.micros_stamp_ns
else:
    apply_level = _apply_level_python
    apply_side = _apply_side_python
    apply_sequenced_side = _apply_sequenced_side_python
    change_sequence = _change_sequence_python
    apply_sequenced_frame = _apply_sequenced_frame_python
    micros_stamp_ns = _micros_stamp_ns_python
KERNEL_PATH = "c" if _kernel is not None else "python"
"""Which implementation runs the per-level and stamp hot paths (bench/connectors.py reports it)."""


class SymbolRecords:
    """Builds one symbol's record batches and writes each as one sink write.

    Delta frames are packed into a reused byte scratch whose constant fields
    (exchange, symbol, kind) are filled once, and handed to the sink as one of a set of
    prepared numpy views over it, so a frame costs one ``struct.pack_into`` per level
    and no numpy call (bench/binance_parse.py; a numpy column fill costs several µs).
    Snapshots are rare and large, so they are filled column-wise into a fresh array.
    """

    __slots__ = (
        "output",
        "exchange_id",
        "symbol_id",
        "sink_write",
        "sink_write_records",
        "scratch",
        "batches",
        "capacity",
        "_one",
        "_one_records",
    )

    def __init__(self, output: RecordOutput, exchange_id: int, symbol_id: int, capacity: int = 64) -> None:
        self.output = output
        self.exchange_id = exchange_id
        self.symbol_id = symbol_id
        # Public for the per-frame paths, which read them inline rather than pay a method
        # call each (bench/connectors.py): the sink's bound write, its write of the scratch's
        # first n records (``sink_write_records(scratch, n)``, the ring's own where it has one:
        # no numpy view to hand over and check), the delta scratch, the prepared views over it
        # (batches[n]: its first n records) and its record capacity.
        self.sink_write = output.sink.write
        write_records = getattr(output.sink, "write_records", None)
        self.sink_write_records = self._write_records if write_records is None else write_records
        self.capacity = 0
        self.scratch = bytearray()
        self._allocate(capacity)
        self._one = bytearray(RECORD_SIZE)
        self._one_records = np.frombuffer(self._one, dtype=RECORD_DTYPE)

    def _allocate(self, capacity: int) -> None:
        records = np.zeros(capacity, dtype=RECORD_DTYPE)
        records["exchange_id"] = self.exchange_id
        records["symbol_id"] = self.symbol_id
        records["kind"] = Kind.LEVEL
        scratch = bytearray(records.tobytes())
        if self.capacity:
            scratch[: len(self.scratch)] = self.scratch  # keep what is already packed
        self.scratch = scratch
        view = np.frombuffer(scratch, dtype=RECORD_DTYPE)
        self.batches = [view[:count] for count in range(capacity + 1)]
        self.capacity = capacity

    def reserve(self, count: int) -> bytearray:
        """The delta scratch, with room for ``count`` LEVEL records (packed ones are kept)."""
        if count > self.capacity:
            self._allocate(max(count, 2 * self.capacity))
        return self.scratch

    def append_levels(
        self, start: int, bids: Sequence[Level], asks: Sequence[Level], sequence: int, exchange_ts: int, receive_ts: int
    ) -> int:
        """Pack parsed levels after the first ``start`` records; returns the new count."""
        scratch = self.reserve(start + len(bids) + len(asks))
        offset = start * RECORD_SIZE
        for side, levels in ((BID_SIDE, bids), (ASK_SIDE, asks)):
            for price, size in levels:
                pack_record_head(scratch, offset, exchange_ts, receive_ts, price, size, sequence)
                scratch[offset + SIDE_OFFSET] = side
                offset += RECORD_SIZE
        return offset // RECORD_SIZE

    def _write_records(self, scratch: bytearray, count: int) -> bool:
        """``sink_write_records`` for a sink that only takes batches (tests' in-memory sinks)."""
        return self.sink_write(self.batches[count])

    def write_levels(self, count: int) -> bool:
        """Write the first ``count`` packed LEVEL records as one batch."""
        if self.sink_write_records(self.scratch, count):
            return True
        self.output.lost(self.batches[count])
        return False

    def snapshot_batch(self, book: L2Book, sequence: int, exchange_ts: int, receive_ts: int) -> np.ndarray:
        """SNAPSHOT_BEGIN, the book's levels best first, SNAPSHOT_END, STATUS(IN_SYNC)."""
        bid_count = len(book.bid_prices)
        level_count = bid_count + len(book.ask_prices)
        batch = np.zeros(level_count + 3, dtype=RECORD_DTYPE)
        batch["exchange_id"] = self.exchange_id
        batch["symbol_id"] = self.symbol_id
        batch["exchange_ts"] = exchange_ts
        batch["receive_ts"] = receive_ts
        batch["sequence"] = sequence
        kinds = batch["kind"]
        kinds[0] = Kind.SNAPSHOT_BEGIN
        kinds[1 : level_count + 1] = Kind.LEVEL
        kinds[level_count + 1] = Kind.SNAPSHOT_END
        kinds[level_count + 2] = Kind.STATUS
        batch["aux"][level_count + 2] = Status.IN_SYNC
        sides = batch["side"]
        sides[1 : bid_count + 1] = Side.BID
        sides[bid_count + 1 : level_count + 1] = Side.ASK
        bid_prices = book.bid_prices[::-1]
        prices = batch["price"]
        sizes = batch["size"]
        prices[1 : bid_count + 1] = bid_prices
        prices[bid_count + 1 : level_count + 1] = book.ask_prices
        bids = book.bids
        asks = book.asks
        sizes[1 : bid_count + 1] = list(map(bids.__getitem__, bid_prices))  # ~2x a comprehension
        sizes[bid_count + 1 : level_count + 1] = list(map(asks.__getitem__, book.ask_prices))
        return batch

    def snapshot(self, book: L2Book, sequence: int, exchange_ts: int, receive_ts: int) -> bool:
        return self.output.write(self.snapshot_batch(book, sequence, exchange_ts, receive_ts))

    def clear(self, reason: Reason, status: Status, receive_ts: int) -> bool:
        """CLEAR(reason) followed by STATUS(status), one batch."""
        return self.output.write(_clear_batch(self.exchange_id, (self.symbol_id,), reason, status, receive_ts))

    def trade(
        self, price: float, size: float, aggressor: Side, trade_id: int, exchange_ts: int, receive_ts: int
    ) -> bool:
        _RECORD.pack_into(
            self._one,
            0,
            exchange_ts,
            receive_ts,
            price,
            size,
            0,
            trade_id,
            self.symbol_id,
            0,
            self.exchange_id,
            Kind.TRADE,
            aggressor,
            0,
            0,
        )
        return self.output.write(self._one_records)


def apply_frame(
    book: L2Book,
    records: SymbolRecords,
    raw_bids: Sequence[Sequence[object]],
    raw_asks: Sequence[Sequence[object]],
    sequence: int,
    exchange_ts: int,
    receive_ts: int,
) -> int:
    """Parse, validate, apply and pack one delta frame of ``[price, size]`` texts in one pass
    per side (:func:`apply_side`). Returns the number of LEVEL records packed in ``records``
    (write them with ``records.write_levels``). A bad level raises ValueError/TypeError with
    the levels before it already applied; the frame is lost either way, which is a gap, so
    the caller resyncs the book. It is :class:`RestSeededConnector`'s default ``apply_levels``.
    """
    needed = len(raw_bids) + len(raw_asks)
    scratch = records.scratch if needed <= records.capacity else records.reserve(needed)
    offset = apply_side(book.bids, book.bid_prices, raw_bids, scratch, 0, exchange_ts, receive_ts, sequence, BID_SIDE)
    offset = apply_side(book.asks, book.ask_prices, raw_asks, scratch, offset, exchange_ts, receive_ts, sequence, ASK_SIDE)
    return offset // RECORD_SIZE


def status_batch(
    exchange_id: int, symbol_ids: Sequence[int], status: Status, reason: Reason, receive_ts: int
) -> np.ndarray:
    """One STATUS record per symbol (connection-level changes), as one batch."""
    batch = np.zeros(len(symbol_ids), dtype=RECORD_DTYPE)
    batch["exchange_id"] = exchange_id
    batch["symbol_id"] = symbol_ids
    batch["receive_ts"] = receive_ts
    batch["kind"] = Kind.STATUS
    batch["aux"] = status
    batch["reason"] = reason
    return batch


# ---------------------------------------------------------------------------------------
# Counters


@dataclass(slots=True)
class SymbolCounters:
    """What happened to one symbol's feed; read by health checks and tests.

    ``frames`` counts book delta frames routed to the symbol; every one ends up in
    ``frames_applied``, ``frames_dropped`` (already in the snapshot, arrived while not
    subscribed, or discarded with a broken buffer) or is still buffered.
    """

    frames: int = 0
    frames_applied: int = 0
    frames_dropped: int = 0
    levels_applied: int = 0
    snapshots: int = 0
    stale_snapshots: int = 0
    snapshot_failures: int = 0
    resyncs: int = 0
    gaps: int = 0
    crossed: int = 0
    parse_errors: int = 0
    trades: int = 0
    cross_checks: int = 0
    cross_check_mismatches: int = 0
    last_exchange_ts: int = 0
    receive_lag_ns: int = 0


@dataclass(slots=True)
class ConnectionCounters:
    """Frames of one connection that never reached a symbol."""

    frames: int = 0
    malformed_frames: int = 0
    unknown_symbol_frames: int = 0
    ignored_frames: int = 0
    subscribe_acks: int = 0
    subscribe_errors: int = 0
    server_shutdowns: int = 0
    last_error: str = ""


# ---------------------------------------------------------------------------------------
# Runtime-facing contract


class ConnectionAction(IntEnum):
    """What the runtime does with a connection after handing it a frame."""

    CONTINUE = 0
    RECONNECT = 1
    SEND = 2  # poll ``connector.outgoing_messages`` now, then continue


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A request the runtime makes for the connector (e.g. a connection token)."""

    method: str
    url: str
    body: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionSpec:
    """One WebSocket connection the runtime keeps open for the connector."""

    url: str
    symbols: tuple[str, ...]  # canonical symbols carried by this connection
    ping_interval_s: float | None  # client pings; None: the venue pings and the runtime only answers
    stale_after_s: float  # nothing received this long: close with Reason.STALE_STREAM, reconnect
    pre_connect: HttpRequest | None = None  # before each connect; body → connector.resolve_connection


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    native_symbol: str
    url: str


class Connector(ABC):
    """The sans-IO surface every exchange module offers the runtime (see module docstring)."""

    name: str
    book_depths: tuple[int, ...] = ()  # the only book depths a venue offers; () = any depth
    frame_rejected: bool = False
    """Set wherever a frame (or a snapshot body) is counted as bad and dropped (malformed, a
    parse error, an unknown symbol); the runtime reads it after each call, logs a sample of
    the frame that set it, and clears it. One attribute test a frame, not a counter sum."""

    @property
    @abstractmethod
    def instruments_url(self) -> str: ...

    @property
    def instruments_urls(self) -> list[str]:
        """Every metadata request, in order (OKX lists spot and swaps apart); the runtime
        hands each body to :meth:`load_instruments` before asking for the connection plan."""
        return [self.instruments_url]

    @abstractmethod
    def load_instruments(self, body: str | bytes) -> list[Instrument]: ...

    @abstractmethod
    def connection_plan(self) -> list[ConnectionSpec]: ...

    @abstractmethod
    def on_open(self, connection: int, now_ns: int) -> list[str]: ...

    @abstractmethod
    def on_message(self, connection: int, data: str | bytes, receive_ts: int) -> ConnectionAction: ...

    @abstractmethod
    def on_close(self, connection: int, now_ns: int, reason: Reason = Reason.DISCONNECTED) -> None: ...

    @abstractmethod
    def snapshot_requests(self, now_ns: int) -> list[SnapshotRequest]: ...

    @abstractmethod
    def on_snapshot(self, native_symbol: str, body: str | bytes, receive_ts: int) -> None: ...

    @abstractmethod
    def on_snapshot_failed(self, native_symbol: str, now_ns: int, retry_after_s: float | None = None) -> None: ...

    @abstractmethod
    def flush(self, now_ns: int) -> None: ...

    @abstractmethod
    def request_full_resend(self) -> None: ...

    @classmethod
    def from_settings(
        cls, sink: RecordSink, exchange_id: int, symbol_ids: Mapping[str, int], settings: "ExchangeSettings"
    ) -> "Connector":
        """The connector an ``exchanges.<name>`` config section asks for (the runtime's
        way in). Empty URLs keep the venue's own; a venue that offers a few book depths only
        (``book_depths``) gets the deepest not above ``snapshot_depth``; a venue whose options
        differ overrides."""
        depth = settings.snapshot_depth
        if cls.book_depths:
            depth = max((offered for offered in cls.book_depths if offered <= depth), default=min(cls.book_depths))
        urls = {}
        if settings.ws_url:
            urls["ws_base_url"] = settings.ws_url
        if settings.rest_url:
            urls["rest_base_url"] = settings.rest_url
        connector = cls(
            sink,
            exchange_id,
            symbol_ids,
            snapshot_limit=depth,
            depth_limit=depth,
            stale_after_s=settings.stale_after_s,
            **urls,
        )
        connector.limit_connections(settings.max_streams_per_connection)
        return connector

    @abstractmethod
    def limit_connections(self, max_streams: int) -> None:
        """Carry at most ``max_streams`` streams a connection (never more than the venue allows)."""

    def resolve_connection(self, connection: int, body: str | bytes, now_ns: int) -> ConnectionSpec:
        """The spec to connect with, from the body of ``spec.pre_connect``; raises ValueError
        on a body it cannot use. Only called for specs that have a ``pre_connect``."""
        return self.connection_plan()[connection]

    def outgoing_messages(self, now_ns: int) -> list["OutgoingMessage"]:
        """Messages to send now (``now_ns`` is monotonic): pings, re-subscriptions, …"""
        return []


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A text message the runtime sends on connection ``connection`` if it is open."""

    connection: int
    text: str


class KeepAlive:
    """A venue's application-level pings, per open connection, on the monotonic clock.

    A connection starts its schedule at the first :meth:`due` after :meth:`start`
    (``on_open`` only sees wall-clock stamps); from then on one ping per interval.
    """

    def __init__(self, ping: Callable[[int], str]) -> None:
        self._ping = ping  # the ping text for a connection
        self._interval_ns: dict[int, int] = {}
        self._next_ns: dict[int, int | None] = {}

    def start(self, connection: int, interval_s: float) -> None:
        self._interval_ns[connection] = int(interval_s * 1e9)
        self._next_ns[connection] = None

    def stop(self, connection: int) -> None:
        self._interval_ns.pop(connection, None)
        self._next_ns.pop(connection, None)

    def due(self, now_ns: int) -> list[OutgoingMessage]:
        messages = []
        for connection, next_ns in self._next_ns.items():
            if next_ns is not None and now_ns >= next_ns:
                messages.append(OutgoingMessage(connection, self._ping(connection)))
            if next_ns is None or now_ns >= next_ns:
                self._next_ns[connection] = now_ns + self._interval_ns[connection]
        return messages


# ---------------------------------------------------------------------------------------
# REST-seeded sync


@dataclass(frozen=True, slots=True)
class SyncRule:
    """How a venue's delta update ids relate to its REST snapshot id.

    Each function sees plain ints. ``first_id``/``last_id`` are the id range of a delta
    (Binance ``U``/``u``), ``previous_id`` the venue's own "previous last id" field where
    it has one (Binance futures ``pu``; 0 otherwise), ``snapshot_id`` the snapshot's id
    (``lastUpdateId``) and ``prior_last_id`` the ``last_id`` of the delta before.
    """

    is_stale: Callable[[int, int, int], bool]  # (first_id, last_id, snapshot_id): snapshot already has it
    bridges: Callable[[int, int, int], bool]  # (first_id, last_id, snapshot_id): first delta after it
    follows: Callable[[int, int, int], bool]  # (first_id, previous_id, prior_last_id): no gap between deltas


def follows_contiguously(first_id: int, previous_id: int, prior_last_id: int) -> bool:
    """The usual :attr:`SyncRule.follows`: a delta starts right after the last id before it
    (Binance spot, Gate.io, KuCoin). :meth:`RestSeededConnector.on_delta` tests it inline."""
    return first_id == prior_last_id + 1


class SyncState(IntEnum):
    IDLE = 0  # no subscription (before open, after close)
    SUBSCRIBING = 1  # connected, subscription not yet acknowledged
    BUFFERING = 2  # subscribed; deltas are buffered until a snapshot lines up
    LIVE = 3  # snapshot published; deltas applied and written as they come


_NOW = 0  # a snapshot due at monotonic time 0 is due at the next poll

# Reading an enum member costs ~125 ns on Python 3.11, a module global ~20 ns: the
# per-frame paths use these.
_BUFFERING = SyncState.BUFFERING
_LIVE = SyncState.LIVE


Delta = tuple[int, int, int, list[Level], list[Level], int, int]
"""(first_id, last_id, previous_id, bids, asks, exchange_ts, receive_ts) of a buffered delta."""


class SymbolFeed:
    """Everything the connector keeps for one symbol: book, sync state, records, counters."""

    __slots__ = (
        "instrument",
        "symbol_id",
        "connection",
        "book",
        "records",
        "counters",
        "state",
        "buffer",
        "last_id",
        "bridged",
        "snapshot_due_ns",
        "snapshot_delay_ns",
        "snapshot_in_flight",
        "snapshot_failures_in_row",
        "resend_pending",
        "expected_tops",
    )

    def __init__(self, instrument: Instrument, symbol_id: int, connection: int, records: SymbolRecords) -> None:
        self.instrument = instrument
        self.symbol_id = symbol_id
        self.connection = connection
        self.book = L2Book()
        self.records = records
        self.counters = SymbolCounters()
        self.state = SyncState.IDLE
        self.buffer: list[Delta] = []
        self.last_id = 0  # snapshot id, then last_id of the last applied delta
        self.bridged = False  # a delta has been applied on top of the snapshot
        self.snapshot_due_ns: int | None = None  # monotonic ns to fetch a snapshot at; None: not wanted
        self.snapshot_delay_ns: int | None = None  # a retry delay not yet anchored to the monotonic clock
        self.snapshot_in_flight = False
        self.snapshot_failures_in_row = 0
        self.resend_pending = False
        self.expected_tops: list[tuple[int, Level, Level]] = []  # (update id, best bid, best ask)


class BookResender:
    """What a connector owes its consumer after a refused ring write (overflow) or a consumer
    restart: every book again, a snapshot if in sync, else CLEAR, written as room allows.

    Shared by both connector families; they provide ``feeds`` (by native symbol),
    ``output`` (:class:`RecordOutput`), ``_resend_queue`` (a list) and
    :meth:`_book_sequence` (the venue's id of the last update a book holds).
    """

    def _book_sequence(self, feed) -> int:
        raise NotImplementedError

    def request_full_resend(self) -> None:
        """Owe the consumer every book again (after a ring overflow or a consumer restart)."""
        queue = self._resend_queue
        for feed in self.feeds.values():
            if not feed.resend_pending:
                feed.resend_pending = True
                queue.append(feed)

    def _after_write(self) -> None:
        if self.output.overflowed:
            self.output.overflowed = False
            self.request_full_resend()

    def flush(self, now_ns: int) -> None:
        """Write owed books while the sink has room: a snapshot if in sync, else CLEAR."""
        if not self._resend_queue:
            return
        free = self.output.free()
        remaining = []
        for feed in self._resend_queue:
            if not feed.resend_pending:
                continue
            live = feed.state == SyncState.LIVE
            needed = len(feed.book) + 3 if live else 2
            if needed > free:
                remaining.append(feed)
                continue
            if live:
                written = feed.records.snapshot(
                    feed.book, self._book_sequence(feed), feed.counters.last_exchange_ts, now_ns
                )
            else:
                written = feed.records.clear(Reason.RING_OVERFLOW, _status_of(feed.state), now_ns)
            if not written:  # the consumer has not caught up after all: try again later
                self.output.overflowed = False
                remaining.append(feed)
                continue
            feed.resend_pending = False
            free -= needed
        self._resend_queue = remaining


class RestSeededConnector(BookResender, Connector):
    """Generic connector for venues whose books are seeded by a REST snapshot.

    A venue module subclasses it, declares its data (``name``, ``sync_rule``, limits)
    and implements the hooks: :meth:`parse_instruments`, :meth:`streams_for`,
    :meth:`connection_url`, :meth:`subscribe_messages`, :meth:`snapshot_url`,
    :meth:`parse_snapshot` and :meth:`on_message`, whose delta frames go to
    :meth:`on_delta` and trades to ``feed.records.trade``.
    """

    sync_rule: SyncRule
    streams_per_connection: int = 200
    ping_interval_s: float | None = None
    max_buffered_deltas = 10_000
    max_expected_tops = 64
    max_snapshots_in_flight = 4
    snapshot_requests_per_minute = 60  # the venue's REST budget; resync loops must not exhaust it
    snapshot_retry_initial_s = 0.5
    snapshot_retry_max_s = 30.0
    # How a delta's raw levels are applied live and parsed while buffered; a venue whose
    # levels are not ``[price, size]`` pairs (KuCoin's ``[price, size, sequence]``) swaps both.
    apply_levels: Callable[..., int] = staticmethod(apply_frame)
    parse_delta_levels: Callable[[Sequence[Sequence[object]]], list[Level]] = staticmethod(parse_levels)

    def __init__(
        self,
        sink: RecordSink,
        exchange_id: int,
        symbol_ids: Mapping[str, int],
        *,
        stale_after_s: float = 60.0,
        depth_limit: int | None = None,
        subscribe_by_message: bool = False,
    ) -> None:
        self.output = RecordOutput(sink)
        self.exchange_id = exchange_id
        self.symbol_ids = dict(symbol_ids)
        self.stale_after_s = stale_after_s
        self.depth_limit = depth_limit
        self.subscribe_by_message = subscribe_by_message
        self.feeds: dict[str, SymbolFeed] = {}  # by native symbol
        self.feeds_by_canonical: dict[str, SymbolFeed] = {}
        self.missing_symbols: list[str] = []
        self.connections: list[list[SymbolFeed]] = []
        self.connection_counters: list[ConnectionCounters] = []
        self._resend_queue: list[SymbolFeed] = []
        self._snapshot_request_times: deque[int] = deque()
        self._snapshots_paused_until_ns = 0
        # Read on every delta: instance attributes, as a class attribute read through self
        # costs ~50 ns more on Python 3.11.
        self._follows = self.sync_rule.follows
        self._follows_contiguously = self._follows is follows_contiguously  # then tested inline: a call less
        self._apply_levels = self.apply_levels

    # ---- venue hooks -----------------------------------------------------------------

    @abstractmethod
    def parse_instruments(self, body: str | bytes) -> list[Instrument]: ...

    @abstractmethod
    def streams_for(self, instrument: Instrument) -> list[str]: ...

    @abstractmethod
    def connection_url(self, streams: Sequence[str]) -> str:
        """URL of a connection carrying ``streams`` (already subscribed if not by message)."""

    @abstractmethod
    def subscribe_messages(self, connection: int, streams: Sequence[str]) -> list[str]: ...

    @abstractmethod
    def snapshot_url(self, instrument: Instrument) -> str: ...

    @abstractmethod
    def parse_snapshot(self, body: str | bytes) -> tuple[int, list[Level], list[Level]]:
        """(snapshot_id, bids, asks); raises ValueError/KeyError/TypeError on bad bodies."""

    # ---- instruments and plan --------------------------------------------------------

    def load_instruments(self, body: str | bytes) -> list[Instrument]:
        """Keep the configured symbols the venue lists; the rest go to ``missing_symbols``."""
        return self.use_instruments(self.parse_instruments(body))

    def use_instruments(self, instruments: Iterable[Instrument]) -> list[Instrument]:
        by_canonical = {instrument.canonical: instrument for instrument in instruments}
        chosen = [by_canonical[symbol] for symbol in self.symbol_ids if symbol in by_canonical]
        self.missing_symbols = [symbol for symbol in self.symbol_ids if symbol not in by_canonical]
        self.feeds.clear()
        self.feeds_by_canonical.clear()
        self.connections = []
        streams_each = len(self.streams_for(chosen[0])) if chosen else 1
        per_connection = max(1, self.streams_per_connection // streams_each)
        for start in range(0, len(chosen), per_connection):
            connection = len(self.connections)
            feeds = []
            for instrument in chosen[start : start + per_connection]:
                symbol_id = self.symbol_ids[instrument.canonical]
                records = SymbolRecords(self.output, self.exchange_id, symbol_id)
                feed = SymbolFeed(instrument, symbol_id, connection, records)
                self.feeds[instrument.native] = feed
                self.feeds_by_canonical[instrument.canonical] = feed
                feeds.append(feed)
            self.connections.append(feeds)
        self.connection_counters = [ConnectionCounters() for _ in self.connections]
        return chosen

    def connection_streams(self, connection: int) -> list[str]:
        return [stream for feed in self.connections[connection] for stream in self.streams_for(feed.instrument)]

    def connection_plan(self) -> list[ConnectionSpec]:
        return [
            ConnectionSpec(
                url=self.connection_url(() if self.subscribe_by_message else self.connection_streams(index)),
                symbols=tuple(feed.instrument.canonical for feed in feeds),
                ping_interval_s=self.ping_interval_s,
                stale_after_s=self.stale_after_s,
            )
            for index, feeds in enumerate(self.connections)
        ]

    def limit_connections(self, max_streams: int) -> None:
        self.streams_per_connection = min(self.streams_per_connection, max_streams)

    def book(self, canonical: str) -> L2Book:
        return self.feeds_by_canonical[canonical].book

    def counters(self, canonical: str) -> SymbolCounters:
        return self.feeds_by_canonical[canonical].counters

    # ---- connection life ---------------------------------------------------------------

    def on_open(self, connection: int, now_ns: int) -> list[str]:
        feeds = self.connections[connection]
        if self.subscribe_by_message:
            for feed in feeds:
                self._reset(feed, SyncState.SUBSCRIBING)
            self._write_status(feeds, Status.CONNECTING, Reason.NONE, now_ns)
            return self.subscribe_messages(connection, self.connection_streams(connection))
        self.subscription_live(feeds, now_ns)
        return []

    def subscription_live(self, feeds: Iterable[SymbolFeed], now_ns: int) -> None:
        """The venue now streams these symbols: buffer and ask for snapshots."""
        feeds = list(feeds)
        for feed in feeds:
            self._reset(feed, SyncState.BUFFERING)
            feed.snapshot_due_ns = _NOW
        self._write_status(feeds, Status.SYNCING, Reason.NONE, now_ns)

    def on_close(self, connection: int, now_ns: int, reason: Reason = Reason.DISCONNECTED) -> None:
        feeds = self.connections[connection]
        for feed in feeds:
            self._reset(feed, SyncState.IDLE)
        status = Status.STALE if reason == Reason.STALE_STREAM else Status.DISCONNECTED
        batch = _clear_batch(self.exchange_id, [feed.symbol_id for feed in feeds], reason, status, now_ns)
        if self.output.write(batch):
            for feed in feeds:
                feed.resend_pending = False
        self._after_write()

    def _reset(self, feed: SymbolFeed, state: SyncState) -> None:
        feed.state = state
        feed.counters.frames_dropped += len(feed.buffer)
        feed.buffer.clear()
        feed.book.clear()
        feed.last_id = 0
        feed.bridged = False
        feed.snapshot_due_ns = None
        feed.snapshot_delay_ns = None
        feed.snapshot_failures_in_row = 0
        feed.expected_tops.clear()

    def _write_status(self, feeds: Sequence[SymbolFeed], status: Status, reason: Reason, now_ns: int) -> None:
        if feeds:
            symbol_ids = [feed.symbol_id for feed in feeds]
            self.output.write(status_batch(self.exchange_id, symbol_ids, status, reason, now_ns))
            self._after_write()

    # ---- deltas ------------------------------------------------------------------------

    def on_delta(
        self,
        feed: SymbolFeed,
        first_id: int,
        last_id: int,
        previous_id: int,
        raw_bids: Sequence[Sequence[object]],
        raw_asks: Sequence[Sequence[object]],
        exchange_ts: int,
        receive_ts: int,
    ) -> None:
        """One delta frame of ``feed`` with ids checked and levels still as the venue's own
        lists (``[price, size]`` pairs unless ``apply_levels`` says otherwise): buffer it, or
        check, apply and write it.

        The in-sync path is the sequence check, ``apply_levels`` (:func:`apply_frame` unless
        the venue's levels are not pairs) and :func:`publish_live_delta`. Venue modules read a
        delta's fields in ``on_message`` and call this directly."""
        counters = feed.counters
        counters.frames += 1
        if not 0 <= exchange_ts <= MAX_EXCHANGE_TS:
            counters.parse_errors += 1
            self.frame_rejected = True
            self._resync(feed, Reason.MALFORMED, receive_ts)
            return
        counters.last_exchange_ts = exchange_ts
        counters.receive_lag_ns = receive_ts - exchange_ts
        if feed.state is not _LIVE:
            self._on_delta_not_live(feed, (first_id, last_id, previous_id, raw_bids, raw_asks, exchange_ts, receive_ts))
            return
        if feed.bridged:
            prior_last_id = feed.last_id
            if self._follows_contiguously:
                in_sequence = first_id == prior_last_id + 1
            else:
                follows = self._follows  # an instance attribute's function: load, then call (~25 ns less)
                in_sequence = follows(first_id, previous_id, prior_last_id)
            if not in_sequence:
                counters.gaps += 1
                self._resync(feed, Reason.SEQUENCE_GAP, receive_ts)
                self._buffer(feed, (first_id, last_id, previous_id, raw_bids, raw_asks, exchange_ts, receive_ts))
                return
        elif not self._bridges_snapshot(
            feed, (first_id, last_id, previous_id, raw_bids, raw_asks, exchange_ts, receive_ts)
        ):
            return
        book = feed.book
        records = feed.records
        try:
            count = self._apply_levels(book, records, raw_bids, raw_asks, last_id, exchange_ts, receive_ts)
        except (ValueError, TypeError):
            # Part of a bad frame may be applied, and the frame is lost anyway: resync.
            counters.parse_errors += 1
            self.frame_rejected = True
            self._resync(feed, Reason.MALFORMED, receive_ts)
            return
        publish_live_delta(self, feed, count, last_id, exchange_ts, receive_ts)

    def on_parsed_delta(
        self,
        feed: SymbolFeed,
        first_id: int,
        last_id: int,
        previous_id: int,
        bids: Sequence[Level],
        asks: Sequence[Level],
        exchange_ts: int,
        receive_ts: int,
    ) -> None:
        """:meth:`on_delta` for levels a typed decoder already validated as ``(price, size)``
        floats (:mod:`actors.connectors.wire`): a live, bridged, in-sequence delta is applied
        and written here with no parsing (bench/connectors.py); every other case is
        :meth:`on_delta`'s, which takes these levels as it takes raw ones. Both end in
        :func:`publish_live_delta`."""
        prior_last_id = feed.last_id
        if (
            feed.state is not _LIVE
            or not feed.bridged
            or not 0 <= exchange_ts <= MAX_EXCHANGE_TS
            or not (
                first_id == prior_last_id + 1
                if self._follows_contiguously
                else self._follows(first_id, previous_id, prior_last_id)
            )
        ):
            self.on_delta(feed, first_id, last_id, previous_id, bids, asks, exchange_ts, receive_ts)
            return
        counters = feed.counters
        counters.frames += 1
        counters.last_exchange_ts = exchange_ts
        counters.receive_lag_ns = receive_ts - exchange_ts
        book = feed.book
        records = feed.records
        needed = len(bids) + len(asks)
        scratch = records.scratch if needed <= records.capacity else records.reserve(needed)
        try:
            offset = apply_side(book.bids, book.bid_prices, bids, scratch, 0, exchange_ts, receive_ts, last_id, BID_SIDE)
            apply_side(book.asks, book.ask_prices, asks, scratch, offset, exchange_ts, receive_ts, last_id, ASK_SIDE)
        except (ValueError, TypeError):  # a timestamp or id the record cannot hold: as on_delta
            counters.parse_errors += 1
            self.frame_rejected = True
            self._resync(feed, Reason.MALFORMED, receive_ts)
            return
        publish_live_delta(self, feed, needed, last_id, exchange_ts, receive_ts)

    def _on_delta_not_live(self, feed: SymbolFeed, raw_delta: tuple) -> None:
        if feed.state is _BUFFERING:
            self._buffer(feed, raw_delta)
        else:
            feed.counters.frames_dropped += 1

    def _buffer(self, feed: SymbolFeed, raw_delta: tuple) -> None:
        """Keep a delta (levels parsed now) until the snapshot arrives; a break in the
        buffer, or a delta that does not parse, restarts it."""
        first_id, last_id, previous_id, raw_bids, raw_asks, exchange_ts, receive_ts = raw_delta
        buffer = feed.buffer
        counters = feed.counters
        try:
            bids = self.parse_delta_levels(raw_bids)
            asks = self.parse_delta_levels(raw_asks)
        except (ValueError, TypeError):
            counters.parse_errors += 1
            self.frame_rejected = True
            counters.frames_dropped += 1 + len(buffer)
            buffer.clear()
            return
        if buffer and not self.sync_rule.follows(first_id, previous_id, buffer[-1][1]):
            counters.gaps += 1
            counters.frames_dropped += len(buffer)
            buffer.clear()
        elif len(buffer) >= self.max_buffered_deltas:
            counters.frames_dropped += 1
            del buffer[0]
        buffer.append((first_id, last_id, previous_id, bids, asks, exchange_ts, receive_ts))

    def _bridges_snapshot(self, feed: SymbolFeed, raw_delta: tuple) -> bool:
        """First live delta after a snapshot published with nothing buffered: drop it if
        the snapshot already has it, resync if it starts after the snapshot."""
        first_id, last_id = raw_delta[0], raw_delta[1]
        rule = self.sync_rule
        if rule.is_stale(first_id, last_id, feed.last_id):
            feed.counters.frames_dropped += 1
            return False
        if rule.bridges(first_id, last_id, feed.last_id):
            feed.bridged = True
            return True
        feed.counters.gaps += 1
        self._resync(feed, Reason.SEQUENCE_GAP, raw_delta[6])
        self._buffer(feed, raw_delta)
        return False

    def _truncate(self, feed: SymbolFeed, count: int, sequence: int, exchange_ts: int, receive_ts: int) -> int:
        """Trim to ``depth_limit``; the trimmed levels join the frame's batch as deletes."""
        removed_bids, removed_asks = feed.book.truncate(self.depth_limit or 0)
        if not (removed_bids or removed_asks):
            return count
        return feed.records.append_levels(
            count,
            [(price, 0.0) for price in removed_bids],
            [(price, 0.0) for price in removed_asks],
            sequence,
            exchange_ts,
            receive_ts,
        )

    def _resync(self, feed: SymbolFeed, reason: Reason, now_ns: int) -> None:
        was_published = feed.state == SyncState.LIVE
        self._reset(feed, SyncState.BUFFERING)
        feed.counters.resyncs += 1
        feed.snapshot_due_ns = _NOW
        if was_published and feed.records.clear(reason, Status.RESYNCING, now_ns):
            feed.resend_pending = False
        self._after_write()

    # ---- top-of-book cross-check ----------------------------------------------------------

    def expect_top(self, feed: SymbolFeed, update_id: int, best_bid: Level, best_ask: Level, now_ns: int) -> None:
        """The venue's own best bid and ask at ``update_id`` (Binance ``bookTicker``).

        Tickers usually arrive before the batched delta that reaches their id, so they
        wait until the book gets there; one that falls inside a delta's id range is
        never comparable and is dropped. A disagreement resyncs the book.
        """
        if feed.state not in (SyncState.BUFFERING, SyncState.LIVE):
            return
        if feed.state == SyncState.LIVE and update_id <= feed.last_id:
            if update_id == feed.last_id and not self._tops_agree(feed, best_bid, best_ask):
                self._resync(feed, Reason.CROSS_CHECK, now_ns)
            return
        expected = feed.expected_tops
        if len(expected) >= self.max_expected_tops:
            del expected[0]
        expected.append((update_id, best_bid, best_ask))

    def _check_expected_tops(self, feed: SymbolFeed) -> bool:
        """Compare the tickers the book has reached; False if one disagrees."""
        agree = True
        waiting = []
        for update_id, best_bid, best_ask in feed.expected_tops:
            if update_id == feed.last_id:
                agree = self._tops_agree(feed, best_bid, best_ask) and agree
            elif update_id > feed.last_id:
                waiting.append((update_id, best_bid, best_ask))
        feed.expected_tops = waiting
        return agree

    def _tops_agree(self, feed: SymbolFeed, best_bid: Level, best_ask: Level) -> bool:
        counters = feed.counters
        counters.cross_checks += 1
        if feed.book.best_bid() == best_bid and feed.book.best_ask() == best_ask:
            return True
        counters.cross_check_mismatches += 1
        return False

    # ---- snapshots ---------------------------------------------------------------------

    def snapshot_requests(self, now_ns: int) -> list[SnapshotRequest]:
        """Snapshots to fetch now, within the in-flight limit, the per-minute budget and
        any Retry-After pause. ``now_ns`` is monotonic (``time.monotonic_ns()``)."""
        for feed in self.feeds.values():
            if feed.snapshot_delay_ns is not None:
                feed.snapshot_due_ns = now_ns + feed.snapshot_delay_ns
                feed.snapshot_delay_ns = None
        if now_ns < self._snapshots_paused_until_ns:
            return []
        recent = self._snapshot_request_times
        while recent and recent[0] <= now_ns - 60_000_000_000:
            recent.popleft()
        in_flight = sum(feed.snapshot_in_flight for feed in self.feeds.values())
        requests = []
        for feed in self.feeds.values():
            if in_flight >= self.max_snapshots_in_flight or len(recent) >= self.snapshot_requests_per_minute:
                break
            due = feed.snapshot_due_ns
            if due is not None and due <= now_ns and not feed.snapshot_in_flight:
                feed.snapshot_in_flight = True
                feed.snapshot_due_ns = None
                in_flight += 1
                recent.append(now_ns)
                requests.append(SnapshotRequest(feed.instrument.native, self.snapshot_url(feed.instrument)))
        return requests

    def on_snapshot_failed(self, native_symbol: str, now_ns: int, retry_after_s: float | None = None) -> None:
        """A snapshot request failed; ``now_ns`` is monotonic (``time.monotonic_ns()``)."""
        feed = self.feeds.get(native_symbol)
        if feed is None:
            return
        feed.snapshot_in_flight = False
        feed.counters.snapshot_failures += 1
        if retry_after_s is not None:  # a rate limit holds for every request, not one symbol
            self._snapshots_paused_until_ns = max(self._snapshots_paused_until_ns, now_ns + int(retry_after_s * 1e9))
        delay_ns = self._retry_delay_ns(feed, retry_after_s)
        if delay_ns is not None:
            feed.snapshot_due_ns = now_ns + delay_ns

    def _retry_delay_ns(self, feed: SymbolFeed, retry_after_s: float | None = None) -> int | None:
        """The backoff before the next attempt (None: the feed no longer wants a snapshot)."""
        if feed.state != SyncState.BUFFERING:
            return None
        backoff = min(self.snapshot_retry_max_s, self.snapshot_retry_initial_s * 2**feed.snapshot_failures_in_row)
        feed.snapshot_failures_in_row += 1
        return int(max(backoff, retry_after_s or 0.0) * 1e9)

    def _retry_snapshot_later(self, feed: SymbolFeed) -> None:
        """Retry after the backoff, counted from the next :meth:`snapshot_requests` poll:
        only there does the module see the monotonic clock (receive stamps are wall time)."""
        feed.snapshot_delay_ns = self._retry_delay_ns(feed)

    def on_snapshot(self, native_symbol: str, body: str | bytes, receive_ts: int) -> None:
        feed = self.feeds.get(native_symbol)
        if feed is None:
            return
        feed.snapshot_in_flight = False
        if feed.state != SyncState.BUFFERING:
            return  # asked for before a close or a resync that already has a newer request
        counters = feed.counters
        try:
            snapshot_id, bids, asks = self.parse_snapshot(body)
        except (ValueError, KeyError, TypeError):
            counters.parse_errors += 1
            self.frame_rejected = True
            self._retry_snapshot_later(feed)
            return
        rule = self.sync_rule
        buffer = feed.buffer
        stale = 0
        while stale < len(buffer) and rule.is_stale(buffer[stale][0], buffer[stale][1], snapshot_id):
            stale += 1
        if stale < len(buffer) and not rule.bridges(buffer[stale][0], buffer[stale][1], snapshot_id):
            # The snapshot is older than the first delta we hold: ask again, keep buffering.
            counters.stale_snapshots += 1
            self._retry_snapshot_later(feed)
            return
        book = feed.book
        book.load(bids, asks)
        counters.snapshots += 1
        counters.frames_dropped += stale
        feed.last_id = snapshot_id
        feed.bridged = False
        tops_agree = self._check_expected_tops(feed)
        exchange_ts = 0
        for _first_id, last_id, _previous_id, delta_bids, delta_asks, exchange_ts, _receive_ts in buffer[stale:]:
            book.apply(delta_bids, delta_asks)
            counters.frames_applied += 1
            counters.levels_applied += len(delta_bids) + len(delta_asks)
            feed.last_id = last_id
            feed.bridged = True
            tops_agree = self._check_expected_tops(feed) and tops_agree
        buffer.clear()
        if not tops_agree:
            self._resync(feed, Reason.CROSS_CHECK, receive_ts)
            return
        if self.depth_limit is not None:
            book.truncate(self.depth_limit)
        if book.is_crossed():
            counters.crossed += 1
            self._resync(feed, Reason.CROSSED, receive_ts)
            return
        feed.state = SyncState.LIVE
        feed.snapshot_failures_in_row = 0
        if feed.records.snapshot(book, feed.last_id, exchange_ts, receive_ts):
            feed.resend_pending = False
        self._after_write()

    def _book_sequence(self, feed: SymbolFeed) -> int:
        return feed.last_id


def _publish_live_delta_python(
    connector: RestSeededConnector, feed: SymbolFeed, count: int, last_id: int, exchange_ts: int, receive_ts: int
) -> None:
    """:func:`publish_live_delta` without the C extension."""
    counters = feed.counters
    book = feed.book
    records = feed.records
    feed.last_id = last_id
    counters.frames_applied += 1
    counters.levels_applied += count
    bid_prices = book.bid_prices
    ask_prices = book.ask_prices
    depth_limit = connector.depth_limit
    if depth_limit is not None and (len(bid_prices) > depth_limit or len(ask_prices) > depth_limit):
        count = connector._truncate(feed, count, last_id, exchange_ts, receive_ts)
    if bid_prices and ask_prices and bid_prices[-1] >= ask_prices[0]:
        counters.crossed += 1
        connector._resync(feed, Reason.CROSSED, receive_ts)
        return
    if feed.expected_tops and not connector._check_expected_tops(feed):
        connector._resync(feed, Reason.CROSS_CHECK, receive_ts)  # before writing: the consumer never sees it
        return
    if not feed.resend_pending:
        write_records = records.sink_write_records
        if not write_records(records.scratch, count):  # truncating may have grown the scratch
            records.output.lost(records.batches[count])
            connector._after_write()


def _apply_live_sequenced_delta_python(
    connector: RestSeededConnector,
    feed: SymbolFeed,
    last_id: int,
    bids: Sequence[Sequence[object]],
    asks: Sequence[Sequence[object]],
    exchange_ts: int,
    receive_ts: int,
) -> None:
    """:func:`apply_live_sequenced_delta` without the C extension."""
    counters = feed.counters
    counters.frames += 1
    counters.last_exchange_ts = exchange_ts
    counters.receive_lag_ns = receive_ts - exchange_ts
    records = feed.records
    needed = len(bids) + len(asks)
    if needed == 1 and (bids or asks)[0][0] == "0":  # one sequence-only change: nothing to apply or write
        feed.last_id = last_id
        counters.frames_applied += 1
        if feed.expected_tops and not connector._check_expected_tops(feed):
            connector._resync(feed, Reason.CROSS_CHECK, receive_ts)
        return
    book = feed.book
    try:
        count = _apply_sequenced_frame_python(book, records, bids, asks, last_id, exchange_ts, receive_ts)
    except (ValueError, TypeError):  # part of a bad frame may be applied, and the frame is lost anyway: resync
        counters.parse_errors += 1
        connector.frame_rejected = True
        connector._resync(feed, Reason.MALFORMED, receive_ts)
        return
    _publish_live_delta_python(connector, feed, count, last_id, exchange_ts, receive_ts)


# A REST-seeded feed's live delta, in C where the kernel is built (its Python twins above):
#   publish_live_delta(connector, feed, count, last_id, exchange_ts, receive_ts): what follows a
#     live, in-sequence delta whose ``count`` LEVEL records are applied to the book and packed in
#     its scratch: the counters, depth truncation, the crossed-book and cross-checked-top rules
#     (either resyncs, before anything is written), then one ring write. Every venue's live delta
#     path ends here.
#   apply_live_sequenced_delta(connector, feed, last_id, bids, asks, exchange_ts, receive_ts): a
#     live, bridged KuCoin delta that follows on, as ``[price, size, sequence]`` changes: on_delta's
#     steps (frame counters, apply_sequenced_frame, a bad change a parse error and a resync, then
#     publish_live_delta) in one call. One sequence-only change (price "0") leaves the book as it
#     was, and a live book is always within its depth and uncrossed, so it only advances the
#     sequence and meets a waiting cross-check.
# Both read and write the feed's attributes as the twins do, and call the connector's own methods
# (_truncate, _resync, _check_expected_tops, _after_write) for the rare steps.
if _kernel is not None:
    _kernel.configure_feeds(SymbolFeed, SymbolCounters, L2Book, SymbolRecords, Reason, Side)
    publish_live_delta = _kernel.publish_live_delta
    apply_live_sequenced_delta = _kernel.apply_live_sequenced_delta
else:
    publish_live_delta = _publish_live_delta_python
    apply_live_sequenced_delta = _apply_live_sequenced_delta_python


def _status_of(state: SyncState) -> Status:
    return {
        SyncState.IDLE: Status.DISCONNECTED,
        SyncState.SUBSCRIBING: Status.CONNECTING,
        SyncState.BUFFERING: Status.SYNCING,
        SyncState.LIVE: Status.IN_SYNC,
    }[state]


def _clear_batch(
    exchange_id: int, symbol_ids: Sequence[int], reason: Reason, status: Status, receive_ts: int
) -> np.ndarray:
    """CLEAR + STATUS for each symbol, as one batch."""
    batch = np.zeros(2 * len(symbol_ids), dtype=RECORD_DTYPE)
    batch["exchange_id"] = exchange_id
    batch["symbol_id"] = np.repeat(np.asarray(symbol_ids, dtype=np.uint32), 2)
    batch["receive_ts"] = receive_ts
    batch["reason"] = reason
    batch["kind"][0::2] = Kind.CLEAR
    batch["kind"][1::2] = Kind.STATUS
    batch["aux"][1::2] = status
    return batch


__all__ = [
    "INF",
    "MAX_EXCHANGE_TS",
    "MAX_PRICE",
    "MAX_SIZE",
    "ConnectionAction",
    "ConnectionCounters",
    "ConnectionSpec",
    "Connector",
    "Delta",
    "HttpRequest",
    "BookResender",
    "KeepAlive",
    "ASK_SIDE",
    "BID_SIDE",
    "RECORD_SIZE",
    "SIDE_OFFSET",
    "pack_record_head",
    "rfc3339_ns",
    "micros_stamp_ns",
    "OutgoingMessage",
    "Instrument",
    "L2Book",
    "Level",
    "RecordOutput",
    "RecordSink",
    "RestSeededConnector",
    "SnapshotRequest",
    "SymbolCounters",
    "SymbolFeed",
    "SymbolRecords",
    "SyncRule",
    "SyncState",
    "apply_frame",
    "apply_level",
    "apply_live_sequenced_delta",
    "apply_sequenced_frame",
    "apply_sequenced_side",
    "apply_side",
    "canonical_symbol",
    "change_sequence",
    "follows_contiguously",
    "parse_levels",
    "publish_live_delta",
    "status_batch",
]
