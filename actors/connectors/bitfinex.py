"""Bitfinex v2 spot books and trades, both directions (docs/exchanges.md §8).

Connector side (sans-IO, on :class:`~actors.connectors.stream_seeded.StreamSeededConnector`):
instruments from ``GET /v2/conf/pub:list:pair:exchange`` (``BTCUSD`` and ``DOGE:USD`` →
``BTC/USD``, ``DOGE/USD``; aliases ``UST→USDT``, ``UDC→USDC``, ``BCHN→BCH``), then per
connection ``conf`` with ``SEQ_ALL`` + ``OB_CHECKSUM`` and the ``book`` (P0, F0, ``len``)
and ``trades`` channels of at most 25 channels:

- frames name a channel id, mapped to its symbol by the ``subscribed`` event;
- the first book frame of a channel is the snapshot, then one ``[price, count, amount]``
  per frame (count 0 deletes; the amount's sign is the side), sizes kept as their wire
  text so the ``cs`` frames (CRC32 of the top 25, :mod:`actors.connectors.checksum`) are
  checked against the exact strings received;
- ``SEQ_ALL`` numbers every channel frame of the connection +1: a gap breaks every book of
  the connection (the numbering cannot be resumed per symbol), so all are cleared and the
  connection is reconnected; a checksum mismatch only re-subscribes its symbol;
- info ``20051`` reconnects; ``20060`` (maintenance) clears the books and waits; ``20061``
  (maintenance over) reconnects, which re-subscribes everything.

The subscribed depth is ``snapshot_limit`` (Bitfinex ``len``: 1, 25, 100 or 250). The
recording (``RECORDED_OPTIONS``) was made at ``len`` 100 with ``SEQ_ALL`` only.

Simulator side: :class:`BitfinexSimulatedVenue` serves the pair list and WebSocket v2 on
``/ws/2``: numbers written as JavaScript writes them, per-connection ``SEQ_ALL`` numbers,
``cs`` frames after each book change, heartbeats, and bad-checksum and sequence-gap faults.
"""

from __future__ import annotations

import json
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import msgspec
import orjson

from actors.connectors.base import (
    ASK_SIDE,
    BID_SIDE,
    MAX_PRICE,
    MAX_SIZE,
    SIDE_OFFSET,
    ConnectionAction,
    ConnectionCounters,
    Instrument,
    RecordSink,
    SyncState,
    canonical_symbol,
    pack_record_head,
    parse_levels,
)
from actors.connectors.checksum import (
    BITFINEX,
    INTERLEAVED_CHECKSUM_DEPTH,
    interleaved_checksum,
)
from actors.connectors.stream_seeded import StreamFeed, StreamSeededConnector
from actors.connectors.wire import DecodeError
from shm.records import Reason, Side
from sim.market import FixedPoint, Market, MarketStep
from sim.venue import HttpReply, SimulatedVenue, VenueSession, decimal_places

NAME = "bitfinex"
REST_BASE_URL = "https://api-pub.bitfinex.com"
PAIRS_PATH = "/v2/conf/pub:list:pair:exchange"
WS_URL = "wss://api-pub.bitfinex.com/ws/2"
WS_PATH = "/ws/2"
BOOK_LENGTHS = (1, 25, 100, 250)
DEFAULT_DEPTH = 25
CHANNELS_PER_CONNECTION = 25  # api-pub's limit of channel subscriptions per connection
SEQ_ALL = 65536
OB_CHECKSUM = 131072
INFO_RECONNECT = 20051
INFO_MAINTENANCE_START = 20060
INFO_MAINTENANCE_END = 20061
HEARTBEAT_INTERVAL_S = 15.0
CURRENCY_ALIASES = {"UST": "USDT", "UDC": "USDC", "BCHN": "BCH"}
NATIVE_CURRENCIES = {canonical: native for native, canonical in CURRENCY_ALIASES.items()}

_CONTINUE = ConnectionAction.CONTINUE
_RECONNECT = ConnectionAction.RECONNECT
_LIVE = SyncState.LIVE
_IDLE = SyncState.IDLE
_decode_exact = json.JSONDecoder(parse_float=str, parse_int=str).decode  # checksums need the wire text
decode_book_level = msgspec.json.Decoder(tuple[int, tuple[float, int, int | float], int]).decode
"""``[chanId,[price,count,amount],seq]`` with its JSON kinds checked in C (strict: a count ``1.0``
or ``true`` is refused; the amount keeps its kind, since a delete's must be the text ``1`` or
``-1``); numbers are ``float(text)`` bit for bit (tests/test_wire.py)."""
_NO_CHANNELS: dict[int, StreamFeed] = {}  # a connection not opened yet
_BOOK_ERRORS = (ValueError, TypeError, IndexError, AttributeError, KeyError)

TextLevels = list[tuple[str, str]]
"""(price text, absolute amount text) per level, as the stream-seeded machinery takes them."""


# ---------------------------------------------------------------------------------------
# Wire format → values


def canonical_from_pair(pair: str) -> tuple[str, str, str]:
    """``"BTCUST"`` → (``"BTC/USDT"``, ``"BTC"``, ``"USDT"``); ``"DOGE:USD"`` → ``DOGE/USD``."""
    if ":" in pair:
        base, quote = pair.split(":")
    elif len(pair) == 6:
        base, quote = pair[:3], pair[3:]
    else:
        raise ValueError(f"cannot split pair {pair!r}")
    if not (base and quote):
        raise ValueError(f"cannot split pair {pair!r}")
    base = CURRENCY_ALIASES.get(base, base)
    quote = CURRENCY_ALIASES.get(quote, quote)
    return canonical_symbol(base, quote), base, quote


def native_pair(base: str, quote: str) -> str:
    """``BTC``, ``USDT`` → ``"tBTCUST"``; codes longer than 3 letters are joined by ``:``."""
    base = NATIVE_CURRENCIES.get(base, base)
    quote = NATIVE_CURRENCIES.get(quote, quote)
    return f"t{base}{quote}" if len(base) == 3 and len(quote) == 3 else f"t{base}:{quote}"


def parse_pair_list(body: str | bytes) -> list[Instrument]:
    """Instruments of a ``pub:list:pair:exchange`` body (``[["BTCUSD", ...]]``).

    The list carries no tick or lot size (Bitfinex prices have five significant digits),
    so both are 0.0: unknown.
    """
    (pairs,) = orjson.loads(body)
    instruments = []
    for pair in pairs:
        try:
            canonical, base, quote = canonical_from_pair(pair)
        except ValueError:
            continue  # no such pair in today's list; a new naming scheme is not guessed at
        instruments.append(Instrument(canonical, "t" + pair, base, quote, tick_size=0.0, lot_size=0.0))
    return instruments


def parse_book(payload: Any) -> tuple[bool, TextLevels, TextLevels]:
    """(is_snapshot, bids, asks) of a book frame's payload decoded with numbers as text.

    A snapshot is a list of ``[price, count, amount]``, an update one of them. Count 0
    deletes (amount ``1`` a bid, ``-1`` an ask); a negative amount is an ask, stored as its
    absolute value. Raises ValueError/TypeError/IndexError on anything else.
    """
    if payload.__class__ is not list:
        raise TypeError("book payload must be a list")
    is_snapshot = not payload or payload[0].__class__ is list
    bids: TextLevels = []
    asks: TextLevels = []
    for level in payload if is_snapshot else (payload,):
        price, count, amount = level[0], level[1], level[2]
        if not count.isdigit():
            raise ValueError(f"bad order count {count!r}")
        if count == "0":
            if amount == "1":
                bids.append((price, "0"))
            elif amount == "-1":
                asks.append((price, "0"))
            else:
                raise ValueError(f"bad delete side {amount!r}")
        elif amount[0] == "-":
            asks.append((price, amount[1:]))
        else:
            bids.append((price, amount))
    return is_snapshot, bids, asks


def parse_trade(trade: Any) -> tuple[float, float, Side, int, int]:
    """``[ID, MTS, AMOUNT, PRICE]`` → (price, size, aggressor, trade id, exchange ns)."""
    trade_id, milliseconds, amount, price = trade[0], trade[1], trade[2], trade[3]
    ((price_value, size),) = parse_levels(((price, amount.lstrip("-")),))
    if not size:
        raise ValueError(f"bad trade {trade!r}")
    aggressor = Side.ASK if amount[0] == "-" else Side.BID  # a negative amount is a sell
    return price_value, size, aggressor, int(trade_id), int(milliseconds) * 1_000_000


# ---- client messages -------------------------------------------------------------------------


def conf_message(flags: int) -> str:
    return orjson.dumps({"event": "conf", "flags": flags}).decode()


def book_subscribe(native: str, depth: int) -> str:
    return orjson.dumps(
        {"event": "subscribe", "channel": "book", "symbol": native, "prec": "P0", "freq": "F0", "len": str(depth)}
    ).decode()


def trades_subscribe(native: str) -> str:
    return orjson.dumps({"event": "subscribe", "channel": "trades", "symbol": native}).decode()


def unsubscribe(channel_id: str) -> str:
    return orjson.dumps({"event": "unsubscribe", "chanId": int(channel_id)}).decode()


# ---------------------------------------------------------------------------------------
# Connector


@dataclass(slots=True)
class BitfinexConnectionCounters(ConnectionCounters):
    """:class:`ConnectionCounters` plus what is per connection on Bitfinex."""

    sequence_gaps: int = 0
    maintenance_pauses: int = 0


Route = tuple[str, StreamFeed | None]
"""What a channel id carries: (channel name, its symbol's feed or None if not ours)."""


class BitfinexConnector(StreamSeededConnector):
    """Bitfinex spot books (checksummed, connection-sequenced) and trades over WebSocket v2."""

    name = NAME
    book_depths = BOOK_LENGTHS
    book_checksum = BITFINEX

    def __init__(
        self,
        sink: RecordSink,
        exchange_id: int,
        symbol_ids: Mapping[str, int],
        *,
        ws_base_url: str = WS_URL,
        rest_base_url: str = REST_BASE_URL,
        snapshot_limit: int = DEFAULT_DEPTH,
        depth_limit: int | None = None,
        trades: bool = True,
        checksums: bool = True,
        stale_after_s: float = 2 * HEARTBEAT_INTERVAL_S,
    ) -> None:
        """``snapshot_limit``: the subscribed ``len``. ``depth_limit``: accepted for the
        runtime's common call; a book is exact only at its subscribed length, so a smaller
        limit is refused. ``checksums``: request and verify ``cs`` frames (the recording
        has none)."""
        if snapshot_limit not in BOOK_LENGTHS:
            raise ValueError(f"Bitfinex book len must be one of {BOOK_LENGTHS}, got {snapshot_limit}")
        if depth_limit is not None and depth_limit < snapshot_limit:
            raise ValueError(
                f"depth_limit {depth_limit} is below the subscribed depth {snapshot_limit}: "
                "lower snapshot_depth instead"
            )
        if not checksums:
            self.book_checksum = None  # a plain L2Book: no checksum tokens kept
        super().__init__(sink, exchange_id, symbol_ids, depth=snapshot_limit, stale_after_s=stale_after_s)
        self.ws_url = ws_base_url
        self.rest_base_url = rest_base_url.rstrip("/")
        self.trades = trades
        self.flags = SEQ_ALL | (OB_CHECKSUM if checksums else 0)
        self.symbols_per_connection = CHANNELS_PER_CONNECTION // (2 if trades else 1)
        self._routes: dict[int, dict[str, Route]] = {}  # per connection: channel id → route
        # per connection: the book channels by their numeric id (the typed decoder's form of
        # it), the fast path's index; a broken connection has none
        self._book_feeds: dict[int, dict[int, StreamFeed]] = {}
        self._book_channel: dict[StreamFeed, str] = {}  # the live book subscription's channel id
        self._next_sequence: dict[int, int | None] = {}  # None until the connection's first frame
        self._broken: dict[int, bool] = {}  # a gap was seen: frames are ignored until reconnected
        if self.book_checksum is None:
            self.on_message = self._on_message_without_checksums  # bound per instance: no dispatch per frame

    @property
    def instruments_url(self) -> str:
        return f"{self.rest_base_url}{PAIRS_PATH}"

    def parse_instruments(self, body: str | bytes) -> list[Instrument]:
        return parse_pair_list(body)

    def use_instruments(self, instruments: Iterable[Instrument]) -> list[Instrument]:
        chosen = super().use_instruments(instruments)
        self.connection_counters = [BitfinexConnectionCounters() for _ in self.connections]
        return chosen

    def connection_url(self, connection: int) -> str:
        return self.ws_url

    def subscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        messages = [conf_message(self.flags)]  # before any subscription, or frames lack sequence numbers
        messages.extend(book_subscribe(feed.instrument.native, self.depth) for feed in feeds)
        if self.trades:
            messages.extend(trades_subscribe(feed.instrument.native) for feed in feeds)
        return messages

    def resubscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        """Unsubscribe the book channel (its remaining frames are ignored) and subscribe anew."""
        messages = []
        routes = self._routes.get(connection, {})
        for feed in feeds:
            channel_id = self._book_channel.pop(feed, None)
            if channel_id is not None:
                routes[channel_id] = ("book", None)
                if channel_id.isdigit():
                    self._book_feeds.get(connection, {}).pop(int(channel_id), None)
                messages.append(unsubscribe(channel_id))
            messages.append(book_subscribe(feed.instrument.native, self.depth))
        return messages

    # ---- connection life ---------------------------------------------------------------

    def on_open(self, connection: int, now_ns: int) -> list[str]:
        self._routes[connection] = {}
        self._book_feeds[connection] = {}
        self._next_sequence[connection] = None  # SEQ_ALL numbers restart with every connection
        self._broken[connection] = False
        for feed in self.connections[connection]:
            self._book_channel.pop(feed, None)
        return super().on_open(connection, now_ns)

    # ---- frames --------------------------------------------------------------------------

    def on_message(self, connection: int, data: str | bytes, receive_ts: int) -> ConnectionAction:
        """Route one frame; bad frames are counted and dropped, never raised."""
        if self._resend_queue:
            self.flush(receive_ts)
        counters = self.connection_counters[connection]
        counters.frames += 1
        try:
            message = _decode_exact(data if data.__class__ is str else data.decode())
        except (ValueError, UnicodeDecodeError):
            counters.malformed_frames += 1
            self.frame_rejected = True
            return _CONTINUE
        if message.__class__ is list:
            return self._on_channel_frame(connection, message, receive_ts)
        if message.__class__ is dict:
            return self._on_event(connection, message, receive_ts)
        counters.malformed_frames += 1
        self.frame_rejected = True
        return _CONTINUE

    _on_message_as_text = on_message  # the instance's on_message may be the one below

    def _on_message_without_checksums(self, connection: int, data: str | bytes, receive_ts: int) -> ConnectionAction:
        """:meth:`on_message` when no checksum is checked (the recorded generation): no level
        needs its wire text, so the dominant frame, one level of a live book in sequence
        (``[chanId,[price,count,amount],seq]``: with snapshots and tickers, the only frames
        holding no ``"``), is decoded typed (:data:`decode_book_level`: its JSON kinds checked
        in C), checked, applied and written here in one pass (bench/connectors.py: ~30% less
        than decoding with orjson and checking each field here). Any other frame, and anything
        unexpected in this one, takes :meth:`on_message` from the start: it stays the authority
        on what a frame means and how a bad one is handled."""
        if data.__class__ is not str or '"' in data:
            return self._on_message_as_text(connection, data, receive_ts)
        try:
            channel_id, (price, count, amount), sequence = decode_book_level(data)
        except DecodeError:
            return self._on_message_as_text(connection, data, receive_ts)
        # A broken connection's channels are not in _book_feeds; None (before the connection's
        # first frame) is never equal to the sequence
        feed = self._book_feeds.get(connection, _NO_CHANNELS).get(channel_id)
        if (
            feed is None
            or feed.state is not _LIVE
            or sequence != self._next_sequence.get(connection)
            or self._resend_queue
            or not 0.0 < price <= MAX_PRICE
        ):
            return self._on_message_as_text(connection, data, receive_ts)
        book = feed.book
        if count > 0:
            if amount > 0:
                size = amount + 0.0  # a float, as float(text) gives, whatever the JSON kind
                levels = book.bids
                prices = book.bid_prices
                side = BID_SIDE
            elif amount < 0:
                size = 0.0 - amount
                levels = book.asks
                prices = book.ask_prices
                side = ASK_SIDE
            else:  # a zero amount on a live level: the generic path's business
                return self._on_message_as_text(connection, data, receive_ts)
            if size > MAX_SIZE:
                return self._on_message_as_text(connection, data, receive_ts)
            if price not in levels:
                insort(prices, price)
            levels[price] = size
        elif count == 0 and amount.__class__ is int and (amount == 1 or amount == -1):  # "1.0" is refused
            size = 0.0
            if amount == 1:
                levels = book.bids
                prices = book.bid_prices
                side = BID_SIDE
            else:
                levels = book.asks
                prices = book.ask_prices
                side = ASK_SIDE
            if levels.pop(price, None) is not None:
                del prices[bisect_left(prices, price)]
        else:
            return self._on_message_as_text(connection, data, receive_ts)
        self.connection_counters[connection].frames += 1
        self._next_sequence[connection] = sequence + 1
        counters = feed.counters
        counters.frames += 1
        counters.last_exchange_ts = 0  # no exchange time on books
        counters.receive_lag_ns = receive_ts
        records = feed.records
        scratch = records.scratch  # room for one record: always
        pack_record_head(scratch, 0, 0, receive_ts, price, size, sequence)
        scratch[SIDE_OFFSET] = side
        count = 1
        bid_prices = book.bid_prices
        ask_prices = book.ask_prices
        depth = feed.depth
        if len(bid_prices) > depth or len(ask_prices) > depth:
            count = self._truncate(feed, count, sequence, 0, receive_ts)
        if bid_prices and ask_prices and bid_prices[-1] >= ask_prices[0]:
            counters.crossed += 1
            counters.frames_dropped += 1
            self.resync(feed, Reason.CROSSED, receive_ts)
            return _CONTINUE
        feed.last_sequence = sequence
        counters.frames_applied += 1
        counters.levels_applied += 1
        if not feed.confirmed:
            feed.confirmed = True
            feed.failures_in_row = 0
        if not feed.resend_pending:
            write_records = records.sink_write_records  # the scratch's first records: no batch view to check
            if not write_records(records.scratch, count):  # truncating may have grown the scratch
                records.output.lost(records.batches[count])
                self._after_write()
        return _CONTINUE

    def _on_channel_frame(self, connection: int, message: list[Any], receive_ts: int) -> ConnectionAction:
        counters = self.connection_counters[connection]
        if self._broken.get(connection):
            counters.ignored_frames += 1
            return _CONTINUE
        try:
            if len(message) < 3:
                raise ValueError("no sequence number")
            sequence = int(message[-1])  # SEQ_ALL: appended to every channel frame
        except (ValueError, TypeError):
            counters.malformed_frames += 1  # the next frame then shows the gap
            self.frame_rejected = True
            return _CONTINUE
        expected = self._next_sequence.get(connection)
        if expected is not None and sequence != expected:
            self._on_sequence_gap(connection, expected, sequence, receive_ts)
            return _RECONNECT
        self._next_sequence[connection] = sequence + 1
        payload = message[1]
        if payload == "hb":
            counters.ignored_frames += 1
            return _CONTINUE
        channel, feed = self._routes.get(connection, {}).get(message[0], ("", None))
        if feed is None:
            if channel:
                counters.ignored_frames += 1  # a channel we do not read, or a retired book subscription
            else:
                counters.unknown_symbol_frames += 1
                self.frame_rejected = True
            return _CONTINUE
        if channel == "book":
            self._on_book_frame(feed, message, sequence, receive_ts)
        elif channel == "trades":
            self._on_trades_frame(connection, feed, message, receive_ts)
        return _CONTINUE

    def _on_book_frame(self, feed: StreamFeed, message: list[Any], sequence: int, receive_ts: int) -> None:
        payload = message[1]
        if payload == "cs":
            self._on_book_checksum(feed, message, receive_ts)
            return
        try:
            is_snapshot, bids, asks = parse_book(payload)
        except _BOOK_ERRORS:
            # The frame is lost although the connection's numbering is intact: this book only.
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            self.resync(feed, Reason.MALFORMED, receive_ts)
            return
        if is_snapshot:
            self.on_book_snapshot(feed, bids, asks, sequence, None, 0, receive_ts)
        else:
            self.on_book_update(feed, bids, asks, sequence, 0, None, 0, receive_ts)  # no exchange time on books

    def _on_book_checksum(self, feed: StreamFeed, message: list[Any], receive_ts: int) -> None:
        """``[chanId, "cs", checksum, seq]``: the CRC32 of the book after the frames before it."""
        if self.book_checksum is None or feed.state is not _LIVE:
            return  # not requested, or a book being resynced
        try:
            checksum = int(message[2])
        except (ValueError, TypeError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            self.resync(feed, Reason.MALFORMED, receive_ts)
            return
        if not self._checksum_matches(feed, checksum):
            self.resync(feed, Reason.CHECKSUM, receive_ts)

    def _on_trades_frame(self, connection: int, feed: StreamFeed, message: list[Any], receive_ts: int) -> None:
        kind = message[1]
        if kind != "te":
            # "tu" repeats a "te" trade once settled; a list is the snapshot of past trades
            self.connection_counters[connection].ignored_frames += 1
            return
        try:
            price, size, aggressor, trade_id, trade_ts = parse_trade(message[2])
        except _BOOK_ERRORS:
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            return
        self.write_trade(feed, price, size, aggressor, trade_id, trade_ts, receive_ts)

    def _on_sequence_gap(self, connection: int, expected: int, received: int, receive_ts: int) -> None:
        """Every book of the connection is suspect and the numbering cannot be resumed per
        symbol: clear them all now; the reconnect subscribes them afresh."""
        counters = self.connection_counters[connection]
        counters.sequence_gaps += 1
        counters.last_error = f"sequence gap: expected {expected}, got {received}"
        self._broken[connection] = True
        self._book_feeds[connection] = {}  # frames are ignored until reconnected: none takes the fast path
        for feed in self.connections[connection]:
            if feed.state is _IDLE:
                continue
            feed.counters.gaps += 1
            self.resync(feed, Reason.SEQUENCE_GAP, receive_ts)
            self._attention.pop(feed, None)  # no per-symbol resubscribe: the connection is replaced

    def _pause_for_maintenance(self, connection: int, receive_ts: int) -> None:
        """Info 20060: the books stop being maintained; clear them and wait for 20061."""
        self.connection_counters[connection].maintenance_pauses += 1
        for feed in self.connections[connection]:
            if feed.state is _IDLE:
                continue
            self.resync(feed, Reason.DISCONNECTED, receive_ts)
            self._attention.pop(feed, None)  # nothing to resubscribe to until maintenance ends

    def _on_event(self, connection: int, message: dict[str, Any], receive_ts: int) -> ConnectionAction:
        counters = self.connection_counters[connection]
        event = message.get("event")
        if event == "subscribed":
            self._on_subscribed(connection, message)
        elif event == "unsubscribed":
            channel_id = message.get("chanId")
            self._routes.get(connection, {}).pop(channel_id, None)
            if channel_id.__class__ is str and channel_id.isdigit():
                if channel_id.isdigit():
                    self._book_feeds.get(connection, {}).pop(int(channel_id), None)
            counters.subscribe_acks += 1
        elif event == "error":
            symbol = message.get("symbol")
            feed = self.feeds.get(symbol) if symbol.__class__ is str else None
            self.on_subscribe_error(connection, feed, f"{message.get('code')}: {message.get('msg')}")
        elif event == "info":
            return self._on_info(connection, message, receive_ts)
        elif event == "conf" and message.get("status") != "OK":
            counters.last_error = f"conf refused: {message}"  # frames will lack sequence numbers
            counters.malformed_frames += 1
            self.frame_rejected = True
        else:
            counters.ignored_frames += 1  # conf ack, pong
        return _CONTINUE

    def _on_subscribed(self, connection: int, message: dict[str, Any]) -> None:
        counters = self.connection_counters[connection]
        counters.subscribe_acks += 1
        channel = message.get("channel")
        channel_id = message.get("chanId")
        symbol = message.get("symbol")
        if channel.__class__ is not str or channel_id.__class__ is not str:
            counters.malformed_frames += 1
            self.frame_rejected = True
            return
        feed = self.feeds.get(symbol) if channel in ("book", "trades") and symbol.__class__ is str else None
        self._routes.setdefault(connection, {})[channel_id] = (channel, feed)
        if channel_id.isdigit() and not self._broken.get(connection):
            book_feeds = self._book_feeds.setdefault(connection, {})
            if channel == "book" and feed is not None:
                book_feeds[int(channel_id)] = feed
            else:
                book_feeds.pop(int(channel_id), None)
        if channel == "book" and feed is not None:
            self._book_channel[feed] = channel_id

    def _on_info(self, connection: int, message: dict[str, Any], receive_ts: int) -> ConnectionAction:
        code = message.get("code")
        if code == str(INFO_RECONNECT):
            self.connection_counters[connection].server_shutdowns += 1
            return _RECONNECT
        if code == str(INFO_MAINTENANCE_START):
            self._pause_for_maintenance(connection, receive_ts)
        elif code == str(INFO_MAINTENANCE_END):
            return _RECONNECT  # docs: subscribe everything again; a new connection also restarts the numbering
        else:
            self.connection_counters[connection].ignored_frames += 1  # the greeting
        return _CONTINUE


# ---------------------------------------------------------------------------------------
# Simulator side (WebSocket v2)


def js_number_text(text: str) -> str:
    """A decimal as JavaScript's ``Number.prototype.toString`` writes it (what the
    checksum is computed over): ``"30000.50"`` → ``"30000.5"``, ``"0.00000015"`` → ``"1.5e-7"``."""
    value = Decimal(text).normalize()
    sign, digit_tuple, exponent = value.as_tuple()
    digits = "".join(map(str, digit_tuple))
    if digits == "0":
        return "0"
    point = len(digits) + exponent  # the decimal point's position after the first digit's
    if len(digits) <= point <= 21:
        body = digits + "0" * (point - len(digits))
    elif 0 < point <= 21:
        body = f"{digits[:point]}.{digits[point:]}"
    elif -6 < point <= 0:
        body = f"0.{'0' * -point}{digits}"
    else:
        mantissa = digits if len(digits) == 1 else f"{digits[0]}.{digits[1:]}"
        body = f"{mantissa}e{'+' if point > 0 else '-'}{abs(point - 1)}"
    return ("-" if sign else "") + body



Window = tuple[dict[int, int], dict[int, int]]
"""The levels a subscriber at one ``len`` holds: (bids, asks) as tick → lots."""


@dataclass
class EncodedStep:
    """One step as frame bodies (the part between ``[chanId,`` and ``,seq]``)."""

    timestamp_ns: int
    books: dict[tuple[str, int], tuple[list[str], int]] = field(default_factory=dict)  # → (levels, checksum)
    trades: dict[str, list[str]] = field(default_factory=dict)


class BitfinexSimulatedVenue(SimulatedVenue):
    """The simulator's market as Bitfinex WebSocket v2 serves it (spot symbols only).

    Each subscribed ``len`` sees its own window of the book; an update sends every level
    that changed, entered or left the window, one level per frame, then (with
    ``OB_CHECKSUM``) the window's checksum.
    """

    def __init__(self, market: Market, venue: str = NAME) -> None:
        super().__init__(market, venue)
        self.specs = {spec.canonical: spec for spec in market.symbols.values() if not spec.perpetual}
        self.natives = {symbol: native_pair(spec.base, spec.quote) for symbol, spec in self.specs.items()}
        self.symbols_by_native = {native: symbol for symbol, native in self.natives.items()}
        self.prices = {
            symbol: FixedPoint(spec.tick_size, decimal_places(spec.tick_size)) for symbol, spec in self.specs.items()
        }
        self.sizes = {
            symbol: FixedPoint(spec.lot_size, decimal_places(spec.lot_size)) for symbol, spec in self.specs.items()
        }
        self.windows: dict[tuple[str, int], Window] = {}
        self.sequence_skips = 0  # sessions skip a sequence number for each one they have not yet applied
        self._corrupt_checksums: dict[str, int] = {}

    # ---- faults --------------------------------------------------------------------------

    def corrupt_checksums(self, symbol: str, count: int = 1) -> None:
        """The next ``count`` checksums of ``symbol`` are wrong."""
        self._corrupt_checksums[symbol] = self._corrupt_checksums.get(symbol, 0) + count

    def maintenance_frames(self, starting: bool) -> list[str]:
        """Info 20060 (maintenance starts: books frozen) or 20061 (over: subscribe again)."""
        code = INFO_MAINTENANCE_START if starting else INFO_MAINTENANCE_END
        return [orjson.dumps({"event": "info", "code": code, "msg": "Maintenance"}).decode()]

    def skip_sequence(self) -> None:
        """Every connection's next channel frame skips one ``SEQ_ALL`` number (a lost frame)."""
        self.sequence_skips += 1

    # ---- REST ------------------------------------------------------------------------------

    def http(self, path: str, query: Mapping[str, str]) -> HttpReply:
        if path == PAIRS_PATH:
            return HttpReply(200, orjson.dumps([[native[1:] for native in self.natives.values()]]).decode())
        return HttpReply(404, '["error",10020,"not found"]')

    def is_snapshot_request(self, path: str) -> bool:
        return False  # Bitfinex books are snapshotted in the stream

    # ---- WebSocket -------------------------------------------------------------------------

    def open_session(self, path: str) -> VenueSession | HttpReply:
        if urlsplit(path).path.rstrip("/") != WS_PATH:
            return HttpReply(404, "Not found")
        return BitfinexSimSession(self)

    def price_text(self, symbol: str, tick: int) -> str:
        return js_number_text(self.prices[symbol].text(tick))

    def size_text(self, symbol: str, lots: int) -> str:
        return js_number_text(self.sizes[symbol].text(lots))

    def level_text(self, symbol: str, tick: int, lots: int, side: Side) -> str:
        """``[price,count,amount]``; asks negative, deletes ``[price,0,±1]``; one order per level."""
        sign = "-" if side == Side.ASK else ""
        if not lots:
            return f"[{self.price_text(symbol, tick)},0,{sign}1]"
        return f"[{self.price_text(symbol, tick)},1,{sign}{self.size_text(symbol, lots)}]"

    def window(self, symbol: str, depth: int) -> Window:
        """The current window of ``symbol`` at ``depth``, tracked from now on."""
        key = (symbol, depth)
        if key not in self.windows:
            bids, asks = self.market.book(self.venue, symbol).top(depth)
            self.windows[key] = (dict(bids), dict(asks))
        return self.windows[key]

    def snapshot_body(self, symbol: str, depth: int) -> str:
        bids, asks = self.window(symbol, depth)
        levels = [self.level_text(symbol, tick, lots, Side.BID) for tick, lots in sorted(bids.items(), reverse=True)]
        levels += [self.level_text(symbol, tick, lots, Side.ASK) for tick, lots in sorted(asks.items())]
        return f"[{','.join(levels)}]"

    def checksum(self, symbol: str, depth: int) -> int:
        bids, asks = self.window(symbol, depth)
        top = INTERLEAVED_CHECKSUM_DEPTH
        best_bids = sorted(bids.items(), reverse=True)[:top]
        best_asks = sorted(asks.items())[:top]
        return interleaved_checksum(
            [(self.price_text(symbol, tick), self.size_text(symbol, lots)) for tick, lots in best_bids],
            [(self.price_text(symbol, tick), "-" + self.size_text(symbol, lots)) for tick, lots in best_asks],
        )

    def encode_step(self, step: MarketStep) -> EncodedStep:
        """Book windows move on even for a change the server withholds (the dropped-update
        fault), so the subscriber really misses it."""
        changed = {change.symbol for change in step.book_changes if change.symbol in self.specs}
        encoded = EncodedStep(step.timestamp_ns)
        corrupted: set[str] = set()
        for (symbol, depth), (old_bids, old_asks) in list(self.windows.items()):
            new_bids, new_asks = (dict(levels) for levels in self.market.book(self.venue, symbol).top(depth))
            self.windows[symbol, depth] = (new_bids, new_asks)
            if symbol not in changed:
                continue
            bid_deletes, bid_sets = _changes(old_bids, new_bids)
            ask_deletes, ask_sets = _changes(old_asks, new_asks)
            levels = [  # one level a frame: deletes first, so no intermediate book is crossed or over len
                *(self.level_text(symbol, tick, 0, Side.BID) for tick in bid_deletes),
                *(self.level_text(symbol, tick, 0, Side.ASK) for tick in ask_deletes),
                *(self.level_text(symbol, tick, lots, Side.BID) for tick, lots in bid_sets),
                *(self.level_text(symbol, tick, lots, Side.ASK) for tick, lots in ask_sets),
            ]
            if levels:
                checksum = self.checksum(symbol, depth)
                if self._corrupt_checksums.get(symbol):
                    checksum ^= 1
                    corrupted.add(symbol)
                encoded.books[symbol, depth] = (levels, checksum)
        for symbol in corrupted:  # used up only by an update sent with it
            self._corrupt_checksums[symbol] -= 1
        for trade in step.trades:
            if trade.symbol not in self.specs:
                continue
            price = self.price_text(trade.symbol, trade.price_ticks)
            amount = self.size_text(trade.symbol, trade.lots)
            sign = "" if trade.aggressor == Side.BID else "-"
            fields = f"[{trade.trade_id},{trade.timestamp_ns // 1_000_000},{sign}{amount},{price}]"
            encoded.trades.setdefault(trade.symbol, []).extend((f'"te",{fields}', f'"tu",{fields}'))
        return encoded


def _changes(old: dict[int, int], new: dict[int, int]) -> tuple[list[int], list[tuple[int, int]]]:
    """(ticks that left the window, levels that changed or entered it)."""
    left = [tick for tick in old if tick not in new]
    return left, [(tick, lots) for tick, lots in new.items() if old.get(tick) != lots]


class BitfinexSimSession(VenueSession):
    """One client connection: its flags, ``SEQ_ALL`` counter and channels (id → subscription)."""

    def __init__(self, venue: BitfinexSimulatedVenue) -> None:
        self.venue = venue
        self.flags = 0
        self.sequence = 0
        self.sequence_skips = venue.sequence_skips
        self.books: dict[int, tuple[str, int]] = {}  # channel id → (symbol, len)
        self.trades: dict[int, str] = {}  # channel id → symbol
        self.last_sent_ns: dict[int, int] = {}  # channel id → step time of its last frame
        self._next_channel_id = 17

    def greeting(self) -> list[str]:
        return ['{"event":"info","version":2,"serverId":"coby-sim","platform":{"status":1}}']

    def frame(self, channel_id: int, body: str) -> str:
        if not self.flags & SEQ_ALL:
            return f"[{channel_id},{body}]"
        self.sequence += 1 + self.venue.sequence_skips - self.sequence_skips
        self.sequence_skips = self.venue.sequence_skips
        return f"[{channel_id},{body},{self.sequence}]"

    def on_client_message(self, text: str) -> list[str]:
        try:
            request = orjson.loads(text)
            event = request["event"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return ['{"event":"error","msg":"invalid","code":10000}']
        if event == "ping":
            return [orjson.dumps({"event": "pong", "ts": 0, "cid": request.get("cid")}).decode()]
        if event == "conf":
            self.flags = int(request.get("flags", 0))
            return [orjson.dumps({"event": "conf", "status": "OK", "flags": self.flags}).decode()]
        if event == "unsubscribe":
            channel_id = request.get("chanId")
            if self.books.pop(channel_id, None) is None and self.trades.pop(channel_id, None) is None:
                return [orjson.dumps({"event": "error", "msg": "unsubscribe: invalid", "code": 10400}).decode()]
            self.last_sent_ns.pop(channel_id, None)
            return [orjson.dumps({"event": "unsubscribed", "status": "OK", "chanId": channel_id}).decode()]
        if event == "subscribe":
            return self._subscribe(request)
        return [orjson.dumps({"event": "error", "msg": f"unknown event {event}", "code": 10000}).decode()]

    def _subscribe(self, request: dict[str, Any]) -> list[str]:
        channel = request.get("channel")
        native = request.get("symbol")
        symbol = self.venue.symbols_by_native.get(native)
        book = channel == "book"
        depth = int(request.get("len", 25)) if book else 0
        if symbol is None or channel not in ("book", "trades") or (book and depth not in BOOK_LENGTHS):
            return [orjson.dumps({"event": "error", "msg": "subscribe: invalid", "code": 10300,
                                  "channel": channel, "symbol": native}).decode()]
        if (symbol, depth) in self.books.values() or (not book and symbol in self.trades.values()):
            return [orjson.dumps({"event": "error", "msg": "subscribe: dup", "code": 10301,
                                  "channel": channel, "symbol": native}).decode()]
        channel_id = self._next_channel_id
        self._next_channel_id += 1
        reply = {"event": "subscribed", "channel": channel, "chanId": channel_id, "symbol": native}
        if book:
            self.books[channel_id] = (symbol, depth)
            reply |= {"prec": "P0", "freq": "F0", "len": str(depth)}
            first = self.venue.snapshot_body(symbol, depth)
        else:
            self.trades[channel_id] = symbol
            first = "[]"  # no past trades
        reply["pair"] = native[1:]
        return [orjson.dumps(reply).decode(), self.frame(channel_id, first)]

    def frames(self, encoded_step: EncodedStep) -> list[str]:
        frames = []
        now_ns = encoded_step.timestamp_ns
        heartbeat_ns = int(HEARTBEAT_INTERVAL_S * 1e9)
        for channel_id, key in self.books.items():
            update = encoded_step.books.get(key)
            if update is not None:
                levels, checksum = update
                frames.extend(self.frame(channel_id, level) for level in levels)
                if self.flags & OB_CHECKSUM:
                    frames.append(self.frame(channel_id, f'"cs",{checksum}'))
                self.last_sent_ns[channel_id] = now_ns
        for channel_id, symbol in self.trades.items():
            bodies = encoded_step.trades.get(symbol)
            if bodies:
                frames.extend(self.frame(channel_id, body) for body in bodies)
                self.last_sent_ns[channel_id] = now_ns
        for channel_id in (*self.books, *self.trades):
            last = self.last_sent_ns.setdefault(channel_id, now_ns)
            if now_ns - last >= heartbeat_ns:
                frames.append(self.frame(channel_id, '"hb"'))
                self.last_sent_ns[channel_id] = now_ns
        return frames


# The recording subscribed at len 100 with SEQ_ALL only (no cs frames).
RECORDED_OPTIONS = {"snapshot_limit": 100, "checksums": False}

CONNECTOR = BitfinexConnector
SIMULATED_VENUE = BitfinexSimulatedVenue
