"""Sans-IO machinery for venues whose book snapshot arrives in the stream.

Kraken, Coinbase, Bitfinex, OKX, Bybit and HTX's ``depth`` channel send the snapshot
on the subscription itself, then deltas on the same channel. :class:`StreamSeededConnector`
is the sibling of :class:`~actors.connectors.base.RestSeededConnector` for them: the
same runtime contract (module docstring of :mod:`actors.connectors.base`, both clocks
included), the same records, and one addition the runtime must poll.

Per symbol: subscribe → snapshot message → deltas. Every delta is applied, then the
book is truncated to the subscribed depth (venues do not always delete levels that
leave the window), checked for a crossed book, and, where the venue declares them,
checked against the frame's sequence (``sequence_rule``) and checksum
(``book_checksum``, see :mod:`actors.connectors.checksum`) before its records are
written. A venue with a checksum keeps a :class:`~actors.connectors.checksum.TextBook`
(each level's checksum token beside it, made from the exact strings received); the
others keep a plain :class:`~actors.connectors.base.L2Book` and pay nothing for it.

Any failure (gap, checksum mismatch, crossed book, a frame that does not apply, a
snapshot that does not come) writes ``CLEAR(reason)`` + ``STATUS(RESYNCING)``, drops
the symbol's frames until a fresh snapshot, and asks for that snapshot by
re-subscribing the one symbol. A venue that cannot re-subscribe one symbol sets
``resubscribe_per_symbol = False``: the failing frame's ``on_message`` then returns
``ConnectionAction.RECONNECT`` for the whole connection. Repeated failures of a symbol
back off exponentially (a venue that keeps sending a bad book must not be hammered).

What the runtime adds for these connectors (``actors/connector.py``), on the timer
that already polls ``snapshot_requests``:

8. ``for message in connector.outgoing_messages(time.monotonic_ns())``: send
   ``message.text`` on connection ``message.connection`` if that connection is open;
   drop it otherwise (``on_open`` subscribes everything again). These are the
   unsubscribe/subscribe pairs of resyncing symbols, re-subscriptions after a snapshot
   timeout or a subscription error, and the venue's application-level pings. Nothing
   else changes: ``snapshot_requests`` returns nothing and ``on_snapshot`` /
   ``on_snapshot_failed`` are never needed, so calling them is harmless.

A venue module subclasses the connector, declares its data (``name``,
``book_checksum``, ``sequence_rule``, ``symbols_per_connection``, ping settings) and
implements :meth:`parse_instruments`, :meth:`connection_url`,
:meth:`subscribe_messages`, :meth:`resubscribe_messages` and ``on_message``, which
routes frames to :meth:`on_book_snapshot`, :meth:`on_book_update`,
:meth:`on_subscribe_error` and :meth:`write_trade`, and returns
:meth:`connection_action`.

Levels reach the machinery as the venue's own level lists: element 0 is the price
text, element 1 the absolute size text, anything after is ignored (Kraken v1's
timestamp and republish flag, OKX's order count), so the hot path builds no per-level
tuples for venues whose levels already have that shape.
"""

from __future__ import annotations

from abc import abstractmethod
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from actors.connectors.base import (
    ASK_SIDE,
    BID_SIDE,
    INF,
    MAX_EXCHANGE_TS,
    MAX_PRICE,
    MAX_SIZE,
    RECORD_SIZE,
    SIDE_OFFSET,
    BookResender,
    ConnectionAction,
    ConnectionCounters,
    ConnectionSpec,
    Connector,
    Instrument,
    L2Book,
    Level,
    OutgoingMessage,
    RecordOutput,
    RecordSink,
    SnapshotRequest,
    SymbolCounters,
    SymbolRecords,
    SyncState,
    apply_frame,
    pack_record_head,
    status_batch,
)
from actors.connectors.checksum import BookChecksum, TextBook
from shm.records import RECORD_DTYPE, Kind, Reason, Side, Status

RawLevels = Sequence[Sequence[object]]
"""A venue's level list: ``level[0]`` price text, ``level[1]`` absolute size text."""

SequenceRule = Callable[[int, int, int], bool]
"""(sequence, previous_sequence, last_sequence) → the frame follows the book's last one."""

assert RECORD_DTYPE.names[:5] == ("exchange_ts", "receive_ts", "price", "size", "sequence")

_IDLE = SyncState.IDLE  # module globals: reading an enum member costs ~125 ns on 3.11
_SUBSCRIBING = SyncState.SUBSCRIBING
_LIVE = SyncState.LIVE
_CONTINUE = ConnectionAction.CONTINUE
_UNANCHORED = -1  # a deadline to start at the next outgoing_messages poll (the monotonic clock)


@dataclass(slots=True)
class StreamCounters(SymbolCounters):
    """:class:`SymbolCounters` plus what only stream-seeded venues do."""

    checksums_ok: int = 0
    checksums_failed: int = 0
    resubscribes: int = 0
    snapshot_timeouts: int = 0
    subscribe_errors: int = 0


class StreamFeed:
    """One symbol: book, subscription state, records, counters, resubscription schedule."""

    __slots__ = (
        "instrument",
        "symbol_id",
        "connection",
        "depth",
        "book",
        "records",
        "counters",
        "state",
        "last_sequence",
        "confirmed",
        "failures_in_row",
        "resubscribe_delay_ns",
        "resubscribe_due_ns",
        "snapshot_deadline_ns",
        "resend_pending",
    )

    def __init__(
        self, instrument: Instrument, symbol_id: int, connection: int, depth: int, book: L2Book, records: SymbolRecords
    ) -> None:
        self.instrument = instrument
        self.symbol_id = symbol_id
        self.connection = connection
        self.depth = depth  # subscribed levels per side; the book is truncated to it
        self.book = book
        self.records = records
        self.counters = StreamCounters()
        self.state = SyncState.IDLE
        self.last_sequence = 0
        self.confirmed = False  # an update verified on top of the latest snapshot
        self.failures_in_row = 0  # resyncs since the last confirmed book: the backoff exponent
        self.resubscribe_delay_ns: int | None = None  # not yet anchored to the monotonic clock
        self.resubscribe_due_ns: int | None = None  # monotonic ns
        self.snapshot_deadline_ns: int | None = None  # monotonic ns, or _UNANCHORED
        self.resend_pending = False


# ---------------------------------------------------------------------------------------
# Hot path: apply one frame's levels to the book and pack them as records


def apply_text_levels(
    book: TextBook,
    records: SymbolRecords,
    raw_bids: RawLevels,
    raw_asks: RawLevels,
    checksum: BookChecksum,
    sequence: int,
    exchange_ts: int,
    receive_ts: int,
) -> int:
    """:func:`~actors.connectors.base.apply_frame` that also keeps each set level's checksum token and tells the
    book which side's checksummed top changed (the raw strings must be ``str``; anything
    else raises TypeError/AttributeError). Both sides written out: it runs per frame."""
    needed = len(raw_bids) + len(raw_asks)
    scratch = records.scratch if needed <= records.capacity else records.reserve(needed)
    offset = 0
    top = checksum.depth
    if raw_bids:
        levels = book.bids
        prices = book.bid_prices
        tokens = book.bid_tokens
        token = checksum.bid_token
        nearest = 0.0
        for level in raw_bids:
            price_text = level[0]
            size_text = level[1]
            price = float(price_text)
            size = float(size_text)
            if not (0.0 < price <= MAX_PRICE and 0.0 <= size <= MAX_SIZE):
                raise ValueError(f"invalid level {price_text!r} {size_text!r}")
            if size:
                if price not in levels:
                    insort(prices, price)
                levels[price] = size
                tokens[price] = token(price_text, size_text)
            elif levels.pop(price, None) is not None:
                del prices[bisect_left(prices, price)]
                del tokens[price]
            if price > nearest:
                nearest = price
            pack_record_head(scratch, offset, exchange_ts, receive_ts, price, size, sequence)
            scratch[offset + SIDE_OFFSET] = BID_SIDE
            offset += RECORD_SIZE
        if len(prices) <= top or nearest >= prices[-top]:
            book.bids_changed = True
    if raw_asks:
        levels = book.asks
        prices = book.ask_prices
        tokens = book.ask_tokens
        token = checksum.ask_token
        nearest = INF
        for level in raw_asks:
            price_text = level[0]
            size_text = level[1]
            price = float(price_text)
            size = float(size_text)
            if not (0.0 < price <= MAX_PRICE and 0.0 <= size <= MAX_SIZE):
                raise ValueError(f"invalid level {price_text!r} {size_text!r}")
            if size:
                if price not in levels:
                    insort(prices, price)
                levels[price] = size
                tokens[price] = token(price_text, size_text)
            elif levels.pop(price, None) is not None:
                del prices[bisect_left(prices, price)]
                del tokens[price]
            if price < nearest:
                nearest = price
            pack_record_head(scratch, offset, exchange_ts, receive_ts, price, size, sequence)
            scratch[offset + SIDE_OFFSET] = ASK_SIDE
            offset += RECORD_SIZE
        if len(prices) <= top or nearest <= prices[top - 1]:
            book.asks_changed = True
    return offset // RECORD_SIZE


def _load_side(
    raw: RawLevels, tokens: dict[float, str] | None, token: Callable[[str, str], str] | None
) -> dict[float, float]:
    """One snapshot side as price → size (zero sizes skipped), tokens filled alongside."""
    levels = {}
    for level in raw:
        price_text = level[0]
        size_text = level[1]
        price = float(price_text)
        size = float(size_text)
        if not (0.0 < price <= MAX_PRICE and 0.0 <= size <= MAX_SIZE):
            raise ValueError(f"invalid level {price_text!r} {size_text!r}")
        if size:
            levels[price] = size
            if tokens is not None:
                tokens[price] = token(price_text, size_text)
    return levels


# ---------------------------------------------------------------------------------------
# Connector


class StreamSeededConnector(BookResender, Connector):
    """Generic connector for venues that send the book snapshot on the subscription."""

    book_checksum: BookChecksum | None = None
    sequence_rule: SequenceRule | None = None
    resubscribe_per_symbol = True
    symbols_per_connection = 50
    ping_interval_s: float | None = None  # WebSocket-level pings by the runtime
    application_ping_interval_s: float | None = None  # venue-level pings via outgoing_messages
    snapshot_timeout_s = 10.0
    resubscribe_retry_initial_s = 0.5
    resubscribe_retry_max_s = 30.0

    def __init__(
        self,
        sink: RecordSink,
        exchange_id: int,
        symbol_ids: Mapping[str, int],
        *,
        depth: int,
        stale_after_s: float = 60.0,
    ) -> None:
        """``depth``: the levels per side subscribed to; every book is truncated to it."""
        if depth <= 0:
            raise ValueError(f"depth must be positive, got {depth}")
        self.output = RecordOutput(sink)
        self.exchange_id = exchange_id
        self.symbol_ids = dict(symbol_ids)
        self.depth = depth
        self.stale_after_s = stale_after_s
        self.feeds: dict[str, StreamFeed] = {}  # by native symbol
        self.feeds_by_canonical: dict[str, StreamFeed] = {}
        self.missing_symbols: list[str] = []
        self.connections: list[list[StreamFeed]] = []
        self.connection_counters: list[ConnectionCounters] = []
        self._open: list[bool] = []
        self._reconnect_requested: list[bool] = []
        self._ping_due_ns: list[int | None] = []
        self._attention: dict[StreamFeed, None] = {}  # feeds waiting for a snapshot (an ordered set)
        self._resend_queue: list[StreamFeed] = []

    # ---- venue hooks -----------------------------------------------------------------

    @abstractmethod
    def parse_instruments(self, body: str | bytes) -> list[Instrument]: ...

    @abstractmethod
    def connection_url(self, connection: int) -> str: ...

    @abstractmethod
    def subscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        """Messages that subscribe ``feeds`` (books and trades) on a fresh connection."""

    @abstractmethod
    def resubscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        """Messages that make the venue send ``feeds`` a fresh book snapshot
        (typically unsubscribe + subscribe of the book channel)."""

    def application_ping(self, connection: int) -> str:
        """The venue's ping message (only with ``application_ping_interval_s``)."""
        raise NotImplementedError

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
        self._attention.clear()
        self.connections = []
        book_type = TextBook if self.book_checksum is not None else L2Book
        for start in range(0, len(chosen), self.symbols_per_connection):
            connection = len(self.connections)
            feeds = []
            for instrument in chosen[start : start + self.symbols_per_connection]:
                symbol_id = self.symbol_ids[instrument.canonical]
                records = SymbolRecords(self.output, self.exchange_id, symbol_id)
                feed = StreamFeed(instrument, symbol_id, connection, self.depth, book_type(), records)
                self.feeds[instrument.native] = feed
                self.feeds_by_canonical[instrument.canonical] = feed
                feeds.append(feed)
            self.connections.append(feeds)
        count = len(self.connections)
        self.connection_counters = [ConnectionCounters() for _ in range(count)]
        self._open = [False] * count
        self._reconnect_requested = [False] * count
        self._ping_due_ns = [None] * count
        return chosen

    def connection_plan(self) -> list[ConnectionSpec]:
        return [
            ConnectionSpec(
                url=self.connection_url(index),
                symbols=tuple(feed.instrument.canonical for feed in feeds),
                ping_interval_s=self.ping_interval_s,
                stale_after_s=self.stale_after_s,
            )
            for index, feeds in enumerate(self.connections)
        ]

    def limit_connections(self, max_streams: int) -> None:
        """A stream here is a symbol (its book and trades share the subscription)."""
        self.symbols_per_connection = min(self.symbols_per_connection, max_streams)

    def book(self, canonical: str) -> L2Book:
        return self.feeds_by_canonical[canonical].book

    def counters(self, canonical: str) -> StreamCounters:
        return self.feeds_by_canonical[canonical].counters

    # ---- connection life ---------------------------------------------------------------

    def on_open(self, connection: int, now_ns: int) -> list[str]:
        feeds = self.connections[connection]
        self._open[connection] = True
        self._reconnect_requested[connection] = False
        self._ping_due_ns[connection] = _UNANCHORED
        for feed in feeds:
            self._reset(feed, _SUBSCRIBING)
            feed.snapshot_deadline_ns = _UNANCHORED
            self._attention[feed] = None
        self._write_status(feeds, Status.CONNECTING, Reason.NONE, now_ns)
        return self.subscribe_messages(connection, feeds)

    def on_close(self, connection: int, now_ns: int, reason: Reason = Reason.DISCONNECTED) -> None:
        feeds = self.connections[connection]
        self._open[connection] = False
        self._reconnect_requested[connection] = False
        for feed in feeds:
            self._reset(feed, _IDLE)
            feed.failures_in_row = 0
            self._attention.pop(feed, None)
        status = Status.STALE if reason == Reason.STALE_STREAM else Status.DISCONNECTED
        symbol_ids = [feed.symbol_id for feed in feeds]
        if symbol_ids and self.output.write(_clear_batch(self.exchange_id, symbol_ids, reason, status, now_ns)):
            for feed in feeds:
                feed.resend_pending = False
        self._after_write()

    def connection_action(self, connection: int) -> ConnectionAction:
        """What ``on_message`` returns: RECONNECT once after a failure on a venue without
        per-symbol resubscription."""
        if self._reconnect_requested[connection]:
            self._reconnect_requested[connection] = False
            return ConnectionAction.RECONNECT
        return _CONTINUE

    def _reset(self, feed: StreamFeed, state: SyncState) -> None:
        feed.state = state
        feed.book.clear()
        feed.last_sequence = 0
        feed.confirmed = False
        feed.resubscribe_delay_ns = None
        feed.resubscribe_due_ns = None
        feed.snapshot_deadline_ns = None

    def _write_status(self, feeds: Sequence[StreamFeed], status: Status, reason: Reason, now_ns: int) -> None:
        if feeds:
            symbol_ids = [feed.symbol_id for feed in feeds]
            self.output.write(status_batch(self.exchange_id, symbol_ids, status, reason, now_ns))
            self._after_write()

    # ---- outgoing messages (polled by the runtime) ---------------------------------------

    def outgoing_messages(self, now_ns: int) -> list[OutgoingMessage]:
        """Resubscriptions and pings due now; ``now_ns`` is monotonic (``time.monotonic_ns()``)."""
        messages: list[OutgoingMessage] = []
        if self._attention:
            due: dict[int, list[StreamFeed]] = {}
            for feed in list(self._attention):
                if feed.state is not _SUBSCRIBING or not self._open[feed.connection]:
                    del self._attention[feed]
                    continue
                if feed.resubscribe_delay_ns is not None:
                    feed.resubscribe_due_ns = now_ns + feed.resubscribe_delay_ns
                    feed.resubscribe_delay_ns = None
                if feed.resubscribe_due_ns is not None:
                    if feed.resubscribe_due_ns <= now_ns:
                        feed.resubscribe_due_ns = None
                        feed.snapshot_deadline_ns = now_ns + int(self.snapshot_timeout_s * 1e9)
                        feed.counters.resubscribes += 1
                        due.setdefault(feed.connection, []).append(feed)
                elif feed.snapshot_deadline_ns == _UNANCHORED:
                    feed.snapshot_deadline_ns = now_ns + int(self.snapshot_timeout_s * 1e9)
                elif feed.snapshot_deadline_ns is not None and now_ns >= feed.snapshot_deadline_ns:
                    feed.counters.snapshot_timeouts += 1
                    self._schedule_resubscribe(feed)
            for connection, feeds in due.items():
                messages.extend(
                    OutgoingMessage(connection, text) for text in self.resubscribe_messages(connection, feeds)
                )
        if self.application_ping_interval_s is not None:
            interval_ns = int(self.application_ping_interval_s * 1e9)
            for connection, ping_due in enumerate(self._ping_due_ns):
                if not self._open[connection]:
                    continue
                if ping_due == _UNANCHORED:
                    self._ping_due_ns[connection] = now_ns + interval_ns
                elif ping_due is not None and now_ns >= ping_due:
                    messages.append(OutgoingMessage(connection, self.application_ping(connection)))
                    self._ping_due_ns[connection] = now_ns + interval_ns
        return messages

    def _schedule_resubscribe(self, feed: StreamFeed) -> None:
        """Ask for a fresh snapshot: at once the first time, then with doubling delays."""
        feed.snapshot_deadline_ns = None
        if not self.resubscribe_per_symbol:
            self._reconnect_requested[feed.connection] = True
            return
        failures = feed.failures_in_row
        feed.failures_in_row = failures + 1
        delay_s = (
            0.0 if not failures else min(self.resubscribe_retry_max_s, self.resubscribe_retry_initial_s * 2 ** (failures - 1))
        )
        feed.resubscribe_delay_ns = int(delay_s * 1e9)
        self._attention[feed] = None

    # ---- book frames (called by the venue's on_message) ------------------------------------

    def on_book_snapshot(
        self,
        feed: StreamFeed,
        raw_bids: RawLevels,
        raw_asks: RawLevels,
        sequence: int,
        checksum: int | None,
        exchange_ts: int,
        receive_ts: int,
    ) -> None:
        """A full book for ``feed``: replace, truncate, check and publish it.

        Accepted whenever the symbol is subscribed, also while live: some venues re-send
        a snapshot mid-stream (Bybit), and it replaces the book.
        """
        counters = feed.counters
        if feed.state is _IDLE:
            counters.frames_dropped += 1
            return
        book = feed.book
        book.clear()
        book_checksum = self.book_checksum
        try:
            if book_checksum is None:
                bids = _load_side(raw_bids, None, None)
                asks = _load_side(raw_asks, None, None)
            else:
                bids = _load_side(raw_bids, book.bid_tokens, book_checksum.bid_token)
                asks = _load_side(raw_asks, book.ask_tokens, book_checksum.ask_token)
        except (ValueError, TypeError, AttributeError, LookupError):  # LookupError: a short or dict level
            counters.parse_errors += 1
            self.frame_rejected = True
            self.resync(feed, Reason.MALFORMED, receive_ts)
            return
        self._install_snapshot(feed, bids, asks, sequence, checksum, exchange_ts, receive_ts)

    def on_parsed_book_snapshot(
        self,
        feed: StreamFeed,
        bids: Iterable[Level],
        asks: Iterable[Level],
        sequence: int,
        exchange_ts: int,
        receive_ts: int,
    ) -> None:
        """:meth:`on_book_snapshot` for levels a typed decoder already validated as ``(price,
        size)`` floats (:mod:`actors.connectors.wire`), on a venue without checksums (no level
        texts to keep): each side is one dict comprehension, not a loop of conversions and
        checks (bench/connectors.py, HTX: every frame of its recording is a whole book)."""
        if feed.state is _IDLE:
            feed.counters.frames_dropped += 1
            return
        feed.book.clear()
        self._install_snapshot(
            feed,
            {price: size for price, size in bids if size},  # zero sizes skipped, as _load_side skips them
            {price: size for price, size in asks if size},
            sequence,
            None,
            exchange_ts,
            receive_ts,
        )

    def _install_snapshot(
        self,
        feed: StreamFeed,
        bids: dict[float, float],
        asks: dict[float, float],
        sequence: int,
        checksum: int | None,
        exchange_ts: int,
        receive_ts: int,
    ) -> None:
        """A snapshot's sides (price → size) in the cleared book: truncate, check and publish."""
        counters = feed.counters
        if not 0 <= exchange_ts <= MAX_EXCHANGE_TS:  # no record can hold it: as unreadable as a bad level
            counters.parse_errors += 1
            self.frame_rejected = True
            self.resync(feed, Reason.MALFORMED, receive_ts)
            return
        book = feed.book
        book.bids = bids
        book.asks = asks
        book.bid_prices = sorted(bids)
        book.ask_prices = sorted(asks)
        book.truncate(feed.depth)  # a cleared TextBook already has both sides marked changed
        counters.snapshots += 1
        counters.last_exchange_ts = exchange_ts
        if book.is_crossed():
            counters.crossed += 1
            self.resync(feed, Reason.CROSSED, receive_ts)
            return
        if checksum is not None and not self._checksum_matches(feed, checksum):
            self.resync(feed, Reason.CHECKSUM, receive_ts)
            return
        feed.state = _LIVE
        feed.last_sequence = sequence
        feed.confirmed = False
        feed.snapshot_deadline_ns = None
        self._attention.pop(feed, None)
        if feed.records.snapshot(book, sequence, exchange_ts, receive_ts):
            feed.resend_pending = False
        self._after_write()

    def on_book_update(
        self,
        feed: StreamFeed,
        raw_bids: RawLevels,
        raw_asks: RawLevels,
        sequence: int,
        previous_sequence: int,
        checksum: int | None,
        exchange_ts: int,
        receive_ts: int,
    ) -> None:
        """One delta frame of ``feed``: check, apply, truncate, verify and write it.

        Every frame ends up in ``frames_applied`` or ``frames_dropped`` (not subscribed,
        or the frame that failed a check and triggered the resync).

        ``sequence``/``previous_sequence`` go to ``sequence_rule`` (0 where the venue has
        none); ``checksum`` is the frame's value (None: the frame carries none). Written
        out in one function: it runs for every frame.
        """
        counters = feed.counters
        counters.frames += 1
        if not 0 <= exchange_ts <= MAX_EXCHANGE_TS:
            self._reject_exchange_time(feed, receive_ts)
            return
        counters.last_exchange_ts = exchange_ts
        counters.receive_lag_ns = receive_ts - exchange_ts
        if feed.state is not _LIVE:
            counters.frames_dropped += 1  # the old subscription's tail, or a book being resynced
            return
        sequence_rule = self.sequence_rule
        if sequence_rule is not None and not sequence_rule(sequence, previous_sequence, feed.last_sequence):
            counters.gaps += 1
            counters.frames_dropped += 1
            self.resync(feed, Reason.SEQUENCE_GAP, receive_ts)
            return
        book = feed.book
        records = feed.records
        book_checksum = self.book_checksum
        try:
            if book_checksum is None:
                count = apply_frame(book, records, raw_bids, raw_asks, sequence, exchange_ts, receive_ts)
            else:
                count = apply_text_levels(
                    book, records, raw_bids, raw_asks, book_checksum, sequence, exchange_ts, receive_ts
                )
        except (ValueError, TypeError, AttributeError, LookupError):  # LookupError: a short or dict level
            # Part of a bad frame may be applied, and the frame is lost anyway: resync.
            counters.parse_errors += 1
            self.frame_rejected = True
            counters.frames_dropped += 1
            self.resync(feed, Reason.MALFORMED, receive_ts)
            return
        levels = count
        bid_prices = book.bid_prices
        ask_prices = book.ask_prices
        depth = feed.depth
        if len(bid_prices) > depth or len(ask_prices) > depth:
            count = self._truncate(feed, count, sequence, exchange_ts, receive_ts)
        # The checksum first: a book crossed by an update it never got disagrees with the
        # venue's checksum, and that, not the crossing, is the reason to give.
        if checksum is not None:
            if book_checksum.compute(book) != checksum:
                counters.checksums_failed += 1
                counters.frames_dropped += 1
                self.resync(feed, Reason.CHECKSUM, receive_ts)
                return
            counters.checksums_ok += 1
        if bid_prices and ask_prices and bid_prices[-1] >= ask_prices[0]:
            counters.crossed += 1
            counters.frames_dropped += 1
            self.resync(feed, Reason.CROSSED, receive_ts)
            return
        feed.last_sequence = sequence
        counters.frames_applied += 1
        counters.levels_applied += levels
        if not feed.confirmed:
            feed.confirmed = True
            feed.failures_in_row = 0
        if not feed.resend_pending:
            write_records = records.sink_write_records  # write_levels inlined: a method call is ~0.1 µs
            if not write_records(records.scratch, count):
                records.output.lost(records.batches[count])
                self._after_write()

    def _checksum_matches(self, feed: StreamFeed, checksum: int) -> bool:
        if self.book_checksum is None or self.book_checksum.compute(feed.book) != checksum:
            feed.counters.checksums_failed += 1
            return False
        feed.counters.checksums_ok += 1
        return True

    def _truncate(self, feed: StreamFeed, count: int, sequence: int, exchange_ts: int, receive_ts: int) -> int:
        """Trim to the subscribed depth; the trimmed levels join the frame's batch as deletes."""
        removed_bids, removed_asks = feed.book.truncate(feed.depth)
        return feed.records.append_levels(
            count,
            [(price, 0.0) for price in removed_bids],
            [(price, 0.0) for price in removed_asks],
            sequence,
            exchange_ts,
            receive_ts,
        )

    def _reject_exchange_time(self, feed: StreamFeed, receive_ts: int) -> None:
        """A frame whose exchange time no record can hold (:data:`MAX_EXCHANGE_TS`) is malformed:
        counted, and a live book resyncs (the frame is lost); otherwise it is dropped."""
        feed.counters.parse_errors += 1
        self.frame_rejected = True
        if feed.state is _LIVE:
            self.resync(feed, Reason.MALFORMED, receive_ts)
        else:
            feed.counters.frames_dropped += 1

    def resync(self, feed: StreamFeed, reason: Reason, now_ns: int) -> None:
        """Stop trusting ``feed``'s book: CLEAR it (if published) and ask for a fresh snapshot."""
        if feed.state is _IDLE:
            return  # not subscribed: the next on_open subscribes afresh
        was_live = feed.state is _LIVE
        self._reset(feed, _SUBSCRIBING)
        feed.counters.resyncs += 1
        if was_live and feed.records.clear(reason, Status.RESYNCING, now_ns):
            feed.resend_pending = False
        self._after_write()
        self._schedule_resubscribe(feed)

    def on_subscribe_error(self, connection: int, feed: StreamFeed | None, error: str) -> None:
        """The venue refused a subscription: counted; a waiting symbol retries with backoff."""
        connection_counters = self.connection_counters[connection]
        connection_counters.subscribe_errors += 1
        connection_counters.last_error = error
        if feed is None:
            return
        feed.counters.subscribe_errors += 1
        if feed.state is _SUBSCRIBING and feed.resubscribe_due_ns is None and feed.resubscribe_delay_ns is None:
            feed.failures_in_row = max(feed.failures_in_row, 1)  # never at once: the venue said no
            self._schedule_resubscribe(feed)

    def write_trade(
        self, feed: StreamFeed, price: float, size: float, aggressor: Side, trade_id: int, exchange_ts: int, receive_ts: int
    ) -> None:
        feed.counters.trades += 1
        if not feed.records.trade(price, size, aggressor, trade_id, exchange_ts, receive_ts):
            self._after_write()

    # ---- REST snapshots: none ------------------------------------------------------------

    def snapshot_requests(self, now_ns: int) -> list[SnapshotRequest]:
        return []

    def on_snapshot(self, native_symbol: str, body: str | bytes, receive_ts: int) -> None:
        """Never requested: the snapshot arrives in the stream."""

    def on_snapshot_failed(self, native_symbol: str, now_ns: int, retry_after_s: float | None = None) -> None:
        """Never requested: the snapshot arrives in the stream."""

    def _book_sequence(self, feed: StreamFeed) -> int:
        return feed.last_sequence


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
    "OutgoingMessage",
    "RawLevels",
    "SequenceRule",
    "StreamCounters",
    "StreamFeed",
    "StreamSeededConnector",
    "apply_text_levels",
]
