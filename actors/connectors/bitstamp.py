"""Bitstamp: the protocol in both directions, as data and small functions.

Connector side (sans-IO, driven as described in :mod:`actors.connectors.base`), per
docs/exchanges.md "12. Bitstamp": instruments from ``GET /api/v2/trading-pairs-info/``
(``name`` ``BTC/USD`` → canonical, ``url_symbol`` ``btcusd`` native), one connection to
``wss://ws.bitstamp.net`` with a ``bts:subscribe`` per channel
(``diff_order_book_{pair}``, ``live_trades_{pair}``); the diff channel's
``bts:subscription_succeeded`` makes the book buffer and ask for
``GET /api/v2/order_book/{pair}/``. ``bts:request_reconnect`` reconnects (the books are
rebuilt); ``{"event":"bts:heartbeat"}`` is sent every ``keepalive_interval_s`` and its
answer keeps quiet connections from looking stale.

Sync: Bitstamp has no sequence numbers; ``microtimestamp`` (µs) is the only id. A diff
with ``microtimestamp <=`` the snapshot's is dropped, the rest are applied in order.

What gap detection can and cannot mean here. A lost diff cannot be detected: nothing
numbers the diffs, so the book silently differs until the level is touched again. What
is detected: a diff whose ``microtimestamp`` goes backwards (out of order, treated as a
gap: CLEAR + resync), a crossed book after any diff (CLEAR + resync), a malformed diff
(resync), and every disconnect, stale stream or ``bts:request_reconnect`` (the books
are cleared and rebuilt from a new snapshot). That is all the venue allows; a periodic
re-snapshot comparison is the remaining remedy and is not done here.

Simulator side: :class:`BitstampSimulatedVenue` serves trading-pairs-info, order books
with ``microtimestamp``, ``bts:subscribe``/``bts:heartbeat``, and ``data``/``trade``
events whose ``microtimestamp`` strictly increases per pair.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import msgspec
import orjson

from actors.connectors.base import (
    ConnectionAction,
    ExchangeSettings,
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
    parse_levels,
)
from actors.connectors.wire import DecodeError, Integer, PriceLevels, decoder
from shm.records import Reason, Side
from sim.market import FixedPoint, Market, MarketStep
from sim.venue import HttpReply, SimulatedVenue, VenueSession

NAME = "bitstamp"
REST_BASE_URL = "https://www.bitstamp.net"
WS_URL = "wss://ws.bitstamp.net"
PAIRS_PATH = "/api/v2/trading-pairs-info/"
ORDER_BOOK_PATH = "/api/v2/order_book/"
DIFF_CHANNEL = "diff_order_book_"
TRADES_CHANNEL = "live_trades_"
HEARTBEAT = '{"event":"bts:heartbeat"}'

BITSTAMP_SYNC = SyncRule(
    is_stale=lambda first_id, last_id, snapshot_id: last_id <= snapshot_id,
    bridges=lambda first_id, last_id, snapshot_id: (
        last_id > snapshot_id
    ),  # no ids to bridge with
    follows=lambda first_id, previous_id, prior_last_id: first_id >= prior_last_id,
)

_CONTINUE = (
    ConnectionAction.CONTINUE
)  # a global: reading an enum member costs ~125 ns on 3.11


# ---------------------------------------------------------------------------------------
# Wire format → values


def parse_pairs(body: str | bytes) -> list[Instrument]:
    """Every enabled pair of a trading-pairs-info body; tick and lot from the decimals."""
    instruments = []
    for pair in orjson.loads(body):
        if pair.get("trading") != "Enabled":
            continue
        base, _, quote = pair["name"].partition("/")
        instruments.append(
            Instrument(
                canonical=canonical_symbol(base, quote),
                native=pair["url_symbol"],
                base=base,
                quote=quote,
                tick_size=10.0 ** -pair["counter_decimals"],
                lot_size=10.0 ** -pair["base_decimals"],
            )
        )
    return instruments


class TypedDiff(msgspec.Struct):
    """A diff's data as the typed decoder reads it (:mod:`actors.connectors.wire`)."""

    microtimestamp: Integer  # a decimal string: int() of it, as in the generic path
    bids: PriceLevels
    asks: PriceLevels


class TypedDiffMessage(msgspec.Struct):
    event: Literal["data"]
    channel: str
    data: TypedDiff


decode_diff = decoder(TypedDiffMessage).decode
DIFF_HINT = f'"{DIFF_CHANNEL}'  # frames holding this take the typed decoder first


def parse_order_book(body: str | bytes) -> tuple[int, list[Level], list[Level]]:
    """(microtimestamp, bids, asks) of a ``GET /api/v2/order_book/{pair}/`` body."""
    book = orjson.loads(body)
    return (
        int(book["microtimestamp"]),
        parse_levels(book["bids"]),
        parse_levels(book["asks"]),
    )


def parse_trade(data: dict[str, Any]) -> tuple[float, float, Side, int, int]:
    """(price, amount, aggressor, id, time ns); ``type`` 0 is a buy taker, 1 a sell."""
    ((price, amount),) = parse_levels(((data["price_str"], data["amount_str"]),))
    trade_type = data["type"]
    trade_id = data["id"]
    if not amount or trade_type not in (0, 1) or trade_id.__class__ is not int:
        raise ValueError("bad trade")
    return (
        price,
        amount,
        Side.BID if trade_type == 0 else Side.ASK,
        trade_id,
        int(data["microtimestamp"]) * 1000,
    )


def subscribe_message(channel: str) -> str:
    return orjson.dumps(
        {"event": "bts:subscribe", "data": {"channel": channel}}
    ).decode()


# ---------------------------------------------------------------------------------------
# Connector


class BitstampConnector(RestSeededConnector):
    """Bitstamp books (diffs on a REST snapshot) and trades."""

    name = NAME
    sync_rule = BITSTAMP_SYNC
    streams_per_connection = 200
    snapshot_requests_per_minute = (
        120  # REST allows 8,000-10,000 requests per 10 minutes
    )

    def __init__(
        self,
        sink: RecordSink,
        exchange_id: int,
        symbol_ids: Mapping[str, int],
        *,
        rest_base_url: str = REST_BASE_URL,
        ws_url: str = WS_URL,
        keepalive_interval_s: float | None = 20.0,
        stale_after_s: float = 60.0,
        depth_limit: int | None = None,
    ) -> None:
        super().__init__(
            sink,
            exchange_id,
            symbol_ids,
            stale_after_s=stale_after_s,
            depth_limit=depth_limit,
            subscribe_by_message=True,
        )
        self.rest_base_url = rest_base_url.rstrip("/")
        self.ws_url = ws_url
        self.keepalive_interval_s = keepalive_interval_s
        self.keepalive = KeepAlive(lambda connection: HEARTBEAT)
        self._feeds_by_diff_channel: dict[str, SymbolFeed] = {}

    @classmethod
    def from_settings(
        cls, sink: RecordSink, exchange_id: int, symbol_ids: Mapping[str, int], settings: ExchangeSettings
    ) -> "BitstampConnector":
        """Bitstamp's REST book has no depth parameter: the whole book comes, trimmed to
        ``snapshot_depth`` levels a side."""
        urls = {}
        if settings.ws_url:
            urls["ws_url"] = settings.ws_url
        if settings.rest_url:
            urls["rest_base_url"] = settings.rest_url
        connector = cls(
            sink, exchange_id, symbol_ids, stale_after_s=settings.stale_after_s, depth_limit=settings.snapshot_depth, **urls
        )
        connector.limit_connections(settings.max_streams_per_connection)
        return connector

    @property
    def instruments_url(self) -> str:
        return f"{self.rest_base_url}{PAIRS_PATH}"

    def parse_instruments(self, body: str | bytes) -> list[Instrument]:
        return parse_pairs(body)

    def use_instruments(self, instruments: Iterable[Instrument]) -> list[Instrument]:
        chosen = super().use_instruments(instruments)
        # A diff's channel names its book: one lookup a frame instead of a prefix test and a slice.
        self._feeds_by_diff_channel = {f"{DIFF_CHANNEL}{native}": feed for native, feed in self.feeds.items()}
        return chosen

    def streams_for(self, instrument: Instrument) -> list[str]:
        return [
            f"{DIFF_CHANNEL}{instrument.native}",
            f"{TRADES_CHANNEL}{instrument.native}",
        ]

    def connection_url(self, streams: Sequence[str]) -> str:
        return self.ws_url

    def on_open(self, connection: int, now_ns: int) -> list[str]:
        if self.keepalive_interval_s:
            self.keepalive.start(connection, self.keepalive_interval_s)
        return super().on_open(connection, now_ns)

    def on_close(self, connection: int, now_ns: int, reason: Reason = Reason.DISCONNECTED) -> None:
        self.keepalive.stop(connection)
        super().on_close(connection, now_ns, reason)

    def outgoing_messages(self, now_ns: int) -> list[OutgoingMessage]:
        """``bts:heartbeat`` every ``keepalive_interval_s`` on each open connection."""
        return self.keepalive.due(now_ns)

    def subscribe_messages(self, connection: int, streams: Sequence[str]) -> list[str]:
        return [subscribe_message(stream) for stream in streams]

    def snapshot_url(self, instrument: Instrument) -> str:
        return f"{self.rest_base_url}{ORDER_BOOK_PATH}{instrument.native}/"

    def parse_snapshot(self, body: str | bytes) -> tuple[int, list[Level], list[Level]]:
        return parse_order_book(body)

    def on_message(
        self, connection: int, data: str | bytes, receive_ts: int
    ) -> ConnectionAction:
        """Route one frame; bad frames are counted and dropped, never raised."""
        if self._resend_queue:
            self.flush(receive_ts)
        connection_counters = self.connection_counters[connection]
        connection_counters.frames += 1
        if data.__class__ is str and DIFF_HINT in data:
            try:
                message = decode_diff(data)
                diff = message.data
                microtimestamp = int(diff.microtimestamp)
            except (DecodeError, ValueError):
                pass  # the generic path below reads it, or says what is wrong with it
            else:
                feed = self._feeds_by_diff_channel.get(message.channel)
                if feed is not None and microtimestamp > 0:
                    self.on_parsed_delta(
                        feed, microtimestamp, microtimestamp, 0, diff.bids, diff.asks, microtimestamp * 1000, receive_ts
                    )
                    return _CONTINUE
        try:
            message = orjson.loads(data)
            event = message.get("event")
            channel = message.get("channel")
            payload = message.get("data")
        except (orjson.JSONDecodeError, AttributeError):
            connection_counters.malformed_frames += 1
            self.frame_rejected = True
            return _CONTINUE
        if not isinstance(channel, str):
            connection_counters.malformed_frames += 1
            self.frame_rejected = True
            return _CONTINUE
        if event == "data":
            feed = self._feeds_by_diff_channel.get(channel)
            if feed is None:
                connection_counters.unknown_symbol_frames += 1
                self.frame_rejected = True
                return _CONTINUE
            # A diff's fields read here rather than by a parse function: a call and a tuple
            # less on every frame. ``microtimestamp`` (µs) is the diff's only id.
            try:
                microtimestamp = int(payload["microtimestamp"])
                bids = payload["bids"]
                asks = payload["asks"]
            except (KeyError, TypeError, ValueError, AttributeError):
                feed.counters.parse_errors += 1
                self.frame_rejected = True
                return _CONTINUE
            if microtimestamp <= 0 or bids.__class__ is not list or asks.__class__ is not list:
                feed.counters.parse_errors += 1
                self.frame_rejected = True
                return _CONTINUE
            self.on_delta(feed, microtimestamp, microtimestamp, 0, bids, asks, microtimestamp * 1000, receive_ts)
            return _CONTINUE
        if event == "trade":
            self._on_trade(channel, payload, receive_ts, connection)
            return _CONTINUE
        if event == "bts:subscription_succeeded":
            connection_counters.subscribe_acks += 1
            feed = (
                self.feeds.get(channel[len(DIFF_CHANNEL) :])
                if channel.startswith(DIFF_CHANNEL)
                else None
            )
            if feed is not None and feed.state == SyncState.SUBSCRIBING:
                self.subscription_live((feed,), receive_ts)
            return _CONTINUE
        if event == "bts:request_reconnect":
            # Bitstamp is about to drop the connection (maintenance): move over now.
            connection_counters.server_shutdowns += 1
            return ConnectionAction.RECONNECT
        if event == "bts:error":
            connection_counters.subscribe_errors += 1
            connection_counters.last_error = str(payload)
            return ConnectionAction.RECONNECT
        connection_counters.ignored_frames += (
            1  # heartbeat answers, connection_established
        )
        return _CONTINUE

    def _on_trade(
        self, channel: str, payload: object, receive_ts: int, connection: int
    ) -> None:
        feed = (
            self.feeds.get(channel[len(TRADES_CHANNEL) :])
            if channel.startswith(TRADES_CHANNEL)
            else None
        )
        if feed is None:
            self.connection_counters[connection].unknown_symbol_frames += 1
            self.frame_rejected = True
            return
        try:
            price, amount, aggressor, trade_id, trade_ts = parse_trade(payload)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            return
        feed.counters.trades += 1
        if not feed.records.trade(
            price, amount, aggressor, trade_id, trade_ts, receive_ts
        ):
            self._after_write()


# ---------------------------------------------------------------------------------------
# Simulator side

DECIMAL_PLACES = 8


class BitstampSimulatedVenue(SimulatedVenue):
    """The simulator's market as Bitstamp serves it.

    ``microtimestamp`` of a pair's diff is its step's time, made strictly increasing per
    pair; an order book carries the ``microtimestamp`` of the last step it contains, so
    exactly the diffs the snapshot holds have ``microtimestamp <=`` its own.
    """

    def __init__(self, market: Market, venue: str = NAME) -> None:
        super().__init__(market, venue)
        self.symbols = {
            (spec.base + spec.quote).lower(): spec
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
        self._microtimestamp = 0  # of the last encoded step, venue-wide

    def http(self, path: str, query: Mapping[str, str]) -> HttpReply:
        if path == PAIRS_PATH:
            return HttpReply(200, self.pairs_body())
        if path.startswith(ORDER_BOOK_PATH):
            native = path[len(ORDER_BOOK_PATH) :].strip("/")
            if native not in self.symbols:
                return HttpReply(404, '{"status":"error","reason":"Not found"}')
            return HttpReply(200, self.order_book_body(native))
        return HttpReply(404, '{"status":"error","reason":"Not found"}')

    def is_snapshot_request(self, path: str) -> bool:
        return path.startswith(ORDER_BOOK_PATH)

    def pairs_body(self) -> str:
        pairs = [
            {
                "name": f"{spec.base}/{spec.quote}",
                "url_symbol": native,
                "base_decimals": self.sizes[native].places,
                "counter_decimals": self.prices[native].places,
                "trading": "Enabled",
            }
            for native, spec in self.symbols.items()
        ]
        return orjson.dumps(pairs).decode()

    def order_book_body(self, native: str) -> str:
        book = self.market.book(self.venue, self.symbols[native].canonical)
        bids, asks = book.top(1 << 30)
        return orjson.dumps(
            {
                "timestamp": str(self._microtimestamp // 1_000_000),
                "microtimestamp": str(self._microtimestamp),
                "bids": self._levels(native, bids),
                "asks": self._levels(native, asks),
            }
        ).decode()

    def _levels(
        self, native: str, levels: Sequence[tuple[int, int]]
    ) -> list[list[str]]:
        price = self.prices[native].text
        size = self.sizes[native].text
        return [[price(tick), size(lots)] for tick, lots in levels]

    def open_session(self, path: str) -> VenueSession | HttpReply:
        return BitstampSimSession(self)

    def encode_step(self, step: MarketStep) -> dict[str, list[bytes]]:
        """Channel → payloads of this step (the server calls it every step, in order)."""
        self._microtimestamp = max(step.timestamp_ns // 1000, self._microtimestamp + 1)
        microtimestamp = str(self._microtimestamp)
        timestamp = str(self._microtimestamp // 1_000_000)
        by_channel: dict[str, list[bytes]] = {}
        for change in step.book_changes:
            native = self.natives.get(change.symbol)
            if native is None:
                continue
            data = {
                "timestamp": timestamp,
                "microtimestamp": microtimestamp,
                "bids": self._levels(native, change.bids),
                "asks": self._levels(native, change.asks),
            }
            channel = f"{DIFF_CHANNEL}{native}"
            by_channel.setdefault(channel, []).append(
                orjson.dumps({"data": data, "channel": channel, "event": "data"})
            )
        for trade in step.trades:
            native = self.natives.get(trade.symbol)
            if native is None:
                continue
            data = {
                "id": trade.trade_id,
                "timestamp": timestamp,
                "amount_str": self.sizes[native].text(trade.lots),
                "price_str": self.prices[native].text(trade.price_ticks),
                "type": 0 if trade.aggressor == Side.BID else 1,
                "microtimestamp": microtimestamp,
            }
            channel = f"{TRADES_CHANNEL}{native}"
            by_channel.setdefault(channel, []).append(
                orjson.dumps({"data": data, "channel": channel, "event": "trade"})
            )
        return by_channel


class BitstampSimSession(VenueSession):
    def __init__(self, venue: BitstampSimulatedVenue) -> None:
        self.venue = venue
        self.channels: list[str] = []

    def on_client_message(self, text: str) -> list[str]:
        try:
            request = orjson.loads(text)
            event = request["event"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return [
                '{"event":"bts:error","channel":"","data":{"code":null,"message":"Bad request."}}'
            ]
        if event == "bts:heartbeat":
            return [
                '{"event":"bts:heartbeat","channel":"","data":{"status":"success"}}'
            ]
        channel = str((request.get("data") or {}).get("channel", ""))
        prefix, native = (
            (DIFF_CHANNEL, channel[len(DIFF_CHANNEL) :])
            if channel.startswith(DIFF_CHANNEL)
            else (
                TRADES_CHANNEL,
                channel[len(TRADES_CHANNEL) :],
            )
        )
        if (
            event != "bts:subscribe"
            or not channel.startswith(prefix)
            or native not in self.venue.symbols
        ):
            return [
                '{"event":"bts:error","channel":"","data":{"code":null,"message":"Incorrect JSON format."}}'
            ]
        if channel not in self.channels:
            self.channels.append(channel)
        return [
            orjson.dumps(
                {"event": "bts:subscription_succeeded", "channel": channel, "data": {}}
            ).decode()
        ]

    def frames(self, encoded_step: dict[str, list[bytes]]) -> list[str]:
        return [
            payload.decode()
            for channel in self.channels
            for payload in encoded_step.get(channel, ())
        ]


CONNECTOR = BitstampConnector
SIMULATED_VENUE = BitstampSimulatedVenue
