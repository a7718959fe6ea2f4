"""Coinbase: Exchange ws-feed (live default), the recorded Pro generation and Advanced Trade.

Connector side (sans-IO, on :class:`~actors.connectors.stream_seeded.StreamSeededConnector`):
instruments from ``GET /products`` (``BTC-USD`` → ``BTC/USD``, ``quote_increment`` is the
tick, ``base_increment`` the lot), one connection per 50 products (docs/exchanges.md §3, §4):

- ``api="exchange"``: ``wss://ws-feed.exchange.coinbase.com``, channels ``level2_batch``
  (public; ``level2`` needs auth since 2023-08), ``matches`` and ``heartbeat``;
- ``api="pro"``: the recorded 2021 generation, ``level2`` + ``matches`` (+ ``ticker``), same
  schema as ``level2_batch``: ``snapshot`` then ``l2update`` changes ``[side, price, size]``;
- ``api="advanced"``: Advanced Trade ``level2`` (channel ``l2_data``, ``bid``/``offer``)
  + ``heartbeats``; ``sequence_num`` counts every message of the connection, and a jump
  resyncs every live book of that connection (trades are not subscribed there).

When ``api`` is not given the URL decides: a host containing ``advanced-trade`` is
Advanced Trade, ``ws-feed.pro`` is Pro, anything else the Exchange feed.

Exchange and Pro book messages carry no sequence: the in-stream snapshot is the only
baseline, and a crossed book, an unreadable update or (``ticker_cross_check``) a ticker
whose best bid/ask disagrees with the book re-subscribes the product. The ticker check is
for unbatched ``level2`` only: ``level2_batch`` lags the real-time ticker by up to 50 ms.
The book is the whole book (Coinbase has no depth parameter), trimmed to ``depth_limit``.

Simulator side: :class:`CoinbaseSimulatedVenue` serves ``/products`` and, on one
WebSocket, the Exchange feed (``level2_batch``, ``matches``, ``heartbeat``) or Advanced
Trade (``level2``, ``heartbeats``), whichever the client's subscribe message speaks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
import orjson

from actors.connectors.base import (
    MAX_EXCHANGE_TS,
    ASK_SIDE,
    BID_SIDE,
    MAX_PRICE,
    MAX_SIZE,
    ConnectionAction,
    ExchangeSettings,
    Instrument,
    RecordSink,
    SyncState,
    apply_level,
    canonical_symbol,
    micros_stamp_ns,
    parse_levels,
    rfc3339_ns,
)
from actors.connectors.stream_seeded import StreamFeed, StreamSeededConnector
from actors.connectors.wire import DecodeError, Price, Size, decoder
from shm.records import Reason, Side
from sim.market import FixedPoint, Market, MarketStep
from sim.venue import HttpReply, SimulatedVenue, VenueSession, decimal_places, rfc3339_micros

NAME = "coinbase"
REST_BASE_URL = "https://api.exchange.coinbase.com"
PRODUCTS_PATH = "/products"
EXCHANGE = "exchange"
PRO = "pro"
ADVANCED = "advanced"
WS_URLS = {
    EXCHANGE: "wss://ws-feed.exchange.coinbase.com",
    PRO: "wss://ws-feed.pro.coinbase.com",
    ADVANCED: "wss://advanced-trade-ws.coinbase.com",
}
BOOK_CHANNELS = {EXCHANGE: "level2_batch", PRO: "level2", ADVANCED: "level2"}
WHOLE_BOOK = 1 << 30  # levels per side when no depth_limit is set: Coinbase sends the whole book
SIZE_DECIMALS = 8
LEVEL2_AUTH_ERROR = "level2, level3, and full channels now require authentication."

_CONTINUE = ConnectionAction.CONTINUE


class TypedL2Update(msgspec.Struct, gc=False):
    """An Exchange/Pro l2update as the typed decoder reads it (:mod:`actors.connectors.wire`)."""

    type: Literal["l2update"]
    product_id: str
    changes: list[tuple[Literal["buy", "sell"], Price, Size]]
    time: str = ""


decode_l2update = decoder(TypedL2Update).decode
L2UPDATE_HINT = '{"type":"l2update"'  # frames starting so take the typed decoder first


def _parse_change(change: Sequence[object]) -> tuple[str, float, float]:
    """The generic path's reading of one ``[side, price, size]`` change; ValueError/TypeError/
    IndexError on a bad one."""
    side = change[0]
    price_text = change[1]
    size_text = change[2]
    price = float(price_text)
    size = float(size_text)
    if not (0.0 < price <= MAX_PRICE and 0.0 <= size <= MAX_SIZE):
        raise ValueError(f"invalid level {price_text!r} {size_text!r}")
    if side != "buy" and side != "sell":
        raise ValueError(f"unknown side {side!r}")
    return side, price, size
_LIVE = SyncState.LIVE
_MAKER_SIDE_TO_AGGRESSOR = {"buy": Side.ASK, "sell": Side.BID}  # a match's "side" is the maker's
_AT_SIDES = {"bid": 0, "offer": 1}  # Advanced Trade says "offer", never "ask"


# ---------------------------------------------------------------------------------------
# Wire format → values


def api_of(ws_url: str) -> str:
    host = urlsplit(ws_url).hostname or ""
    if "advanced-trade" in host:
        return ADVANCED
    return PRO if host.startswith("ws-feed.pro.") else EXCHANGE


def parse_products(body: str | bytes) -> list[Instrument]:
    """Instruments of a ``GET /products`` body (``BTC-USD`` → ``BTC/USD``)."""
    instruments = []
    for product in orjson.loads(body):
        base, quote = product["base_currency"], product["quote_currency"]
        instruments.append(
            Instrument(
                canonical=canonical_symbol(base, quote),
                native=product["id"],
                base=base.upper(),
                quote=quote.upper(),
                tick_size=float(product["quote_increment"]),
                lot_size=float(product["base_increment"]),
            )
        )
    return instruments


def split_updates(updates: list[dict[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Advanced Trade ``updates`` → (bids, asks) as (price, quantity); raises on an unknown side."""
    sides: tuple[list[tuple[str, str]], list[tuple[str, str]]] = ([], [])
    for update in updates:
        sides[_AT_SIDES[update["side"]]].append((update["price_level"], update["new_quantity"]))
    return sides


def parse_match(message: dict[str, Any]) -> tuple[float, float, Side, int, int]:
    """(price, size, aggressor, trade id, ns) of a ``match``."""
    ((price, size),) = parse_levels(((message["price"], message["size"]),))
    if not size:
        raise ValueError("a match of size 0")
    aggressor = _MAKER_SIDE_TO_AGGRESSOR[message["side"]]
    return price, size, aggressor, int(message["trade_id"]), rfc3339_ns(message["time"])


# ---- client messages -------------------------------------------------------------------------


def feed_subscribe(products: Sequence[str], channels: Sequence[str], method: str = "subscribe") -> str:
    return orjson.dumps({"type": method, "product_ids": list(products), "channels": list(channels)}).decode()


def advanced_subscribe(products: Sequence[str], channel: str, method: str = "subscribe") -> str:
    request: dict[str, Any] = {"type": method, "channel": channel}
    if products:
        request["product_ids"] = list(products)
    return orjson.dumps(request).decode()


# ---------------------------------------------------------------------------------------
# Connector


class CoinbaseConnector(StreamSeededConnector):
    """Coinbase books and trades: Exchange ws-feed, recorded Pro, or Advanced Trade books."""

    name = NAME
    symbols_per_connection = 50

    def __init__(
        self,
        sink: RecordSink,
        exchange_id: int,
        symbol_ids: Mapping[str, int],
        *,
        ws_base_url: str = WS_URLS[EXCHANGE],
        rest_base_url: str = REST_BASE_URL,
        api: str | None = None,
        ticker_cross_check: bool = False,
        trades: bool = True,
        depth_limit: int | None = None,
        stale_after_s: float = 10.0,
    ) -> None:
        """``ws_base_url``: the full WebSocket URL (its host picks ``api`` unless given).
        ``ticker_cross_check``: subscribe ``ticker`` and resync a book whose top disagrees
        (Exchange/Pro only). ``trades``: subscribe ``matches`` (Exchange/Pro only).
        ``depth_limit``: levels kept per side; deeper ones are dropped."""
        super().__init__(sink, exchange_id, symbol_ids, depth=depth_limit or WHOLE_BOOK, stale_after_s=stale_after_s)
        self.api = api if api is not None else api_of(ws_base_url)
        if self.api not in WS_URLS:
            raise ValueError(f"api must be one of {sorted(WS_URLS)}, got {self.api!r}")
        if ticker_cross_check and self.api == ADVANCED:
            raise ValueError("ticker_cross_check needs the Exchange or Pro feed")
        self.ws_url = ws_base_url
        self.rest_base_url = rest_base_url.rstrip("/")
        self.book_channel = BOOK_CHANNELS[self.api]
        self.ticker_cross_check = ticker_cross_check
        self.trades = trades
        self._stale_ticker_pending: set[str] = set()  # products whose subscribe-time ticker is still due
        self._next_sequence: list[int | None] = []  # Advanced Trade: per connection
        if self.api == ADVANCED:
            self.on_message = self._on_advanced_message  # bound per instance: no dispatch per frame

    @classmethod
    def from_settings(
        cls, sink: RecordSink, exchange_id: int, symbol_ids: Mapping[str, int], settings: ExchangeSettings
    ) -> CoinbaseConnector:
        """Coinbase has no subscribed depth: the whole book comes, trimmed to ``snapshot_depth``."""
        urls = {}
        if settings.ws_url:
            urls["ws_base_url"] = settings.ws_url
        if settings.rest_url:
            urls["rest_base_url"] = settings.rest_url
        connector = cls(
            sink,
            exchange_id,
            symbol_ids,
            stale_after_s=settings.stale_after_s,
            depth_limit=settings.snapshot_depth,
            **urls,
        )
        connector.limit_connections(settings.max_streams_per_connection)
        return connector

    @property
    def instruments_url(self) -> str:
        return f"{self.rest_base_url}{PRODUCTS_PATH}"

    def parse_instruments(self, body: str | bytes) -> list[Instrument]:
        return parse_products(body)

    def connection_url(self, connection: int) -> str:
        return self.ws_url

    def use_instruments(self, instruments: Iterable[Instrument]) -> list[Instrument]:
        chosen = super().use_instruments(instruments)
        self._next_sequence = [None] * len(self.connections)
        return chosen

    def on_open(self, connection: int, now_ns: int) -> list[str]:
        self._next_sequence[connection] = None  # a new connection counts from its first message
        if self.ticker_cross_check:
            self._stale_ticker_pending.update(feed.instrument.native for feed in self.connections[connection])
        return super().on_open(connection, now_ns)

    def subscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        products = [feed.instrument.native for feed in feeds]
        if not products:
            return []
        if self.api == ADVANCED:
            return [advanced_subscribe(products, "level2"), advanced_subscribe((), "heartbeats")]
        channels = [self.book_channel]
        if self.trades:
            channels.append("matches")
        if self.ticker_cross_check:
            channels.append("ticker")
        if self.api == EXCHANGE:
            channels.append("heartbeat")
        return [feed_subscribe(products, channels)]

    def resubscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        """Unsubscribe + subscribe the book channel: Coinbase answers with a fresh snapshot."""
        products = [feed.instrument.native for feed in feeds]
        if self.api == ADVANCED:
            return [advanced_subscribe(products, "level2", "unsubscribe"), advanced_subscribe(products, "level2")]
        return [
            feed_subscribe(products, [self.book_channel], "unsubscribe"),
            feed_subscribe(products, [self.book_channel]),
        ]

    # ---- Exchange / Pro ------------------------------------------------------------------

    def on_message(self, connection: int, data: str | bytes, receive_ts: int) -> ConnectionAction:
        """Route one Exchange/Pro frame; bad frames are counted and dropped, never raised."""
        if self._resend_queue:
            self.flush(receive_ts)
        connection_counters = self.connection_counters[connection]
        connection_counters.frames += 1
        if data.__class__ is str and data.startswith(L2UPDATE_HINT):
            try:
                update = decode_l2update(data)
                time_text = update.time
                exchange_ts = micros_stamp_ns(time_text)  # rfc3339_ns's fast path, without its call
                if exchange_ts is None:
                    exchange_ts = rfc3339_ns(time_text) if time_text else 0
            except (DecodeError, ValueError, IndexError):
                pass  # the generic path below reads it, or says what is wrong with it
            else:
                feed = self.feeds.get(update.product_id)
                if feed is not None:
                    self.apply_l2update(feed, update.changes, exchange_ts, receive_ts)
                    return _CONTINUE
        try:
            message = orjson.loads(data)
            kind = message.get("type")
        except (orjson.JSONDecodeError, AttributeError):
            connection_counters.malformed_frames += 1
            self.frame_rejected = True
            return _CONTINUE
        if kind == "l2update":
            product = message.get("product_id")
            feed = self.feeds.get(product) if product.__class__ is str else None
            if feed is None:
                self._feed(connection, message)  # counts it
                return _CONTINUE
            try:
                time_text = message.get("time")
                exchange_ts = rfc3339_ns(time_text) if time_text else 0
                changes = message["changes"]
                if changes.__class__ is not list:
                    raise TypeError("changes must be a list")
            except (KeyError, TypeError, ValueError, IndexError, AttributeError):
                # No sequence numbers: an update we cannot read leaves the book unknown.
                feed.counters.parse_errors += 1
                self.frame_rejected = True
                self.resync(feed, Reason.MALFORMED, receive_ts)
                return _CONTINUE
            try:
                levels = [_parse_change(change) for change in changes]
            except (ValueError, TypeError, IndexError):
                levels = None  # counted and resynced by apply_l2update once the book is live
            self.apply_l2update(feed, levels, exchange_ts, receive_ts)
            return _CONTINUE
        if kind == "snapshot":
            feed = self._feed(connection, message)
            if feed is not None:
                self._on_snapshot(feed, message, receive_ts)
        elif kind == "match":
            feed = self._feed(connection, message)
            if feed is not None:
                self._on_match(feed, message, receive_ts)
        elif kind == "ticker" and self.ticker_cross_check:
            feed = self._feed(connection, message)
            if feed is not None:
                self._on_ticker(feed, message, receive_ts)
        elif kind == "subscriptions":
            connection_counters.subscribe_acks += 1
        elif kind == "error":
            self.on_subscribe_error(connection, None, f"{message.get('message')}: {message.get('reason', '')}")
        else:
            connection_counters.ignored_frames += 1  # heartbeat, last_match (the trade before we subscribed), ticker
        return _CONTINUE

    def apply_l2update(
        self, feed: StreamFeed, changes: list[tuple[str, float, float]] | None, exchange_ts: int, receive_ts: int
    ) -> None:
        """One l2update's validated ``(side, price, size)`` changes (None: a change did not
        parse) parsed, applied and packed in one pass; otherwise as on_book_update."""
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
        book = feed.book
        records = feed.records
        count = 0 if changes is None else len(changes)
        scratch = records.scratch if count <= records.capacity else records.reserve(count)
        offset = 0
        try:
            if changes is None:
                raise ValueError("a change did not parse")
            for side, price, size in changes:
                if side == "buy":
                    offset = apply_level(
                        book.bids, book.bid_prices, price, size, scratch, offset, exchange_ts, receive_ts, 0, BID_SIDE
                    )
                else:
                    offset = apply_level(
                        book.asks, book.ask_prices, price, size, scratch, offset, exchange_ts, receive_ts, 0, ASK_SIDE
                    )
        except ValueError:
            # No sequence numbers: an update we cannot read (or whose time the record cannot
            # hold) leaves the book unknown.
            counters.parse_errors += 1
            self.frame_rejected = True
            counters.frames_dropped += 1
            self.resync(feed, Reason.MALFORMED, receive_ts)
            return
        bid_prices = book.bid_prices
        ask_prices = book.ask_prices
        depth = feed.depth
        if len(bid_prices) > depth or len(ask_prices) > depth:
            count = self._truncate(feed, count, 0, exchange_ts, receive_ts)
        if bid_prices and ask_prices and bid_prices[-1] >= ask_prices[0]:
            counters.crossed += 1
            counters.frames_dropped += 1
            self.resync(feed, Reason.CROSSED, receive_ts)
            return
        counters.frames_applied += 1
        counters.levels_applied += len(changes)
        if not feed.confirmed:
            feed.confirmed = True
            feed.failures_in_row = 0
        if not feed.resend_pending:
            write_records = records.sink_write_records  # load, then call: ~25 ns less
            if not write_records(records.scratch, count):
                records.output.lost(records.batches[count])
                self._after_write()

    def _feed(self, connection: int, message: dict[str, Any]) -> StreamFeed | None:
        product = message.get("product_id")
        feed = self.feeds.get(product) if product.__class__ is str else None
        if feed is None:
            counters = self.connection_counters[connection]
            if product is None:
                counters.malformed_frames += 1
                self.frame_rejected = True
            else:
                counters.unknown_symbol_frames += 1
                self.frame_rejected = True
        return feed

    def _on_snapshot(self, feed: StreamFeed, message: dict[str, Any], receive_ts: int) -> None:
        try:
            time_text = message.get("time")
            exchange_ts = rfc3339_ns(time_text) if time_text else 0  # Pro snapshots carry no time
            bids, asks = message["bids"], message["asks"]
            if bids.__class__ is not list or asks.__class__ is not list:
                raise TypeError("levels must be lists")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            self.resync(feed, Reason.MALFORMED, receive_ts)
            return
        self.on_book_snapshot(feed, bids, asks, 0, None, exchange_ts, receive_ts)

    def _on_match(self, feed: StreamFeed, message: dict[str, Any], receive_ts: int) -> None:
        try:
            price, size, aggressor, trade_id, trade_ts = parse_match(message)
        except (KeyError, TypeError, ValueError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            return
        self.write_trade(feed, price, size, aggressor, trade_id, trade_ts, receive_ts)

    def _on_ticker(self, feed: StreamFeed, message: dict[str, Any], receive_ts: int) -> None:
        """Compare the ticker's best bid/ask prices with the book (it carries no sizes in the
        recorded generation); a disagreement resyncs the book."""
        native = feed.instrument.native
        if native in self._stale_ticker_pending:
            self._stale_ticker_pending.discard(native)  # sent on subscribe: describes the last trade
            return
        if feed.state is not _LIVE:
            return
        try:
            best_bid, best_ask = float(message["best_bid"]), float(message["best_ask"])
        except (KeyError, TypeError, ValueError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            return
        counters = feed.counters
        counters.cross_checks += 1
        book = feed.book
        if book.bid_prices and book.ask_prices and (book.bid_prices[-1], book.ask_prices[0]) == (best_bid, best_ask):
            return
        counters.cross_check_mismatches += 1
        self.resync(feed, Reason.CROSS_CHECK, receive_ts)

    # ---- Advanced Trade ------------------------------------------------------------------

    def _on_advanced_message(self, connection: int, data: str | bytes, receive_ts: int) -> ConnectionAction:
        """Route one Advanced Trade frame after checking its connection-wide ``sequence_num``."""
        if self._resend_queue:
            self.flush(receive_ts)
        counters = self.connection_counters[connection]
        counters.frames += 1
        try:
            message = orjson.loads(data)
            channel = message.get("channel")
            sequence = message.get("sequence_num")
        except (orjson.JSONDecodeError, AttributeError):
            counters.malformed_frames += 1
            self.frame_rejected = True
            return _CONTINUE
        if sequence.__class__ is int:
            expected = self._next_sequence[connection]
            self._next_sequence[connection] = sequence + 1
            if expected is not None and sequence != expected:
                self._on_connection_gap(connection, receive_ts)
        if channel == "l2_data":
            events = message.get("events")
            if events.__class__ is not list:
                counters.malformed_frames += 1
                self.frame_rejected = True
                return _CONTINUE
            for event in events:
                self._on_advanced_event(connection, event, message.get("timestamp"), receive_ts)
        elif channel == "subscriptions":
            counters.subscribe_acks += 1
        elif message.get("type") == "error":
            self.on_subscribe_error(connection, None, str(message.get("message", "")))
        else:
            counters.ignored_frames += 1  # heartbeats
        return _CONTINUE

    def _on_connection_gap(self, connection: int, receive_ts: int) -> None:
        """A message of the connection was lost: none of its live books can be trusted."""
        for feed in self.connections[connection]:
            if feed.state is _LIVE:
                feed.counters.gaps += 1
                self.resync(feed, Reason.SEQUENCE_GAP, receive_ts)

    def _on_advanced_event(self, connection: int, event: Any, timestamp: Any, receive_ts: int) -> None:
        feed = self._feed(connection, event) if event.__class__ is dict else None
        if feed is None:
            if event.__class__ is not dict:
                self.connection_counters[connection].malformed_frames += 1
                self.frame_rejected = True
            return
        try:
            kind = event["type"]
            if kind not in ("snapshot", "update"):
                raise ValueError(f"unknown event type {kind!r}")
            bids, asks = split_updates(event["updates"])
            exchange_ts = rfc3339_ns(timestamp) if timestamp else 0
        except (KeyError, TypeError, ValueError, AttributeError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            self.resync(feed, Reason.MALFORMED, receive_ts)
            return
        if kind == "snapshot":
            self.on_book_snapshot(feed, bids, asks, 0, None, exchange_ts, receive_ts)
        else:
            self.on_book_update(feed, bids, asks, 0, 0, None, exchange_ts, receive_ts)


# ---------------------------------------------------------------------------------------
# Simulator side




_EPOCH = "1970-01-01T00:00:00Z"  # Advanced Trade stamps snapshot levels with the epoch


def _native(canonical: str) -> str:
    return canonical.replace("/", "-")


class EncodedStep:
    """One step in both dialects, encoded once for every session."""

    __slots__ = ("at_events", "l2updates", "matches", "time", "withheld")

    def __init__(self, time: str) -> None:
        self.time = time
        self.l2updates: dict[str, str] = {}  # product → Exchange l2update frame
        self.at_events: dict[str, str] = {}  # product → Advanced Trade update event (JSON object text)
        self.matches: dict[str, list[str]] = {}  # product → Exchange match frames
        self.withheld: set[str] = set()  # products with a change the server dropped


class CoinbaseSimulatedVenue(SimulatedVenue):
    """The simulator's market as Coinbase serves it (spot symbols only): whole books, sizes
    at 8 decimals, prices at the product's quote increment."""

    def __init__(self, market: Market, venue: str = NAME) -> None:
        super().__init__(market, venue)
        self.specs = {_native(spec.canonical): spec for spec in market.symbols.values() if not spec.perpetual}
        self.prices = {
            native: FixedPoint(spec.tick_size, decimal_places(spec.tick_size)) for native, spec in self.specs.items()
        }
        self.sizes = {native: FixedPoint(spec.lot_size, SIZE_DECIMALS) for native, spec in self.specs.items()}
        self.last_update_ids = {
            native: market.book(venue, spec.canonical).last_update_id for native, spec in self.specs.items()
        }

    def http(self, path: str, query: Mapping[str, str]) -> HttpReply:
        if path.rstrip("/") == PRODUCTS_PATH:
            return HttpReply(200, self.products_body())
        return HttpReply(404, '{"message":"NotFound"}')

    def is_snapshot_request(self, path: str) -> bool:
        return False  # Coinbase books are snapshotted in the stream

    def products_body(self) -> str:
        return orjson.dumps(
            [
                {
                    "id": native,
                    "base_currency": spec.base,
                    "quote_currency": spec.quote,
                    "quote_increment": spec.tick_size,
                    "base_increment": spec.lot_size,
                    "display_name": spec.canonical,
                    "status": "online",
                }
                for native, spec in self.specs.items()
            ]
        ).decode()

    def open_session(self, path: str) -> VenueSession | HttpReply:
        if urlsplit(path).path not in ("", "/"):
            return HttpReply(404, "Not found")
        return CoinbaseSimSession(self)

    def levels(self, native: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The whole book as (price, size) texts, best first."""
        bids, asks = self.market.book(self.venue, self.specs[native].canonical).top(WHOLE_BOOK)
        price, size = self.prices[native].text, self.sizes[native].text
        return [(price(t), size(q)) for t, q in bids], [(price(t), size(q)) for t, q in asks]

    def encode_step(self, step: MarketStep) -> EncodedStep:
        encoded = EncodedStep(rfc3339_micros(step.timestamp_ns))
        for change in step.book_changes:
            native = _native(change.symbol)
            if native not in self.specs:
                continue
            if self.last_update_ids[native] != change.previous_update_id:
                encoded.withheld.add(native)  # the server's dropped-update fault took the change before
            self.last_update_ids[native] = change.last_update_id
            price, size = self.prices[native].text, self.sizes[native].text
            changes = [("buy", price(t), size(q)) for t, q in change.bids] + [
                ("sell", price(t), size(q)) for t, q in change.asks
            ]
            encoded.l2updates[native] = orjson.dumps(
                {"type": "l2update", "product_id": native, "changes": changes, "time": rfc3339_micros(change.timestamp_ns)}
            ).decode()
            updates = [{"side": "bid" if side == "buy" else "offer", "event_time": encoded.time, "price_level": p,
                        "new_quantity": q} for side, p, q in changes]
            encoded.at_events[native] = orjson.dumps(
                {"type": "update", "product_id": native, "updates": updates}
            ).decode()
        for trade in step.trades:
            native = _native(trade.symbol)
            if native not in self.specs:
                continue
            encoded.matches.setdefault(native, []).append(
                orjson.dumps(
                    {
                        "type": "match",
                        "trade_id": trade.trade_id,
                        "side": "sell" if trade.aggressor == Side.BID else "buy",  # the maker's side
                        "size": self.sizes[native].text(trade.lots),
                        "price": self.prices[native].text(trade.price_ticks),
                        "product_id": native,
                        "sequence": step.number,
                        "time": rfc3339_micros(trade.timestamp_ns),
                    }
                ).decode()
            )
        return encoded


class CoinbaseSimSession(VenueSession):
    """One client connection; its dialect is set by its first subscribe message
    (``channels`` list: the Exchange feed; ``channel``: Advanced Trade)."""

    def __init__(self, venue: CoinbaseSimulatedVenue) -> None:
        self.venue = venue
        self.advanced: bool | None = None
        self.books: set[str] = set()
        self.matches: set[str] = set()
        self.heartbeats = False
        self.sequence_num = 0  # Advanced Trade: every message of the connection

    def on_client_message(self, text: str) -> list[str]:
        try:
            request = orjson.loads(text)
            method = request["type"]
            products = request.get("product_ids", [])
            advanced = "channel" in request
            channels = [request["channel"]] if advanced else request["channels"]
            if method not in ("subscribe", "unsubscribe") or not all(isinstance(c, str) for c in channels):
                raise ValueError(method)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return ['{"type":"error","message":"Failed to subscribe","reason":"malformed request"}']
        self.advanced = advanced
        unknown = [product for product in products if product not in self.venue.specs]
        if unknown:
            return [orjson.dumps({"type": "error", "message": "Failed to subscribe",
                                  "reason": f"{unknown[0]} is not a valid product"}).decode()]
        return self._advanced(method, channels[0], products) if advanced else self._feed(method, channels, products)

    def _feed(self, method: str, channels: list[str], products: list[str]) -> list[str]:
        if "level2" in channels:
            refusal = {"type": "error", "message": "Failed to subscribe", "reason": LEVEL2_AUTH_ERROR}
            return [orjson.dumps(refusal).decode()]
        replies = []
        subscribe = method == "subscribe"
        for channel in channels:
            if channel == "level2_batch":
                if subscribe:
                    self.books.update(products)
                    replies.extend(self._feed_snapshot(product) for product in products)
                else:
                    self.books.difference_update(products)
            elif channel == "matches":
                (self.matches.update if subscribe else self.matches.difference_update)(products)
            elif channel == "heartbeat":
                self.heartbeats = subscribe
        ack = {"type": "subscriptions", "channels": [
            {"name": "level2_batch", "product_ids": sorted(self.books)},
            {"name": "matches", "product_ids": sorted(self.matches)},
        ]}
        return [orjson.dumps(ack).decode(), *replies]

    def _feed_snapshot(self, product: str) -> str:
        bids, asks = self.venue.levels(product)
        return orjson.dumps({"type": "snapshot", "product_id": product, "bids": bids, "asks": asks}).decode()

    def _advanced(self, method: str, channel: str, products: list[str]) -> list[str]:
        subscribe = method == "subscribe"
        if channel == "level2":
            (self.books.update if subscribe else self.books.difference_update)(products)
        elif channel == "heartbeats":
            self.heartbeats = subscribe
        ack = orjson.dumps({"subscriptions": {"level2": sorted(self.books)}}).decode()
        replies = [self._advanced_message("subscriptions", _EPOCH, ack)]  # numbered before the snapshots
        if channel == "level2" and subscribe:
            replies.extend(self._advanced_snapshot(product) for product in products)
        return replies

    def _advanced_snapshot(self, product: str) -> str:
        bids, asks = self.venue.levels(product)
        updates = [{"side": "bid", "event_time": _EPOCH, "price_level": p, "new_quantity": q} for p, q in bids]
        updates += [{"side": "offer", "event_time": _EPOCH, "price_level": p, "new_quantity": q} for p, q in asks]
        event = orjson.dumps({"type": "snapshot", "product_id": product, "updates": updates}).decode()
        return self._advanced_message("l2_data", _EPOCH, event)

    def _advanced_message(self, channel: str, timestamp: str, *events: str) -> str:
        self.sequence_num += 1
        return (
            f'{{"channel":"{channel}","client_id":"","timestamp":"{timestamp}",'
            f'"sequence_num":{self.sequence_num - 1},"events":[{",".join(events)}]}}'
        )

    def frames(self, encoded_step: EncodedStep) -> list[str]:
        if self.advanced:
            return self._advanced_frames(encoded_step)
        frames = [encoded_step.l2updates[product] for product in self.books if product in encoded_step.l2updates]
        for product in self.matches:
            frames.extend(encoded_step.matches.get(product, ()))
        if self.heartbeats:
            frames.extend(
                f'{{"type":"heartbeat","last_trade_id":0,"product_id":"{product}","sequence":0,'
                f'"time":"{encoded_step.time}"}}'
                for product in self.books
            )
        return frames

    def _advanced_frames(self, encoded_step: EncodedStep) -> list[str]:
        if self.books & encoded_step.withheld:
            self.sequence_num += 1  # the message the client never got still used its number
        events = [encoded_step.at_events[product] for product in self.books if product in encoded_step.at_events]
        frames = [self._advanced_message("l2_data", encoded_step.time, *events)] if events else []
        if self.heartbeats:
            frames.append(self._advanced_message(
                "heartbeats", encoded_step.time, f'{{"current_time":"{encoded_step.time}","heartbeat_counter":1}}'
            ))
        return frames


# The recordings are Coinbase Pro level2 + ticker + matches (coby verify replays them here).
RECORDED_OPTIONS = {"api": PRO, "ticker_cross_check": True}

CONNECTOR = CoinbaseConnector
SIMULATED_VENUE = CoinbaseSimulatedVenue
