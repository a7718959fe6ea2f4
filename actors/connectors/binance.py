"""Binance spot: the protocol in both directions, as data and small functions.

Connector side (sans-IO, driven as described in :mod:`actors.connectors.base`):
instruments from ``GET /api/v3/exchangeInfo``, combined streams
``/stream?streams=<sym>@depth@100ms/<sym>@aggTrade[/<sym>@bookTicker]`` (or ``/ws`` plus a
live ``SUBSCRIBE``), books seeded from ``GET /api/v3/depth`` and kept with the official
sync rule (docs/exchanges.md, "1. Binance spot"):

- drop a delta with ``u <= lastUpdateId``;
- the first applied delta must straddle it: ``U <= lastUpdateId + 1 <= u``;
- then every delta must have ``U == previous u + 1``, anything else is a gap;
- a snapshot older than the first buffered delta (it cannot be bridged) is fetched again.

``bookTicker`` is only a cross-check: when its ``u`` equals the book's last applied ``u``
its best bid and ask must equal the book's, otherwise the book is resynced.

Simulator side: :class:`BinanceSpotSimulatedVenue` encodes the simulator's market in
Binance's exact wire format (exchangeInfo, depth snapshots with ``lastUpdateId``,
``depthUpdate`` with ``U``/``u``, ``aggTrade``, ``bookTicker``, combined-stream wrapping)
and answers ``SUBSCRIBE`` on ``/ws`` and ``/stream``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, urlsplit

import msgspec
import orjson

from actors.connectors.base import (
    ConnectionAction,
    Instrument,
    Level,
    RecordSink,
    RestSeededConnector,
    SyncRule,
    SyncState,
    canonical_symbol,
    follows_contiguously,
    parse_levels,
)
from actors.connectors.wire import DecodeError, Integer, PriceLevels, decoder
from shm.records import Side
from sim.market import FixedPoint, Market, MarketStep
from sim.venue import HttpReply, SimulatedVenue, VenueSession

NAME = "binance"
REST_BASE_URL = "https://api.binance.com"
WS_BASE_URL = "wss://stream.binance.com:9443"
EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"
DEPTH_PATH = "/api/v3/depth"
SNAPSHOT_LIMIT = 1000
MAX_SNAPSHOT_LIMIT = 5000
REQUEST_WEIGHT_PER_MINUTE = 6000  # per IP, shared with everything else we ask of the REST API
DEPTH_STREAM = "depth@100ms"
DECIMAL_PLACES = 8  # Binance writes every price and quantity with 8 decimals

BINANCE_SPOT_SYNC = SyncRule(
    is_stale=lambda first_id, last_id, snapshot_id: last_id <= snapshot_id,
    bridges=lambda first_id, last_id, snapshot_id: first_id <= snapshot_id + 1 <= last_id,
    follows=follows_contiguously,
)

_CONTINUE = ConnectionAction.CONTINUE  # a global: reading an enum member costs ~125 ns on 3.11

DepthUpdate = tuple[str, int, int, int, list[list[str]], list[list[str]], int]
"""(native symbol, U, u, previous u, bids, asks, event time ns) of one depthUpdate; the
previous u is futures' ``pu`` (0 on spot, which has none); levels are still the wire's
``[price, quantity]`` texts (the connector parses them as it applies them)."""

AggTrade = tuple[str, float, float, Side, int, int]
"""(native symbol, price, quantity, aggressor side, aggregate trade id, trade time ns)."""

BookTicker = tuple[str, int, Level, Level]
"""(native symbol, u, (best bid, qty), (best ask, qty))."""


# ---------------------------------------------------------------------------------------
# Wire format → values


class TypedDepthUpdate(msgspec.Struct):
    """A depthUpdate as the typed decoder reads it (:mod:`actors.connectors.wire`); spot has
    no previous id (``pu`` 0), USD-M futures' subclass requires it."""

    e: Literal["depthUpdate"]
    E: Integer
    s: str
    U: Integer
    u: Integer
    b: PriceLevels
    a: PriceLevels
    pu: ClassVar[int] = 0


class TypedDepthStream(msgspec.Struct):
    """A combined-stream frame carrying a depthUpdate: ``{"stream": .., "data": {..}}``."""

    data: TypedDepthUpdate


DEPTH_HINT = '"depthUpdate"'  # frames holding this take the typed decoder first


def parse_exchange_info(body: str | bytes) -> list[Instrument]:
    """Every TRADING symbol of an exchangeInfo body, with tick (PRICE_FILTER) and lot (LOT_SIZE)."""
    instruments = []
    for symbol in orjson.loads(body)["symbols"]:
        if symbol.get("status") != "TRADING":
            continue
        filters = {entry["filterType"]: entry for entry in symbol.get("filters", ())}
        instruments.append(
            Instrument(
                canonical=canonical_symbol(symbol["baseAsset"], symbol["quoteAsset"]),
                native=symbol["symbol"],
                base=symbol["baseAsset"],
                quote=symbol["quoteAsset"],
                tick_size=float(filters["PRICE_FILTER"]["tickSize"]),
                lot_size=float(filters["LOT_SIZE"]["stepSize"]),
            )
        )
    return instruments


def parse_depth_snapshot(body: str | bytes) -> tuple[int, list[Level], list[Level]]:
    """(lastUpdateId, bids, asks) of a ``GET /api/v3/depth`` body."""
    snapshot = orjson.loads(body)
    last_update_id = snapshot["lastUpdateId"]
    if last_update_id.__class__ is not int or last_update_id < 0:
        raise ValueError(f"bad lastUpdateId {last_update_id!r}")
    return last_update_id, parse_levels(snapshot["bids"]), parse_levels(snapshot["asks"])


def parse_depth_update(event: dict[str, Any]) -> DepthUpdate:
    """A depthUpdate event's ids, time and level lists; raises KeyError/TypeError/ValueError
    on a malformed one. The levels themselves are validated where they are applied."""
    first_id = event["U"]
    last_id = event["u"]
    event_ms = event["E"]
    bids = event["b"]
    asks = event["a"]
    if not (
        first_id.__class__ is int
        and last_id.__class__ is int
        and event_ms.__class__ is int
        and bids.__class__ is list
        and asks.__class__ is list
    ):
        raise TypeError("bad depthUpdate field types")
    if not 0 < first_id <= last_id:
        raise ValueError(f"bad update id range {first_id}..{last_id}")
    return event["s"], first_id, last_id, 0, bids, asks, event_ms * 1_000_000  # spot has no previous id


def parse_agg_trade(event: dict[str, Any]) -> AggTrade:
    """An aggTrade event. ``m`` (buyer is maker) means the seller was the aggressor."""
    ((price, quantity),) = parse_levels(((event["p"], event["q"]),))
    if not quantity:
        raise ValueError("zero trade quantity")
    trade_id = event["a"]
    trade_ms = event["T"]
    if not (trade_id.__class__ is int and trade_ms.__class__ is int and event["m"].__class__ is bool):
        raise TypeError("bad aggTrade field types")
    aggressor = Side.ASK if event["m"] else Side.BID
    return event["s"], price, quantity, aggressor, trade_id, trade_ms * 1_000_000


def parse_book_ticker(event: dict[str, Any]) -> BookTicker:
    update_id = event["u"]
    if update_id.__class__ is not int:
        raise TypeError("bookTicker u must be an integer")
    bid, ask = parse_levels(((event["b"], event["B"]), (event["a"], event["A"])))
    return event["s"], update_id, bid, ask


def stream_names(native: str, book_ticker: bool = False) -> list[str]:
    symbol = native.lower()
    streams = [f"{symbol}@{DEPTH_STREAM}", f"{symbol}@aggTrade"]
    if book_ticker:
        streams.append(f"{symbol}@bookTicker")
    return streams


def combined_stream_url(ws_base_url: str, streams: Sequence[str]) -> str:
    return f"{ws_base_url}/stream?streams={'/'.join(streams)}"


def subscribe_message(streams: Sequence[str], request_id: int) -> str:
    return orjson.dumps({"method": "SUBSCRIBE", "params": list(streams), "id": request_id}).decode()


def snapshot_url(rest_base_url: str, native: str, limit: int = SNAPSHOT_LIMIT) -> str:
    return f"{rest_base_url}{DEPTH_PATH}?symbol={native}&limit={limit}"


def depth_weight(limit: int) -> int:
    """Request weight of ``GET /api/v3/depth`` at ``limit``."""
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


# ---------------------------------------------------------------------------------------
# Connector


class BinanceSpotConnector(RestSeededConnector):
    """Binance spot books, trades and (optionally) the bookTicker cross-check."""

    name = NAME
    sync_rule = BINANCE_SPOT_SYNC
    streams_per_connection = 200  # Binance allows 1024 a connection; 200 keeps the stream URLs short
    ping_interval_s = None  # the server pings every 20 s; answering (websockets does) is enough
    parse_depth = staticmethod(parse_depth_update)  # USD-M futures swaps in its pu-aware parse
    decode_depth_stream = staticmethod(decoder(TypedDepthStream).decode)  # and its pu-aware typed decoder

    def __init__(
        self,
        sink: RecordSink,
        exchange_id: int,
        symbol_ids: Mapping[str, int],
        *,
        rest_base_url: str = REST_BASE_URL,
        ws_base_url: str = WS_BASE_URL,
        snapshot_limit: int = SNAPSHOT_LIMIT,
        book_ticker_cross_check: bool = False,
        subscribe_by_message: bool = False,
        stale_after_s: float = 60.0,
        depth_limit: int | None = None,
    ) -> None:
        """``book_ticker_cross_check``: also subscribe ``<sym>@bookTicker`` (busy on liquid
        symbols) and resync a book whose best levels disagree with it.
        ``subscribe_by_message``: connect to ``/ws`` and send SUBSCRIBE instead of naming
        the streams in a ``/stream?streams=`` URL. ``stale_after_s`` must allow for quiet
        symbols: Binance sends a depth event only when the book changes.
        ``depth_limit``: keep at most this many levels per side, which bounds memory and
        the size of a re-sent snapshot; levels beyond the REST snapshot's depth are partial
        anyway until they change."""
        super().__init__(
            sink,
            exchange_id,
            symbol_ids,
            stale_after_s=stale_after_s,
            depth_limit=depth_limit,
            subscribe_by_message=subscribe_by_message,
        )
        if not 0 < snapshot_limit <= MAX_SNAPSHOT_LIMIT:
            raise ValueError(f"snapshot_limit must be 1..{MAX_SNAPSHOT_LIMIT}, got {snapshot_limit}")
        self.rest_base_url = rest_base_url.rstrip("/")
        self.ws_base_url = ws_base_url.rstrip("/")
        self.snapshot_limit = snapshot_limit
        # Half the IP's weight budget for snapshots, the rest for everything else.
        self.snapshot_requests_per_minute = max(1, REQUEST_WEIGHT_PER_MINUTE // 2 // depth_weight(snapshot_limit))
        self.book_ticker_cross_check = book_ticker_cross_check
        self.previous_id_field: str | None = None  # the depthUpdate field parse_depth reads the previous id from

    @property
    def instruments_url(self) -> str:
        return f"{self.rest_base_url}{EXCHANGE_INFO_PATH}"

    def parse_instruments(self, body: str | bytes) -> list[Instrument]:
        return parse_exchange_info(body)

    def streams_for(self, instrument: Instrument) -> list[str]:
        return stream_names(instrument.native, self.book_ticker_cross_check)

    def connection_url(self, streams: Sequence[str]) -> str:
        return combined_stream_url(self.ws_base_url, streams) if streams else f"{self.ws_base_url}/ws"

    def subscribe_messages(self, connection: int, streams: Sequence[str]) -> list[str]:
        # One message per connection (Binance allows 5 incoming messages a second);
        # its id names the connection so the ack can be routed back.
        return [subscribe_message(streams, connection + 1)]

    def snapshot_url(self, instrument: Instrument) -> str:
        return snapshot_url(self.rest_base_url, instrument.native, self.snapshot_limit)

    def parse_snapshot(self, body: str | bytes) -> tuple[int, list[Level], list[Level]]:
        return parse_depth_snapshot(body)

    def on_message(self, connection: int, data: str | bytes, receive_ts: int) -> ConnectionAction:
        """Route one frame; bad frames are counted and dropped, never raised."""
        if self._resend_queue:
            self.flush(receive_ts)
        connection_counters = self.connection_counters[connection]
        connection_counters.frames += 1
        if data.__class__ is str and DEPTH_HINT in data:
            try:
                update = self.decode_depth_stream(data).data
            except DecodeError:
                pass  # the generic path below reads it, or says what is wrong with it
            else:
                feed = self.feeds.get(update.s)
                first_id = update.U
                last_id = update.u
                previous_id = update.pu
                event_ms = update.E
                if (
                    feed is not None
                    and first_id.__class__ is int
                    and last_id.__class__ is int
                    and previous_id.__class__ is int
                    and event_ms.__class__ is int
                    and 0 < first_id <= last_id
                ):
                    self.on_parsed_delta(feed, first_id, last_id, previous_id, update.b, update.a, event_ms * 1_000_000, receive_ts)
                    return _CONTINUE
        try:
            event = orjson.loads(data)
            wrapped = event.get("data")  # combined stream: {"stream":..,"data":{..}}
            if wrapped is not None:
                event = wrapped
            kind = event.get("e")
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            connection_counters.malformed_frames += 1
            self.frame_rejected = True
            return _CONTINUE
        if kind == "depthUpdate":
            feed = self.feeds.get(event.get("s"))
            if feed is None:
                connection_counters.unknown_symbol_frames += 1
                self.frame_rejected = True
                return _CONTINUE
            # parse_depth's checks written out (a call and a tuple less a frame); a frame that
            # fails any of them takes parse_depth, which stays the authority on what is valid.
            try:
                first_id = event["U"]
                last_id = event["u"]
                event_ms = event["E"]
                bids = event["b"]
                asks = event["a"]
                previous_field = self.previous_id_field
                previous_id = 0 if previous_field is None else event[previous_field]
            except KeyError:
                previous_id = None  # fails the first check below, before any unset field is read
            if (
                previous_id.__class__ is int
                and first_id.__class__ is int
                and last_id.__class__ is int
                and event_ms.__class__ is int
                and bids.__class__ is list
                and asks.__class__ is list
                and 0 < first_id <= last_id
            ):
                self.on_delta(feed, first_id, last_id, previous_id, bids, asks, event_ms * 1_000_000, receive_ts)
                return _CONTINUE
            try:
                _symbol, first_id, last_id, previous_id, bids, asks, exchange_ts = self.parse_depth(event)
            except (KeyError, TypeError, ValueError):
                feed.counters.parse_errors += 1
                self.frame_rejected = True
                return _CONTINUE
            self.on_delta(feed, first_id, last_id, previous_id, bids, asks, exchange_ts, receive_ts)
            return _CONTINUE
        if kind == "aggTrade":
            self._on_trade(event, receive_ts, connection)
            return _CONTINUE
        if kind == "bookTicker" or (kind is None and "u" in event and "A" in event):  # futures name it, spot not
            self._on_book_ticker(event, receive_ts, connection)
            return _CONTINUE
        if kind == "serverShutdown":
            # Binance closes the connection soon after: reconnect now rather than wait.
            connection_counters.server_shutdowns += 1
            return ConnectionAction.RECONNECT
        if kind is None and ("code" in event or "error" in event):
            return self._on_error(event, connection)
        if kind is None and "result" in event and event.get("id") == connection + 1:
            self._on_subscribed(connection, receive_ts)
            return _CONTINUE
        connection_counters.ignored_frames += 1
        return _CONTINUE

    def _on_trade(self, event: dict[str, Any], receive_ts: int, connection: int) -> None:
        feed = self.feeds.get(event.get("s"))
        if feed is None:
            self.connection_counters[connection].unknown_symbol_frames += 1
            self.frame_rejected = True
            return
        try:
            _symbol, price, quantity, aggressor, trade_id, trade_ts = parse_agg_trade(event)
        except (KeyError, TypeError, ValueError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            return
        feed.counters.trades += 1
        if not feed.records.trade(price, quantity, aggressor, trade_id, trade_ts, receive_ts):
            self._after_write()

    def _on_book_ticker(self, event: dict[str, Any], receive_ts: int, connection: int) -> None:
        feed = self.feeds.get(event.get("s"))
        if feed is None:
            self.connection_counters[connection].unknown_symbol_frames += 1
            self.frame_rejected = True
            return
        try:
            _symbol, update_id, best_bid, best_ask = parse_book_ticker(event)
        except (KeyError, TypeError, ValueError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            return
        self.expect_top(feed, update_id, best_bid, best_ask, receive_ts)

    def _on_subscribed(self, connection: int, receive_ts: int) -> None:
        self.connection_counters[connection].subscribe_acks += 1
        feeds = [feed for feed in self.connections[connection] if feed.state == SyncState.SUBSCRIBING]
        self.subscription_live(feeds, receive_ts)

    def _on_error(self, event: dict[str, Any], connection: int) -> ConnectionAction:
        """``{"code":2,"msg":..}`` or ``{"error":{"code":..,"msg":..},"id":..}``: the
        subscription state of the connection is unknown, so start it over."""
        counters = self.connection_counters[connection]
        counters.subscribe_errors += 1
        error = event.get("error", event)
        counters.last_error = f"{error.get('code')}: {error.get('msg')}" if isinstance(error, dict) else str(error)
        return ConnectionAction.RECONNECT


# ---------------------------------------------------------------------------------------
# Simulator side


class BinanceSpotSimulatedVenue(SimulatedVenue):
    """The simulator's market as Binance spot serves it."""

    def __init__(self, market: Market, venue: str = NAME) -> None:
        super().__init__(market, venue)
        self.symbols = {
            spec.base + spec.quote: spec for spec in market.symbols.values() if not spec.perpetual
        }  # native → spec
        self.natives = {spec.canonical: native for native, spec in self.symbols.items()}
        self.prices = {native: FixedPoint(spec.tick_size, DECIMAL_PLACES) for native, spec in self.symbols.items()}
        self.sizes = {native: FixedPoint(spec.lot_size, DECIMAL_PLACES) for native, spec in self.symbols.items()}
        self._last_tops: dict[str, tuple[object, object]] = {}

    # ---- REST ------------------------------------------------------------------------

    def http(self, path: str, query: Mapping[str, str]) -> HttpReply:
        if path == EXCHANGE_INFO_PATH:
            return HttpReply(200, self.exchange_info_body())
        if path == DEPTH_PATH:
            native = query.get("symbol", "")
            if native not in self.symbols:
                return HttpReply(400, '{"code":-1121,"msg":"Invalid symbol."}')
            try:
                limit = int(query.get("limit", "100"))
            except ValueError:
                limit = 0
            if not 0 < limit <= MAX_SNAPSHOT_LIMIT:
                return HttpReply(400, '{"code":-1100,"msg":"Illegal characters found in parameter \'limit\'."}')
            return HttpReply(200, self.depth_snapshot_body(native, limit))
        return HttpReply(404, '{"code":-1,"msg":"Not found."}')

    def is_snapshot_request(self, path: str) -> bool:
        return path == DEPTH_PATH

    def exchange_info_body(self) -> str:
        symbols = [
            {
                "symbol": native,
                "status": "TRADING",
                "baseAsset": spec.base,
                "baseAssetPrecision": DECIMAL_PLACES,
                "quoteAsset": spec.quote,
                "quotePrecision": DECIMAL_PLACES,
                "quoteAssetPrecision": DECIMAL_PLACES,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
                "isSpotTradingAllowed": True,
                "filters": [
                    {
                        "filterType": "PRICE_FILTER",
                        "minPrice": self.prices[native].text(1),
                        "maxPrice": "1000000.00000000",
                        "tickSize": self.prices[native].text(1),
                    },
                    {
                        "filterType": "LOT_SIZE",
                        "minQty": self.sizes[native].text(1),
                        "maxQty": "9000000.00000000",
                        "stepSize": self.sizes[native].text(1),
                    },
                ],
                "permissions": ["SPOT"],
            }
            for native, spec in self.symbols.items()
        ]
        return orjson.dumps(
            {
                "timezone": "UTC",
                "serverTime": time.time_ns() // 1_000_000,
                "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}
                ],
                "exchangeFilters": [],
                "symbols": symbols,
            }
        ).decode()

    def depth_snapshot_body(self, native: str, limit: int) -> str:
        book = self.market.book(self.venue, self.symbols[native].canonical)
        bids, asks = book.top(limit)
        return orjson.dumps(
            {
                "lastUpdateId": book.last_update_id,
                "bids": self._levels(native, bids),
                "asks": self._levels(native, asks),
            }
        ).decode()

    def _levels(self, native: str, levels: Sequence[tuple[int, int]]) -> list[list[str]]:
        price = self.prices[native].text
        size = self.sizes[native].text
        return [[price(tick), size(lots)] for tick, lots in levels]

    # ---- faults ----------------------------------------------------------------------

    def subscription_refusal(self, text: str) -> list[str] | None:
        """Binance's answer to a SUBSCRIBE it will not take (``/ws`` subscriptions; combined
        streams name theirs in the URL, refused with the upgrade)."""
        try:
            request = orjson.loads(text)
            if request.get("method") != "SUBSCRIBE":
                return None
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return [orjson.dumps({"code": 2, "msg": "Invalid request: too many subscriptions", "id": request.get("id")}).decode()]

    def maintenance_frames(self, starting: bool) -> list[str]:
        """``serverShutdown``: Binance is about to close the connection (maintenance, a redeploy)."""
        return [orjson.dumps({"e": "serverShutdown", "E": time.time_ns() // 1_000_000}).decode()] if starting else []

    # ---- WebSocket -------------------------------------------------------------------

    def open_session(self, path: str) -> VenueSession | HttpReply:
        parts = urlsplit(path)
        if parts.path == "/stream":
            names = parse_qs(parts.query).get("streams", [""])[0]
            streams = [name for name in names.split("/") if name]
            combined = True
        elif parts.path == "/ws" or parts.path.startswith("/ws/"):
            streams = [parts.path[len("/ws/") :]] if parts.path.startswith("/ws/") else []
            combined = False
        else:
            return HttpReply(404, "Not found")
        unknown = [stream for stream in streams if not self.is_stream(stream)]
        if unknown:
            return HttpReply(400, f"Invalid request: unknown stream {unknown[0]}")
        return BinanceSimSession(self, combined, streams)

    def is_stream(self, stream: str) -> bool:
        symbol, _, channel = stream.partition("@")
        return symbol.upper() in self.symbols and channel in ("depth", "depth@100ms", "aggTrade", "bookTicker")

    def encode_step(self, step: MarketStep) -> dict[str, list[bytes]]:
        """Stream name → raw event payloads of this step, encoded once for every session.

        ``<sym>@depth`` and ``<sym>@depth@100ms`` carry the same events at the simulator's
        cadence; a ``bookTicker`` follows every depth event that moved the top of book.
        """
        by_stream: dict[str, list[bytes]] = {}
        for change in step.book_changes:
            native = self.natives.get(change.symbol)
            if native is None:
                continue
            symbol = native.lower()
            event = orjson.dumps(
                {
                    "e": "depthUpdate",
                    "E": change.timestamp_ns // 1_000_000,
                    "s": native,
                    "U": change.first_update_id,
                    "u": change.last_update_id,
                    "b": self._levels(native, change.bids),
                    "a": self._levels(native, change.asks),
                }
            )
            by_stream.setdefault(f"{symbol}@depth@100ms", []).append(event)
            by_stream.setdefault(f"{symbol}@depth", []).append(event)
            ticker = self._book_ticker(native, change.symbol, change.last_update_id)
            if ticker is not None:
                by_stream.setdefault(f"{symbol}@bookTicker", []).append(ticker)
        for trade in step.trades:
            native = self.natives.get(trade.symbol)
            if native is None:
                continue
            trade_ms = trade.timestamp_ns // 1_000_000
            event = orjson.dumps(
                {
                    "e": "aggTrade",
                    "E": trade_ms,
                    "s": native,
                    "a": trade.trade_id,
                    "p": self.prices[native].text(trade.price_ticks),
                    "q": self.sizes[native].text(trade.lots),
                    "f": trade.trade_id,
                    "l": trade.trade_id,
                    "T": trade_ms,
                    "m": trade.aggressor == Side.ASK,
                    "M": True,
                }
            )
            by_stream.setdefault(f"{native.lower()}@aggTrade", []).append(event)
        return by_stream

    def _book_ticker(self, native: str, symbol: str, update_id: int) -> bytes | None:
        book = self.market.book(self.venue, symbol)
        top = (book.best_bid(), book.best_ask())
        if top == self._last_tops.get(native) or top[0] is None or top[1] is None:
            return None
        self._last_tops[native] = top
        (bid, bid_lots), (ask, ask_lots) = top
        price = self.prices[native].text
        size = self.sizes[native].text
        return orjson.dumps(
            {"u": update_id, "s": native, "b": price(bid), "B": size(bid_lots), "a": price(ask), "A": size(ask_lots)}
        )


class BinanceSimSession(VenueSession):
    """One client connection: combined (``/stream``, wrapped) or raw (``/ws``) payloads."""

    def __init__(self, venue: BinanceSpotSimulatedVenue, combined: bool, streams: Sequence[str]) -> None:
        self.venue = venue
        self.combined = combined
        self.streams: list[str] = list(dict.fromkeys(streams))

    def on_client_message(self, text: str) -> list[str]:
        try:
            request = orjson.loads(text)
            method = request["method"]
            request_id = request.get("id")
            params = request.get("params", [])
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return ['{"code":3,"msg":"Invalid JSON: expected a request object"}']
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            is_stream = self.venue.is_stream
            if not (isinstance(params, list) and all(isinstance(name, str) and is_stream(name) for name in params)):
                return [orjson.dumps({"code": 2, "msg": "Invalid request: unknown stream", "id": request_id}).decode()]
            if method == "SUBSCRIBE":
                self.streams.extend(name for name in params if name not in self.streams)
            else:
                self.streams = [name for name in self.streams if name not in params]
            return [orjson.dumps({"result": None, "id": request_id}).decode()]
        if method == "LIST_SUBSCRIPTIONS":
            return [orjson.dumps({"result": self.streams, "id": request_id}).decode()]
        error = {"code": 2, "msg": f"Invalid request: unknown method {method}", "id": request_id}
        return [orjson.dumps(error).decode()]

    def frames(self, encoded_step: dict[str, list[bytes]]) -> list[str]:
        frames = []
        for stream in self.streams:
            for payload in encoded_step.get(stream, ()):
                if self.combined:
                    frames.append(f'{{"stream":"{stream}","data":{payload.decode()}}}')
                else:
                    frames.append(payload.decode())
        return frames


CONNECTOR = BinanceSpotConnector
SIMULATED_VENUE = BinanceSpotSimulatedVenue
