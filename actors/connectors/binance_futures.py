"""Binance USD-M futures: the protocol in both directions, as data and small functions.

It is Binance spot's protocol (docs/exchanges.md, "2. Binance USD-M futures") with four
differences, and only those are written here; everything else is imported from
:mod:`actors.connectors.binance`:

- REST under ``/fapi/v1`` (``exchangeInfo``, ``depth`` with limits 5..1000 and their own
  weights). Only ``PERPETUAL`` contracts are listed, as ``BASE/QUOTE:PERP``; dated
  (quarterly) contracts are skipped: the canonical symbol scheme has no expiry form.
- Since the 2026 split, streams are routed by kind over two connections per group of
  symbols: ``/public/stream?streams=`` for ``@depth`` and ``@bookTicker``, ``/market/...``
  for ``@aggTrade``. Connection ``i < book_connection_count`` carries books; connection
  ``book_connection_count + i`` carries the trades of the same symbols, so opening or
  losing it never touches a book.
- The sync rule uses ``pu``: drop a delta with ``u < lastUpdateId``; the first applied one
  must have ``U <= lastUpdateId <= u`` (no +1, unlike spot); then every delta must have
  ``pu == previous u`` (ids are not contiguous).
- ``bookTicker`` events carry ``"e":"bookTicker"``.

The recorded traffic (2021) uses the unrouted ``fstream.binance.com/stream`` with every
stream on one connection; frames parse the same, only the URLs differ.

Simulator side: :class:`BinanceFuturesSimulatedVenue` serves the simulator's perpetuals
in this wire format and, like the live venue, delivers a stream only on its own route.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import orjson

from actors.connectors.base import (
    ConnectionAction,
    ConnectionCounters,
    ConnectionSpec,
    Instrument,
    Level,
    RecordSink,
    SyncRule,
    canonical_symbol,
)
from actors.connectors.binance import (
    DEPTH_STREAM,
    BinanceSimSession,
    BinanceSpotConnector,
    DepthUpdate,
    TypedDepthUpdate,
    combined_stream_url,
    parse_depth_snapshot,
    parse_depth_update,
)
from actors.connectors.wire import Integer, decoder
from shm.records import Reason, Side
from sim.market import FixedPoint, Market, MarketStep
from sim.venue import HttpReply, SimulatedVenue, VenueSession

NAME = "binance_futures"
REST_BASE_URL = "https://fapi.binance.com"
WS_BASE_URL = "wss://fstream.binance.com"
EXCHANGE_INFO_PATH = "/fapi/v1/exchangeInfo"
DEPTH_PATH = "/fapi/v1/depth"
SNAPSHOT_LIMIT = 1000
SNAPSHOT_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
REQUEST_WEIGHT_PER_MINUTE = 2400  # per IP, shared with everything else we ask of the REST API
PUBLIC_ROUTE = "public"  # @depth*, @bookTicker
MARKET_ROUTE = "market"  # aggTrade, markPrice, kline, ticker, ...
PERPETUAL = "PERPETUAL"

BINANCE_FUTURES_SYNC = SyncRule(
    is_stale=lambda first_id, last_id, snapshot_id: last_id < snapshot_id,
    bridges=lambda first_id, last_id, snapshot_id: first_id <= snapshot_id <= last_id,
    follows=lambda first_id, previous_id, prior_last_id: previous_id == prior_last_id,
)

_CONTINUE = ConnectionAction.CONTINUE  # a global: reading an enum member costs ~125 ns on 3.11



# ---------------------------------------------------------------------------------------
# Wire format → values


def parse_futures_exchange_info(body: str | bytes) -> list[Instrument]:
    """Every TRADING perpetual of a ``/fapi/v1/exchangeInfo`` body, as ``BASE/QUOTE:PERP``."""
    instruments = []
    for symbol in orjson.loads(body)["symbols"]:
        if symbol.get("status") != "TRADING" or symbol.get("contractType") != PERPETUAL:
            continue
        filters = {entry["filterType"]: entry for entry in symbol.get("filters", ())}
        instruments.append(
            Instrument(
                canonical=canonical_symbol(symbol["baseAsset"], symbol["quoteAsset"], perpetual=True),
                native=symbol["symbol"],
                base=symbol["baseAsset"],
                quote=symbol["quoteAsset"],
                tick_size=float(filters["PRICE_FILTER"]["tickSize"]),
                lot_size=float(filters["LOT_SIZE"]["stepSize"]),
                perpetual=True,
            )
        )
    return instruments


def parse_futures_depth_update(event: dict[str, Any]) -> DepthUpdate:
    """Spot's depthUpdate fields with ``pu`` as the previous id; raises
    KeyError/TypeError/ValueError on a malformed event."""
    symbol, first_id, last_id, _, bids, asks, exchange_ts = parse_depth_update(event)
    previous_id = event["pu"]
    if previous_id.__class__ is not int:
        raise TypeError("depthUpdate pu must be an integer")
    return symbol, first_id, last_id, previous_id, bids, asks, exchange_ts


class TypedFuturesDepthUpdate(TypedDepthUpdate):
    """Spot's typed depthUpdate with ``pu``, the previous event's ``u``, required."""

    pu: Integer


class TypedFuturesDepthStream(msgspec.Struct):
    data: TypedFuturesDepthUpdate


def route_of(stream: str) -> str:
    """The 2026 route a stream is served on."""
    _symbol, _, channel = stream.partition("@")
    return PUBLIC_ROUTE if channel.startswith("depth") or channel == "bookTicker" else MARKET_ROUTE


def book_stream_names(native: str, book_ticker: bool = False) -> list[str]:
    symbol = native.lower()
    streams = [f"{symbol}@{DEPTH_STREAM}"]
    if book_ticker:
        streams.append(f"{symbol}@bookTicker")
    return streams


def trade_stream_names(native: str) -> list[str]:
    return [f"{native.lower()}@aggTrade"]


def snapshot_url(rest_base_url: str, native: str, limit: int = SNAPSHOT_LIMIT) -> str:
    return f"{rest_base_url}{DEPTH_PATH}?symbol={native}&limit={limit}"


def depth_weight(limit: int) -> int:
    """Request weight of ``GET /fapi/v1/depth`` at ``limit``."""
    if limit <= 50:
        return 2
    if limit <= 100:
        return 5
    if limit <= 500:
        return 10
    return 20


# ---------------------------------------------------------------------------------------
# Connector


class BinanceFuturesConnector(BinanceSpotConnector):
    """Binance USD-M perpetual books, trades and (optionally) the bookTicker cross-check.

    A subclass of the spot connector because the protocol is spot's: frame routing,
    trades, bookTicker, subscribe acks, errors and ``serverShutdown`` are inherited; only
    the depth parse (with ``pu``), the sync rule, URLs and routes differ.
    """

    name = NAME
    sync_rule = BINANCE_FUTURES_SYNC
    parse_depth = staticmethod(parse_futures_depth_update)
    decode_depth_stream = staticmethod(decoder(TypedFuturesDepthStream).decode)
    streams_per_connection = 200  # docs say 1024 or 200 depending on the page: design for 200
    ping_interval_s = None  # the server pings every 3 min; answering (websockets does) is enough

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
        """Options as :class:`BinanceSpotConnector`; ``snapshot_limit`` must be one of
        ``SNAPSHOT_LIMITS`` (the REST endpoint refuses anything else)."""
        if snapshot_limit not in SNAPSHOT_LIMITS:
            raise ValueError(f"snapshot_limit must be one of {SNAPSHOT_LIMITS}, got {snapshot_limit}")
        super().__init__(
            sink,
            exchange_id,
            symbol_ids,
            rest_base_url=rest_base_url,
            ws_base_url=ws_base_url,
            snapshot_limit=snapshot_limit,
            book_ticker_cross_check=book_ticker_cross_check,
            subscribe_by_message=subscribe_by_message,
            stale_after_s=stale_after_s,
            depth_limit=depth_limit,
        )
        # Half the IP's weight budget for snapshots, the rest for everything else.
        self.snapshot_requests_per_minute = max(1, REQUEST_WEIGHT_PER_MINUTE // 2 // depth_weight(snapshot_limit))
        self.book_connection_count = 0
        self.previous_id_field = "pu"

    @property
    def instruments_url(self) -> str:
        return f"{self.rest_base_url}{EXCHANGE_INFO_PATH}"

    def parse_instruments(self, body: str | bytes) -> list[Instrument]:
        return parse_futures_exchange_info(body)

    def snapshot_url(self, instrument: Instrument) -> str:
        return snapshot_url(self.rest_base_url, instrument.native, self.snapshot_limit)

    def parse_snapshot(self, body: str | bytes) -> tuple[int, list[Level], list[Level]]:
        return parse_depth_snapshot(body)

    # ---- two routes: book connections, then their trade twins ----------------------------

    def use_instruments(self, instruments: Sequence[Instrument]) -> list[Instrument]:
        chosen = super().use_instruments(instruments)
        self.book_connection_count = len(self.connections)
        self.connections += [list(feeds) for feeds in self.connections]
        self.connection_counters = [ConnectionCounters() for _ in self.connections]
        return chosen

    def is_trade_connection(self, connection: int) -> bool:
        return connection >= self.book_connection_count

    def streams_for(self, instrument: Instrument) -> list[str]:
        return book_stream_names(instrument.native, self.book_ticker_cross_check)

    def connection_streams(self, connection: int) -> list[str]:
        if self.is_trade_connection(connection):
            return [
                stream for feed in self.connections[connection] for stream in trade_stream_names(feed.instrument.native)
            ]
        return super().connection_streams(connection)

    def connection_url(self, streams: Sequence[str]) -> str:
        """Combined-stream URL on the route of ``streams`` (all of one kind)."""
        return combined_stream_url(f"{self.ws_base_url}/{route_of(streams[0])}", streams)

    def connection_plan(self) -> list[ConnectionSpec]:
        plan = []
        for index, feeds in enumerate(self.connections):
            streams = self.connection_streams(index)
            if self.subscribe_by_message:
                url = f"{self.ws_base_url}/{route_of(streams[0])}/ws"
            else:
                url = self.connection_url(streams)
            plan.append(
                ConnectionSpec(
                    url=url,
                    symbols=tuple(feed.instrument.canonical for feed in feeds),
                    ping_interval_s=self.ping_interval_s,
                    stale_after_s=self.stale_after_s,
                )
            )
        return plan

    def on_open(self, connection: int, now_ns: int) -> list[str]:
        if not self.is_trade_connection(connection):
            return super().on_open(connection, now_ns)
        if self.subscribe_by_message:
            return self.subscribe_messages(connection, self.connection_streams(connection))
        return []

    def on_close(self, connection: int, now_ns: int, reason: Reason = Reason.DISCONNECTED) -> None:
        if self.is_trade_connection(connection):
            return  # only trades were lost; the books ride on the other route
        super().on_close(connection, now_ns, reason)

    def _on_subscribed(self, connection: int, receive_ts: int) -> None:
        if self.is_trade_connection(connection):
            self.connection_counters[connection].subscribe_acks += 1
            return
        super()._on_subscribed(connection, receive_ts)

    # ---- frames ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# Simulator side


def _decimal_places(step: str) -> int:
    _, _, fraction = step.partition(".")
    return len(fraction)


class BinanceFuturesSimulatedVenue(SimulatedVenue):
    """The simulator's perpetuals as Binance USD-M futures serves them."""

    def __init__(self, market: Market, venue: str = NAME) -> None:
        super().__init__(market, venue)
        self.symbols = {spec.base + spec.quote: spec for spec in market.symbols.values() if spec.perpetual}
        self.natives = {spec.canonical: native for native, spec in self.symbols.items()}
        # Futures write prices and quantities with the contract's own precision ("7.6110", "6").
        self.prices = {
            native: FixedPoint(spec.tick_size, _decimal_places(spec.tick_size)) for native, spec in self.symbols.items()
        }
        self.sizes = {
            native: FixedPoint(spec.lot_size, _decimal_places(spec.lot_size)) for native, spec in self.symbols.items()
        }
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
                limit = int(query.get("limit", "500"))
            except ValueError:
                limit = 0
            if limit not in SNAPSHOT_LIMITS:
                return HttpReply(400, '{"code":-1100,"msg":"Illegal characters found in parameter \'limit\'."}')
            return HttpReply(200, self.depth_snapshot_body(native, limit))
        return HttpReply(404, '{"code":-1,"msg":"Not found."}')

    def is_snapshot_request(self, path: str) -> bool:
        return path == DEPTH_PATH

    def exchange_info_body(self) -> str:
        symbols = [
            {
                "symbol": native,
                "pair": native,
                "contractType": PERPETUAL,
                "deliveryDate": 4133404800000,
                "status": "TRADING",
                "baseAsset": spec.base,
                "quoteAsset": spec.quote,
                "marginAsset": spec.quote,
                "pricePrecision": self.prices[native].places,
                "quantityPrecision": self.sizes[native].places,
                "filters": [
                    {
                        "minPrice": self.prices[native].text(1),
                        "maxPrice": "1000000",
                        "filterType": "PRICE_FILTER",
                        "tickSize": self.prices[native].text(1),
                    },
                    {
                        "stepSize": self.sizes[native].text(1),
                        "filterType": "LOT_SIZE",
                        "maxQty": "1000000",
                        "minQty": self.sizes[native].text(1),
                    },
                ],
            }
            for native, spec in self.symbols.items()
        ]
        return orjson.dumps(
            {
                "timezone": "UTC",
                "serverTime": time.time_ns() // 1_000_000,
                "futuresType": "U_MARGINED",
                "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400}
                ],
                "exchangeFilters": [],
                "symbols": symbols,
            }
        ).decode()

    def depth_snapshot_body(self, native: str, limit: int) -> str:
        book = self.market.book(self.venue, self.symbols[native].canonical)
        bids, asks = book.top(limit)
        now_ms = time.time_ns() // 1_000_000
        # Binance takes a snapshot between the engine updates one 100 ms event aggregates,
        # so its id falls inside the next event's range (the rule's U <= lastUpdateId <= u).
        # Simulated books only change between events: the snapshot names the next id.
        return orjson.dumps(
            {
                "lastUpdateId": book.last_update_id + 1,
                "E": now_ms,
                "T": now_ms,
                "bids": self._levels(native, bids),
                "asks": self._levels(native, asks),
            }
        ).decode()

    def _levels(self, native: str, levels: Sequence[tuple[int, int]]) -> list[list[str]]:
        price = self.prices[native].text
        size = self.sizes[native].text
        return [[price(tick), size(lots)] for tick, lots in levels]

    # ---- WebSocket -------------------------------------------------------------------

    def open_session(self, path: str) -> VenueSession | HttpReply:
        """``/public|market/stream?streams=``, ``/public|market/ws[/<stream>]``; the
        unrouted ``/stream`` and ``/ws`` serve the public route, as live."""
        parts = urlsplit(path)
        route, _, rest = parts.path.lstrip("/").partition("/")
        if route not in (PUBLIC_ROUTE, MARKET_ROUTE):
            route, rest = PUBLIC_ROUTE, parts.path.lstrip("/")
        if rest == "stream":
            names = parse_qs(parts.query).get("streams", [""])[0]
            streams = [name for name in names.split("/") if name]
            combined = True
        elif rest == "ws" or rest.startswith("ws/"):
            streams = [rest[len("ws/") :]] if rest.startswith("ws/") else []
            combined = False
        else:
            return HttpReply(404, "Not found")
        unknown = [stream for stream in streams if not self.is_stream(stream)]
        if unknown:
            return HttpReply(400, f"Invalid request: unknown stream {unknown[0]}")
        return BinanceFuturesSimSession(self, route, combined, streams)

    def is_stream(self, stream: str) -> bool:
        symbol, _, channel = stream.partition("@")
        return symbol.upper() in self.symbols and channel in ("depth", "depth@100ms", "aggTrade", "bookTicker")

    def encode_step(self, step: MarketStep) -> dict[str, list[bytes]]:
        """Stream name → raw event payloads of this step, encoded once for every session."""
        by_stream: dict[str, list[bytes]] = {}
        for change in step.book_changes:
            native = self.natives.get(change.symbol)
            if native is None:
                continue
            symbol = native.lower()
            event_ms = change.timestamp_ns // 1_000_000
            event = orjson.dumps(
                {
                    "e": "depthUpdate",
                    "E": event_ms,
                    "T": event_ms,
                    "s": native,
                    "U": change.first_update_id,
                    "u": change.last_update_id,
                    "pu": change.previous_update_id,
                    "b": self._levels(native, change.bids),
                    "a": self._levels(native, change.asks),
                }
            )
            by_stream.setdefault(f"{symbol}@depth@100ms", []).append(event)
            by_stream.setdefault(f"{symbol}@depth", []).append(event)
            ticker = self._book_ticker(native, change.symbol, change.last_update_id, event_ms)
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
                    "a": trade.trade_id,
                    "s": native,
                    "p": self.prices[native].text(trade.price_ticks),
                    "q": self.sizes[native].text(trade.lots),
                    "f": trade.trade_id,
                    "l": trade.trade_id,
                    "T": trade_ms,
                    "m": trade.aggressor == Side.ASK,
                }
            )
            by_stream.setdefault(f"{native.lower()}@aggTrade", []).append(event)
        return by_stream

    def _book_ticker(self, native: str, symbol: str, update_id: int, event_ms: int) -> bytes | None:
        book = self.market.book(self.venue, symbol)
        top = (book.best_bid(), book.best_ask())
        if top == self._last_tops.get(native) or top[0] is None or top[1] is None:
            return None
        self._last_tops[native] = top
        (bid, bid_lots), (ask, ask_lots) = top
        price = self.prices[native].text
        size = self.sizes[native].text
        return orjson.dumps(
            {
                "e": "bookTicker",
                "u": update_id,
                "s": native,
                "b": price(bid),
                "B": size(bid_lots),
                "a": price(ask),
                "A": size(ask_lots),
                "T": event_ms,
                "E": event_ms,
            }
        )


class BinanceFuturesSimSession(BinanceSimSession):
    """A spot session on one route: a stream subscribed on the other route is accepted
    but never delivered, as on the live venue since the 2026 split."""

    def __init__(self, venue: BinanceFuturesSimulatedVenue, route: str, combined: bool, streams: Sequence[str]) -> None:
        super().__init__(venue, combined, streams)
        self.route = route

    def frames(self, encoded_step: dict[str, list[bytes]]) -> list[str]:
        routed = {stream: payloads for stream, payloads in encoded_step.items() if route_of(stream) == self.route}
        return super().frames(routed)


CONNECTOR = BinanceFuturesConnector
SIMULATED_VENUE = BinanceFuturesSimulatedVenue
