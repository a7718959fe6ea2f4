"""KuCoin spot: the protocol in both directions, as data and small functions.

Connector side (sans-IO, driven as described in :mod:`actors.connectors.base`), per
docs/exchanges.md "11. KuCoin spot":

- instruments from ``GET /api/v1/symbols`` (``BTC-USDT`` → ``BTC/USDT`` from
  ``baseCurrency``/``quoteCurrency``; KuCoin's own ``name`` may differ from its symbol,
  e.g. ``BCHSV-USDT`` is named ``BSV-USDT`` but trades as base ``BSV``);
- every (re)connect starts with ``POST /api/v1/bullet-public`` (``spec.pre_connect``):
  :meth:`KucoinConnector.resolve_connection` turns its body into
  ``endpoint?token=..&connectId=..`` and the keepalive interval (``pingInterval``); the
  client sends ``{"id":..,"type":"ping"}`` that often (:meth:`outgoing_messages`);
- the server greets with ``{"type":"welcome"}``; only then are ``/market/level2:{syms}``
  and ``/market/match:{syms}`` subscribed (``on_message`` returns ``SEND`` and
  :meth:`outgoing_messages` has them); the level2 ``ack`` makes the books buffer
  and ask for snapshots. ``await_welcome=False`` subscribes on open instead (what the
  recorded client did, and what a simulator without a greeting needs);
- snapshots: ``GET /api/v3/market/orderbook/level2`` (full depth) as recorded, or the
  public ``/api/v1/market/orderbook/level2_100``. The live default is ``level2_100``:
  v3 needs an API key and the runtime signs nothing. Levels beyond the 100 are unknown
  until they change, so ``depth_limit`` defaults to 100 with it (the book is trimmed to
  the window the snapshot covers, as the general rules ask);
- sync with ``L`` = snapshot ``sequence``: a delta with ``sequenceEnd <= L`` is dropped;
  the first applied one must have ``sequenceStart <= L + 1 <= sequenceEnd``; then
  ``sequenceStart == previous sequenceEnd + 1``, anything else is a gap (CLEAR + resync).

Per-change sequences (third element of each change). They order the changes of one
delta and are not a continuity check. The rule "apply only changes with sequence > L" of
the delta that straddles ``L`` needs no filter here: sizes are absolute, so re-applying
a change the snapshot already holds, in sequence order, leaves every price at its
latest value, which for a change ``<= L`` is the snapshot's own value. A change with
price ``"0"`` carries no level and only advances the sequence; it is skipped.

``trade.ticker`` (``/market/ticker``) is an optional cross-check: its ``sequence`` is
the book's at that moment and its best bid/ask (price and size) must equal the book's.

Simulator side: :class:`KucoinSimulatedVenue` serves symbols, both snapshot endpoints,
``bullet-public`` (the simulator's HTTP server routes only GET today, see its
docstring), the welcome greeting, subscribe/ack/ping and ``trade.l2update``,
``trade.l3match`` and ``trade.ticker`` messages.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import msgspec
import orjson

from actors.connectors.base import (
    ConnectionAction,
    ConnectionSpec,
    ExchangeSettings,
    HttpRequest,
    Instrument,
    KeepAlive,
    Level,
    OutgoingMessage,
    RecordSink,
    RestSeededConnector,
    SymbolFeed,
    SyncRule,
    SyncState,
    apply_live_sequenced_delta,
    apply_sequenced_frame,
    canonical_symbol,
    change_sequence,
    follows_contiguously,
    parse_levels,
)
from actors.connectors.wire import DecodeError, Integer, Size, decoder
from shm.records import Reason, Side
from sim.market import FixedPoint, Market, MarketStep
from sim.venue import HttpReply, SimulatedVenue, VenueSession

NAME = "kucoin"
REST_BASE_URL = "https://api.kucoin.com"
WS_ENDPOINT = "wss://ws-api-spot.kucoin.com/"  # replaced by the bullet-public answer
SYMBOLS_PATH = "/api/v1/symbols"
BULLET_PUBLIC_PATH = "/api/v1/bullet-public"
FULL_SNAPSHOT_PATH = "/api/v3/market/orderbook/level2"  # needs an API key live
PARTIAL_SNAPSHOT_PATH = "/api/v1/market/orderbook/level2_100"  # public
PARTIAL_SNAPSHOT_DEPTH = 100
DEFAULT_PING_INTERVAL_S = 18.0  # KuCoin's usual pingInterval, until a bullet-public answer names one
LEVEL2_TOPIC = "/market/level2"
MATCH_TOPIC = "/market/match"
TICKER_TOPIC = "/market/ticker"
SYMBOLS_PER_TOPIC = 100  # KuCoin: a topic carries at most 100 symbols
TOPIC_ID_STRIDE = (
    100_000  # subscribe ids: connection + 1 (level2), + this per further topic
)
OK_CODE = "200000"
MAX_TIME_MS = (2**63 - 1) // 1_000_000
"""The latest l2update ``time`` whose nanoseconds a record's int64 ``exchange_ts`` holds (year 2262); a
frame past it (or before MIN_TIME_MS) is malformed: the ring write, and a re-send of the book, could not
stamp it."""
MIN_TIME_MS = -MAX_TIME_MS

KUCOIN_SYNC = SyncRule(
    is_stale=lambda first_id, last_id, snapshot_id: last_id <= snapshot_id,
    bridges=lambda first_id, last_id, snapshot_id: (
        first_id <= snapshot_id + 1 <= last_id
    ),
    follows=follows_contiguously,
)

_CONTINUE = (
    ConnectionAction.CONTINUE
)  # a global: reading an enum member costs ~125 ns on 3.11
_SEND = ConnectionAction.SEND
_LIVE = SyncState.LIVE

L2Update = tuple[str, int, int, list[list[str]], list[list[str]], int]
"""(symbol, sequenceStart, sequenceEnd, bid changes, ask changes, time ns or 0)."""


# ---------------------------------------------------------------------------------------
# Wire format → values


def _data(body: str | bytes) -> Any:
    """The ``data`` of a REST answer; ValueError unless ``code`` is KuCoin's success code."""
    answer = orjson.loads(body)
    if answer.get("code") != OK_CODE:
        raise ValueError(f"KuCoin error {answer.get('code')!r}: {answer.get('msg')!r}")
    return answer["data"]


def parse_symbols(body: str | bytes) -> list[Instrument]:
    """Every tradable symbol of a ``GET /api/v1/symbols`` body."""
    instruments = []
    for symbol in _data(body):
        if not symbol.get("enableTrading"):
            continue
        instruments.append(
            Instrument(
                canonical=canonical_symbol(
                    symbol["baseCurrency"], symbol["quoteCurrency"]
                ),
                native=symbol["symbol"],
                base=symbol["baseCurrency"],
                quote=symbol["quoteCurrency"],
                tick_size=float(symbol["priceIncrement"]),
                lot_size=float(symbol["baseIncrement"]),
            )
        )
    return instruments


def parse_snapshot(body: str | bytes) -> tuple[int, list[Level], list[Level]]:
    """(sequence, bids, asks) of a v3 ``level2`` or v1 ``level2_100`` body."""
    data = _data(body)
    sequence = int(data["sequence"])
    if sequence < 0:
        raise ValueError(f"bad sequence {sequence}")
    return sequence, parse_levels(data["bids"]), parse_levels(data["asks"])


def parse_bullet(body: str | bytes) -> tuple[str, str, float, float]:
    """(endpoint, token, ping interval s, ping timeout s) of a ``bullet-public`` body."""
    data = _data(body)
    server = data["instanceServers"][0]
    token = data["token"]
    endpoint = server["endpoint"]
    if not (
        isinstance(token, str) and token and isinstance(endpoint, str) and endpoint
    ):
        raise ValueError("bullet-public without token or endpoint")
    return endpoint, token, server["pingInterval"] / 1000, server["pingTimeout"] / 1000


def parse_l2update(data: dict[str, Any]) -> L2Update:
    """A ``trade.l2update`` data object; raises KeyError/TypeError/ValueError on a bad one.
    The changes are checked where they are applied."""
    first_id = data["sequenceStart"]
    last_id = data["sequenceEnd"]
    changes = data["changes"]
    bids = changes["bids"]
    asks = changes["asks"]
    if not (
        first_id.__class__ is int
        and last_id.__class__ is int
        and bids.__class__ is list
        and asks.__class__ is list
    ):
        raise TypeError("bad l2update field types")
    if not 0 < first_id <= last_id:
        raise ValueError(f"bad sequence range {first_id}..{last_id}")
    event_ms = data.get(
        "time", 0
    )  # the 2021 generation (as recorded) has no time field
    if event_ms.__class__ is not int:
        raise TypeError("bad l2update time")
    if not MIN_TIME_MS <= event_ms <= MAX_TIME_MS:
        raise ValueError(f"l2update time {event_ms} out of range")
    return data["symbol"], first_id, last_id, bids, asks, event_ms * 1_000_000


def parse_match(data: dict[str, Any]) -> tuple[str, float, float, Side, int, int]:
    """(symbol, price, size, aggressor, trade id, time ns) of a ``trade.l3match``.

    ``tradeId`` is a 24-hex-digit string that does not fit the record's 64-bit id, so the
    match's ``sequence`` (an integer, unique per symbol) stands in for it.
    """
    ((price, size),) = parse_levels(((data["price"], data["size"]),))
    if not size:
        raise ValueError("zero trade size")
    side = data["side"]  # the taker's side
    if side not in ("buy", "sell"):
        raise ValueError(f"bad side {side!r}")
    return (
        data["symbol"],
        price,
        size,
        Side.BID if side == "buy" else Side.ASK,
        int(data["sequence"]),
        int(data["time"]),
    )


def parse_ticker(data: dict[str, Any]) -> tuple[int, Level, Level]:
    bid, ask = parse_levels(
        ((data["bestBid"], data["bestBidSize"]), (data["bestAsk"], data["bestAskSize"]))
    )
    return int(data["sequence"]), bid, ask


def parse_changes(raw: Sequence[Sequence[str]]) -> list[Level]:
    """``[price, size, sequence]`` changes as levels in sequence order; price "0" ones
    (sequence only) are left out. Used while buffering; live frames take apply_sequenced_frame."""
    if len(raw) > 1:
        raw = sorted(raw, key=change_sequence)
    return parse_levels((price, size) for price, size, _sequence in raw if price != "0")


TypedChange = tuple[str, Size, str]
"""``[price, size, sequence]``: the size a validated float (:mod:`actors.connectors.wire`); the
price and the sequence stay texts, read as the generic path reads them (``"0"`` is a price only
there, and ``int(text)`` is what reads a sequence)."""


class TypedChanges(msgspec.Struct, gc=False):
    asks: list[TypedChange]
    bids: list[TypedChange]


class TypedL2Update(msgspec.Struct, gc=False):
    """An l2update's data as the typed decoder reads it. Its ids must be JSON integers (a decimal
    string is refused, as the generic path refuses it: an ``Integer`` keeps the JSON kind for
    the check below); its changes are :data:`TypedChange`."""

    sequenceStart: Integer
    sequenceEnd: Integer
    symbol: str
    changes: TypedChanges
    time: Integer = 0  # the 2021 generation (as recorded) has none


class TypedL2UpdateMessage(msgspec.Struct, gc=False):
    type: Literal["message"]
    subject: Literal["trade.l2update"]
    data: TypedL2Update


decode_l2update = decoder(TypedL2UpdateMessage).decode
L2UPDATE_HINT = '"trade.l2update"'  # frames holding this take the typed decoder first


def subscribe_message(request_id: str, topic: str, natives: Sequence[str]) -> str:
    return orjson.dumps(
        {
            "id": request_id,
            "type": "subscribe",
            "topic": f"{topic}:{','.join(natives)}",
            "privateChannel": False,
            "response": True,
        }
    ).decode()


# ---------------------------------------------------------------------------------------
# Connector


class KucoinConnector(RestSeededConnector):
    """KuCoin spot books and trades, optionally cross-checked against ``trade.ticker``."""

    name = NAME
    sync_rule = KUCOIN_SYNC
    streams_per_connection = (
        2 * SYMBOLS_PER_TOPIC
    )  # so that one topic message covers a connection
    snapshot_requests_per_minute = (
        120  # public REST: well inside KuCoin's per-IP budget
    )
    apply_levels = staticmethod(apply_sequenced_frame)
    parse_delta_levels = staticmethod(parse_changes)

    def __init__(
        self,
        sink: RecordSink,
        exchange_id: int,
        symbol_ids: Mapping[str, int],
        *,
        rest_base_url: str = REST_BASE_URL,
        full_depth_snapshots: bool = False,
        ticker_cross_check: bool = False,
        await_welcome: bool = True,
        stale_after_s: float = 60.0,
        depth_limit: int | None = None,
    ) -> None:
        """``full_depth_snapshots``: fetch v3 full-depth snapshots (needs an authenticated
        runtime live; the recording used them) instead of the public top 100, which
        also trims the book to 100 levels unless ``depth_limit`` says otherwise.
        ``ticker_cross_check``: subscribe ``/market/ticker`` and resync a book whose best
        levels disagree with it. ``await_welcome``: subscribe only after the greeting."""
        if depth_limit is None and not full_depth_snapshots:
            depth_limit = PARTIAL_SNAPSHOT_DEPTH
        super().__init__(
            sink,
            exchange_id,
            symbol_ids,
            stale_after_s=stale_after_s,
            depth_limit=depth_limit,
            subscribe_by_message=True,
        )
        self.rest_base_url = rest_base_url.rstrip("/")
        self.full_depth_snapshots = full_depth_snapshots
        self.ticker_cross_check = ticker_cross_check
        self.await_welcome = await_welcome
        self._outgoing: list[OutgoingMessage] = []
        self._awaiting_welcome: set[int] = set()
        self._connect_ids = itertools.count(1)
        self._ping_ids = itertools.count(1)
        self._ping_interval_s: dict[int, float] = {}  # per connection, from its bullet-public answer
        self.keepalive = KeepAlive(lambda connection: f'{{"id":"{next(self._ping_ids)}","type":"ping"}}')

    @classmethod
    def from_settings(
        cls, sink: RecordSink, exchange_id: int, symbol_ids: Mapping[str, int], settings: ExchangeSettings
    ) -> "KucoinConnector":
        """The WebSocket URL comes from each bullet-public answer, and the public snapshot
        endpoint fixes the depth at 100 levels: only the REST URL and staleness apply."""
        rest = {"rest_base_url": settings.rest_url} if settings.rest_url else {}
        connector = cls(sink, exchange_id, symbol_ids, stale_after_s=settings.stale_after_s, **rest)
        connector.limit_connections(settings.max_streams_per_connection)
        return connector

    # ---- data hooks ------------------------------------------------------------------

    @property
    def instruments_url(self) -> str:
        return f"{self.rest_base_url}{SYMBOLS_PATH}"

    def parse_instruments(self, body: str | bytes) -> list[Instrument]:
        return parse_symbols(body)

    def streams_for(self, instrument: Instrument) -> list[str]:
        streams = [
            f"{LEVEL2_TOPIC}:{instrument.native}",
            f"{MATCH_TOPIC}:{instrument.native}",
        ]
        if self.ticker_cross_check:
            streams.append(f"{TICKER_TOPIC}:{instrument.native}")
        return streams

    def connection_url(self, streams: Sequence[str]) -> str:
        return WS_ENDPOINT

    def connection_plan(self) -> list[ConnectionSpec]:
        bullet = HttpRequest("POST", f"{self.rest_base_url}{BULLET_PUBLIC_PATH}")
        return [
            ConnectionSpec(
                url=WS_ENDPOINT,
                symbols=tuple(feed.instrument.canonical for feed in feeds),
                ping_interval_s=None,
                stale_after_s=self.stale_after_s,
                pre_connect=bullet,
            )
            for feeds in self.connections
        ]

    def resolve_connection(
        self, connection: int, body: str | bytes, now_ns: int
    ) -> ConnectionSpec:
        """The connection's URL with a fresh token (valid 24 h; a new one every connect)."""
        try:
            endpoint, token, ping_interval_s, _ping_timeout_s = parse_bullet(body)
        except (
            KeyError,
            IndexError,
            TypeError,
            ValueError,
            orjson.JSONDecodeError,
        ) as error:
            raise ValueError(f"unusable bullet-public answer: {error}") from None
        spec = self.connection_plan()[connection]
        separator = "&" if "?" in endpoint else "?"
        url = f"{endpoint}{separator}token={token}&connectId=coby-{connection}-{next(self._connect_ids)}"
        self._ping_interval_s[connection] = ping_interval_s
        return ConnectionSpec(url=url, symbols=spec.symbols, ping_interval_s=None, stale_after_s=self.stale_after_s)

    def outgoing_messages(self, now_ns: int) -> list[OutgoingMessage]:
        """Subscriptions held back until the welcome, and the ``ping`` every ``pingInterval``."""
        messages, self._outgoing = self._outgoing, []
        return messages + self.keepalive.due(now_ns)

    def subscribe_messages(self, connection: int, streams: Sequence[str]) -> list[str]:
        """One message per topic (a connection carries at most 100 symbols); the level2
        one has id ``connection + 1`` so that its ack names the connection."""
        by_topic: dict[str, list[str]] = {}
        for stream in streams:
            topic, _, native = stream.partition(":")
            by_topic.setdefault(topic, []).append(native)
        return [
            subscribe_message(
                str(connection + 1 + TOPIC_ID_STRIDE * index), topic, natives
            )
            for index, (topic, natives) in enumerate(by_topic.items())
        ]

    def snapshot_url(self, instrument: Instrument) -> str:
        path = (
            FULL_SNAPSHOT_PATH if self.full_depth_snapshots else PARTIAL_SNAPSHOT_PATH
        )
        return f"{self.rest_base_url}{path}?symbol={instrument.native}"

    def parse_snapshot(self, body: str | bytes) -> tuple[int, list[Level], list[Level]]:
        return parse_snapshot(body)

    # ---- connection life -------------------------------------------------------------

    def on_open(self, connection: int, now_ns: int) -> list[str]:
        self._outgoing = [message for message in self._outgoing if message.connection != connection]
        self.keepalive.start(connection, self._ping_interval_s.get(connection, DEFAULT_PING_INTERVAL_S))
        messages = super().on_open(connection, now_ns)
        if not self.await_welcome:
            return messages
        self._awaiting_welcome.add(connection)
        return []

    def on_close(self, connection: int, now_ns: int, reason: Reason = Reason.DISCONNECTED) -> None:
        self.keepalive.stop(connection)
        self._awaiting_welcome.discard(connection)
        super().on_close(connection, now_ns, reason)

    def _on_welcome(self, connection: int) -> ConnectionAction:
        if connection not in self._awaiting_welcome:
            self.connection_counters[connection].ignored_frames += 1
            return _CONTINUE
        self._awaiting_welcome.discard(connection)
        self._outgoing += [
            OutgoingMessage(connection, message)
            for message in self.subscribe_messages(connection, self.connection_streams(connection))
        ]
        return _SEND

    # ---- frames ----------------------------------------------------------------------

    def on_message(
        self, connection: int, data: str | bytes, receive_ts: int
    ) -> ConnectionAction:
        """Route one frame; bad frames are counted and dropped, never raised."""
        if self._resend_queue:
            self.flush(receive_ts)
        connection_counters = self.connection_counters[connection]
        connection_counters.frames += 1
        if data.__class__ is str and L2UPDATE_HINT in data:
            try:
                update = decode_l2update(data).data
            except DecodeError:
                pass  # the generic path below reads it, or says what is wrong with it
            else:
                feed = self.feeds.get(update.symbol)
                first_id = update.sequenceStart
                last_id = update.sequenceEnd
                event_ms = update.time
                if (
                    feed is not None
                    and first_id.__class__ is int
                    and last_id.__class__ is int
                    and event_ms.__class__ is int
                    and 0 < first_id <= last_id
                    and MIN_TIME_MS <= event_ms <= MAX_TIME_MS
                ):
                    changes = update.changes
                    exchange_ts = event_ms * 1_000_000 or receive_ts
                    if feed.state is _LIVE and feed.bridged and first_id == feed.last_id + 1:
                        apply_live_sequenced_delta(self, feed, last_id, changes.bids, changes.asks, exchange_ts, receive_ts)
                    else:
                        self.on_delta(feed, first_id, last_id, 0, changes.bids, changes.asks, exchange_ts, receive_ts)
                    return _CONTINUE
        try:
            message = orjson.loads(data)
            kind = message.get("type")
        except (orjson.JSONDecodeError, AttributeError):
            connection_counters.malformed_frames += 1
            self.frame_rejected = True
            return _CONTINUE
        if kind == "message":
            subject = message.get("subject")
            payload = message.get("data")
            if payload.__class__ is not dict:
                connection_counters.malformed_frames += 1
                self.frame_rejected = True
            elif subject == "trade.l2update":
                feed = self.feeds.get(payload.get("symbol"))
                if feed is None:
                    connection_counters.unknown_symbol_frames += 1
                    self.frame_rejected = True
                    return _CONTINUE
                # parse_l2update's checks written out (a call and a tuple less a frame); a frame
                # that fails any of them takes parse_l2update, the authority on what is valid.
                first_id = payload.get("sequenceStart")
                last_id = payload.get("sequenceEnd")
                changes = payload.get("changes")
                event_ms = payload.get("time", 0)  # the 2021 generation (as recorded) has none
                if changes.__class__ is dict:
                    bids = changes.get("bids")
                    asks = changes.get("asks")
                    if (
                        first_id.__class__ is int
                        and last_id.__class__ is int
                        and bids.__class__ is list
                        and asks.__class__ is list
                        and event_ms.__class__ is int
                        and 0 < first_id <= last_id
                        and MIN_TIME_MS <= event_ms <= MAX_TIME_MS
                    ):
                        exchange_ts = event_ms * 1_000_000 or receive_ts
                        self.on_delta(feed, first_id, last_id, 0, bids, asks, exchange_ts, receive_ts)
                        return _CONTINUE
                self._on_l2update(feed, payload, receive_ts)
            elif subject == "trade.l3match":
                self._on_match(payload, receive_ts, connection)
            elif subject == "trade.ticker":
                self._on_ticker(message.get("topic"), payload, receive_ts, connection)
            else:
                connection_counters.ignored_frames += 1
            return _CONTINUE
        if kind == "ack":
            return self._on_ack(str(message.get("id")), connection, receive_ts)
        if kind == "welcome":
            return self._on_welcome(connection) if self.await_welcome else _CONTINUE
        if kind == "error":
            # The subscription state of the connection is unknown: start it over.
            connection_counters.subscribe_errors += 1
            connection_counters.last_error = (
                f"{message.get('code')}: {message.get('data')}"
            )
            return ConnectionAction.RECONNECT
        connection_counters.ignored_frames += 1  # pong, notice
        return _CONTINUE

    def _on_l2update(self, feed: SymbolFeed, data: dict[str, Any], receive_ts: int) -> None:
        try:
            _symbol, first_id, last_id, bids, asks, exchange_ts = parse_l2update(data)
        except (KeyError, TypeError, ValueError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            return
        self.on_delta(
            feed,
            first_id,
            last_id,
            0,
            bids,
            asks,
            exchange_ts or receive_ts,
            receive_ts,
        )

    def _on_match(self, data: dict[str, Any], receive_ts: int, connection: int) -> None:
        feed = self.feeds.get(data.get("symbol"))
        if feed is None:
            self.connection_counters[connection].unknown_symbol_frames += 1
            self.frame_rejected = True
            return
        try:
            _symbol, price, size, aggressor, trade_id, trade_ts = parse_match(data)
        except (KeyError, TypeError, ValueError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            return
        feed.counters.trades += 1
        if not feed.records.trade(
            price, size, aggressor, trade_id, trade_ts, receive_ts
        ):
            self._after_write()

    def _on_ticker(
        self, topic: object, data: dict[str, Any], receive_ts: int, connection: int
    ) -> None:
        native = topic.rpartition(":")[2] if isinstance(topic, str) else None
        feed = self.feeds.get(native)
        if feed is None:
            self.connection_counters[connection].unknown_symbol_frames += 1
            self.frame_rejected = True
            return
        try:
            sequence, best_bid, best_ask = parse_ticker(data)
        except (KeyError, TypeError, ValueError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            return
        self.expect_top(feed, sequence, best_bid, best_ask, receive_ts)

    def _on_ack(
        self, request_id: str, connection: int, receive_ts: int
    ) -> ConnectionAction:
        self.connection_counters[connection].subscribe_acks += 1
        if request_id == str(connection + 1):
            feeds = [
                feed
                for feed in self.connections[connection]
                if feed.state == SyncState.SUBSCRIBING
            ]
            self.subscription_live(feeds, receive_ts)
        return _CONTINUE


# ---------------------------------------------------------------------------------------
# Simulator side

DECIMAL_PLACES = 8
SIM_PING_INTERVAL_MS = 18_000


class KucoinSimulatedVenue(SimulatedVenue):
    """The simulator's market as KuCoin spot serves it.

    ``endpoint`` is the WebSocket URL that ``bullet-public`` hands out; the server tells
    the venue once it has bound its port (:meth:`bound`).
    """

    def __init__(self, market: Market, venue: str = NAME) -> None:
        super().__init__(market, venue)
        self.endpoint = ""
        self.symbols = {
            f"{spec.base}-{spec.quote}": spec
            for spec in market.symbols.values()
            if not spec.perpetual
        }
        self.natives = {spec.canonical: native for native, spec in self.symbols.items()}
        self.prices = {
            native: FixedPoint(spec.tick_size, DECIMAL_PLACES)
            for native, spec in self.symbols.items()
        }
        self.sizes = {
            native: FixedPoint(spec.lot_size, DECIMAL_PLACES)
            for native, spec in self.symbols.items()
        }
        self.tokens_issued = 0
        self._last_tops: dict[str, tuple[object, object]] = {}

    # ---- REST ------------------------------------------------------------------------

    def bound(self, ws_url: str, http_url: str) -> None:
        self.endpoint = f"{ws_url}/endpoint"

    def http(self, path: str, query: Mapping[str, str]) -> HttpReply:
        if path == SYMBOLS_PATH:
            return HttpReply(200, self.symbols_body())
        if path in (FULL_SNAPSHOT_PATH, PARTIAL_SNAPSHOT_PATH):
            native = query.get("symbol", "")
            if native not in self.symbols:
                return HttpReply(200, '{"code":"400100","msg":"symbol not exists"}')
            depth = PARTIAL_SNAPSHOT_DEPTH if path == PARTIAL_SNAPSHOT_PATH else 1 << 30
            return HttpReply(200, self.snapshot_body(native, depth))
        if (
            path == BULLET_PUBLIC_PATH
        ):  # a POST live; the simulator's HTTP server routes GET only
            self.tokens_issued += 1
            return HttpReply(200, self.bullet_body(f"sim-token-{self.tokens_issued}"))
        return HttpReply(404, '{"code":"404000","msg":"Not Found"}')

    def is_snapshot_request(self, path: str) -> bool:
        return path in (FULL_SNAPSHOT_PATH, PARTIAL_SNAPSHOT_PATH)

    def symbols_body(self) -> str:
        symbols = [
            {
                "symbol": native,
                "name": native,
                "baseCurrency": spec.base,
                "quoteCurrency": spec.quote,
                "baseIncrement": self.sizes[native].text(1),
                "priceIncrement": self.prices[native].text(1),
                "enableTrading": True,
            }
            for native, spec in self.symbols.items()
        ]
        return orjson.dumps({"code": OK_CODE, "data": symbols}).decode()

    def snapshot_body(self, native: str, depth: int) -> str:
        book = self.market.book(self.venue, self.symbols[native].canonical)
        bids, asks = book.top(depth)
        data = {
            "time": 0,
            "sequence": str(book.last_update_id),
            "bids": self._levels(native, bids),
            "asks": self._levels(native, asks),
        }
        return orjson.dumps({"code": OK_CODE, "data": data}).decode()

    def bullet_body(self, token: str) -> str:
        server = {
            "endpoint": self.endpoint,
            "encrypt": False,
            "protocol": "websocket",
            "pingInterval": SIM_PING_INTERVAL_MS,
            "pingTimeout": 10_000,
        }
        return orjson.dumps(
            {"code": OK_CODE, "data": {"token": token, "instanceServers": [server]}}
        ).decode()

    def _levels(
        self, native: str, levels: Sequence[tuple[int, int]]
    ) -> list[list[str]]:
        price = self.prices[native].text
        size = self.sizes[native].text
        return [[price(tick), size(lots)] for tick, lots in levels]

    # ---- WebSocket -------------------------------------------------------------------

    def open_session(self, path: str) -> VenueSession | HttpReply:
        parts = urlsplit(path)
        query = parse_qs(parts.query)
        if parts.path != "/endpoint" or not query.get("token"):
            return HttpReply(401, "token required")
        return KucoinSimSession(self, query.get("connectId", [""])[0])

    def encode_step(self, step: MarketStep) -> dict[str, list[bytes]]:
        """Topic → payloads of this step. Each change of a BookChange gets its own
        sequence inside the change's id range; tickers follow a moved top of book."""
        by_topic: dict[str, list[bytes]] = {}
        for change in step.book_changes:
            native = self.natives.get(change.symbol)
            if native is None:
                continue
            price = self.prices[native].text
            size = self.sizes[native].text
            sequence = itertools.count(change.first_update_id)
            bids = [
                [price(tick), size(lots), str(next(sequence))]
                for tick, lots in change.bids
            ]
            asks = [
                [price(tick), size(lots), str(next(sequence))]
                for tick, lots in change.asks
            ]
            data = {
                "changes": {"asks": asks, "bids": bids},
                "sequenceEnd": change.last_update_id,
                "sequenceStart": change.first_update_id,
                "symbol": native,
                "time": change.timestamp_ns // 1_000_000,
            }
            topic = f"{LEVEL2_TOPIC}:{native}"
            by_topic.setdefault(topic, []).append(
                _message(topic, "trade.l2update", data)
            )
            ticker = self._ticker(
                native, change.symbol, change.last_update_id, change.timestamp_ns
            )
            if ticker is not None:
                by_topic.setdefault(f"{TICKER_TOPIC}:{native}", []).append(ticker)
        for trade in step.trades:
            native = self.natives.get(trade.symbol)
            if native is None:
                continue
            data = {
                "symbol": native,
                "sequence": str(trade.trade_id),
                "side": "buy" if trade.aggressor == Side.BID else "sell",
                "size": self.sizes[native].text(trade.lots),
                "price": self.prices[native].text(trade.price_ticks),
                "time": str(trade.timestamp_ns),
                "type": "match",
                "tradeId": f"{trade.trade_id:024x}",
            }
            topic = f"{MATCH_TOPIC}:{native}"
            by_topic.setdefault(topic, []).append(
                _message(topic, "trade.l3match", data)
            )
        return by_topic

    def _ticker(
        self, native: str, symbol: str, sequence: int, timestamp_ns: int
    ) -> bytes | None:
        book = self.market.book(self.venue, symbol)
        top = (book.best_bid(), book.best_ask())
        if top == self._last_tops.get(native) or top[0] is None or top[1] is None:
            return None
        self._last_tops[native] = top
        (bid, bid_lots), (ask, ask_lots) = top
        price = self.prices[native].text
        size = self.sizes[native].text
        data = {
            "sequence": str(sequence),
            "bestBid": price(bid),
            "bestBidSize": size(bid_lots),
            "bestAsk": price(ask),
            "bestAskSize": size(ask_lots),
            "time": timestamp_ns // 1_000_000,
        }
        topic = f"{TICKER_TOPIC}:{native}"
        return _message(topic, "trade.ticker", data)


def _message(topic: str, subject: str, data: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"type": "message", "topic": topic, "subject": subject, "data": data}
    )


class KucoinSimSession(VenueSession):
    """One client connection: its subscribed ``topic:symbol`` pairs."""

    def __init__(self, venue: KucoinSimulatedVenue, connect_id: str) -> None:
        self.venue = venue
        self.connect_id = connect_id
        self.topics: list[str] = []

    def greeting(self) -> list[str]:
        """What KuCoin sends on connect; the simulator server does not send it yet."""
        return [orjson.dumps({"id": self.connect_id, "type": "welcome"}).decode()]

    def on_client_message(self, text: str) -> list[str]:
        try:
            request = orjson.loads(text)
            kind = request["type"]
            request_id = str(request["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return ['{"type":"error","code":400,"data":"bad request"}']
        if kind == "ping":
            return [orjson.dumps({"id": request_id, "type": "pong"}).decode()]
        if kind not in ("subscribe", "unsubscribe"):
            return [
                orjson.dumps(
                    {"id": request_id, "type": "error", "code": 400, "data": "bad type"}
                ).decode()
            ]
        topic, _, natives = str(request.get("topic", "")).partition(":")
        names = [f"{topic}:{native}" for native in natives.split(",")]
        known = topic in (LEVEL2_TOPIC, MATCH_TOPIC, TICKER_TOPIC) and all(
            native in self.venue.symbols for native in natives.split(",")
        )
        if not known:
            error = {
                "id": request_id,
                "type": "error",
                "code": 404,
                "data": f"topic {request.get('topic')} is not found",
            }
            return [orjson.dumps(error).decode()]
        if kind == "subscribe":
            self.topics.extend(name for name in names if name not in self.topics)
        else:
            self.topics = [name for name in self.topics if name not in names]
        return [orjson.dumps({"id": request_id, "type": "ack"}).decode()]

    def frames(self, encoded_step: dict[str, list[bytes]]) -> list[str]:
        return [
            payload.decode()
            for topic in self.topics
            for payload in encoded_step.get(topic, ())
        ]


CONNECTOR = KucoinConnector
SIMULATED_VENUE = KucoinSimulatedVenue
