"""Kraken spot: WebSocket v2 (live default) and v1 (the recorded generation), both directions.

Connector side (sans-IO, on :class:`~actors.connectors.stream_seeded.StreamSeededConnector`):
instruments from ``GET /0/public/AssetPairs`` (``wsname`` → canonical, aliases
``XBT→BTC``, ``XDG→DOGE``), one connection per 50 symbols carrying the ``book`` channel
at the subscribed depth and the ``trade`` channel (docs/exchanges.md §5, §6):

- the snapshot arrives on the subscription (v1 ``as``/``bs``; v2 ``type:"snapshot"``);
- updates carry absolute sizes (0 deletes) and a CRC32 of the top 10 levels per side
  after the update (v1 ``"c"``, updates only; v2 ``checksum``, snapshot too), computed
  on the price and size strings exactly as received (:mod:`actors.connectors.checksum`);
- levels that leave the subscribed depth are not deleted: the book is truncated;
- no sequence numbers: a mismatch or a book frame that cannot be read re-subscribes
  the symbol (unsubscribe + subscribe → fresh snapshot).

Which generation: ``api_version`` (1 or 2); when not given, the WebSocket URL decides,
as on Kraken itself: a path ending in ``/v2`` is v2, anything else v1. So the config
selects v1 with ``exchanges.kraken.ws_url: wss://ws.kraken.com`` and v2 by default (or
``wss://ws.kraken.com/v2``). The subscribed depth is ``snapshot_limit`` (the runtime
passes ``exchanges.kraken.snapshot_depth``; Kraken accepts 10, 25, 100, 500, 1000).

v2 sends prices and sizes as JSON numbers whose trailing zeros the checksum needs, so
v2 frames are decoded with the numbers kept as their text; v1 sends strings and is
decoded with orjson.

Simulator side: :class:`KrakenSimulatedVenue` serves AssetPairs and WebSocket v2 on
``/v2`` in Kraken's exact wire format: per-depth windows (levels that leave the window
are not deleted, levels that enter it are sent), fixed-precision numbers, checksums on
snapshot and updates, and a bad-checksum fault.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from actors.connectors.base import (
    ConnectionAction,
    Instrument,
    RecordSink,
    canonical_symbol,
    parse_levels,
    rfc3339_ns,
)
from actors.connectors.checksum import KRAKEN, kraken_checksum
from actors.connectors.stream_seeded import StreamFeed, StreamSeededConnector
from shm.records import Reason, Side
from sim.market import FixedPoint, Market, MarketStep
from sim.venue import HttpReply, SimulatedVenue, VenueSession, decimal_places, rfc3339_micros

NAME = "kraken"
REST_BASE_URL = "https://api.kraken.com"
ASSET_PAIRS_PATH = "/0/public/AssetPairs"
WS_V1_URL = "wss://ws.kraken.com"
WS_V2_URL = "wss://ws.kraken.com/v2"
V2_PATH = "/v2"
BOOK_DEPTHS = (10, 25, 100, 500, 1000)
DEFAULT_DEPTH = 1000
ASSET_ALIASES = {"XBT": "BTC", "XDG": "DOGE"}  # v1 and AssetPairs wsname spell these the old way
V1_ASSET_NAMES = {canonical: v1 for v1, canonical in ASSET_ALIASES.items()}
LOT_DECIMALS = 8  # Kraken quotes sizes with 8 decimals on most pairs

_CONTINUE = ConnectionAction.CONTINUE
_EMPTY: list[list[str]] = []
_decode_exact = json.JSONDecoder(parse_float=str, parse_int=str).decode  # v2: numbers as their text

V1Book = tuple[str, bool, list[list[str]], list[list[str]], int | None, int]
"""(pair, is_snapshot, bids, asks, checksum or None, exchange ns) of one v1 book message;
levels are the wire's ``[price, volume, timestamp(, "r")]`` strings."""

V2Book = tuple[str, list[tuple[str, str]], list[tuple[str, str]], int | None, int]
"""(symbol, bids, asks, checksum or None, exchange ns) of one v2 book ``data`` entry."""


# ---------------------------------------------------------------------------------------
# Wire format → values


def canonical_from_wsname(wsname: str) -> tuple[str, str, str]:
    """``"XBT/USD"`` → (``"BTC/USD"``, ``"BTC"``, ``"USD"``)."""
    base, quote = wsname.split("/")
    base = ASSET_ALIASES.get(base, base)
    quote = ASSET_ALIASES.get(quote, quote)
    return canonical_symbol(base, quote), base, quote


def parse_asset_pairs(body: str | bytes, api_version: int = 2) -> list[Instrument]:
    """Instruments of an AssetPairs body; native names are v1 ``wsname``s or v2 symbols.

    Pairs without a ``wsname`` (dark-pool ``.d`` pairs) have no public book and are skipped.
    """
    instruments = []
    for pair in orjson.loads(body)["result"].values():
        wsname = pair.get("wsname")
        if not wsname:
            continue
        canonical, base, quote = canonical_from_wsname(wsname)
        tick_size = pair.get("tick_size")
        instruments.append(
            Instrument(
                canonical=canonical,
                native=wsname if api_version == 1 else canonical,
                base=base,
                quote=quote,
                tick_size=float(tick_size) if tick_size is not None else 10.0 ** -pair["pair_decimals"],
                lot_size=10.0 ** -pair["lot_decimals"],
            )
        )
    return instruments


def seconds_text_ns(text: str) -> int:
    """``"1618678133.365913"`` → ns, exactly (a float would round the microseconds)."""
    if text[-7:-6] == ".":  # Kraken v1 always writes microseconds: the fast way
        return int(text[:-7] + text[-6:]) * 1000
    seconds, _, fraction = text.partition(".")
    return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])


def parse_v1_book(message: list[Any]) -> V1Book:
    """``[channelID, {..}, ({..},) "book-<depth>", pair]``; raises on anything else.

    An update may carry the asks and the bids as two dicts; the checksum is in the last.
    """
    first = message[1]
    is_snapshot = False
    if len(message) == 4:
        checksum_text = first.get("c")
        if checksum_text is None and ("as" in first or "bs" in first):
            is_snapshot = True
            asks = first.get("as", _EMPTY)
            bids = first.get("bs", _EMPTY)
        else:
            asks = first.get("a", _EMPTY)
            bids = first.get("b", _EMPTY)
    elif len(message) == 5:
        second = message[2]
        asks = first.get("a", _EMPTY) + second.get("a", _EMPTY)
        bids = first.get("b", _EMPTY) + second.get("b", _EMPTY)
        checksum_text = second.get("c", first.get("c"))
    else:
        raise ValueError(f"book message of {len(message)} elements")
    if asks.__class__ is not list or bids.__class__ is not list:
        raise TypeError("book levels must be lists")
    last = bids[-1] if bids else asks[-1] if asks else None
    exchange_ts = seconds_text_ns(last[2]) if last is not None else 0
    checksum = int(checksum_text) if checksum_text is not None else None
    return message[-1], is_snapshot, bids, asks, checksum, exchange_ts


def parse_v1_trades(raw_trades: list[list[str]]) -> list[tuple[float, float, Side, int]]:
    """``[[price, volume, time, "b"|"s", type, misc], ..]`` → (price, size, aggressor, ns)."""
    trades = []
    for trade in raw_trades:
        ((price, size),) = parse_levels(((trade[0], trade[1]),))
        side = trade[3]
        if not size or side not in ("b", "s"):
            raise ValueError(f"bad trade {trade!r}")
        trades.append((price, size, Side.BID if side == "b" else Side.ASK, seconds_text_ns(trade[2])))
    return trades


def parse_v2_book_entry(entry: dict[str, Any]) -> V2Book:
    """One ``data`` entry of a v2 book message decoded with numbers as text."""
    bids = [(level["price"], level["qty"]) for level in entry["bids"]]
    asks = [(level["price"], level["qty"]) for level in entry["asks"]]
    checksum = entry.get("checksum")
    timestamp = entry.get("timestamp")
    return (
        entry["symbol"],
        bids,
        asks,
        int(checksum) if checksum is not None else None,
        rfc3339_ns(timestamp) if timestamp else 0,
    )


def parse_v2_trade(entry: dict[str, Any]) -> tuple[str, float, float, Side, int, int]:
    """(symbol, price, size, aggressor, trade id, ns) of one v2 trade entry."""
    ((price, size),) = parse_levels(((entry["price"], entry["qty"]),))
    side = entry["side"]
    if not size or side not in ("buy", "sell"):
        raise ValueError(f"bad trade {entry!r}")
    trade_id = int(entry.get("trade_id", 0))
    return entry["symbol"], price, size, Side.BID if side == "buy" else Side.ASK, trade_id, rfc3339_ns(entry["timestamp"])


def api_version_of(ws_url: str) -> int:
    return 2 if urlsplit(ws_url).path.rstrip("/").endswith(V2_PATH) else 1


# ---- client messages -------------------------------------------------------------------------


def v1_subscribe(pairs: Sequence[str], channel: str, depth: int | None = None, method: str = "subscribe") -> str:
    subscription: dict[str, Any] = {"name": channel}
    if depth is not None:
        subscription["depth"] = depth
    return orjson.dumps({"event": method, "pair": list(pairs), "subscription": subscription}).decode()


def v2_subscribe(
    symbols: Sequence[str], channel: str, request_id: int, depth: int | None = None, method: str = "subscribe"
) -> str:
    params: dict[str, Any] = {"channel": channel, "symbol": list(symbols)}
    if depth is not None:
        params["depth"] = depth
    if method == "subscribe":
        params["snapshot"] = channel == "book"  # a trade snapshot is old trades: never wanted
    return orjson.dumps({"method": method, "params": params, "req_id": request_id}).decode()


# ---------------------------------------------------------------------------------------
# Connector


class KrakenConnector(StreamSeededConnector):
    """Kraken spot books (checksummed) and trades, over WebSocket v2 or v1."""

    name = NAME
    book_depths = BOOK_DEPTHS
    book_checksum = KRAKEN
    symbols_per_connection = 50
    application_ping_interval_s = 30.0  # the server's heartbeats keep us informed; pings keep it talking

    def __init__(
        self,
        sink: RecordSink,
        exchange_id: int,
        symbol_ids: Mapping[str, int],
        *,
        ws_base_url: str = WS_V2_URL,
        rest_base_url: str = REST_BASE_URL,
        api_version: int | None = None,
        snapshot_limit: int = DEFAULT_DEPTH,
        depth_limit: int | None = None,
        trades: bool = True,
        stale_after_s: float = 10.0,
    ) -> None:
        """``ws_base_url``: the full WebSocket URL (its path picks the generation unless
        ``api_version`` is given). ``snapshot_limit``: the subscribed book depth.
        ``depth_limit``: accepted for the runtime's common call; a Kraken book is exact
        only at its subscribed depth, so a smaller limit is refused."""
        if snapshot_limit not in BOOK_DEPTHS:
            raise ValueError(f"Kraken book depth must be one of {BOOK_DEPTHS}, got {snapshot_limit}")
        if depth_limit is not None and depth_limit < snapshot_limit:
            raise ValueError(
                f"depth_limit {depth_limit} is below the subscribed depth {snapshot_limit}: "
                "lower snapshot_depth instead"
            )
        super().__init__(sink, exchange_id, symbol_ids, depth=snapshot_limit, stale_after_s=stale_after_s)
        self.ws_url = ws_base_url
        self.rest_base_url = rest_base_url.rstrip("/")
        self.api_version = api_version if api_version is not None else api_version_of(ws_base_url)
        if self.api_version not in (1, 2):
            raise ValueError(f"api_version must be 1 or 2, got {self.api_version}")
        self.trades = trades
        self._request_id = 0
        self._in_maintenance: set[int] = set()  # connections whose status said maintenance
        if self.api_version == 1:
            self.on_message = self._on_message_v1  # bound per instance: no dispatch per frame

    @property
    def instruments_url(self) -> str:
        return f"{self.rest_base_url}{ASSET_PAIRS_PATH}"

    def parse_instruments(self, body: str | bytes) -> list[Instrument]:
        return parse_asset_pairs(body, self.api_version)

    def connection_url(self, connection: int) -> str:
        return self.ws_url

    def _next_request_id(self) -> int:
        self._request_id += 1
        return self._request_id

    def subscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        natives = [feed.instrument.native for feed in feeds]
        if not natives:
            return []
        if self.api_version == 1:
            messages = [v1_subscribe(natives, "book", self.depth)]
            if self.trades:
                messages.append(v1_subscribe(natives, "trade"))
            return messages
        messages = [v2_subscribe(natives, "book", self._next_request_id(), self.depth)]
        if self.trades:
            messages.append(v2_subscribe(natives, "trade", self._next_request_id()))
        return messages

    def resubscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        natives = [feed.instrument.native for feed in feeds]
        if self.api_version == 1:
            return [
                v1_subscribe(natives, "book", self.depth, "unsubscribe"),
                v1_subscribe(natives, "book", self.depth),
            ]
        return [
            v2_subscribe(natives, "book", self._next_request_id(), self.depth, "unsubscribe"),
            v2_subscribe(natives, "book", self._next_request_id(), self.depth),
        ]

    def application_ping(self, connection: int) -> str:
        if self.api_version == 1:
            return orjson.dumps({"event": "ping", "reqid": self._next_request_id()}).decode()
        return orjson.dumps({"method": "ping", "req_id": self._next_request_id()}).decode()

    # ---- v1 ----------------------------------------------------------------------------

    def _on_message_v1(self, connection: int, data: str | bytes, receive_ts: int) -> ConnectionAction:
        """Route one v1 frame; bad frames are counted and dropped, never raised."""
        if self._resend_queue:
            self.flush(receive_ts)
        counters = self.connection_counters[connection]
        counters.frames += 1
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            counters.malformed_frames += 1
            self.frame_rejected = True
            return _CONTINUE
        if message.__class__ is list:
            try:
                channel_name = message[-2]
                feed = self.feeds.get(message[-1])
            except (IndexError, TypeError):
                counters.malformed_frames += 1
                self.frame_rejected = True
                return _CONTINUE
            if feed is None:
                counters.unknown_symbol_frames += 1
                self.frame_rejected = True
                return _CONTINUE
            if channel_name.__class__ is str and channel_name.startswith("book"):
                try:
                    _pair, is_snapshot, bids, asks, checksum, exchange_ts = parse_v1_book(message)
                except (KeyError, TypeError, ValueError, IndexError, AttributeError):
                    # Kraken has no sequence numbers: an update we cannot read may have changed
                    # levels the checksum does not cover, so the book is no longer known.
                    feed.counters.parse_errors += 1
                    self.frame_rejected = True
                    self.resync(feed, Reason.MALFORMED, receive_ts)
                    return _CONTINUE
                if is_snapshot:
                    self.on_book_snapshot(feed, bids, asks, 0, None, exchange_ts, receive_ts)
                else:
                    self.on_book_update(feed, bids, asks, 0, 0, checksum, exchange_ts, receive_ts)
            elif channel_name == "trade":
                self._on_v1_trades(feed, message, receive_ts)
            else:
                counters.ignored_frames += 1
            return _CONTINUE  # failures resubscribe the symbol: Kraken never needs a reconnect
        if message.__class__ is dict and message.get("event") == "subscriptionStatus":
            self._on_v1_subscription_status(connection, message)
        else:
            counters.ignored_frames += 1  # heartbeat, systemStatus, pong
        return _CONTINUE

    def _on_v1_trades(self, feed: StreamFeed, message: list[Any], receive_ts: int) -> None:
        try:
            trades = parse_v1_trades(message[1])
        except (KeyError, TypeError, ValueError, IndexError):
            feed.counters.parse_errors += 1
            self.frame_rejected = True
            return
        for price, size, aggressor, trade_ts in trades:
            self.write_trade(feed, price, size, aggressor, 0, trade_ts, receive_ts)  # v1 trades have no id

    def _on_v1_subscription_status(self, connection: int, message: dict[str, Any]) -> None:
        status = message.get("status")
        if status == "error":
            pair = message.get("pair")
            feed = self.feeds.get(pair) if pair.__class__ is str else None
            self.on_subscribe_error(connection, feed, str(message.get("errorMessage", "")))
        else:
            self.connection_counters[connection].subscribe_acks += 1

    # ---- v2 ----------------------------------------------------------------------------

    def on_message(self, connection: int, data: str | bytes, receive_ts: int) -> ConnectionAction:
        """Route one v2 frame (v1 instances use :meth:`_on_message_v1`); bad frames are
        counted and dropped, never raised."""
        if self._resend_queue:
            self.flush(receive_ts)
        counters = self.connection_counters[connection]
        counters.frames += 1
        try:
            message = _decode_exact(data if data.__class__ is str else data.decode())
            channel = message.get("channel")
        except (ValueError, AttributeError, UnicodeDecodeError):
            counters.malformed_frames += 1
            self.frame_rejected = True
            return _CONTINUE
        if channel == "book":
            kind = message.get("type")
            entries = message.get("data")
            if kind not in ("snapshot", "update") or entries.__class__ is not list:
                counters.malformed_frames += 1
                self.frame_rejected = True
                return _CONTINUE
            for entry in entries:
                self._on_v2_book(connection, entry, kind == "snapshot", receive_ts)
            return _CONTINUE
        if channel == "trade":
            if message.get("type") == "update":
                self._on_v2_trades(connection, message.get("data"), receive_ts)
            else:
                counters.ignored_frames += 1  # the trade snapshot: past trades
            return _CONTINUE
        if channel == "status":
            return self._on_v2_status(connection, message, receive_ts)
        method = message.get("method")
        if method == "subscribe" or method == "unsubscribe":
            if message.get("success") is True:
                counters.subscribe_acks += 1
            elif method == "subscribe":
                symbol = message.get("symbol")
                feed = self.feeds.get(symbol) if symbol.__class__ is str else None
                self.on_subscribe_error(connection, feed, str(message.get("error", "")))
            else:
                counters.ignored_frames += 1
            return _CONTINUE
        counters.ignored_frames += 1  # heartbeat, status, pong
        return _CONTINUE

    def _on_v2_status(self, connection: int, message: dict[str, Any], receive_ts: int) -> ConnectionAction:
        """``system: maintenance``: Kraken stops maintaining its books, so they are cleared and
        nothing is resubscribed; the next ``online`` reconnects, which subscribes everything
        again (a status at connect says ``online`` too: that one changes nothing)."""
        entries = message.get("data")
        entry = entries[0] if entries.__class__ is list and entries else None
        system = entry.get("system") if entry.__class__ is dict else None
        if system == "maintenance":
            self.connection_counters[connection].server_shutdowns += 1
            self._in_maintenance.add(connection)
            for feed in self.connections[connection]:
                self.resync(feed, Reason.DISCONNECTED, receive_ts)
                self._attention.pop(feed, None)  # nothing to resubscribe to until it is over
            return _CONTINUE
        if system == "online" and connection in self._in_maintenance:
            self._in_maintenance.discard(connection)
            return ConnectionAction.RECONNECT
        self.connection_counters[connection].ignored_frames += 1
        return _CONTINUE

    def _on_v2_book(self, connection: int, entry: Any, is_snapshot: bool, receive_ts: int) -> None:
        symbol = entry.get("symbol") if entry.__class__ is dict else None
        feed = self.feeds.get(symbol) if symbol.__class__ is str else None
        if feed is None:
            counters = self.connection_counters[connection]
            if symbol is None:
                counters.malformed_frames += 1
                self.frame_rejected = True
            else:
                counters.unknown_symbol_frames += 1
                self.frame_rejected = True
            return
        try:
            _symbol, bids, asks, checksum, exchange_ts = parse_v2_book_entry(entry)
        except (KeyError, TypeError, ValueError, AttributeError):
            feed.counters.parse_errors += 1  # unreadable: levels may be lost, as in v1
            self.frame_rejected = True
            self.resync(feed, Reason.MALFORMED, receive_ts)
            return
        if is_snapshot:
            self.on_book_snapshot(feed, bids, asks, 0, checksum, exchange_ts, receive_ts)
        else:
            self.on_book_update(feed, bids, asks, 0, 0, checksum, exchange_ts, receive_ts)

    def _on_v2_trades(self, connection: int, entries: Any, receive_ts: int) -> None:
        if entries.__class__ is not list:
            self.connection_counters[connection].malformed_frames += 1
            self.frame_rejected = True
            return
        for entry in entries:
            symbol = entry.get("symbol") if entry.__class__ is dict else None
            feed = self.feeds.get(symbol) if symbol.__class__ is str else None
            if feed is None:
                self.connection_counters[connection].unknown_symbol_frames += 1
                self.frame_rejected = True
                continue
            try:
                _symbol, price, size, aggressor, trade_id, trade_ts = parse_v2_trade(entry)
            except (KeyError, TypeError, ValueError, AttributeError):
                feed.counters.parse_errors += 1
                self.frame_rejected = True
                continue
            self.write_trade(feed, price, size, aggressor, trade_id, trade_ts, receive_ts)


# ---------------------------------------------------------------------------------------
# Simulator side (WebSocket v2)




Window = tuple[dict[int, int], dict[int, int]]
"""The levels a subscriber at one depth holds: (bids, asks) as tick → lots."""

EncodedStep = dict[tuple[str, str] | tuple[str, str, int], list[str]]
"""("book", symbol, depth) or ("trade", symbol) → frames of one step."""


class KrakenSimulatedVenue(SimulatedVenue):
    """The simulator's market as Kraken WebSocket v2 serves it (spot symbols only).

    Each subscribed depth sees its own window of the book: an update carries the levels
    that changed inside the window, deletes of levels that left the book, and levels
    that moved into the window; levels pushed out by better ones are not deleted (the
    client truncates), exactly like Kraken.
    """

    def __init__(self, market: Market, venue: str = NAME) -> None:
        super().__init__(market, venue)
        self.specs = {spec.canonical: spec for spec in market.symbols.values() if not spec.perpetual}
        self.prices = {
            symbol: FixedPoint(spec.tick_size, decimal_places(spec.tick_size)) for symbol, spec in self.specs.items()
        }
        self.sizes = {symbol: FixedPoint(spec.lot_size, LOT_DECIMALS) for symbol, spec in self.specs.items()}
        self.windows: dict[tuple[str, int], Window] = {}
        self._corrupt_checksums: dict[str, int] = {}

    # ---- faults --------------------------------------------------------------------------

    def corrupt_checksums(self, symbol: str, count: int = 1) -> None:
        """The next ``count`` book updates of ``symbol`` carry a wrong checksum."""
        self._corrupt_checksums[symbol] = self._corrupt_checksums.get(symbol, 0) + count

    def subscription_refusal(self, text: str) -> list[str] | None:
        """Kraken's per-symbol error for a subscribe it refuses."""
        try:
            request = orjson.loads(text)
            if request.get("method") != "subscribe":
                return None
            symbols = request.get("params", {}).get("symbol", [])
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return [
            orjson.dumps({"error": "EService:Unavailable", "method": "subscribe", "req_id": request.get("req_id"),
                          "success": False, "symbol": symbol}).decode()
            for symbol in symbols
        ]

    def maintenance_frames(self, starting: bool) -> list[str]:
        """The ``status`` channel's update: ``maintenance`` (books no longer maintained), then ``online``."""
        system = "maintenance" if starting else "online"
        return [orjson.dumps({"channel": "status", "type": "update", "data": [
            {"api_version": "v2", "connection_id": 1, "system": system, "version": "2.0.9"}]}).decode()]

    # ---- REST ------------------------------------------------------------------------------

    def http(self, path: str, query: Mapping[str, str]) -> HttpReply:
        if path == ASSET_PAIRS_PATH:
            return HttpReply(200, self.asset_pairs_body())
        return HttpReply(404, '{"error":["EGeneral:Unknown method"]}')

    def is_snapshot_request(self, path: str) -> bool:
        return False  # Kraken books are snapshotted in the stream

    def asset_pairs_body(self) -> str:
        result = {}
        for symbol, spec in self.specs.items():
            base = V1_ASSET_NAMES.get(spec.base, spec.base)
            quote = V1_ASSET_NAMES.get(spec.quote, spec.quote)
            result[base + quote] = {
                "altname": base + quote,
                "wsname": f"{base}/{quote}",
                "base": base,
                "quote": quote,
                "pair_decimals": self.prices[symbol].places,
                "lot_decimals": LOT_DECIMALS,
                "tick_size": spec.tick_size,
                "status": "online",
            }
        return orjson.dumps({"error": [], "result": result}).decode()

    # ---- WebSocket -------------------------------------------------------------------------

    def open_session(self, path: str) -> VenueSession | HttpReply:
        if urlsplit(path).path.rstrip("/") != V2_PATH:
            return HttpReply(404, "Not found")
        return KrakenSimSession(self)

    def window(self, symbol: str, depth: int) -> Window:
        """The current window of ``symbol`` at ``depth``, tracked from now on."""
        key = (symbol, depth)
        if key not in self.windows:
            bids, asks = self.market.book(self.venue, symbol).top(depth)
            self.windows[key] = (dict(bids), dict(asks))
        return self.windows[key]

    def snapshot_frame(self, symbol: str, depth: int) -> str:
        bids, asks = self.window(symbol, depth)
        bid_levels = sorted(bids.items(), reverse=True)
        ask_levels = sorted(asks.items())
        return self._book_frame("snapshot", symbol, bid_levels, ask_levels, self._checksum(symbol, bids, asks), None)

    def encode_step(self, step: MarketStep) -> EncodedStep:
        """("book", symbol, depth) and ("trade", symbol) → frames of this step.

        A symbol whose change was withheld (the server's dropped-update fault) still
        moves its windows on, so the subscriber really misses the change.
        """
        changed = {change.symbol: change.timestamp_ns for change in step.book_changes if change.symbol in self.specs}
        encoded: EncodedStep = {}
        corrupted: set[str] = set()
        for (symbol, depth), (old_bids, old_asks) in list(self.windows.items()):
            book = self.market.book(self.venue, symbol)
            new_bids, new_asks = (dict(levels) for levels in book.top(depth))
            self.windows[symbol, depth] = (new_bids, new_asks)
            if symbol not in changed:
                continue
            bid_changes = _window_changes(old_bids, new_bids, book.bids)
            ask_changes = _window_changes(old_asks, new_asks, book.asks)
            if not (bid_changes or ask_changes):
                continue
            checksum = self._checksum(symbol, new_bids, new_asks)
            if self._corrupt_checksums.get(symbol):
                checksum ^= 1
                corrupted.add(symbol)
            frame = self._book_frame(
                "update", symbol, sorted(bid_changes, reverse=True), sorted(ask_changes), checksum, changed[symbol]
            )
            encoded[("book", symbol, depth)] = [frame]
        for symbol in corrupted:  # used up only by an update sent with it
            self._corrupt_checksums[symbol] -= 1
        for trade in step.trades:
            if trade.symbol not in self.specs:
                continue
            price = self.prices[trade.symbol].text(trade.price_ticks)
            size = self.sizes[trade.symbol].text(trade.lots)
            side = "buy" if trade.aggressor == Side.BID else "sell"
            encoded.setdefault(("trade", trade.symbol), []).append(
                f'{{"channel":"trade","type":"update","data":[{{"symbol":"{trade.symbol}","side":"{side}",'
                f'"price":{price},"qty":{size},"ord_type":"market","trade_id":{trade.trade_id},'
                f'"timestamp":"{rfc3339_micros(trade.timestamp_ns)}"}}]}}'
            )
        return encoded

    def _checksum(self, symbol: str, bids: dict[int, int], asks: dict[int, int]) -> int:
        price = self.prices[symbol].text
        size = self.sizes[symbol].text
        best_asks = [(price(tick), size(lots)) for tick, lots in sorted(asks.items())[:10]]
        best_bids = [(price(tick), size(lots)) for tick, lots in sorted(bids.items(), reverse=True)[:10]]
        return kraken_checksum(best_asks, best_bids)

    def _book_frame(
        self,
        kind: str,
        symbol: str,
        bids: Sequence[tuple[int, int]],
        asks: Sequence[tuple[int, int]],
        checksum: int,
        timestamp_ns: int | None,
    ) -> str:
        """Numbers written at the pair's fixed precision, trailing zeros kept, as Kraken does."""
        price = self.prices[symbol].text
        size = self.sizes[symbol].text
        bid_text = ",".join(f'{{"price":{price(tick)},"qty":{size(lots)}}}' for tick, lots in bids)
        ask_text = ",".join(f'{{"price":{price(tick)},"qty":{size(lots)}}}' for tick, lots in asks)
        timestamp = f',"timestamp":"{rfc3339_micros(timestamp_ns)}"' if timestamp_ns is not None else ""
        return (
            f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{symbol}","bids":[{bid_text}],'
            f'"asks":[{ask_text}],"checksum":{checksum}{timestamp}}}]}}'
        )


def _window_changes(old: dict[int, int], new: dict[int, int], book: dict[int, int]) -> list[tuple[int, int]]:
    """Levels of a window update: changed or entered levels, and deletes of levels gone
    from the book (those merely pushed out of the window are left to the client)."""
    changes = [(tick, lots) for tick, lots in new.items() if old.get(tick) != lots]
    changes.extend((tick, 0) for tick in old if tick not in new and tick not in book)
    return changes


class KrakenSimSession(VenueSession):
    """One v2 client connection: its book subscriptions (symbol → depth) and trade symbols."""

    def __init__(self, venue: KrakenSimulatedVenue) -> None:
        self.venue = venue
        self.books: dict[str, int] = {}
        self.trades: set[str] = set()

    def on_client_message(self, text: str) -> list[str]:
        try:
            request = orjson.loads(text)
            method = request["method"]
            request_id = request.get("req_id")
            params = request.get("params", {})
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return ['{"error":"EGeneral:Invalid arguments","success":false}']
        if method == "ping":
            return [orjson.dumps({"method": "pong", "req_id": request_id}).decode()]
        if method not in ("subscribe", "unsubscribe"):
            return [orjson.dumps({"error": f"Unknown method {method}", "success": False, "req_id": request_id}).decode()]
        channel = params.get("channel")
        symbols = params.get("symbol", [])
        depth = params.get("depth", 10)
        if channel not in ("book", "trade") or (channel == "book" and depth not in BOOK_DEPTHS):
            return [orjson.dumps({"error": "EGeneral:Invalid arguments", "method": method, "success": False,
                                  "req_id": request_id}).decode()]
        replies = []
        for symbol in symbols:
            if symbol not in self.venue.specs:
                replies.append(orjson.dumps({"error": f"Currency pair not supported {symbol}", "method": method,
                                             "req_id": request_id, "success": False, "symbol": symbol}).decode())
                continue
            result = {"channel": channel, "symbol": symbol} | ({"depth": depth} if channel == "book" else {})
            replies.append(orjson.dumps({"method": method, "result": result, "success": True,
                                         "req_id": request_id}).decode())
            if method == "unsubscribe" and channel == "book":
                self.books.pop(symbol, None)
            elif method == "unsubscribe":
                self.trades.discard(symbol)
            elif channel == "book":
                self.books[symbol] = depth
                if params.get("snapshot", True):
                    replies.append(self.venue.snapshot_frame(symbol, depth))
            else:
                self.trades.add(symbol)
        return replies

    def frames(self, encoded_step: EncodedStep) -> list[str]:
        frames = []
        for symbol, depth in self.books.items():
            frames.extend(encoded_step.get(("book", symbol, depth), ()))
        for symbol in self.trades:
            frames.extend(encoded_step.get(("trade", symbol), ()))
        return frames


# The recordings are WS API v1 (coby verify replays them through this connector).
RECORDED_OPTIONS = {"api_version": 1}

CONNECTOR = KrakenConnector
SIMULATED_VENUE = KrakenSimulatedVenue
