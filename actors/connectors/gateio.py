"""Gate.io v4 spot: the protocol in both directions, as data and small functions.

Connector side (sans-IO, driven as described in :mod:`actors.connectors.base`):
instruments from ``GET /api/v4/spot/currency_pairs`` (``BTC_USDT`` → ``BTC/USDT``), one
WebSocket ``/ws/v4/`` per group of pairs with a ``spot.order_book_update`` subscription
(``[pair, "100ms"]``) per pair and one ``spot.trades`` subscription for the group, books
seeded from ``GET /api/v4/spot/order_book?currency_pair=..&limit=100&with_id=true`` and
kept with the official rule (docs/exchanges.md, "13. Gate.io v4 spot"):

- drop an update with ``u < id + 1``;
- the first applied update must straddle it: ``U <= id + 1 <= u``;
- then every update must have ``U == previous u + 1``, anything else is a gap;
- an update with ``"full": true`` replaces the whole book and sets the id to its ``u``.

The ``"full": true`` replacement has no hook in the base; :meth:`GateioConnector.replace_book`
implements it with the base's own steps (reset the feed, load the book, publish it as a
snapshot batch), so the consumer swaps the new book in whole.

Gate's ``100ms`` channel covers up to 100 levels a side, the snapshot is asked at the
same depth, and the book is truncated to it after every update.

Subscribe acks name only the channel; each request carries an ``id`` the server echoes,
and acks without one (the 2021 recording) answer book subscriptions in request order.

Gate's app-level heartbeat is ``{"time":t,"channel":"spot.ping"}`` → ``spot.pong``
(:func:`ping_message`), sent every 5 s like the official client (:meth:`outgoing_messages`),
stamped with the latest wall-clock time the module was handed.

Simulator side: :class:`GateioSimulatedVenue` encodes the simulator's spot market in
Gate's wire format, answers subscribe, unsubscribe and ``spot.ping`` on ``/ws/v4/``, and
can push a ``"full": true`` book on demand (:meth:`GateioSimulatedVenue.push_full_book`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec
import orjson

from actors.connectors.base import (
    MAX_EXCHANGE_TS,
    ConnectionAction,
    Instrument,
    KeepAlive,
    Level,
    OutgoingMessage,
    RecordSink,
    RestSeededConnector,
    SymbolFeed,
    SyncRule,
    SyncState,
    canonical_symbol,
    follows_contiguously,
    parse_levels,
)
from actors.connectors.wire import DecodeError, Integer, PriceLevels, decoder
from shm.records import Reason, Side
from sim.market import FixedPoint, Market, MarketStep
from sim.venue import HttpReply, SimulatedVenue, VenueSession

NAME = "gateio"
REST_BASE_URL = "https://api.gateio.ws"
WS_BASE_URL = "wss://api.gateio.ws"
WS_PATH = "/ws/v4/"
CURRENCY_PAIRS_PATH = "/api/v4/spot/currency_pairs"
ORDER_BOOK_PATH = "/api/v4/spot/order_book"
BOOK_CHANNEL = "spot.order_book_update"
TRADES_CHANNEL = "spot.trades"
PING_CHANNEL = "spot.ping"
PONG_CHANNEL = "spot.pong"
BOOK_INTERVAL = "100ms"
BOOK_INTERVALS = ("100ms", "20ms")
MAX_BOOK_DEPTH = 100  # levels a side the 100ms channel covers

GATE_SYNC = SyncRule(
    is_stale=lambda first_id, last_id, snapshot_id: last_id < snapshot_id + 1,
    bridges=lambda first_id, last_id, snapshot_id: first_id <= snapshot_id + 1 <= last_id,
    follows=follows_contiguously,
)

_CONTINUE = ConnectionAction.CONTINUE  # a global: reading an enum member costs ~125 ns on 3.11
_TRADE_SIDES = {"buy": Side.BID, "sell": Side.ASK}  # "side" is the taker's

OrderBookUpdate = tuple[str, int, int, list[list[str]], list[list[str]], int, bool]
"""(pair, U, u, bids, asks, update time ns, full) of one ``spot.order_book_update``;
levels are still the wire's ``[price, amount]`` texts."""

Trade = tuple[str, float, float, Side, int, int]
"""(pair, price, amount, aggressor side, trade id, trade time ns)."""


# ---------------------------------------------------------------------------------------
# Wire format → values


def parse_currency_pairs(body: str | bytes) -> list[Instrument]:
    """Every pair of a ``/spot/currency_pairs`` body that is not ``untradable``.

    ``precision``/``amount_precision`` are decimal places, so tick and lot are powers of ten.
    """
    instruments = []
    for pair in orjson.loads(body):
        if pair.get("trade_status") == "untradable":
            continue
        instruments.append(
            Instrument(
                canonical=canonical_symbol(pair["base"], pair["quote"]),
                native=pair["id"],
                base=pair["base"],
                quote=pair["quote"],
                tick_size=float(f"1e-{int(pair['precision'])}"),
                lot_size=float(f"1e-{int(pair['amount_precision'])}"),
            )
        )
    return instruments


def parse_order_book(body: str | bytes) -> tuple[int, list[Level], list[Level]]:
    """(id, bids, asks) of a ``/spot/order_book?..&with_id=true`` body (no ``id``: KeyError)."""
    snapshot = orjson.loads(body)
    snapshot_id = snapshot["id"]
    if snapshot_id.__class__ is not int or snapshot_id < 0:
        raise ValueError(f"bad order book id {snapshot_id!r}")
    return snapshot_id, parse_levels(snapshot["bids"]), parse_levels(snapshot["asks"])


def parse_order_book_update(result: dict[str, Any]) -> OrderBookUpdate:
    """An update's ids, time, levels and ``full`` flag; raises KeyError/TypeError/ValueError
    on a malformed one. The levels themselves are validated where they are applied."""
    first_id = result["U"]
    last_id = result["u"]
    update_ms = result["t"]
    bids = result["b"]
    asks = result["a"]
    full = result.get("full", False)
    if not (
        first_id.__class__ is int
        and last_id.__class__ is int
        and update_ms.__class__ is int
        and bids.__class__ is list
        and asks.__class__ is list
        and full.__class__ is bool
    ):
        raise TypeError("bad order book update field types")
    if not 0 < first_id <= last_id:
        raise ValueError(f"bad update id range {first_id}..{last_id}")
    return result["s"], first_id, last_id, bids, asks, update_ms * 1_000_000, full


class TypedBookUpdate(msgspec.Struct, gc=False):
    """An order book update's result as the typed decoder reads it (:mod:`actors.connectors.wire`)."""

    s: str
    U: Integer
    u: Integer
    t: Integer
    b: PriceLevels
    a: PriceLevels
    full: bool | int | float | str = False  # lax would read "false" or 0 as False: only a real false passes


class TypedBookUpdateMessage(msgspec.Struct, gc=False):
    channel: Literal["spot.order_book_update"]
    event: Literal["update"]
    result: TypedBookUpdate


decode_book_update = decoder(TypedBookUpdateMessage).decode
BOOK_UPDATE_HINT = '"spot.order_book_update"'  # frames holding this take the typed decoder first


def milliseconds_text_to_ns(value: object) -> int:
    """Gate's ``create_time_ms``: an int, or a decimal text with a fraction ("1619093543708.2642")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value * 1_000_000
    if not isinstance(value, str):
        raise TypeError(f"bad millisecond time {value!r}")
    whole, _, fraction = value.partition(".")
    if not (whole.isdigit() and (fraction.isdigit() or not fraction)):
        raise ValueError(f"bad millisecond time {value!r}")
    return int(whole) * 1_000_000 + int((fraction + "000000")[:6])


def parse_trade(result: dict[str, Any]) -> Trade:
    ((price, amount),) = parse_levels(((result["price"], result["amount"]),))
    if not amount:
        raise ValueError("zero trade amount")
    trade_id = result["id"]
    if trade_id.__class__ is not int:
        raise TypeError("trade id must be an integer")
    return (
        result["currency_pair"],
        price,
        amount,
        _TRADE_SIDES[result["side"]],
        trade_id,
        milliseconds_text_to_ns(result["create_time_ms"]),
    )


def request_message(channel: str, event: str, payload: Sequence[str], request_id: int, time_s: int) -> str:
    return orjson.dumps(
        {"time": time_s, "id": request_id, "channel": channel, "event": event, "payload": list(payload)}
    ).decode()


def ping_message(now_ns: int) -> str:
    return orjson.dumps({"time": now_ns // 1_000_000_000, "channel": PING_CHANNEL}).decode()


def snapshot_url(rest_base_url: str, native: str, limit: int = MAX_BOOK_DEPTH) -> str:
    return f"{rest_base_url}{ORDER_BOOK_PATH}?currency_pair={native}&limit={limit}&with_id=true"


# ---------------------------------------------------------------------------------------
# Connector


class GateioConnector(RestSeededConnector):
    """Gate.io spot books (``spot.order_book_update``) and trades (``spot.trades``)."""

    name = NAME
    sync_rule = GATE_SYNC
    streams_per_connection = 100  # pairs a connection; Gate sets no limit, this bounds a subscribe burst
    app_ping_interval_s = 5.0  # spot.ping, as the official client
    snapshot_requests_per_minute = 300  # a conservative share of Gate's public REST limit

    def __init__(
        self,
        sink: RecordSink,
        exchange_id: int,
        symbol_ids: Mapping[str, int],
        *,
        rest_base_url: str = REST_BASE_URL,
        ws_base_url: str = WS_BASE_URL,
        snapshot_limit: int = MAX_BOOK_DEPTH,
        stale_after_s: float = 60.0,
        depth_limit: int | None = MAX_BOOK_DEPTH,
    ) -> None:
        """``snapshot_limit`` and ``depth_limit`` are capped at the channel's 100 levels:
        deeper levels are never kept in step by the stream."""
        if snapshot_limit <= 0:
            raise ValueError(f"snapshot_limit must be positive, got {snapshot_limit}")
        super().__init__(
            sink,
            exchange_id,
            symbol_ids,
            stale_after_s=stale_after_s,
            depth_limit=min(depth_limit or MAX_BOOK_DEPTH, MAX_BOOK_DEPTH),
            subscribe_by_message=True,  # Gate has no subscription by URL
        )
        self.rest_base_url = rest_base_url.rstrip("/")
        self.ws_base_url = ws_base_url.rstrip("/")
        self.snapshot_limit = min(snapshot_limit, MAX_BOOK_DEPTH)
        self._request_ids = itertools.count(1)
        self._request_time_s = 0
        self._wall_ns = 0  # the latest wall-clock stamp handed in, for spot.ping's "time"
        self.keepalive = KeepAlive(lambda connection: ping_message(self._wall_ns))
        self._pending_books: list[dict[int, SymbolFeed]] = []  # per connection: request id → feed

    @property
    def instruments_url(self) -> str:
        return f"{self.rest_base_url}{CURRENCY_PAIRS_PATH}"

    def parse_instruments(self, body: str | bytes) -> list[Instrument]:
        return parse_currency_pairs(body)

    def use_instruments(self, instruments: Sequence[Instrument]) -> list[Instrument]:
        chosen = super().use_instruments(instruments)
        self._pending_books = [{} for _ in self.connections]
        return chosen

    def streams_for(self, instrument: Instrument) -> list[str]:
        """One "stream" per pair: its book and trade subscriptions go together."""
        return [instrument.native]

    def connection_url(self, streams: Sequence[str]) -> str:
        return f"{self.ws_base_url}{WS_PATH}"

    def on_open(self, connection: int, now_ns: int) -> list[str]:
        self._request_time_s = now_ns // 1_000_000_000  # Gate refuses requests stamped > 60 s off
        self._wall_ns = now_ns
        self.keepalive.start(connection, self.app_ping_interval_s)
        return super().on_open(connection, now_ns)

    def on_close(self, connection: int, now_ns: int, reason: Reason = Reason.DISCONNECTED) -> None:
        self.keepalive.stop(connection)
        super().on_close(connection, now_ns, reason)

    def outgoing_messages(self, now_ns: int) -> list[OutgoingMessage]:
        return self.keepalive.due(now_ns)

    def subscribe_messages(self, connection: int, streams: Sequence[str]) -> list[str]:
        """One book subscription per pair (the channel takes one), one trades subscription."""
        pending = self._pending_books[connection]
        pending.clear()
        messages = []
        for native in streams:
            request_id = next(self._request_ids)
            pending[request_id] = self.feeds[native]
            messages.append(
                request_message(BOOK_CHANNEL, "subscribe", (native, BOOK_INTERVAL), request_id, self._request_time_s)
            )
        messages.append(
            request_message(TRADES_CHANNEL, "subscribe", streams, next(self._request_ids), self._request_time_s)
        )
        return messages

    def snapshot_url(self, instrument: Instrument) -> str:
        return snapshot_url(self.rest_base_url, instrument.native, self.snapshot_limit)

    def parse_snapshot(self, body: str | bytes) -> tuple[int, list[Level], list[Level]]:
        return parse_order_book(body)

    # ---- frames ---------------------------------------------------------------------------

    def on_message(self, connection: int, data: str | bytes, receive_ts: int) -> ConnectionAction:
        """Route one frame; bad frames are counted and dropped, never raised."""
        self._wall_ns = receive_ts
        if self._resend_queue:
            self.flush(receive_ts)
        connection_counters = self.connection_counters[connection]
        connection_counters.frames += 1
        if data.__class__ is str and BOOK_UPDATE_HINT in data:
            try:
                update = decode_book_update(data).result
            except DecodeError:
                pass  # the generic path below reads it, or says what is wrong with it
            else:
                feed = self.feeds.get(update.s)
                first_id = update.U
                last_id = update.u
                update_ms = update.t
                if (
                    feed is not None
                    and update.full is False
                    and first_id.__class__ is int
                    and last_id.__class__ is int
                    and update_ms.__class__ is int
                    and 0 < first_id <= last_id
                ):
                    self.on_parsed_delta(feed, first_id, last_id, 0, update.b, update.a, update_ms * 1_000_000, receive_ts)
                    return _CONTINUE
        try:
            message = orjson.loads(data)
            channel = message.get("channel")
            event = message.get("event")
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            connection_counters.malformed_frames += 1
            self.frame_rejected = True
            return _CONTINUE
        if event == "update":
            result = message.get("result")
            if result.__class__ is not dict:
                connection_counters.malformed_frames += 1
                self.frame_rejected = True
            elif channel == BOOK_CHANNEL:
                feed = self.feeds.get(result.get("s"))
                if feed is None:
                    connection_counters.unknown_symbol_frames += 1
                    self.frame_rejected = True
                    return _CONTINUE
                # parse_order_book_update's checks written out for a plain update (a call and a
                # tuple less a frame); anything else takes it: it stays the authority on what is
                # valid, and a "full" update replaces the book.
                first_id = result.get("U")
                last_id = result.get("u")
                update_ms = result.get("t")
                bids = result.get("b")
                asks = result.get("a")
                if (
                    first_id.__class__ is int
                    and last_id.__class__ is int
                    and update_ms.__class__ is int
                    and bids.__class__ is list
                    and asks.__class__ is list
                    and "full" not in result
                    and 0 < first_id <= last_id
                ):
                    self.on_delta(feed, first_id, last_id, 0, bids, asks, update_ms * 1_000_000, receive_ts)
                else:
                    self._on_book_update(feed, result, receive_ts)
            elif channel == TRADES_CHANNEL:
                self._on_trade(result, receive_ts, connection)
            else:
                connection_counters.ignored_frames += 1
            return _CONTINUE
        if message.get("error") is not None:
            return self._on_error(message, connection)
        if event == "subscribe":
            self._on_subscribed(connection, channel, message.get("id"), receive_ts)
            return _CONTINUE
        connection_counters.ignored_frames += 1  # spot.pong, unsubscribe acks
        return _CONTINUE

    def _on_book_update(self, feed: SymbolFeed, result: dict[str, Any], receive_ts: int) -> None:
        try:
            _pair, first_id, last_id, bids, asks, exchange_ts, full = parse_order_book_update(result)
        except (KeyError, TypeError, ValueError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            return
        if full:
            self.replace_book(feed, last_id, bids, asks, exchange_ts, receive_ts)
        else:
            self.on_delta(feed, first_id, last_id, 0, bids, asks, exchange_ts, receive_ts)

    def replace_book(
        self,
        feed: SymbolFeed,
        last_id: int,
        raw_bids: Sequence[Sequence[object]],
        raw_asks: Sequence[Sequence[object]],
        exchange_ts: int,
        receive_ts: int,
    ) -> None:
        """A ``"full": true`` update: the whole book at ``last_id``. Like a snapshot it
        supersedes anything buffered and any snapshot in flight; it is published as a
        snapshot batch, and the next update must start at ``last_id + 1``."""
        counters = feed.counters
        counters.frames += 1
        if not 0 <= exchange_ts <= MAX_EXCHANGE_TS:  # no record can hold it (MAX_EXCHANGE_TS)
            counters.parse_errors += 1
            self.frame_rejected = True
            self._resync(feed, Reason.MALFORMED, receive_ts)
            return
        counters.last_exchange_ts = exchange_ts
        counters.receive_lag_ns = receive_ts - exchange_ts
        if feed.state not in (SyncState.BUFFERING, SyncState.LIVE):
            counters.frames_dropped += 1
            return
        try:
            bids = parse_levels(raw_bids)
            asks = parse_levels(raw_asks)
        except (ValueError, TypeError):
            counters.parse_errors += 1
            self.frame_rejected = True
            self._resync(feed, Reason.MALFORMED, receive_ts)  # the book it carried is lost
            return
        self._reset(feed, SyncState.LIVE)
        book = feed.book
        book.load(bids, asks)
        feed.last_id = last_id
        feed.bridged = True
        counters.snapshots += 1
        counters.frames_applied += 1
        counters.levels_applied += len(bids) + len(asks)
        if self.depth_limit is not None:
            book.truncate(self.depth_limit)
        if book.is_crossed():
            counters.crossed += 1
            self._resync(feed, Reason.CROSSED, receive_ts)
            return
        if feed.records.snapshot(book, last_id, exchange_ts, receive_ts):
            feed.resend_pending = False
        self._after_write()

    def _on_trade(self, result: dict[str, Any], receive_ts: int, connection: int) -> None:
        feed = self.feeds.get(result.get("currency_pair"))
        if feed is None:
            self.connection_counters[connection].unknown_symbol_frames += 1
            self.frame_rejected = True
            return
        try:
            _pair, price, amount, aggressor, trade_id, trade_ts = parse_trade(result)
        except (KeyError, TypeError, ValueError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            return
        feed.counters.trades += 1
        if not feed.records.trade(price, amount, aggressor, trade_id, trade_ts, receive_ts):
            self._after_write()

    def _on_subscribed(self, connection: int, channel: object, request_id: object, receive_ts: int) -> None:
        self.connection_counters[connection].subscribe_acks += 1
        if channel != BOOK_CHANNEL:
            return
        pending = self._pending_books[connection]
        feed = pending.pop(request_id, None) if isinstance(request_id, int) else None
        if feed is None and pending:
            feed = pending.pop(next(iter(pending)))  # an ack without an id answers the oldest request
        if feed is not None and feed.state == SyncState.SUBSCRIBING:
            self.subscription_live((feed,), receive_ts)

    def _on_error(self, message: dict[str, Any], connection: int) -> ConnectionAction:
        """``{"error":{"code":..,"message":..},..}``: the subscription state of the
        connection is unknown, so start it over."""
        counters = self.connection_counters[connection]
        counters.subscribe_errors += 1
        error = message["error"]
        if isinstance(error, dict):
            counters.last_error = f"{error.get('code')}: {error.get('message')}"
        else:
            counters.last_error = str(error)
        return ConnectionAction.RECONNECT


# ---------------------------------------------------------------------------------------
# Simulator side

TRADE_DECIMAL_PLACES = 10  # trades carry fixed 10-decimal texts ("0.2010000000")


def _decimal_places(step: str) -> int:
    _, _, fraction = step.partition(".")
    return len(fraction)


def _fractional_milliseconds(timestamp_ns: int) -> str:
    """Trade times as Gate writes them: milliseconds with four decimals ("1619093543708.2642")."""
    return f"{timestamp_ns // 1_000_000}.{timestamp_ns % 1_000_000 // 100:04d}"


def _gate_text(fixed: FixedPoint, count: int) -> str:
    """Gate writes book prices and amounts without trailing zeros ("10.63", "5")."""
    text = fixed.text(count)
    return text.rstrip("0").rstrip(".") if "." in text else text


class GateioSimulatedVenue(SimulatedVenue):
    """The simulator's spot market as Gate.io v4 serves it."""

    def __init__(self, market: Market, venue: str = NAME) -> None:
        super().__init__(market, venue)
        self.pairs = {
            f"{spec.base}_{spec.quote}": spec for spec in market.symbols.values() if not spec.perpetual
        }  # native → spec
        self.natives = {spec.canonical: native for native, spec in self.pairs.items()}
        self.prices = {
            native: FixedPoint(spec.tick_size, _decimal_places(spec.tick_size)) for native, spec in self.pairs.items()
        }
        self.amounts = {
            native: FixedPoint(spec.lot_size, _decimal_places(spec.lot_size)) for native, spec in self.pairs.items()
        }
        self.trade_prices = {
            native: FixedPoint(spec.tick_size, TRADE_DECIMAL_PLACES) for native, spec in self.pairs.items()
        }
        self.trade_amounts = {
            native: FixedPoint(spec.lot_size, TRADE_DECIMAL_PLACES) for native, spec in self.pairs.items()
        }
        self._full_books_due: set[str] = set()

    def push_full_book(self, symbol: str) -> None:
        """After the next step, send ``symbol``'s whole book as a ``"full": true`` update."""
        self._full_books_due.add(symbol)

    # ---- REST ------------------------------------------------------------------------

    def http(self, path: str, query: Mapping[str, str]) -> HttpReply:
        if path == CURRENCY_PAIRS_PATH:
            return HttpReply(200, self.currency_pairs_body())
        if path == ORDER_BOOK_PATH:
            native = query.get("currency_pair", "")
            if native not in self.pairs:
                return HttpReply(400, '{"label":"INVALID_CURRENCY_PAIR","message":"Invalid currency pair"}')
            try:
                limit = int(query.get("limit", "10"))
            except ValueError:
                limit = 0
            if limit <= 0:
                return HttpReply(400, '{"label":"INVALID_PARAM_VALUE","message":"Invalid limit"}')
            return HttpReply(200, self.order_book_body(native, limit, query.get("with_id") == "true"))
        return HttpReply(404, '{"label":"NOT_FOUND","message":"Not found"}')

    def is_snapshot_request(self, path: str) -> bool:
        return path == ORDER_BOOK_PATH

    def currency_pairs_body(self) -> str:
        return orjson.dumps(
            [
                {
                    "id": native,
                    "base": spec.base,
                    "quote": spec.quote,
                    "fee": "0.2",
                    "min_base_amount": _gate_text(self.amounts[native], 1),
                    "amount_precision": self.amounts[native].places,
                    "precision": self.prices[native].places,
                    "trade_status": "tradable",
                    "sell_start": 0,
                    "buy_start": 0,
                }
                for native, spec in self.pairs.items()
            ]
        ).decode()

    def order_book_body(self, native: str, limit: int, with_id: bool) -> str:
        book = self.market.book(self.venue, self.pairs[native].canonical)
        bids, asks = book.top(limit)
        now_ms = time.time_ns() // 1_000_000
        body: dict[str, Any] = {"id": book.last_update_id} if with_id else {}  # the id only on request
        body |= {
            "current": now_ms,
            "update": now_ms,
            "asks": self._levels(native, asks),
            "bids": self._levels(native, bids),
        }
        return orjson.dumps(body).decode()

    def _levels(self, native: str, levels: Sequence[tuple[int, int]]) -> list[list[str]]:
        prices = self.prices[native]
        amounts = self.amounts[native]
        return [[_gate_text(prices, tick), _gate_text(amounts, lots)] for tick, lots in levels]

    # ---- WebSocket -------------------------------------------------------------------

    def open_session(self, path: str) -> VenueSession | HttpReply:
        if path.split("?")[0].rstrip("/") != WS_PATH.rstrip("/"):
            return HttpReply(404, "Not found")
        return GateioSimSession(self)

    def encode_step(self, step: MarketStep) -> dict[tuple[str, str], list[str]]:
        """(channel, pair) → this step's frames, encoded once for every session."""
        by_subscription: dict[tuple[str, str], list[str]] = {}
        time_s = step.timestamp_ns // 1_000_000_000
        time_ms = step.timestamp_ns // 1_000_000
        for change in step.book_changes:
            native = self.natives.get(change.symbol)
            if native is None:
                continue
            frame = self._book_update(
                native, time_ms, change.first_update_id, change.last_update_id, change.bids, change.asks, False
            )
            by_subscription.setdefault((BOOK_CHANNEL, native), []).append(frame)
        for symbol in sorted(self._full_books_due):
            native = self.natives[symbol]
            book = self.market.book(self.venue, symbol)
            bids, asks = book.top(MAX_BOOK_DEPTH)
            update_id = book.last_update_id
            frame = self._book_update(native, time_ms, update_id, update_id, bids, asks, True)
            by_subscription.setdefault((BOOK_CHANNEL, native), []).append(frame)
        self._full_books_due.clear()
        for trade in step.trades:
            native = self.natives.get(trade.symbol)
            if native is None:
                continue
            frame = orjson.dumps(
                {
                    "time": time_s,
                    "time_ms": time_ms,
                    "channel": TRADES_CHANNEL,
                    "event": "update",
                    "result": {
                        "id": trade.trade_id,
                        "create_time": trade.timestamp_ns // 1_000_000_000,
                        "create_time_ms": _fractional_milliseconds(trade.timestamp_ns),
                        "side": "buy" if trade.aggressor == Side.BID else "sell",
                        "currency_pair": native,
                        "amount": self.trade_amounts[native].text(trade.lots),
                        "price": self.trade_prices[native].text(trade.price_ticks),
                    },
                }
            ).decode()
            by_subscription.setdefault((TRADES_CHANNEL, native), []).append(frame)
        return by_subscription

    def _book_update(
        self,
        native: str,
        time_ms: int,
        first_id: int,
        last_id: int,
        bids: Sequence[tuple[int, int]],
        asks: Sequence[tuple[int, int]],
        full: bool,
    ) -> str:
        result: dict[str, Any] = {
            "t": time_ms,
            "e": "depthUpdate",
            "E": time_ms // 1000,
            "s": native,
            "U": first_id,
            "u": last_id,
            "b": self._levels(native, bids),
            "a": self._levels(native, asks),
        }
        if full:
            result["full"] = True
        return orjson.dumps(
            {"time": time_ms // 1000, "time_ms": time_ms, "channel": BOOK_CHANNEL, "event": "update", "result": result}
        ).decode()


class GateioSimSession(VenueSession):
    """One client connection and its book and trade subscriptions (by pair)."""

    def __init__(self, venue: GateioSimulatedVenue) -> None:
        self.venue = venue
        self.subscriptions: dict[tuple[str, str], None] = {}  # (channel, pair), in subscribe order

    def on_client_message(self, text: str) -> list[str]:
        now_ns = time.time_ns()
        try:
            request = orjson.loads(text)
            channel = request["channel"]
            event = request.get("event", "")
            payload = request.get("payload", [])
            request_id = request.get("id")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return [_reply(now_ns, None, "", "", error=(1, "invalid request body"))]
        if channel == PING_CHANNEL:
            return [_reply(now_ns, request_id, PONG_CHANNEL, "")]
        if event not in ("subscribe", "unsubscribe"):
            return [_reply(now_ns, request_id, channel, event, error=(1, f"unknown event {event}"))]
        keys = self._subscription_keys(channel, payload)
        if isinstance(keys, str):
            return [_reply(now_ns, request_id, channel, event, error=(2, keys))]
        for key in keys:
            if event == "subscribe":
                self.subscriptions[key] = None
            else:
                self.subscriptions.pop(key, None)
        return [_reply(now_ns, request_id, channel, event, result={"status": "success"})]

    def _subscription_keys(self, channel: object, payload: object) -> list[tuple[str, str]] | str:
        """The (channel, pair) keys a request names, or the error message."""
        if not isinstance(payload, list) or not all(isinstance(item, str) for item in payload):
            return "payload must be a list of strings"
        if channel == BOOK_CHANNEL:
            if len(payload) != 2 or payload[1] not in BOOK_INTERVALS:
                return f"payload must be [currency_pair, interval in {BOOK_INTERVALS}]"
            pairs = payload[:1]
        elif channel == TRADES_CHANNEL:
            pairs = payload
        else:
            return f"unknown channel {channel}"
        unknown = [pair for pair in pairs if pair not in self.venue.pairs]
        if unknown:
            return f"unknown currency pair {unknown[0]}"
        return [(channel, pair) for pair in pairs]

    def frames(self, encoded_step: dict[tuple[str, str], list[str]]) -> list[str]:
        return [frame for key in self.subscriptions for frame in encoded_step.get(key, ())]


def _reply(
    now_ns: int,
    request_id: object,
    channel: str,
    event: str,
    result: object = None,
    error: tuple[int, str] | None = None,
) -> str:
    message: dict[str, Any] = {"time": now_ns // 1_000_000_000, "time_ms": now_ns // 1_000_000}
    if request_id is not None:
        message["id"] = request_id
    message |= {"channel": channel, "event": event}
    if error is not None:
        message["error"] = {"code": error[0], "message": error[1]}
    message["result"] = result
    return orjson.dumps(message).decode()


CONNECTOR = GateioConnector
SIMULATED_VENUE = GateioSimulatedVenue
