"""HTX (Huobi) spot: MBP incremental on ``/feed`` (live default) and ``depth.step0`` on
``/ws`` (the recorded generation), both directions.

Connector side (sans-IO, on :class:`~actors.connectors.stream_seeded.StreamSeededConnector`):
instruments from ``GET /v1/common/symbols`` (``btcusdt`` → ``BTC/USDT`` from
``base-currency``/``quote-currency``), one connection per 50 symbols carrying the book
topic and ``market.<sym>.trade.detail`` (docs/exchanges.md §7):

- every server frame is gzip-compressed binary JSON, pings included; the client answers
  ``{"ping":ts}`` with ``{"pong":ts}`` (``ConnectionAction.SEND`` + ``outgoing_messages``);
- MBP (``market.<sym>.mbp.<n>``): the snapshot is a ``req`` on the same topic over the same
  socket (``data.seqNum``). Increments are buffered while the snapshot is awaited; those
  with ``seqNum <= snapshot seqNum`` are dropped, then every applied one must have
  ``prevSeqNum == previous seqNum``. A break clears the book and re-sends the ``req``
  (the subscription stays: the buffer keeps filling for the next snapshot);
- depth (``market.<sym>.depth.step0``): every push is a full book of at most 150 levels
  a side; each replaces the book and ``tick.version`` must increase. So for this
  generation ``snapshots`` counts the pushes applied and ``book_updates`` stays 0;
  a version that does not increase is a gap (the book is cleared and re-subscribed).

Why StreamSeededConnector and not RestSeededConnector: the snapshot arrives on the
stream's own socket, in order with the increments, so a failing symbol re-asks over
that socket (``resubscribe_messages`` → ``req``) with the shared backoff, snapshot
timeout and record writing; only the buffering and ``seqNum`` alignment are added here.

Numbers: HTX sends prices and sizes as JSON numbers. orjson turns each into the nearest
double, which is exactly ``float(Decimal(text))``: the book (floats) loses nothing a
Decimal parse would have kept. HTX has no checksum, so no text is kept.

Simulator side: :class:`HtxSimulatedVenue` serves ``/v1/common/symbols`` and MBP on
``/feed`` with gzip binary frames, ``req`` snapshots, non-contiguous ``seqNum`` linked by
``prevSeqNum``, and a ``{"ping":ts}`` every few steps.
"""

from __future__ import annotations

import gzip
import zlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec
import orjson

from actors.connectors.base import (
    ConnectionAction,
    Instrument,
    OutgoingMessage,
    RecordSink,
    SyncState,
    canonical_symbol,
    parse_levels,
)
from actors.connectors.stream_seeded import RawLevels, StreamFeed, StreamSeededConnector
from actors.connectors.wire import DecodeError, Integer, PriceLevels, decoder
from shm.records import Reason, Side
from sim.market import FixedPoint, Market, MarketStep
from sim.venue import HttpReply, SimulatedVenue, VenueSession

NAME = "htx"
REST_BASE_URL = "https://api.huobi.pro"
SYMBOLS_PATH = "/v1/common/symbols"
WS_MBP_URL = "wss://api.huobi.pro/feed"
WS_DEPTH_URL = "wss://api.huobi.pro/ws"
MBP_PATH = "/feed"
MBP = "mbp"
DEPTH = "depth"
MBP_DEPTHS = (5, 20, 150, 400)
DEFAULT_DEPTH = 150
DEPTH_STEP0_LEVELS = 150  # depth.step0 pushes at most 150 levels a side
PENDING_LIMIT = 1000  # increments kept per symbol while its snapshot is awaited
GZIP_WBITS = 16 + zlib.MAX_WBITS
MS = 1_000_000

_CONTINUE = ConnectionAction.CONTINUE
_SEND = ConnectionAction.SEND
_LIVE = SyncState.LIVE
_SUBSCRIBING = SyncState.SUBSCRIBING
_EMPTY: list[list[float]] = []

DEPTH_HINT = b".depth.step0\""  # a frame naming it in its opening bytes ("ch" first) is tried typed
DEPTH_HINT_WITHIN = 64


class TypedDepthTick(msgspec.Struct, gc=False):
    """A depth.step0 push's ``tick`` as the typed decoder reads it (:mod:`actors.connectors.wire`):
    a side may be absent or null, as the generic path allows; ``version`` keeps its JSON kind."""

    version: Integer
    bids: PriceLevels | None = None
    asks: PriceLevels | None = None


class TypedDepthPush(msgspec.Struct, gc=False):
    ch: str
    ts: Integer
    tick: TypedDepthTick


decode_depth_push = decoder(TypedDepthPush).decode

Increment = tuple[RawLevels, RawLevels, int, int, int, int]
"""(bids, asks, seqNum, prevSeqNum, exchange ns, receive ns) of one MBP push."""


# ---------------------------------------------------------------------------------------
# Wire format → values


def frame_text(data: str | bytes) -> str | bytes:
    """One server frame's JSON text: binary frames are gzip (HTX compresses every one); a text
    frame is taken as JSON already. Raises zlib.error on junk."""
    return data if data.__class__ is str else zlib.decompress(data, GZIP_WBITS)


def decode_frame(data: str | bytes) -> Any:
    """One server frame as JSON. Raises ValueError (zlib.error, orjson errors) on junk."""
    return orjson.loads(frame_text(data))


def parse_symbols(body: str | bytes) -> list[Instrument]:
    """Instruments of a ``/v1/common/symbols`` body; native names are HTX's ``btcusdt``."""
    instruments = []
    for entry in orjson.loads(body)["data"]:
        base = entry["base-currency"]
        quote = entry["quote-currency"]
        instruments.append(
            Instrument(
                canonical=canonical_symbol(base, quote),
                native=entry["symbol"],
                base=base.upper(),
                quote=quote.upper(),
                tick_size=10.0 ** -entry["price-precision"],
                lot_size=10.0 ** -entry["amount-precision"],
            )
        )
    return instruments


def topic_symbol(topic: str) -> str:
    """``"market.btcusdt.mbp.150"`` → ``"btcusdt"``; raises ValueError on another shape."""
    market, symbol, _rest = topic.split(".", 2)
    if market != "market":
        raise ValueError(f"not a market topic: {topic!r}")
    return symbol


def parse_trades(tick: dict[str, Any]) -> list[tuple[float, float, Side, int, int]]:
    """``tick.data`` of a trade.detail push → (price, size, aggressor, trade id, ns).

    ``tradeId`` is the id: the ``id`` field exceeds 64 bits (orjson makes it a float).
    """
    trades = []
    for trade in tick["data"]:
        ((price, size),) = parse_levels(((trade["price"], trade["amount"]),))
        direction = trade["direction"]
        if not size or direction not in ("buy", "sell"):
            raise ValueError(f"bad trade {trade!r}")
        aggressor = Side.BID if direction == "buy" else Side.ASK
        trades.append((price, size, aggressor, int(trade["tradeId"]), int(trade["ts"]) * MS))
    return trades


def book_channel_of(ws_url: str) -> str:
    """As on HTX itself: MBP lives on ``/feed``, the classic ``depth`` channel on ``/ws``."""
    return MBP if urlsplit(ws_url).path.rstrip("/").endswith(MBP_PATH) else DEPTH


def prev_seq_links(sequence: int, previous: int, last: int) -> bool:
    """MBP continuity: ``seqNum`` is not contiguous, ``prevSeqNum`` names the push before."""
    return previous == last


# ---- client messages ------------------------------------------------------------------------


def sub_message(topic: str) -> str:
    return orjson.dumps({"sub": topic, "id": topic}).decode()  # the id names the topic: errors route by it


def unsub_message(topic: str) -> str:
    return orjson.dumps({"unsub": topic, "id": topic}).decode()


def req_message(topic: str) -> str:
    return orjson.dumps({"req": topic, "id": topic}).decode()


def pong_message(ping: int) -> str:
    return orjson.dumps({"pong": ping}).decode()


# ---------------------------------------------------------------------------------------
# Connector


class HtxConnector(StreamSeededConnector):
    """HTX spot books (MBP with ``req`` snapshots, or full ``depth.step0`` pushes) and trades."""

    name = NAME
    book_depths = MBP_DEPTHS
    sequence_rule = staticmethod(prev_seq_links)
    symbols_per_connection = 50

    def __init__(
        self,
        sink: RecordSink,
        exchange_id: int,
        symbol_ids: Mapping[str, int],
        *,
        ws_base_url: str = WS_MBP_URL,
        rest_base_url: str = REST_BASE_URL,
        book_channel: str | None = None,
        snapshot_limit: int = DEFAULT_DEPTH,
        depth_limit: int | None = None,
        trades: bool = True,
        stale_after_s: float = 15.0,
    ) -> None:
        """``ws_base_url``: the full WebSocket URL (its path picks the book channel unless
        ``book_channel`` is ``"mbp"`` or ``"depth"``). ``snapshot_limit``: MBP levels
        (5, 20, 150, 400; depth.step0 is always 150). ``depth_limit``: accepted for the
        runtime's common call; a smaller limit than the subscribed depth is refused."""
        channel = book_channel if book_channel is not None else book_channel_of(ws_base_url)
        if channel not in (MBP, DEPTH):
            raise ValueError(f"book_channel must be {MBP!r} or {DEPTH!r}, got {channel!r}")
        if channel == MBP and snapshot_limit not in MBP_DEPTHS:
            raise ValueError(f"HTX MBP depth must be one of {MBP_DEPTHS}, got {snapshot_limit}")
        depth = snapshot_limit if channel == MBP else DEPTH_STEP0_LEVELS
        if depth_limit is not None and depth_limit < depth:
            raise ValueError(f"depth_limit {depth_limit} is below the subscribed depth {depth}: lower snapshot_depth")
        super().__init__(sink, exchange_id, symbol_ids, depth=depth, stale_after_s=stale_after_s)
        self.ws_url = ws_base_url
        self.rest_base_url = rest_base_url.rstrip("/")
        self.book_channel = channel
        self.trades = trades
        self._pending: dict[StreamFeed, deque[Increment]] = {}  # MBP increments awaiting a snapshot
        self._pongs: list[OutgoingMessage] = []
        self._feeds_by_book_topic: dict[str, StreamFeed] = {}  # the typed path's routing: book topic → feed
        if channel == DEPTH:
            self.sequence_rule = None  # versions are checked per push in _on_depth

    @property
    def instruments_url(self) -> str:
        return f"{self.rest_base_url}{SYMBOLS_PATH}"

    def use_instruments(self, instruments: Iterable[Instrument]) -> list[Instrument]:
        chosen = super().use_instruments(instruments)
        self._feeds_by_book_topic = {self.book_topic(feed): feed for feed in self.feeds.values()}
        return chosen

    def parse_instruments(self, body: str | bytes) -> list[Instrument]:
        return parse_symbols(body)

    def connection_url(self, connection: int) -> str:
        return self.ws_url

    def book_topic(self, feed: StreamFeed) -> str:
        native = feed.instrument.native
        return f"market.{native}.mbp.{self.depth}" if self.book_channel == MBP else f"market.{native}.depth.step0"

    def subscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        messages = [sub_message(self.book_topic(feed)) for feed in feeds]
        if self.trades:
            messages.extend(sub_message(f"market.{feed.instrument.native}.trade.detail") for feed in feeds)
        if self.book_channel == MBP:  # after the subs: increments are buffered from the sub on
            messages.extend(req_message(self.book_topic(feed)) for feed in feeds)
        return messages

    def resubscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        """MBP: the subscription stays, a fresh ``req`` is the new snapshot; depth: re-subscribe."""
        topics = [self.book_topic(feed) for feed in feeds]
        if self.book_channel == MBP:
            return [req_message(topic) for topic in topics]
        return [message for topic in topics for message in (unsub_message(topic), sub_message(topic))]

    # ---- connection life ------------------------------------------------------------------

    def on_open(self, connection: int, now_ns: int) -> list[str]:
        self._drop_pending(connection)
        return super().on_open(connection, now_ns)

    def on_close(self, connection: int, now_ns: int, reason: Reason = Reason.DISCONNECTED) -> None:
        self._drop_pending(connection)
        self._pongs = [pong for pong in self._pongs if pong.connection != connection]
        super().on_close(connection, now_ns, reason)

    def _drop_pending(self, connection: int) -> None:
        for feed in self.connections[connection]:
            self._pending.pop(feed, None)

    def outgoing_messages(self, now_ns: int) -> list[OutgoingMessage]:
        """Pongs owed to the server's pings first, then resubscriptions."""
        pongs, self._pongs = self._pongs, []
        return pongs + super().outgoing_messages(now_ns)

    # ---- frames ----------------------------------------------------------------------------

    def on_message(self, connection: int, data: str | bytes, receive_ts: int) -> ConnectionAction:
        """Route one frame; bad frames are counted and dropped, never raised.

        A depth.step0 push of one of our books is decoded typed (:class:`TypedDepthPush`: its
        levels validated floats) and loaded without a conversion per level; anything else, or
        anything unexpected in one, takes the generic path, the authority on what a frame
        means and how a bad one is handled."""
        if self._resend_queue:
            self.flush(receive_ts)
        counters = self.connection_counters[connection]
        counters.frames += 1
        try:
            text = frame_text(data)
        except zlib.error:
            counters.malformed_frames += 1
            self.frame_rejected = True
            return _CONTINUE
        if text.__class__ is bytes and self.book_channel == DEPTH and text.find(DEPTH_HINT, 0, DEPTH_HINT_WITHIN) > 0:
            try:
                push = decode_depth_push(text)
            except DecodeError:
                pass  # the generic path below reads it, or says what is wrong with it
            else:
                feed = self._feeds_by_book_topic.get(push.ch)
                tick = push.tick
                exchange_ms = push.ts
                version = tick.version
                if feed is not None and exchange_ms.__class__ is int and version.__class__ is int:
                    # _on_depth's steps, with the snapshot's levels already parsed
                    if feed.state is _LIVE and version <= feed.last_sequence:
                        feed.counters.gaps += 1
                        self.resync(feed, Reason.SEQUENCE_GAP, receive_ts)
                    else:
                        self.on_parsed_book_snapshot(
                            feed, tick.bids or _EMPTY, tick.asks or _EMPTY, version, exchange_ms * MS, receive_ts
                        )
                    return _CONTINUE
        try:
            message = orjson.loads(text)
            channel = message.get("ch")
        except (ValueError, AttributeError):
            counters.malformed_frames += 1
            self.frame_rejected = True
            return _CONTINUE
        if channel is not None:
            self._on_push(connection, message, channel, receive_ts)
            return _CONTINUE
        ping = message.get("ping")
        if ping is not None:
            if ping.__class__ is not int:
                counters.malformed_frames += 1
                self.frame_rejected = True
                return _CONTINUE
            self._pongs.append(OutgoingMessage(connection, pong_message(ping)))
            return _SEND
        if message.get("status") == "ok":
            if "rep" in message:
                self._on_snapshot_reply(connection, message, receive_ts)
            else:
                counters.subscribe_acks += 1  # sub and unsub acks
            return _CONTINUE
        if message.get("status") == "error":
            self._on_error(connection, message)
            return _CONTINUE
        counters.ignored_frames += 1
        return _CONTINUE

    def _feed_of(self, connection: int, topic: Any) -> StreamFeed | None:
        try:
            feed = self.feeds.get(topic_symbol(topic))
        except (ValueError, AttributeError):
            self.connection_counters[connection].malformed_frames += 1
            self.frame_rejected = True
            return None
        if feed is None:
            self.connection_counters[connection].unknown_symbol_frames += 1
            self.frame_rejected = True
        return feed

    def _on_push(self, connection: int, message: dict[str, Any], channel: Any, receive_ts: int) -> None:
        feed = self._feed_of(connection, channel)
        if feed is None:
            return
        tick = message.get("tick")
        if channel.endswith(".trade.detail"):
            try:
                trades = parse_trades(tick)
            except (KeyError, TypeError, ValueError):
                feed.counters.parse_errors += 1
                self.frame_rejected = True
                return
            for price, size, aggressor, trade_id, trade_ts in trades:
                self.write_trade(feed, price, size, aggressor, trade_id, trade_ts, receive_ts)
            return
        if channel != self.book_topic(feed):
            self.connection_counters[connection].ignored_frames += 1
            return
        try:
            exchange_ts = int(message["ts"]) * MS
            bids = tick.get("bids") or _EMPTY  # a side may be absent or empty
            asks = tick.get("asks") or _EMPTY
            if bids.__class__ is not list or asks.__class__ is not list:
                raise TypeError("book levels must be lists")
            if self.book_channel == DEPTH:
                version = int(tick["version"])
            else:
                sequence = int(tick["seqNum"])
                previous = int(tick["prevSeqNum"])
        except (KeyError, TypeError, ValueError, AttributeError):
            # Without its numbers the frame cannot be placed: the book is no longer known.
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            self.resync(feed, Reason.MALFORMED, receive_ts)
            return
        if self.book_channel == DEPTH:
            self._on_depth(feed, bids, asks, version, exchange_ts, receive_ts)
        elif feed.state is _SUBSCRIBING:
            self._pending.setdefault(feed, deque(maxlen=PENDING_LIMIT)).append(
                (bids, asks, sequence, previous, exchange_ts, receive_ts)
            )
        else:
            self._on_increment(feed, bids, asks, sequence, previous, exchange_ts, receive_ts)

    def _on_depth(
        self, feed: StreamFeed, bids: RawLevels, asks: RawLevels, version: int, exchange_ts: int, receive_ts: int
    ) -> None:
        """A depth.step0 push: a whole book, whose version must pass the last one (on_message's
        typed path takes the same steps: a change to one belongs in the other)."""
        if feed.state is _LIVE and version <= feed.last_sequence:
            feed.counters.gaps += 1
            self.resync(feed, Reason.SEQUENCE_GAP, receive_ts)
            return
        self.on_book_snapshot(feed, bids, asks, version, None, exchange_ts, receive_ts)

    def _on_increment(
        self,
        feed: StreamFeed,
        bids: RawLevels,
        asks: RawLevels,
        sequence: int,
        previous: int,
        exchange_ts: int,
        receive_ts: int,
    ) -> None:
        if feed.state is _LIVE and not feed.confirmed and sequence <= feed.last_sequence:
            counters = feed.counters  # already in the snapshot
            counters.frames += 1
            counters.frames_dropped += 1
            return
        self.on_book_update(feed, bids, asks, sequence, previous, None, exchange_ts, receive_ts)

    def _on_snapshot_reply(self, connection: int, message: dict[str, Any], receive_ts: int) -> None:
        """The ``req`` answer: load it, then the buffered increments it does not contain."""
        feed = self._feed_of(connection, message.get("rep"))
        if feed is None:
            return
        if self.book_channel != MBP or feed.state is not _SUBSCRIBING:
            self.connection_counters[connection].ignored_frames += 1  # a reply we stopped waiting for
            return
        try:
            data = message["data"]
            sequence = int(data["seqNum"])
            bids = data.get("bids") or _EMPTY
            asks = data.get("asks") or _EMPTY
            exchange_ts = int(message.get("ts", 0)) * MS
        except (KeyError, TypeError, ValueError, AttributeError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            self.resync(feed, Reason.MALFORMED, receive_ts)
            return
        self.on_book_snapshot(feed, bids, asks, sequence, None, exchange_ts, receive_ts)
        pending = self._pending.get(feed)
        while pending and feed.state is _LIVE:  # a break leaves the rest for the next snapshot
            self._on_increment(feed, *pending.popleft())

    def _on_error(self, connection: int, message: dict[str, Any]) -> None:
        """A refused sub or req: the id is its topic (ours), so a book topic retries its symbol."""
        error = f"{message.get('err-code', '')}: {message.get('err-msg', '')}"
        topic = message.get("id")
        try:
            candidate = self.feeds.get(topic_symbol(topic))
        except (ValueError, AttributeError):
            candidate = None  # not one of our ids
        feed = candidate if candidate is not None and topic == self.book_topic(candidate) else None
        self.on_subscribe_error(connection, feed, error)


# ---------------------------------------------------------------------------------------
# Simulator side (MBP on /feed)


def gzip_json(value: Any) -> bytes:
    return gzip.compress(orjson.dumps(value), mtime=0)


def _places(step: str) -> int:
    text = step.rstrip("0") if "." in step else step
    return len(text.partition(".")[2])


Window = tuple[dict[int, int], dict[int, int]]
"""The top levels one MBP depth shows: (bids, asks) as tick → lots."""

EncodedStep = dict[tuple[str, ...] | tuple[str, str, int], list[bytes]]
"""("book", symbol, depth), ("trade", symbol) or ("ping",) → gzip frames of one step."""

PING_EVERY_STEPS = 50


class HtxSimulatedVenue(SimulatedVenue):
    """The simulator's market as HTX serves it: MBP on ``/feed``, gzip binary frames.

    Each subscribed depth keeps its own top-``n`` window and ``seqNum``: a push is the
    diff of the window between two steps (levels leaving it are deleted). ``seqNum``
    advances by the step's changed levels, so it is not contiguous and only
    ``prevSeqNum`` links pushes; a withheld change (the server's drop fault) still moves
    the window and its ``seqNum`` on, so the client sees a ``prevSeqNum`` break.

    The frames are ``bytes``: ``sim.server`` hands them to ``websockets``' ``send``,
    which sends bytes as binary frames.
    """

    def __init__(self, market: Market, venue: str = NAME) -> None:
        super().__init__(market, venue)
        self.specs = {spec.canonical: spec for spec in market.symbols.values() if not spec.perpetual}
        self.natives = {f"{spec.base}{spec.quote}".lower(): symbol for symbol, spec in self.specs.items()}
        self.prices = {symbol: FixedPoint(spec.tick_size, _places(spec.tick_size)) for symbol, spec in self.specs.items()}
        self.sizes = {symbol: FixedPoint(spec.lot_size, _places(spec.lot_size)) for symbol, spec in self.specs.items()}
        self.windows: dict[tuple[str, int], Window] = {}
        self.sequences: dict[tuple[str, int], int] = {}
        self.pongs_received = 0
        self.now_ms = 0  # the latest step's time: stamps acks and snapshots

    # ---- REST ------------------------------------------------------------------------------

    def http(self, path: str, query: Mapping[str, str]) -> HttpReply:
        if path == SYMBOLS_PATH:
            return HttpReply(200, self.symbols_body())
        return HttpReply(404, '{"status":"error","err-code":"invalid-parameter","err-msg":"not found"}')

    def is_snapshot_request(self, path: str) -> bool:
        return False  # the snapshot is a WebSocket req

    def symbols_body(self) -> str:
        data = []
        for native, symbol in self.natives.items():
            spec = self.specs[symbol]
            data.append(
                {
                    "base-currency": spec.base.lower(),
                    "quote-currency": spec.quote.lower(),
                    "price-precision": self.prices[symbol].places,
                    "amount-precision": self.sizes[symbol].places,
                    "symbol": native,
                    "state": "online",
                }
            )
        return orjson.dumps({"status": "ok", "data": data}).decode()

    # ---- WebSocket -------------------------------------------------------------------------

    def open_session(self, path: str) -> VenueSession | HttpReply:
        if urlsplit(path).path.rstrip("/") != MBP_PATH:
            return HttpReply(404, "Not found")
        return HtxSimSession(self)

    def window(self, symbol: str, depth: int) -> Window:
        """The current window of ``symbol`` at ``depth``, tracked from now on."""
        key = (symbol, depth)
        if key not in self.windows:
            bids, asks = self.market.book(self.venue, symbol).top(depth)
            self.windows[key] = (dict(bids), dict(asks))
            self.sequences[key] = 1_000_000 + depth
        return self.windows[key]

    def snapshot_frame(self, topic: str, symbol: str, depth: int) -> bytes:
        bids, asks = self.window(symbol, depth)
        data = {
            "seqNum": self.sequences[symbol, depth],
            "bids": self._levels(symbol, sorted(bids.items(), reverse=True)),
            "asks": self._levels(symbol, sorted(asks.items())),
        }
        return gzip_json({"id": topic, "rep": topic, "status": "ok", "ts": self.now_ms, "data": data})

    def _levels(self, symbol: str, levels: Sequence[tuple[int, int]]) -> orjson.Fragment:
        """Numbers written at the symbol's precision, as JSON numbers (not strings)."""
        price = self.prices[symbol].text
        size = self.sizes[symbol].text
        return orjson.Fragment("[" + ",".join(f"[{price(tick)},{size(lots)}]" for tick, lots in levels) + "]")

    def encode_step(self, step: MarketStep) -> EncodedStep:
        self.now_ms = step.timestamp_ns // MS
        changed = {change.symbol: change.timestamp_ns for change in step.book_changes if change.symbol in self.specs}
        encoded: EncodedStep = {}
        for (symbol, depth), (old_bids, old_asks) in list(self.windows.items()):
            new_bids, new_asks = (dict(levels) for levels in self.market.book(self.venue, symbol).top(depth))
            self.windows[symbol, depth] = (new_bids, new_asks)
            bid_changes = _diff(old_bids, new_bids)
            ask_changes = _diff(old_asks, new_asks)
            if not (bid_changes or ask_changes):
                continue
            previous = self.sequences[symbol, depth]
            sequence = previous + len(bid_changes) + len(ask_changes)
            self.sequences[symbol, depth] = sequence
            if symbol not in changed:
                continue  # withheld by the server: the client misses this seqNum
            topic = f"market.{self._native(symbol)}.mbp.{depth}"
            tick = {
                "seqNum": sequence,
                "prevSeqNum": previous,
                "bids": self._levels(symbol, sorted(bid_changes, reverse=True)),
                "asks": self._levels(symbol, sorted(ask_changes)),
            }
            encoded[("book", symbol, depth)] = [
                gzip_json({"ch": topic, "ts": changed[symbol] // MS, "tick": tick})
            ]
        for trade in step.trades:
            if trade.symbol not in self.specs:
                continue
            price = self.prices[trade.symbol].text(trade.price_ticks)
            size = self.sizes[trade.symbol].text(trade.lots)
            direction = "buy" if trade.aggressor == Side.BID else "sell"
            ts = trade.timestamp_ns // MS
            topic = f"market.{self._native(trade.symbol)}.trade.detail"
            record = orjson.Fragment(
                f'{{"id":{trade.trade_id},"ts":{ts},"tradeId":{trade.trade_id},"amount":{size},'
                f'"price":{price},"direction":"{direction}"}}'
            )
            encoded.setdefault(("trade", trade.symbol), []).append(
                gzip_json({"ch": topic, "ts": ts, "tick": {"id": trade.trade_id, "ts": ts, "data": [record]}})
            )
        if step.number % PING_EVERY_STEPS == 0:
            encoded[("ping",)] = [gzip_json({"ping": step.timestamp_ns // MS})]
        return encoded

    def _native(self, symbol: str) -> str:
        spec = self.specs[symbol]
        return f"{spec.base}{spec.quote}".lower()


def _diff(old: dict[int, int], new: dict[int, int]) -> list[tuple[int, int]]:
    """Levels that changed or entered the window, and deletes of those that left it."""
    changes = [(tick, lots) for tick, lots in new.items() if old.get(tick) != lots]
    changes.extend((tick, 0) for tick in old if tick not in new)
    return changes


class HtxSimSession(VenueSession):
    """One client connection: its MBP subscriptions (symbol → depth) and trade symbols."""

    def __init__(self, venue: HtxSimulatedVenue) -> None:
        self.venue = venue
        self.books: dict[str, int] = {}
        self.trades: set[str] = set()

    def on_client_message(self, text: str) -> list[bytes]:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            return [gzip_json({"status": "error", "err-code": "bad-request", "err-msg": "invalid json"})]
        if request.__class__ is not dict:
            return [gzip_json({"status": "error", "err-code": "bad-request", "err-msg": "invalid request"})]
        if "pong" in request:
            self.venue.pongs_received += 1
            return []
        request_id = request.get("id")
        for action in ("sub", "unsub", "req"):
            topic = request.get(action)
            if topic is not None:
                return self._on_topic(action, topic, request_id)
        return [gzip_json({"status": "error", "err-code": "bad-request", "err-msg": "unknown request", "id": request_id})]

    def _on_topic(self, action: str, topic: Any, request_id: Any) -> list[bytes]:
        parts = topic.split(".") if topic.__class__ is str else []
        symbol = self.venue.natives.get(parts[1]) if len(parts) >= 3 and parts[0] == "market" else None
        kind = ".".join(parts[2:])
        depth = int(parts[3]) if len(parts) == 4 and parts[2] == "mbp" and parts[3].isdigit() else 0
        if symbol is None or not (kind == "trade.detail" or depth in MBP_DEPTHS) or (action == "req" and not depth):
            error = f"invalid topic {topic}"
            return [gzip_json({"status": "error", "err-code": "bad-request", "err-msg": error, "id": request_id})]
        if action == "req":
            return [self.venue.snapshot_frame(topic, symbol, depth)]
        if kind == "trade.detail":
            (self.trades.add if action == "sub" else self.trades.discard)(symbol)
        elif action == "sub":
            self.venue.window(symbol, depth)
            self.books[symbol] = depth
        else:
            self.books.pop(symbol, None)
        acknowledged = "subbed" if action == "sub" else "unsubbed"
        return [gzip_json({"id": request_id, "status": "ok", acknowledged: topic, "ts": self.venue.now_ms})]

    def frames(self, encoded_step: EncodedStep) -> list[bytes]:
        frames = list(encoded_step.get(("ping",), ()))
        for symbol, depth in self.books.items():
            frames.extend(encoded_step.get(("book", symbol, depth), ()))
        for symbol in self.trades:
            frames.extend(encoded_step.get(("trade", symbol), ()))
        return frames


# The recording is the classic depth.step0 channel on /ws (coby verify replays it through this).
RECORDED_OPTIONS = {"ws_base_url": WS_DEPTH_URL, "book_channel": DEPTH}

CONNECTOR = HtxConnector
SIMULATED_VENUE = HtxSimulatedVenue
