"""OKX v5 public books and trades, both directions, in two protocol generations.

Connector side (sans-IO), docs/exchanges.md §9. Common to both generations:

- ``wss://ws.okx.com:8443/ws/v5/public``, channel ``books`` (400 levels per side) and
  ``trades``, subscribed per instrument (``{"op":"subscribe","args":[{channel, instId}]}``),
  at most 50 instruments a connection (OKX allows 480 subscribe requests an hour on one);
- ``books`` updates carry absolute sizes (``"0"`` deletes) as ``[px, sz, "0", numOrders]``,
  and ``prevSeqId`` == the ``seqId`` of the update before; an update with ``seqId ==
  prevSeqId`` and no levels is an idle keep-alive, and a ``seqId`` below ``prevSeqId`` after
  maintenance is legitimate (the chain goes on from it);
- text ``ping`` every 25 s (OKX closes a connection idle for 30 s) → text ``pong``.

:class:`OkxConnector` is today's protocol (the default). OKX stopped sending the ``books``
snapshot in the stream in August 2026 and has sent ``checksum`` 0 since 2026-06-23, so
each book is seeded from ``GET /api/v5/market/books?instId=..&sz=400`` on
:class:`~actors.connectors.base.RestSeededConnector` with OKX's rule (:data:`OKX_SYNC`):
buffer the updates from the subscription's ack; drop buffered updates with ``seqId <=``
the snapshot's; the first applied must straddle it (``prevSeqId <= snapshot seqId <
seqId``), and a snapshot older than the first buffered ``prevSeqId`` is fetched again
(OKX answers from several caches: a later request may return an older book); then each
``prevSeqId`` must equal the last ``seqId``, and a break clears the one book and fetches a
new snapshot while the stream keeps buffering (no resubscription). A snapshot that still
arrives in the stream is ignored, and so is the checksum field (always 0 in this
generation). REST books cost 40 requests per 2 s per IP: at most 40 are asked a minute.

:class:`OkxStreamSeededConnector` reads the recorded generation (OKX.ws.1.0, May 2022) and
the stream as it was until August 2026, on
:class:`~actors.connectors.stream_seeded.StreamSeededConnector`: the snapshot arrives on
the subscription (``action:"snapshot"``, ``prevSeqId`` -1); ``checksum``, the signed
CRC32 of the top 25 levels interleaved from the exact strings received, is verified when
it is not 0 (the 2022 frames carry one on every frame and no ``seqId``; each check runs
when its field is present); a gap, checksum mismatch or unreadable book frame
re-subscribes the one instrument. ``coby verify`` uses it (:data:`RECORDED_CONNECTOR`).

Instruments: ``GET /api/v5/public/instruments?instType=SPOT`` and ``instType=SWAP``
(``BTC-USDT`` → ``BTC/USDT``, ``BTC-USDT-SWAP`` → ``BTC/USDT:PERP``). Dated futures and
options are skipped: the canonical form has no expiry. The runtime fetches every URL of
``instruments_urls``; :meth:`OkxProtocol.load_instruments` accumulates every body it is
given and, for a configured perpetual no body has listed yet, derives the instrument from
OKX's ``BASE-QUOTE-SWAP`` naming (tick and lot size unknown: NaN).

Simulator side: :class:`OkxSimulatedVenue` serves both instrument lists, ``GET
/api/v5/market/books`` (the venue's book and its current ``seqId``, in OKX's response
shape) and today's protocol on ``/ws/v5/public``: updates chained by ``seqId``/``prevSeqId``
(the market's update ids, so a withheld update is a real gap), checksum 0, trades,
``ping`` → ``pong``, error events; with ``stream_snapshots=True`` also the in-stream
snapshot of the generation before August 2026.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from actors.connectors.base import (
    MAX_EXCHANGE_TS,
    ConnectionAction,
    Instrument,
    KeepAlive,
    L2Book,
    Level,
    OutgoingMessage,
    RecordSink,
    RestSeededConnector,
    SymbolFeed,
    SymbolRecords,
    SyncRule,
    SyncState,
    apply_frame,
    canonical_symbol,
    parse_levels,
)
from actors.connectors.checksum import OKX
from actors.connectors.stream_seeded import RawLevels, StreamFeed, StreamSeededConnector
from shm.records import Reason, Side
from sim.market import FixedPoint, Market, MarketStep
from sim.venue import HttpReply, SimulatedVenue, VenueSession, decimal_places

NAME = "okx"
REST_BASE_URL = "https://www.okx.com"
WS_URL = "wss://ws.okx.com:8443/ws/v5/public"
WS_PATH = "/ws/v5/public"
INSTRUMENTS_PATH = "/api/v5/public/instruments"
BOOKS_PATH = "/api/v5/market/books"
INSTRUMENT_TYPES = ("SPOT", "SWAP")  # FUTURES (dated) and OPTION have no canonical form: skipped
BOOK_CHANNEL = "books"
TRADE_CHANNEL = "trades"
BOOK_DEPTH = 400  # the public `books` channel's levels per side, and the REST book's maximum `sz`
SWAP_SUFFIX = "-SWAP"
PING = "ping"
PONG = "pong"
PING_INTERVAL_S = 25.0  # OKX closes a connection that received nothing for 30 s
SERVICE_UPGRADE_NOTICE = "64008"  # event "notice": the connection closes soon for a service upgrade
INSTRUMENTS_PER_CONNECTION = 50
SNAPSHOT_PREVIOUS_SEQUENCE = -1

_CONTINUE = ConnectionAction.CONTINUE
_LIVE = SyncState.LIVE  # a module global: reading an enum member costs ~125 ns on 3.11
_EMPTY: list[list[str]] = []

OkxBook = tuple[list[list[str]], list[list[str]], int | None, int | None, int | None, int]
"""(bids, asks, seqId, prevSeqId, checksum, exchange ns) of one ``books`` data entry; levels
are the wire's ``[px, sz, "0", numOrders]`` strings. ``seqId``/``prevSeqId`` are None where
the frame has none (the 2022 generation), the checksum None where it is absent or 0."""


# ---------------------------------------------------------------------------------------
# Wire format → values


def instruments_url(rest_base_url: str, instrument_type: str) -> str:
    return f"{rest_base_url.rstrip('/')}{INSTRUMENTS_PATH}?instType={instrument_type}"


def books_url(rest_base_url: str, native: str, depth: int = BOOK_DEPTH) -> str:
    return f"{rest_base_url.rstrip('/')}{BOOKS_PATH}?instId={native}&sz={depth}"


def native_symbol(canonical: str) -> str:
    """``BTC/USDT`` → ``BTC-USDT``; ``BTC/USDT:PERP`` → ``BTC-USDT-SWAP``."""
    pair, _, kind = canonical.partition(":")
    native = pair.replace("/", "-")
    return native + SWAP_SUFFIX if kind == "PERP" else native


def parse_instruments(body: str | bytes) -> list[Instrument]:
    """Spot and perpetual-swap instruments of one instruments body (any ``instType``)."""
    instruments = []
    for row in orjson.loads(body)["data"]:
        kind = row.get("instType")
        native = row["instId"]
        if kind == "SPOT":
            base, quote, perpetual = row["baseCcy"], row["quoteCcy"], False
        elif kind == "SWAP" and native.endswith(SWAP_SUFFIX):
            base, quote = native[: -len(SWAP_SUFFIX)].split("-")  # swap rows leave baseCcy/quoteCcy empty
            perpetual = True
        else:
            continue
        instruments.append(
            Instrument(
                canonical=canonical_symbol(base, quote, perpetual),
                native=native,
                base=base,
                quote=quote,
                tick_size=float(row["tickSz"]),
                lot_size=float(row["lotSz"]),
                perpetual=perpetual,
            )
        )
    return instruments


def perpetual_from_name(canonical: str) -> Instrument:
    """A configured perpetual no instruments body listed: OKX's naming gives its instId."""
    pair, _, _ = canonical.partition(":")
    base, quote = pair.split("/")
    return Instrument(canonical, native_symbol(canonical), base, quote, math.nan, math.nan, perpetual=True)


def parse_book_entry(entry: dict[str, Any]) -> OkxBook:
    """One ``books`` data entry; raises KeyError/TypeError/ValueError on anything else."""
    bids = entry.get("bids", _EMPTY)
    asks = entry.get("asks", _EMPTY)
    if bids.__class__ is not list or asks.__class__ is not list:
        raise TypeError("book levels must be lists")
    sequence = entry.get("seqId")
    previous = entry.get("prevSeqId")
    checksum = entry.get("checksum")
    if (sequence is None) != (previous is None):
        raise ValueError("seqId and prevSeqId come together")
    return (
        bids,
        asks,
        int(sequence) if sequence is not None else None,
        int(previous) if previous is not None else None,
        int(checksum) if checksum else None,  # 0: deprecated since 2026-06-23, nothing to verify
        int(entry["ts"]) * 1_000_000,
    )


def parse_okx_levels(raw: RawLevels) -> list[Level]:
    """``[[px, sz, "0", numOrders], ...]`` as validated (price, size) floats; raises
    ValueError/TypeError on anything else (a short level too)."""
    try:
        return parse_levels([(level[0], level[1]) for level in raw])
    except LookupError as error:
        raise ValueError(f"bad OKX level: {error!r}") from None


def apply_okx_levels(
    book: L2Book,
    records: SymbolRecords,
    raw_bids: RawLevels,
    raw_asks: RawLevels,
    sequence: int,
    exchange_ts: int,
    receive_ts: int,
) -> int:
    """The stream-seeded hot path (it reads ``level[0]``/``level[1]`` of OKX's 4-field
    levels), with a short level raised as the ValueError the REST-seeded machinery resyncs on."""
    try:
        return apply_frame(book, records, raw_bids, raw_asks, sequence, exchange_ts, receive_ts)
    except LookupError as error:
        raise ValueError(f"bad OKX level: {error!r}") from None


def parse_books_response(body: str | bytes) -> tuple[int, list[Level], list[Level]]:
    """(seqId, bids, asks) of a ``GET /api/v5/market/books`` body
    (``{"code":"0","msg":"","data":[{"asks":..,"bids":..,"ts":..,"seqId":..}]}``);
    raises ValueError/KeyError/TypeError on an error answer or anything else."""
    message = orjson.loads(body)
    if message["code"] != "0":
        raise ValueError(f"OKX error {message['code']}: {message.get('msg', '')}")
    (entry,) = message["data"]
    sequence = entry["seqId"]
    if sequence.__class__ is not int:
        raise TypeError(f"bad seqId {sequence!r}")
    return sequence, parse_okx_levels(entry["bids"]), parse_okx_levels(entry["asks"])


def parse_trade(entry: dict[str, Any]) -> tuple[float, float, Side, int, int]:
    """(price, size, aggressor, trade id, exchange ns) of one ``trades`` data entry."""
    ((price, size),) = parse_levels(((entry["px"], entry["sz"]),))
    side = entry["side"]
    if not size or side not in ("buy", "sell"):
        raise ValueError(f"bad trade {entry!r}")
    return price, size, Side.BID if side == "buy" else Side.ASK, int(entry["tradeId"]), int(entry["ts"]) * 1_000_000


def follows(sequence: int, previous_sequence: int, last_sequence: int) -> bool:
    """OKX continuity: each update's ``prevSeqId`` is the last ``seqId`` (a reset to a
    lower ``seqId`` after maintenance still names the old one as its previous)."""
    return previous_sequence == last_sequence


OKX_SYNC = SyncRule(
    # OKX updates have no first id: prevSeqId stands in for it (first_id = previous_id = prevSeqId,
    # last_id = seqId). The prevSeqId decides first, as in OKX's procedure: one above the snapshot's
    # seqId means the snapshot is older than the stream (fetched again), one equal to it means the
    # update comes next; only then does seqId <= the snapshot's mean the snapshot has it. So a reset
    # after maintenance (seqId below prevSeqId) is never taken for an update the snapshot has.
    is_stale=lambda previous, sequence, snapshot: previous < snapshot and sequence <= snapshot,
    bridges=lambda previous, sequence, snapshot: previous <= snapshot < sequence or previous == snapshot,
    follows=lambda previous, previous_again, last_sequence: previous_again == last_sequence,
)


def check_depth(*limits: int | None) -> None:
    """Refuse a depth below the channel's 400 levels: levels below it that move back into the
    top are never re-sent, so a shallower book could not be kept exact."""
    for limit in limits:
        if limit is not None and limit < BOOK_DEPTH:
            raise ValueError(f"OKX books are {BOOK_DEPTH} levels deep; a limit of {limit} cannot be kept exact")


# ---- client messages -------------------------------------------------------------------------


def request(operation: str, channel_instruments: Iterable[tuple[str, str]]) -> str:
    args = [{"channel": channel, "instId": instrument} for channel, instrument in channel_instruments]
    return orjson.dumps({"op": operation, "args": args}).decode()


# ---------------------------------------------------------------------------------------
# Connectors


class OkxProtocol:
    """What both generations share: instruments, subscriptions, frame routing and trades.

    A connector class puts it before its machinery's base class and provides
    ``_on_book(feed, entry, is_snapshot, receive_ts)`` (one ``books`` data entry),
    ``_on_event(connection, event, message, argument, receive_ts)`` (returns the connection's
    action) and
    ``resync(feed, reason, now_ns)``; the base provides ``feeds``, ``symbol_ids``,
    ``connection_counters``, ``use_instruments``, ``flush`` and ``_after_write``.
    """

    name = NAME
    application_ping_interval_s = PING_INTERVAL_S

    def _init_protocol(self, ws_base_url: str, rest_base_url: str, trades: bool) -> None:
        self.ws_url = ws_base_url
        self.rest_base_url = rest_base_url.rstrip("/")
        self.trades = trades
        self.listed: dict[str, Instrument] = {}  # by canonical, accumulated over instrument bodies

    @property
    def instruments_url(self) -> str:
        return instruments_url(self.rest_base_url, INSTRUMENT_TYPES[0])

    @property
    def instruments_urls(self) -> list[str]:
        """Every instruments request OKX needs (one per ``instType``)."""
        return [instruments_url(self.rest_base_url, kind) for kind in INSTRUMENT_TYPES]

    def parse_instruments(self, body: str | bytes) -> list[Instrument]:
        return parse_instruments(body)

    def load_instruments(self, body: str | bytes) -> list[Instrument]:
        """Add one instruments body (SPOT or SWAP) to those already loaded and re-plan;
        configured perpetuals not listed yet are derived from their name."""
        self.listed.update((instrument.canonical, instrument) for instrument in self.parse_instruments(body))
        derived = [
            perpetual_from_name(symbol)
            for symbol in self.symbol_ids
            if symbol.endswith(":PERP") and symbol not in self.listed and symbol.count("/") == 1
        ]
        return self.use_instruments([*self.listed.values(), *derived])

    def subscribe_message(self, natives: Sequence[str]) -> str:
        """One request for the books (and trades) of ``natives``."""
        channels = (BOOK_CHANNEL, TRADE_CHANNEL) if self.trades else (BOOK_CHANNEL,)
        return request("subscribe", ((channel, native) for native in natives for channel in channels))

    def on_message(self, connection: int, data: str | bytes, receive_ts: int) -> ConnectionAction:
        """Route one frame; bad frames are counted and dropped, never raised."""
        if self._resend_queue:
            self.flush(receive_ts)
        counters = self.connection_counters[connection]
        counters.frames += 1
        if data == PONG or data == b"pong":
            counters.ignored_frames += 1
            return _CONTINUE
        try:
            message = orjson.loads(data)
            argument = message.get("arg")
            channel = argument.get("channel") if argument.__class__ is dict else None
        except (orjson.JSONDecodeError, AttributeError):
            counters.malformed_frames += 1
            self.frame_rejected = True
            return _CONTINUE
        event = message.get("event")
        if event is not None:
            if event == "notice" and message.get("code") == SERVICE_UPGRADE_NOTICE:
                # OKX closes the connection soon after: move to a new one now rather than wait.
                counters.server_shutdowns += 1
                return ConnectionAction.RECONNECT
            return self._on_event(connection, event, message, argument, receive_ts)
        if channel != BOOK_CHANNEL and channel != TRADE_CHANNEL:
            counters.ignored_frames += 1  # tickers and other channels of a shared connection
            return _CONTINUE
        native = argument.get("instId")
        feed = self.feeds.get(native) if native.__class__ is str else None
        if feed is None:
            if native.__class__ is str:
                counters.unknown_symbol_frames += 1
                self.frame_rejected = True
            else:
                counters.malformed_frames += 1
                self.frame_rejected = True
            return _CONTINUE
        entries = message.get("data")
        if channel == BOOK_CHANNEL:
            action = message.get("action")
            if (action != "snapshot" and action != "update") or entries.__class__ is not list:
                feed.counters.parse_errors += 1  # a book frame of ours we cannot read: its levels are lost
                self.frame_rejected = True
                self.resync(feed, Reason.MALFORMED, receive_ts)
                return _CONTINUE
            for entry in entries:
                self._on_book(feed, entry, action == "snapshot", receive_ts)
        else:
            self._on_trades(feed, entries, receive_ts)
        return _CONTINUE

    def _on_trades(self, feed: SymbolFeed | StreamFeed, entries: Any, receive_ts: int) -> None:
        counters = feed.counters
        if entries.__class__ is not list:
            counters.parse_errors += 1
            self.frame_rejected = True
            return
        for entry in entries:
            try:
                price, size, aggressor, trade_id, trade_ts = parse_trade(entry)
            except (KeyError, TypeError, ValueError, AttributeError):
                counters.parse_errors += 1
                self.frame_rejected = True
                continue
            counters.trades += 1
            if not feed.records.trade(price, size, aggressor, trade_id, trade_ts, receive_ts):
                self._after_write()


class OkxConnector(OkxProtocol, RestSeededConnector):
    """Today's OKX books: seeded from REST, ``seqId``-chained (module docstring); and trades."""

    sync_rule = OKX_SYNC
    streams_per_connection = INSTRUMENTS_PER_CONNECTION  # a stream here is an instrument (books + trades)
    # The base's budget is per minute; only 40 a minute can never exceed OKX's 40 per 2 s, even in one burst.
    snapshot_requests_per_minute = 40
    apply_levels = staticmethod(apply_okx_levels)
    parse_delta_levels = staticmethod(parse_okx_levels)

    def __init__(
        self,
        sink: RecordSink,
        exchange_id: int,
        symbol_ids: Mapping[str, int],
        *,
        ws_base_url: str = WS_URL,
        rest_base_url: str = REST_BASE_URL,
        snapshot_limit: int = BOOK_DEPTH,
        depth_limit: int | None = None,
        trades: bool = True,
        stale_after_s: float = 60.0,
    ) -> None:
        """``ws_base_url``: the full WebSocket URL. ``snapshot_limit`` / ``depth_limit``:
        accepted for the runtime's common call; books are always the channel's 400 levels,
        so a larger value means 400 and a smaller one is refused."""
        check_depth(snapshot_limit, depth_limit)
        super().__init__(
            sink,
            exchange_id,
            symbol_ids,
            stale_after_s=stale_after_s,
            depth_limit=BOOK_DEPTH,
            subscribe_by_message=True,
        )
        self._init_protocol(ws_base_url, rest_base_url, trades)
        self.keepalive = KeepAlive(lambda connection: PING)

    def streams_for(self, instrument: Instrument) -> list[str]:
        return [instrument.native]

    def connection_url(self, streams: Sequence[str]) -> str:
        return self.ws_url

    def subscribe_messages(self, connection: int, streams: Sequence[str]) -> list[str]:
        return [self.subscribe_message(streams)] if streams else []

    def snapshot_url(self, instrument: Instrument) -> str:
        return books_url(self.rest_base_url, instrument.native)

    def parse_snapshot(self, body: str | bytes) -> tuple[int, list[Level], list[Level]]:
        return parse_books_response(body)

    def on_open(self, connection: int, now_ns: int) -> list[str]:
        self.keepalive.start(connection, self.application_ping_interval_s)
        return super().on_open(connection, now_ns)

    def on_close(self, connection: int, now_ns: int, reason: Reason = Reason.DISCONNECTED) -> None:
        self.keepalive.stop(connection)
        super().on_close(connection, now_ns, reason)

    def outgoing_messages(self, now_ns: int) -> list[OutgoingMessage]:
        return self.keepalive.due(now_ns)

    def resync(self, feed: SymbolFeed, reason: Reason, now_ns: int) -> None:
        """Clear the book (if published) and fetch a new snapshot; the stream keeps buffering."""
        self._resync(feed, reason, now_ns)

    def _on_event(
        self, connection: int, event: object, message: dict[str, Any], argument: object, receive_ts: int
    ) -> ConnectionAction:
        """A book's subscribe ack starts buffering it and asks for its snapshot. A refused
        subscription is counted, and while any book of the connection still waits for its ack
        the connection is replaced (with the runtime's backoff), which subscribes everything
        again: OKX's error events do not say which of a request's instruments failed, and a
        book left waiting would never sync."""
        counters = self.connection_counters[connection]
        if event == "subscribe":
            counters.subscribe_acks += 1
            if argument.__class__ is dict and argument.get("channel") == BOOK_CHANNEL:
                native = argument.get("instId")
                feed = self.feeds.get(native) if native.__class__ is str else None
                if feed is not None and feed.state == SyncState.SUBSCRIBING:
                    self.subscription_live((feed,), receive_ts)
        elif event == "unsubscribe":
            counters.subscribe_acks += 1
        elif event == "error":
            counters.subscribe_errors += 1
            counters.last_error = f"{message.get('code', '')} {message.get('msg', '')}".strip()
            if any(feed.state == SyncState.SUBSCRIBING for feed in self.connections[connection]):
                return ConnectionAction.RECONNECT
        else:
            counters.ignored_frames += 1  # login, notice, channel-conn-count
        return _CONTINUE

    def _on_book(self, feed: SymbolFeed, entry: Any, is_snapshot: bool, receive_ts: int) -> None:
        if is_snapshot:
            self.connection_counters[feed.connection].ignored_frames += 1  # delisted: seeded from REST
            return
        try:
            bids, asks, sequence, previous, _checksum, exchange_ts = parse_book_entry(entry)
            if sequence is None:
                raise ValueError("an update without seqId")
        except (KeyError, TypeError, ValueError, AttributeError):
            feed.counters.parse_errors += 1  # levels may be lost: the book is no longer known
            self.frame_rejected = True
            self._resync(feed, Reason.MALFORMED, receive_ts)
            return
        if (feed.state is _LIVE and sequence == previous == feed.last_id and not (bids or asks)
                and 0 <= exchange_ts <= MAX_EXCHANGE_TS):
            feed.counters.last_exchange_ts = exchange_ts  # idle keep-alive: nothing to write
            return
        self.on_delta(feed, previous, sequence, previous, bids, asks, exchange_ts, receive_ts)


class OkxStreamSeededConnector(OkxProtocol, StreamSeededConnector):
    """OKX books as the 2022 recording and the stream until August 2026 have them: the
    snapshot in the stream, ``seqId``-chained where present, checksummed where not 0."""

    book_checksum = OKX
    sequence_rule = staticmethod(follows)
    symbols_per_connection = INSTRUMENTS_PER_CONNECTION

    def __init__(
        self,
        sink: RecordSink,
        exchange_id: int,
        symbol_ids: Mapping[str, int],
        *,
        ws_base_url: str = WS_URL,
        rest_base_url: str = REST_BASE_URL,
        snapshot_limit: int = BOOK_DEPTH,
        depth_limit: int | None = None,
        trades: bool = True,
        stale_after_s: float = 60.0,
    ) -> None:
        """As :class:`OkxConnector`."""
        check_depth(snapshot_limit, depth_limit)
        super().__init__(sink, exchange_id, symbol_ids, depth=BOOK_DEPTH, stale_after_s=stale_after_s)
        self._init_protocol(ws_base_url, rest_base_url, trades)

    def connection_url(self, connection: int) -> str:
        return self.ws_url

    def subscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        return [self.subscribe_message([feed.instrument.native for feed in feeds])] if feeds else []

    def resubscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        natives = [feed.instrument.native for feed in feeds]
        return [
            request("unsubscribe", ((BOOK_CHANNEL, native) for native in natives)),
            request("subscribe", ((BOOK_CHANNEL, native) for native in natives)),
        ]

    def application_ping(self, connection: int) -> str:
        return PING

    def _on_event(
        self, connection: int, event: object, message: dict[str, Any], argument: object, receive_ts: int
    ) -> ConnectionAction:
        counters = self.connection_counters[connection]
        if event == "subscribe" or event == "unsubscribe":
            counters.subscribe_acks += 1
        elif event == "error":
            native = argument.get("instId") if argument.__class__ is dict else None
            feed = self.feeds.get(native) if native.__class__ is str else None
            self.on_subscribe_error(connection, feed, f"{message.get('code', '')} {message.get('msg', '')}".strip())
        else:
            counters.ignored_frames += 1  # login, notice, channel-conn-count
        return _CONTINUE

    def _on_book(self, feed: StreamFeed, entry: Any, is_snapshot: bool, receive_ts: int) -> None:
        try:
            bids, asks, sequence, previous, checksum, exchange_ts = parse_book_entry(entry)
        except (KeyError, TypeError, ValueError, AttributeError):
            feed.counters.parse_errors += 1  # levels may be lost: the book is no longer known
            self.frame_rejected = True
            self.resync(feed, Reason.MALFORMED, receive_ts)
            return
        sequence = sequence or 0  # the 2022 frames have no seqId: every frame chains
        previous = previous or 0
        if is_snapshot:
            self.on_book_snapshot(feed, bids, asks, sequence, checksum, exchange_ts, receive_ts)
        elif (
            feed.state is _LIVE
            and not (bids or asks)
            and checksum is None
            and sequence == previous == feed.last_sequence
            and 0 <= exchange_ts <= MAX_EXCHANGE_TS
        ):
            feed.counters.last_exchange_ts = exchange_ts  # idle keep-alive: nothing to verify
        else:
            self.on_book_update(feed, bids, asks, sequence, previous, checksum, exchange_ts, receive_ts)


# ---------------------------------------------------------------------------------------
# Simulator side


Window = tuple[dict[int, int], dict[int, int]]
"""The levels a ``books`` subscriber holds: (bids, asks) as tick → lots."""

EncodedStep = dict[tuple[str, str], list[str]]
"""(channel, instId) → frames of one step."""


class OkxSimulatedVenue(SimulatedVenue):
    """The simulator's market as OKX v5 serves it: spot as ``BASE-QUOTE``, perpetuals as
    ``BASE-QUOTE-SWAP``, 400-level ``books`` windows (levels pushed out are not deleted),
    REST books at the current ``seqId``."""

    def __init__(self, market: Market, venue: str = NAME, stream_snapshots: bool = False) -> None:
        """``stream_snapshots``: also send the book snapshot on subscription, as OKX did
        until August 2026."""
        super().__init__(market, venue)
        self.stream_snapshots = stream_snapshots
        self.specs = {native_symbol(spec.canonical): spec for spec in market.symbols.values()}
        self.prices = {
            native: FixedPoint(spec.tick_size, decimal_places(spec.tick_size)) for native, spec in self.specs.items()
        }
        self.sizes = {
            native: FixedPoint(spec.lot_size, decimal_places(spec.lot_size)) for native, spec in self.specs.items()
        }
        self.windows: dict[str, Window] = {}  # by instId, once someone subscribed its book

    # ---- REST ------------------------------------------------------------------------------

    def http(self, path: str, query: Mapping[str, str]) -> HttpReply:
        if path == BOOKS_PATH:
            return self.books_reply(query.get("instId", ""), query.get("sz", "1"))
        kind = query.get("instType")
        if path != INSTRUMENTS_PATH or kind not in ("SPOT", "SWAP", "FUTURES", "OPTION"):
            return HttpReply(400, '{"code":"51000","msg":"Parameter instType error","data":[]}')
        return HttpReply(200, self.instruments_body(kind))

    def is_snapshot_request(self, path: str) -> bool:
        return path == BOOKS_PATH

    def instruments_body(self, kind: str) -> str:
        rows = []
        for native, spec in self.specs.items():
            if ("SWAP" if spec.perpetual else "SPOT") != kind:
                continue
            spot = kind == "SPOT"
            rows.append(
                {
                    "instType": kind,
                    "instId": native,
                    "baseCcy": spec.base if spot else "",
                    "quoteCcy": spec.quote if spot else "",
                    "settleCcy": "" if spot else spec.quote,
                    "ctVal": "" if spot else "1",
                    "ctType": "" if spot else "linear",
                    "uly": "" if spot else f"{spec.base}-{spec.quote}",
                    "tickSz": spec.tick_size,
                    "lotSz": spec.lot_size,
                    "state": "live",
                }
            )
        return orjson.dumps({"code": "0", "msg": "", "data": rows}).decode()

    def books_reply(self, native: str, depth_text: str) -> HttpReply:
        """``GET /api/v5/market/books``: the book's top ``sz`` levels (default 1, at most 400)
        and its current ``seqId``, the one the next update names as its ``prevSeqId``."""
        if native not in self.specs:
            return HttpReply(400, '{"code":"51001","msg":"Instrument ID does not exist","data":[]}')
        depth = int(depth_text) if depth_text.isdigit() else 0
        if not 1 <= depth <= BOOK_DEPTH:
            return HttpReply(400, '{"code":"51000","msg":"Parameter sz error","data":[]}')
        book = self.market.book(self.venue, self.specs[native].canonical)
        bids, asks = book.top(depth)
        return HttpReply(
            200,
            f'{{"code":"0","msg":"","data":[{{"asks":[{self._levels(native, asks)}],'
            f'"bids":[{self._levels(native, bids)}],"ts":"{time.time_ns() // 1_000_000}",'
            f'"seqId":{book.last_update_id}}}]}}',
        )

    # ---- WebSocket -------------------------------------------------------------------------

    def subscription_refusal(self, text: str) -> list[str] | None:
        """OKX's error event for a subscribe request it refuses (it does not say which
        instrument: the error carries no ``arg``)."""
        try:
            request = orjson.loads(text)
            if request.get("op") != "subscribe":
                return None
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return [orjson.dumps({"event": "error", "code": "60019", "msg": "Invalid request: subscribe refused",
                              "connId": "0000fa17"}).decode()]

    def maintenance_frames(self, starting: bool) -> list[str]:
        """OKX's notice ahead of a service upgrade: the connection is closed soon after."""
        if not starting:
            return []
        return [orjson.dumps({"event": "notice", "code": "64008", "msg": "The connection will soon be closed for a "
                              "service upgrade. Please reconnect.", "connId": "0000fa17"}).decode()]

    def open_session(self, path: str) -> VenueSession | HttpReply:
        if urlsplit(path).path.rstrip("/") != WS_PATH:
            return HttpReply(404, "Not found")
        return OkxSimSession(self)

    def window(self, native: str) -> Window:
        if native not in self.windows:
            bids, asks = self.market.book(self.venue, self.specs[native].canonical).top(BOOK_DEPTH)
            self.windows[native] = (dict(bids), dict(asks))
        return self.windows[native]

    def snapshot_frame(self, native: str) -> str:
        bids, asks = self.window(native)
        sequence = self.market.book(self.venue, self.specs[native].canonical).last_update_id
        return self._book_frame(
            "snapshot",
            native,
            sorted(bids.items(), reverse=True),
            sorted(asks.items()),
            sequence,
            SNAPSHOT_PREVIOUS_SEQUENCE,
            time.time_ns(),  # the venue's clock, as OKX stamps a snapshot when it sends it
        )

    def encode_step(self, step: MarketStep) -> EncodedStep:
        """One ``books`` update per book change (``seqId``/``prevSeqId`` are the change's
        update ids) and one ``trades`` frame per trade. A change the server withheld (the
        dropped-update fault) still moves the window on, so the subscriber misses it."""
        changes = {change.symbol: change for change in step.book_changes}
        encoded: EncodedStep = {}
        for native, (old_bids, old_asks) in list(self.windows.items()):
            canonical = self.specs[native].canonical
            book = self.market.book(self.venue, canonical)
            new_bids, new_asks = (dict(levels) for levels in book.top(BOOK_DEPTH))
            self.windows[native] = (new_bids, new_asks)
            change = changes.get(canonical)
            if change is None:
                continue
            frame = self._book_frame(
                "update",
                native,
                sorted(_window_changes(old_bids, new_bids, book.bids), reverse=True),
                sorted(_window_changes(old_asks, new_asks, book.asks)),
                change.last_update_id,
                change.previous_update_id,
                change.timestamp_ns,
            )
            encoded[(BOOK_CHANNEL, native)] = [frame]
        for trade in step.trades:
            native = native_symbol(trade.symbol)
            if native not in self.specs:
                continue
            side = "buy" if trade.aggressor == Side.BID else "sell"
            encoded.setdefault((TRADE_CHANNEL, native), []).append(
                f'{{"arg":{{"channel":"trades","instId":"{native}"}},"data":[{{"instId":"{native}",'
                f'"tradeId":"{trade.trade_id}","px":"{self.prices[native].text(trade.price_ticks)}",'
                f'"sz":"{self.sizes[native].text(trade.lots)}","side":"{side}",'
                f'"ts":"{trade.timestamp_ns // 1_000_000}"}}]}}'
            )
        return encoded

    def _levels(self, native: str, levels: Iterable[tuple[int, int]]) -> str:
        """``["px","sz","0","numOrders"]`` texts, joined (the simulator has one order a level)."""
        price = self.prices[native].text
        size = self.sizes[native].text
        return ",".join(f'["{price(tick)}","{size(lots)}","0","1"]' for tick, lots in levels)

    def _book_frame(
        self,
        action: str,
        native: str,
        bids: Sequence[tuple[int, int]],
        asks: Sequence[tuple[int, int]],
        sequence: int,
        previous: int,
        timestamp_ns: int,
    ) -> str:
        """A ``books`` push; checksum 0, as OKX sends it since 2026-06-23."""
        return (
            f'{{"arg":{{"channel":"books","instId":"{native}"}},"action":"{action}","data":[{{'
            f'"asks":[{self._levels(native, asks)}],"bids":[{self._levels(native, bids)}],'
            f'"ts":"{timestamp_ns // 1_000_000}","checksum":0,"prevSeqId":{previous},"seqId":{sequence}}}]}}'
        )


def _window_changes(old: dict[int, int], new: dict[int, int], book: dict[int, int]) -> list[tuple[int, int]]:
    """Changed or entered levels, and deletes of levels gone from the book (levels merely
    pushed out of the window are left to the client's truncation)."""
    changes = [(tick, lots) for tick, lots in new.items() if old.get(tick) != lots]
    changes.extend((tick, 0) for tick in old if tick not in new and tick not in book)
    return changes


class OkxSimSession(VenueSession):
    """One client connection: the instIds whose books and trades it subscribed."""

    def __init__(self, venue: OkxSimulatedVenue) -> None:
        self.venue = venue
        self.subscriptions: set[tuple[str, str]] = set()  # (channel, instId)
        self.connection_id = f"{id(self) & 0xFFFFFFFF:08x}"

    def _error(self, code: str, text: str) -> str:
        return orjson.dumps({"event": "error", "code": code, "msg": text, "connId": self.connection_id}).decode()

    def on_client_message(self, text: str) -> list[str]:
        if text == PING:
            return [PONG]
        try:
            message = orjson.loads(text)
            operation = message["op"]
            args = message["args"]
            if operation not in ("subscribe", "unsubscribe") or args.__class__ is not list:
                raise ValueError(operation)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return [self._error("60012", f"Invalid request: {text}")]
        replies = []
        for argument in args:
            channel = argument.get("channel") if argument.__class__ is dict else None
            native = argument.get("instId") if argument.__class__ is dict else None
            if channel not in (BOOK_CHANNEL, TRADE_CHANNEL) or native not in self.venue.specs:
                replies.append(self._error("60018", f"Wrong URL or channel:{channel}, instId:{native} doesn't exist"))
                continue
            replies.append(
                orjson.dumps(
                    {"event": operation, "arg": {"channel": channel, "instId": native}, "connId": self.connection_id}
                ).decode()
            )
            if operation == "unsubscribe":
                self.subscriptions.discard((channel, native))
                continue
            self.subscriptions.add((channel, native))
            if channel == BOOK_CHANNEL:
                self.venue.window(native)  # updates start now
                if self.venue.stream_snapshots:
                    replies.append(self.venue.snapshot_frame(native))
        return replies

    def frames(self, encoded_step: EncodedStep) -> list[str]:
        frames = []
        for key in self.subscriptions:
            frames.extend(encoded_step.get(key, ()))
        return frames


# The recording (OKX.ws.1.0, May 2022) has the snapshot in the stream and checksums: the
# stream-seeded connector reads it, with no options.
RECORDED_CONNECTOR = OkxStreamSeededConnector
RECORDED_OPTIONS: dict[str, Any] = {}

CONNECTOR = OkxConnector
SIMULATED_VENUE = OkxSimulatedVenue
