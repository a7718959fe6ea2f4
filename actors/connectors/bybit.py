"""Bybit v5 public streams: spot, USDT/USDC linear perpetuals and inverse perpetuals, both directions.

Connector side (sans-IO, on :class:`~actors.connectors.stream_seeded.StreamSeededConnector`),
docs/exchanges.md §10:

- instruments from ``GET /v5/market/instruments-info?category=spot|linear|inverse``
  (``baseCoin``/``quoteCoin``, ``priceFilter.tickSize``, ``lotSizeFilter.qtyStep`` or
  spot's ``basePrecision``): spot ``BTCUSDT`` → ``BTC/USDT``, linear perpetual
  ``BTCUSDT`` → ``BTC/USDT:PERP``, inverse perpetual ``BTCUSD`` → ``BTC/USD:PERP``.
  Dated futures (``LinearFutures``/``InverseFutures``) and instruments not trading are
  skipped. The same wire symbol names a spot pair and a perpetual, so a native name here
  is ``category:SYMBOL`` (``linear:BTCUSDT``);
- one connection per category (and per ``symbols_per_connection`` symbols) on
  ``wss://stream.bybit.com/v5/public/{category}``, carrying ``orderbook.{depth}.{symbol}``
  and ``publicTrade.{symbol}``;
- the snapshot arrives on the subscription (``type:"snapshot"``); any later snapshot,
  and any frame with ``u == 1`` (a service restart), replaces the book; deltas must
  continue ``u`` by exactly one, else the symbol is unsubscribed and subscribed again;
- levels that leave the subscribed depth are truncated locally;
- the client sends ``{"op":"ping"}`` every 20 s (through ``outgoing_messages``).

Instruments need one request per category, but the runtime fetches one URL:
``instruments_urls`` lists every category the configured symbols need (a symbol's
category follows from its canonical name) and ``load_instruments`` accumulates the
bodies, so a runtime that fetches each URL gets every symbol; one that fetches only
``instruments_url`` (the first) gets that category's symbols and the rest are missing.

``cts`` (matching-engine time) stamps the records where present, else ``ts``. ``seq``
(cross sequence) only orders one symbol's frames across depths; one depth is subscribed
per symbol, so it is not needed.

The recordings are the retired v2 generation (``realtime_public``): this module speaks
v5 only (``RECORDED_OPTIONS = None``), so ``coby verify`` reports one error line for them.

Simulator side: :class:`BybitSimulatedVenue` serves instruments-info and the three
category paths of WebSocket v5: per-depth windows (levels pushed out of a window are not
deleted), ``u`` per topic and ``seq`` per symbol, subscribe acks (spot's 10-argument
limit enforced), pongs and trades.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from actors.connectors.base import (
    ConnectionAction,
    ConnectionCounters,
    Instrument,
    RecordSink,
    canonical_symbol,
    parse_levels,
)
from actors.connectors.stream_seeded import RawLevels, StreamFeed, StreamSeededConnector
from shm.records import Reason, Side
from sim.market import FixedPoint, Market, MarketStep
from sim.venue import HttpReply, SimulatedVenue, VenueSession, decimal_places

NAME = "bybit"
REST_BASE_URL = "https://api.bybit.com"
WS_BASE_URL = "wss://stream.bybit.com/v5/public"
INSTRUMENTS_PATH = "/v5/market/instruments-info"
INSTRUMENTS_PAGE_LIMIT = 1000  # linear lists more than the default page of 500

SPOT, LINEAR, INVERSE = "spot", "linear", "inverse"
CATEGORIES = (SPOT, LINEAR, INVERSE)
PERPETUAL_CONTRACTS = {LINEAR: "LinearPerpetual", INVERSE: "InversePerpetual"}
INVERSE_QUOTES = ("USD",)  # inverse perpetuals are quoted in USD and settled in the base coin
BOOK_DEPTHS = {SPOT: (1, 50, 200, 1000), LINEAR: (1, 50, 200, 500, 1000), INVERSE: (1, 50, 200, 500, 1000)}
DEFAULT_DEPTH = 50
SUBSCRIBE_ARGS_LIMIT = {SPOT: 10}  # spot refuses a request with more than 10 topics
PING_INTERVAL_S = 20.0

BOOK_CHANNEL = "orderbook"
TRADE_CHANNEL = "publicTrade"
MS = 1_000_000
_UINT64 = (1 << 64) - 1

_CONTINUE = ConnectionAction.CONTINUE

BybitBook = tuple[bool, RawLevels, RawLevels, int, int]
"""(replaces the book, bids, asks, ``u``, exchange ns) of one orderbook message."""


# ---------------------------------------------------------------------------------------
# Wire format → values


def category_of_canonical(canonical: str) -> str:
    """``BTC/USDT`` → spot, ``BTC/USDT:PERP`` → linear, ``BTC/USD:PERP`` → inverse."""
    if not canonical.endswith(":PERP"):
        return SPOT
    quote = canonical.split("/")[1].split(":")[0]
    return INVERSE if quote in INVERSE_QUOTES else LINEAR


def native_name(category: str, symbol: str) -> str:
    return f"{category}:{symbol}"


def split_native(native: str) -> tuple[str, str]:
    """``"linear:BTCUSDT"`` → (``"linear"``, ``"BTCUSDT"``)."""
    category, _, symbol = native.partition(":")
    return category, symbol


def parse_instruments_info(body: str | bytes) -> tuple[str, list[Instrument]]:
    """(category, instruments) of one instruments-info body; ValueError if it is not one."""
    try:
        message = orjson.loads(body)
        result = message["result"]
        category = result["category"]
        entries = result["list"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"not a Bybit v5 instruments-info body: {error!r}") from None
    if category not in CATEGORIES:
        raise ValueError(f"unsupported Bybit category {category!r}")
    instruments = []
    for entry in entries:
        if entry.get("status") != "Trading":
            continue  # PreLaunch, Delivering, Closed: no book to keep
        contract = PERPETUAL_CONTRACTS.get(category)
        if contract is not None and entry.get("contractType") != contract:
            continue  # dated futures (BTCUSDT-26DEC25, BTCUSDZ25) are not supported
        lot_filter = entry["lotSizeFilter"]
        lot_size = lot_filter.get("qtyStep") or lot_filter["basePrecision"]  # spot has no qtyStep
        base, quote = entry["baseCoin"], entry["quoteCoin"]
        instruments.append(
            Instrument(
                canonical=canonical_symbol(base, quote, perpetual=category != SPOT),
                native=native_name(category, entry["symbol"]),
                base=base,
                quote=quote,
                tick_size=float(entry["priceFilter"]["tickSize"]),
                lot_size=float(lot_size),
                perpetual=category != SPOT,
            )
        )
    return category, instruments


def _checked_levels(levels: Any) -> RawLevels:
    """The level list as received, once every level is a list of at least two items
    (the machinery indexes them; anything else must not reach it)."""
    if levels.__class__ is not list:
        raise TypeError("levels must be a list")
    for level in levels:
        if level.__class__ is not list or len(level) < 2:
            raise ValueError(f"bad level {level!r}")
    return levels


def parse_book(message: dict[str, Any]) -> BybitBook:
    """One ``orderbook.*`` message; raises KeyError/TypeError/ValueError on anything else."""
    kind = message["type"]
    data = message["data"]
    update_id = data["u"]
    if kind not in ("snapshot", "delta") or update_id.__class__ is not int:
        raise ValueError(f"bad book message type {kind!r} or u {update_id!r}")
    timestamp_ms = message.get("cts") or message["ts"]
    if timestamp_ms.__class__ is not int:
        raise TypeError("timestamp must be an integer")
    # u == 1: the service restarted and this frame is a full book, whatever its type says
    replaces = kind == "snapshot" or update_id == 1
    return replaces, _checked_levels(data["b"]), _checked_levels(data["a"]), update_id, timestamp_ms * MS


def trade_id_number(text: str) -> int:
    """The record's trade id: spot ids are decimal, derivative ids UUIDs (first 64 bits)."""
    if text.isdigit():
        return int(text) & _UINT64
    return int(text.replace("-", "")[:16], 16)


def parse_trade(entry: dict[str, Any]) -> tuple[str, float, float, Side, int, int]:
    """(symbol, price, size, aggressor, trade id, ns) of one ``publicTrade`` entry."""
    ((price, size),) = parse_levels(((entry["p"], entry["v"]),))
    side = entry["S"]
    timestamp_ms = entry["T"]
    if not size or side not in ("Buy", "Sell") or timestamp_ms.__class__ is not int:
        raise ValueError(f"bad trade {entry!r}")
    aggressor = Side.BID if side == "Buy" else Side.ASK
    return entry["s"], price, size, aggressor, trade_id_number(entry["i"]), timestamp_ms * MS


def follows_previous_update(update_id: int, _previous: int, last_update_id: int) -> bool:
    """Bybit numbers each topic's frames ``u``, +1 per frame (observed; docs say no more)."""
    return update_id == last_update_id + 1


# ---- client messages -------------------------------------------------------------------------


def book_topic(depth: int, symbol: str) -> str:
    return f"{BOOK_CHANNEL}.{depth}.{symbol}"


def trade_topic(symbol: str) -> str:
    return f"{TRADE_CHANNEL}.{symbol}"


def operation(op: str, topics: Sequence[str], request_id: str) -> str:
    return orjson.dumps({"req_id": request_id, "op": op, "args": list(topics)}).decode()


# ---------------------------------------------------------------------------------------
# Connector


class BybitConnector(StreamSeededConnector):
    """Bybit v5 books and trades, one connection per category."""

    name = NAME
    sequence_rule = staticmethod(follows_previous_update)
    symbols_per_connection = 100  # two topics each, well under the 21,000 argument characters
    application_ping_interval_s = PING_INTERVAL_S

    def __init__(
        self,
        sink: RecordSink,
        exchange_id: int,
        symbol_ids: Mapping[str, int],
        *,
        ws_base_url: str = WS_BASE_URL,
        rest_base_url: str = REST_BASE_URL,
        snapshot_limit: int = DEFAULT_DEPTH,
        depth_limit: int | None = None,
        trades: bool = True,
        stale_after_s: float = 30.0,
    ) -> None:
        """``ws_base_url``: the public stream root (``/{category}`` is appended; a category's
        own URL is taken as its root).
        ``snapshot_limit``: the subscribed book depth, offered by every category needed.
        ``depth_limit``: accepted for the runtime's common call; a smaller limit than the
        subscribed depth is refused (lower snapshot_depth instead)."""
        categories = {category_of_canonical(symbol) for symbol in symbol_ids}
        for category in sorted(categories):
            if snapshot_limit not in BOOK_DEPTHS[category]:
                raise ValueError(
                    f"Bybit {category} book depth must be one of {BOOK_DEPTHS[category]}, got {snapshot_limit}"
                )
        if depth_limit is not None and depth_limit < snapshot_limit:
            raise ValueError(
                f"depth_limit {depth_limit} is below the subscribed depth {snapshot_limit}: "
                "lower snapshot_depth instead"
            )
        super().__init__(sink, exchange_id, symbol_ids, depth=snapshot_limit, stale_after_s=stale_after_s)
        root = ws_base_url.rstrip("/")
        parent, _, last = root.rpartition("/")
        self.ws_base_url = parent if last in CATEGORIES else root
        self.rest_base_url = rest_base_url.rstrip("/")
        self.trades = trades
        self.categories = [category for category in CATEGORIES if category in categories] or [SPOT]
        self.connection_categories: list[str] = []
        self._loaded: dict[str, list[Instrument]] = {}  # by category, accumulated over bodies
        self._routes: list[dict[str, StreamFeed]] = []  # per connection: wire symbol → feed
        self._pending_subscriptions: dict[str, list[StreamFeed]] = {}  # req_id → feeds
        self._depth_text = str(snapshot_limit)
        self._request_ids = itertools.count(1)

    # ---- instruments and plan ----------------------------------------------------------

    @property
    def instruments_urls(self) -> list[str]:
        """One instruments-info URL per category the configured symbols need."""
        return [
            f"{self.rest_base_url}{INSTRUMENTS_PATH}?category={category}&limit={INSTRUMENTS_PAGE_LIMIT}"
            for category in self.categories
        ]

    @property
    def instruments_url(self) -> str:
        return self.instruments_urls[0]

    def parse_instruments(self, body: str | bytes) -> list[Instrument]:
        """This body's instruments plus those of the other categories loaded before."""
        category, instruments = parse_instruments_info(body)
        self._loaded[category] = instruments
        return [instrument for loaded in self._loaded.values() for instrument in loaded]

    def use_instruments(self, instruments: Iterable[Instrument]) -> list[Instrument]:
        """The base plan, regrouped so that each connection carries one category."""
        chosen = super().use_instruments(instruments)
        feeds = [feed for connection in self.connections for feed in connection]
        self.connections = []
        self.connection_categories = []
        self._routes = []
        for category in CATEGORIES:
            in_category = [feed for feed in feeds if split_native(feed.instrument.native)[0] == category]
            for start in range(0, len(in_category), self.symbols_per_connection):
                group = in_category[start : start + self.symbols_per_connection]
                for feed in group:
                    feed.connection = len(self.connections)
                self.connections.append(group)
                self.connection_categories.append(category)
                self._routes.append({split_native(feed.instrument.native)[1]: feed for feed in group})
        # The base sized its per-connection state for its own grouping: resize it.
        count = len(self.connections)
        self.connection_counters = [ConnectionCounters() for _ in range(count)]
        self._open = [False] * count
        self._reconnect_requested = [False] * count
        self._ping_due_ns = [None] * count
        return chosen

    def connection_url(self, connection: int) -> str:
        return f"{self.ws_base_url}/{self.connection_categories[connection]}"

    # ---- client messages ---------------------------------------------------------------

    def _requests(self, connection: int, op: str, topics_by_feed: list[tuple[StreamFeed, list[str]]]) -> list[str]:
        """``op`` requests for the topics, split as the category allows; subscriptions
        remember their feeds by ``req_id`` so a refusal reaches them."""
        limit = SUBSCRIBE_ARGS_LIMIT.get(self.connection_categories[connection])
        messages = []
        topics = [(feed, topic) for feed, feed_topics in topics_by_feed for topic in feed_topics]
        size = limit or len(topics) or 1
        for start in range(0, len(topics), size):
            batch = topics[start : start + size]
            request_id = str(next(self._request_ids))
            if op == "subscribe":
                self._pending_subscriptions[request_id] = list(dict.fromkeys(feed for feed, _ in batch))
            messages.append(operation(op, [topic for _, topic in batch], request_id))
        return messages

    def subscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        for request_id, waiting in list(self._pending_subscriptions.items()):
            if waiting[0].connection == connection:
                del self._pending_subscriptions[request_id]  # acks of the closed connection never come
        topics = []
        for feed in feeds:
            symbol = split_native(feed.instrument.native)[1]
            feed_topics = [book_topic(self.depth, symbol)]
            if self.trades:
                feed_topics.append(trade_topic(symbol))
            topics.append((feed, feed_topics))
        return self._requests(connection, "subscribe", topics)

    def resubscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        topics = [(feed, [book_topic(self.depth, split_native(feed.instrument.native)[1])]) for feed in feeds]
        return self._requests(connection, "unsubscribe", topics) + self._requests(connection, "subscribe", topics)

    def application_ping(self, connection: int) -> str:
        return orjson.dumps({"req_id": str(next(self._request_ids)), "op": "ping"}).decode()

    # ---- frames ------------------------------------------------------------------------

    def on_message(self, connection: int, data: str | bytes, receive_ts: int) -> ConnectionAction:
        """Route one frame; bad frames are counted and dropped, never raised."""
        if self._resend_queue:
            self.flush(receive_ts)
        counters = self.connection_counters[connection]
        counters.frames += 1
        try:
            message = orjson.loads(data)
            topic = message.get("topic")
        except (orjson.JSONDecodeError, AttributeError):
            counters.malformed_frames += 1
            self.frame_rejected = True
            return _CONTINUE
        if topic is not None:
            if topic.__class__ is not str:
                counters.malformed_frames += 1
                self.frame_rejected = True
            elif topic.startswith("orderbook."):
                self._on_book(connection, message, topic, receive_ts)
            elif topic.startswith("publicTrade."):
                self._on_trades(connection, message.get("data"), receive_ts)
            else:
                counters.ignored_frames += 1
            return _CONTINUE
        op = message.get("op")
        if op == "subscribe":
            feeds = self._pending_subscriptions.pop(message.get("req_id"), ())
            if message.get("success") is True:
                counters.subscribe_acks += 1
            else:
                error = str(message.get("ret_msg", ""))
                for feed in feeds or (None,):
                    self.on_subscribe_error(connection, feed, error)
        elif op == "unsubscribe" and message.get("success") is True:
            counters.subscribe_acks += 1
        else:
            counters.ignored_frames += 1  # pongs, refused unsubscribes (nothing to undo)
        return _CONTINUE

    def _on_book(self, connection: int, message: dict[str, Any], topic: str, receive_ts: int) -> None:
        depth_text, _, symbol = topic.partition(".")[2].partition(".")
        feed = self._routes[connection].get(symbol)
        if feed is None:
            self.connection_counters[connection].unknown_symbol_frames += 1
            self.frame_rejected = True
            return
        if depth_text != self._depth_text:
            self.connection_counters[connection].ignored_frames += 1  # another depth: not ours
            return
        try:
            replaces, bids, asks, update_id, exchange_ts = parse_book(message)
        except (KeyError, TypeError, ValueError):
            feed.counters.parse_errors += 1  # its levels are lost: the book cannot be trusted
            self.frame_rejected = True
            self.resync(feed, Reason.MALFORMED, receive_ts)
            return
        if replaces:
            self.on_book_snapshot(feed, bids, asks, update_id, None, exchange_ts, receive_ts)
        else:
            self.on_book_update(feed, bids, asks, update_id, 0, None, exchange_ts, receive_ts)

    def _on_trades(self, connection: int, entries: Any, receive_ts: int) -> None:
        if entries.__class__ is not list:
            self.connection_counters[connection].malformed_frames += 1
            self.frame_rejected = True
            return
        routes = self._routes[connection]
        for entry in entries:
            feed = routes.get(entry.get("s")) if entry.__class__ is dict else None
            if feed is None:
                self.connection_counters[connection].unknown_symbol_frames += 1
                self.frame_rejected = True
                continue
            try:
                _symbol, price, size, aggressor, trade_id, trade_ts = parse_trade(entry)
            except (KeyError, TypeError, ValueError, AttributeError):
                feed.counters.parse_errors += 1
                self.frame_rejected = True
                continue
            self.write_trade(feed, price, size, aggressor, trade_id, trade_ts, receive_ts)


# ---------------------------------------------------------------------------------------
# Simulator side (WebSocket v5)



Window = tuple[dict[int, int], dict[int, int]]
"""The levels a subscriber at one depth holds: (bids, asks) as tick → lots."""

EncodedStep = dict[tuple[str, ...], list[str]]
"""("book", canonical, depth) or ("trade", canonical) → frames of one step."""


class BybitSimulatedVenue(SimulatedVenue):
    """The simulator's market as Bybit v5 serves it: spot pairs on ``/v5/public/spot``,
    perpetuals on ``/linear`` (USDT/USDC) or ``/inverse`` (USD), native ``BASEQUOTE``.

    Each subscribed depth sees its own window: a delta carries the levels that changed
    inside it, deletes of levels gone from the book, and levels that moved into it;
    levels pushed out by better ones are not deleted (the client truncates).
    """

    def __init__(self, market: Market, venue: str = NAME) -> None:
        super().__init__(market, venue)
        self.specs = {spec.canonical: spec for spec in market.symbols.values()}
        self.categories = {symbol: category_of_canonical(symbol) for symbol in self.specs}
        self.natives = {
            (self.categories[symbol], spec.base + spec.quote): symbol for symbol, spec in self.specs.items()
        }
        self.prices = {
            symbol: FixedPoint(spec.tick_size, decimal_places(spec.tick_size)) for symbol, spec in self.specs.items()
        }
        self.sizes = {
            symbol: FixedPoint(spec.lot_size, decimal_places(spec.lot_size)) for symbol, spec in self.specs.items()
        }
        self.windows: dict[tuple[str, int], Window] = {}
        self.update_ids: dict[tuple[str, int], int] = {}  # u per topic

    # ---- REST ------------------------------------------------------------------------------

    def http(self, path: str, query: Mapping[str, str]) -> HttpReply:
        category = query.get("category")
        if path != INSTRUMENTS_PATH or category not in CATEGORIES:
            return HttpReply(200, '{"retCode":10001,"retMsg":"params error: category is invalid","result":{}}')
        return HttpReply(200, self.instruments_body(category))

    def is_snapshot_request(self, path: str) -> bool:
        return False  # Bybit books are snapshotted in the stream

    def instruments_body(self, category: str) -> str:
        entries = []
        for symbol, spec in self.specs.items():
            if self.categories[symbol] != category:
                continue
            entry: dict[str, Any] = {
                "symbol": spec.base + spec.quote,
                "status": "Trading",
                "baseCoin": spec.base,
                "quoteCoin": spec.quote,
                "priceFilter": {"tickSize": spec.tick_size},
            }
            if category == SPOT:
                entry["lotSizeFilter"] = {"basePrecision": spec.lot_size}
            else:
                entry["contractType"] = PERPETUAL_CONTRACTS[category]
                entry["lotSizeFilter"] = {"qtyStep": spec.lot_size}
            entries.append(entry)
        result = {"category": category, "list": entries, "nextPageCursor": ""}
        return orjson.dumps({"retCode": 0, "retMsg": "OK", "result": result}).decode()

    # ---- WebSocket -------------------------------------------------------------------------

    def open_session(self, path: str) -> VenueSession | HttpReply:
        category = urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1]
        if category not in CATEGORIES:  # /v5/public/{category}, or /{category} under a configured root
            return HttpReply(404, "Not found")
        return BybitSimSession(self, category)

    def window(self, symbol: str, depth: int) -> Window:
        """The current window of ``symbol`` at ``depth``, tracked from now on."""
        key = (symbol, depth)
        if key not in self.windows:
            bids, asks = self.market.book(self.venue, symbol).top(depth)
            self.windows[key] = (dict(bids), dict(asks))
            self.update_ids[key] = 1
        return self.windows[key]

    def snapshot_frame(self, symbol: str, depth: int) -> str:
        bids, asks = self.window(symbol, depth)
        book = self.market.book(self.venue, symbol)
        return self._book_frame(
            "snapshot", symbol, depth, sorted(bids.items(), reverse=True), sorted(asks.items()),
            self.update_ids[symbol, depth], book.last_update_id, None,
        )

    def encode_step(self, step: MarketStep) -> EncodedStep:
        """Frames of this step per topic; a withheld change (the server's dropped-update
        fault) still moves the windows and ``u`` on, so the subscriber sees a gap."""
        changes = {change.symbol: change for change in step.book_changes if change.symbol in self.specs}
        encoded: EncodedStep = {}
        for (symbol, depth), (old_bids, old_asks) in list(self.windows.items()):
            book = self.market.book(self.venue, symbol)
            new_bids, new_asks = (dict(levels) for levels in book.top(depth))
            self.windows[symbol, depth] = (new_bids, new_asks)
            bid_changes = _window_changes(old_bids, new_bids, book.bids)
            ask_changes = _window_changes(old_asks, new_asks, book.asks)
            if not (bid_changes or ask_changes):
                continue
            self.update_ids[symbol, depth] += 1
            change = changes.get(symbol)
            if change is None:
                continue  # dropped by the fault injector: u moved on without it
            encoded[("book", symbol, str(depth))] = [
                self._book_frame(
                    "delta", symbol, depth, sorted(bid_changes, reverse=True), sorted(ask_changes),
                    self.update_ids[symbol, depth], change.last_update_id, change.timestamp_ns,
                )
            ]
        for trade in step.trades:
            if trade.symbol not in self.specs:
                continue
            spec = self.specs[trade.symbol]
            entry = {
                "T": trade.timestamp_ns // MS,
                "s": spec.base + spec.quote,
                "S": "Buy" if trade.aggressor == Side.BID else "Sell",
                "v": self.sizes[trade.symbol].text(trade.lots),
                "p": self.prices[trade.symbol].text(trade.price_ticks),
                "L": "ZeroPlusTick",
                "i": str(trade.trade_id),
                "BT": False,
            }
            message = {"topic": trade_topic(entry["s"]), "type": "snapshot", "ts": entry["T"], "data": [entry]}
            encoded.setdefault(("trade", trade.symbol), []).append(orjson.dumps(message).decode())
        return encoded

    def _book_frame(
        self,
        kind: str,
        symbol: str,
        depth: int,
        bids: Sequence[tuple[int, int]],
        asks: Sequence[tuple[int, int]],
        update_id: int,
        cross_sequence: int,
        timestamp_ns: int | None,
    ) -> str:
        """A snapshot is stamped now (the server's clock), a delta with its change's time."""
        price = self.prices[symbol].text
        size = self.sizes[symbol].text
        native = self.specs[symbol].base + self.specs[symbol].quote
        timestamp_ms = (timestamp_ns if timestamp_ns is not None else time.time_ns()) // MS
        message = {
            "topic": book_topic(depth, native),
            "type": kind,
            "ts": timestamp_ms,
            "data": {
                "s": native,
                "b": [[price(tick), size(lots)] for tick, lots in bids],
                "a": [[price(tick), size(lots)] for tick, lots in asks],
                "u": update_id,
                "seq": cross_sequence,
            },
            "cts": timestamp_ms,
        }
        return orjson.dumps(message).decode()


def _window_changes(old: dict[int, int], new: dict[int, int], book: dict[int, int]) -> list[tuple[int, int]]:
    """Levels of a window update: changed or entered levels, and deletes of levels gone
    from the book (those merely pushed out of the window are left to the client)."""
    changes = [(tick, lots) for tick, lots in new.items() if old.get(tick) != lots]
    changes.extend((tick, 0) for tick in old if tick not in new and tick not in book)
    return changes


class BybitSimSession(VenueSession):
    """One client connection to one category path: its book topics (symbol → depth) and trades."""

    def __init__(self, venue: BybitSimulatedVenue, category: str) -> None:
        self.venue = venue
        self.category = category
        self.connection_id = f"sim-{category}-{id(self):x}"
        self.books: dict[str, int] = {}
        self.trades: set[str] = set()

    def _reply(self, op: str, request_id: Any, success: bool, text: str) -> str:
        return orjson.dumps(
            {"success": success, "ret_msg": text, "conn_id": self.connection_id, "req_id": request_id, "op": op}
        ).decode()

    def on_client_message(self, text: str) -> list[str]:
        try:
            request = orjson.loads(text)
            op = request["op"]
            request_id = request.get("req_id", "")
            topics = request.get("args", [])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return [self._reply("", "", False, "error:request not json")]
        if op == "ping":
            return [self._reply("ping", request_id, True, "pong")]
        if op not in ("subscribe", "unsubscribe") or topics.__class__ is not list:
            return [self._reply(str(op), request_id, False, f"error:unknown op {op}")]
        limit = SUBSCRIBE_ARGS_LIMIT.get(self.category)
        if limit is not None and len(topics) > limit:
            return [self._reply(op, request_id, False, f"error:args size >{limit}")]
        parsed = [self._parse_topic(topic) for topic in topics]
        invalid = [topic for topic, target in zip(topics, parsed) if target is None]
        if invalid:
            return [self._reply(op, request_id, False, f"error:handler not found,topic:{invalid[0]}")]
        replies = [self._reply(op, request_id, True, op if self.category == SPOT else "")]
        for symbol, depth in parsed:
            if op == "unsubscribe":
                if depth is None:
                    self.trades.discard(symbol)
                else:
                    self.books.pop(symbol, None)
            elif depth is None:
                self.trades.add(symbol)
            else:
                self.books[symbol] = depth
                replies.append(self.venue.snapshot_frame(symbol, depth))
        return replies

    def _parse_topic(self, topic: Any) -> tuple[str, int | None] | None:
        """(canonical symbol, depth or None for trades) of a topic this category serves."""
        if topic.__class__ is not str:
            return None
        parts = topic.split(".")
        symbol = self.venue.natives.get((self.category, parts[-1]))
        if symbol is None:
            return None
        if parts[0] == TRADE_CHANNEL and len(parts) == 2:
            return symbol, None
        if parts[0] == BOOK_CHANNEL and len(parts) == 3 and parts[1].isdigit():
            depth = int(parts[1])
            return (symbol, depth) if depth in BOOK_DEPTHS[self.category] else None
        return None

    def frames(self, encoded_step: EncodedStep) -> list[str]:
        frames = []
        for symbol, depth in self.books.items():
            frames.extend(encoded_step.get(("book", symbol, str(depth)), ()))
        for symbol in self.trades:
            frames.extend(encoded_step.get(("trade", symbol), ()))
        return frames


# The recordings are the retired v2 generation, which this module does not read (v5 only).
RECORDED_OPTIONS = None

CONNECTOR = BybitConnector
SIMULATED_VENUE = BybitSimulatedVenue
