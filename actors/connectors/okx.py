"""OKX v5 public books and trades, both directions.

Connector side (sans-IO, on :class:`~actors.connectors.stream_seeded.StreamSeededConnector`),
docs/exchanges.md §9:

- ``wss://ws.okx.com:8443/ws/v5/public``, channel ``books`` (400 levels per side) and
  ``trades``, subscribed per instrument (``{"op":"subscribe","args":[{channel, instId}]}``);
- the snapshot arrives on the subscription (``action:"snapshot"``, ``prevSeqId`` -1), then
  ``action:"update"`` frames of absolute sizes (``"0"`` deletes);
- integrity: ``prevSeqId`` of each update must equal the last ``seqId`` (an update with
  ``seqId == prevSeqId`` and no levels is a keep-alive; a ``seqId`` below ``prevSeqId`` after
  maintenance is legitimate, the chain goes on from it), and ``checksum`` — the signed
  CRC32 of the top 25 levels interleaved, from the exact strings received — when it is
  not 0 (OKX sends 0 since 2026-06-23). The recorded generation (May 2022) carries a
  checksum on every frame and no ``seqId``; each check runs when its field is present;
- a gap, checksum mismatch or unreadable book frame re-subscribes the one instrument
  (unsubscribe + subscribe → fresh snapshot);
- text ``ping`` every 25 s (OKX closes a connection idle for 30 s) → text ``pong``.

Instruments: ``GET /api/v5/public/instruments?instType=SPOT`` and ``instType=SWAP``
(``BTC-USDT`` → ``BTC/USDT``, ``BTC-USDT-SWAP`` → ``BTC/USDT:PERP``). Dated futures and
options are skipped: the canonical form has no expiry. The runtime fetches one
instruments URL (``instruments_url``, the SPOT list); :meth:`OkxConnector.load_instruments`
accumulates every body it is given and, for a configured perpetual no body has listed
yet, derives the instrument from OKX's ``BASE-QUOTE-SWAP`` naming (tick and lot size
unknown: NaN) so perpetuals work with today's one-request runtime. ``INSTRUMENTS_URLS``
lists both requests for a runtime that makes them all.

Simulator side: :class:`OkxSimulatedVenue` serves both instrument lists and the live
protocol on ``/ws/v5/public``: snapshots with ``prevSeqId`` -1, updates chained by
``seqId``/``prevSeqId`` (the market's update ids, so a withheld update is a real gap),
checksum 0 (deprecated), trades, ``ping`` → ``pong``, error events.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from actors.connectors.base import (
    ConnectionAction,
    Instrument,
    RecordSink,
    SyncState,
    canonical_symbol,
    parse_levels,
)
from actors.connectors.checksum import OKX
from actors.connectors.stream_seeded import StreamFeed, StreamSeededConnector
from shm.records import Reason, Side
from sim.market import FixedPoint, Market, MarketStep
from sim.venue import HttpReply, SimulatedVenue, VenueSession, decimal_places

NAME = "okx"
REST_BASE_URL = "https://www.okx.com"
WS_URL = "wss://ws.okx.com:8443/ws/v5/public"
WS_PATH = "/ws/v5/public"
INSTRUMENTS_PATH = "/api/v5/public/instruments"
INSTRUMENT_TYPES = ("SPOT", "SWAP")  # FUTURES (dated) and OPTION have no canonical form: skipped
BOOK_CHANNEL = "books"
TRADE_CHANNEL = "trades"
BOOK_DEPTH = 400  # the public `books` channel's levels per side
SWAP_SUFFIX = "-SWAP"
PING = "ping"
PONG = "pong"
PING_INTERVAL_S = 25.0  # OKX closes a connection that received nothing for 30 s
SNAPSHOT_PREVIOUS_SEQUENCE = -1

_CONTINUE = ConnectionAction.CONTINUE
_EMPTY: list[list[str]] = []

OkxBook = tuple[list[list[str]], list[list[str]], int, int, int | None, int]
"""(bids, asks, seqId, prevSeqId, checksum or None, exchange ns) of one ``books`` data
entry; levels are the wire's ``[px, sz, "0", numOrders]`` strings. Sequence fields are 0
where the frame has none (the recorded generation), so every frame chains."""


# ---------------------------------------------------------------------------------------
# Wire format → values


def instruments_url(rest_base_url: str, instrument_type: str) -> str:
    return f"{rest_base_url.rstrip('/')}{INSTRUMENTS_PATH}?instType={instrument_type}"


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
        int(sequence) if sequence is not None else 0,
        int(previous) if previous is not None else 0,
        int(checksum) if checksum else None,  # 0: deprecated since 2026-06-23, nothing to verify
        int(entry["ts"]) * 1_000_000,
    )


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


def is_keep_alive(
    feed: StreamFeed, bids: list[list[str]], asks: list[list[str]], sequence: int, previous: int, checksum: int | None
) -> bool:
    """OKX's idle update: no levels, ``seqId == prevSeqId`` == the book's last, nothing to verify."""
    return (
        feed.state is SyncState.LIVE
        and not (bids or asks)
        and checksum is None
        and sequence == previous == feed.last_sequence
    )


# ---- client messages -------------------------------------------------------------------------


def request(operation: str, channel_instruments: Iterable[tuple[str, str]]) -> str:
    args = [{"channel": channel, "instId": instrument} for channel, instrument in channel_instruments]
    return orjson.dumps({"op": operation, "args": args}).decode()


# ---------------------------------------------------------------------------------------
# Connector


class OkxConnector(StreamSeededConnector):
    """OKX books (``books``, seqId-chained, checksummed where the checksum is not 0) and trades."""

    name = NAME
    book_checksum = OKX
    sequence_rule = staticmethod(follows)
    symbols_per_connection = 50
    application_ping_interval_s = PING_INTERVAL_S

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
        accepted for the runtime's common call; the ``books`` channel is always 400 levels,
        so a larger value means 400 and a smaller one is refused (the book would not be exact)."""
        for limit in (snapshot_limit, depth_limit):
            if limit is not None and limit < BOOK_DEPTH:
                raise ValueError(f"OKX books are {BOOK_DEPTH} levels deep; a limit of {limit} cannot be kept exact")
        super().__init__(sink, exchange_id, symbol_ids, depth=BOOK_DEPTH, stale_after_s=stale_after_s)
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

    def connection_url(self, connection: int) -> str:
        return self.ws_url

    def subscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        if not feeds:
            return []
        channels = (BOOK_CHANNEL, TRADE_CHANNEL) if self.trades else (BOOK_CHANNEL,)
        return [request("subscribe", ((channel, feed.instrument.native) for feed in feeds for channel in channels))]

    def resubscribe_messages(self, connection: int, feeds: Sequence[StreamFeed]) -> list[str]:
        natives = [feed.instrument.native for feed in feeds]
        return [
            request("unsubscribe", ((BOOK_CHANNEL, native) for native in natives)),
            request("subscribe", ((BOOK_CHANNEL, native) for native in natives)),
        ]

    def application_ping(self, connection: int) -> str:
        return PING

    # ---- frames --------------------------------------------------------------------------

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
            return _CONTINUE
        event = message.get("event")
        if event is not None:
            self._on_event(connection, event, message, argument)
            return _CONTINUE
        if channel != BOOK_CHANNEL and channel != TRADE_CHANNEL:
            counters.ignored_frames += 1  # tickers and other channels of a shared connection
            return _CONTINUE
        native = argument.get("instId")
        feed = self.feeds.get(native) if native.__class__ is str else None
        if feed is None:
            if native.__class__ is str:
                counters.unknown_symbol_frames += 1
            else:
                counters.malformed_frames += 1
            return _CONTINUE
        entries = message.get("data")
        if channel == BOOK_CHANNEL:
            action = message.get("action")
            if (action != "snapshot" and action != "update") or entries.__class__ is not list:
                feed.counters.parse_errors += 1  # a book frame of ours we cannot read: its levels are lost
                self.resync(feed, Reason.MALFORMED, receive_ts)
                return _CONTINUE
            for entry in entries:
                self._on_book(feed, entry, action == "snapshot", receive_ts)
        else:
            self._on_trades(feed, entries, receive_ts)
        return _CONTINUE

    def _on_event(self, connection: int, event: object, message: dict[str, Any], argument: object) -> None:
        counters = self.connection_counters[connection]
        if event == "subscribe" or event == "unsubscribe":
            counters.subscribe_acks += 1
        elif event == "error":
            native = argument.get("instId") if argument.__class__ is dict else None
            feed = self.feeds.get(native) if native.__class__ is str else None
            self.on_subscribe_error(connection, feed, f"{message.get('code', '')} {message.get('msg', '')}".strip())
        else:
            counters.ignored_frames += 1  # login, notice, channel-conn-count

    def _on_book(self, feed: StreamFeed, entry: Any, is_snapshot: bool, receive_ts: int) -> None:
        try:
            bids, asks, sequence, previous, checksum, exchange_ts = parse_book_entry(entry)
        except (KeyError, TypeError, ValueError, AttributeError):
            feed.counters.parse_errors += 1  # levels may be lost: the book is no longer known
            self.resync(feed, Reason.MALFORMED, receive_ts)
            return
        if is_snapshot:
            self.on_book_snapshot(feed, bids, asks, sequence, checksum, exchange_ts, receive_ts)
        elif is_keep_alive(feed, bids, asks, sequence, previous, checksum):
            feed.counters.last_exchange_ts = exchange_ts
        else:
            self.on_book_update(feed, bids, asks, sequence, previous, checksum, exchange_ts, receive_ts)

    def _on_trades(self, feed: StreamFeed, entries: Any, receive_ts: int) -> None:
        if entries.__class__ is not list:
            feed.counters.parse_errors += 1
            return
        for entry in entries:
            try:
                price, size, aggressor, trade_id, trade_ts = parse_trade(entry)
            except (KeyError, TypeError, ValueError, AttributeError):
                feed.counters.parse_errors += 1
                continue
            self.write_trade(feed, price, size, aggressor, trade_id, trade_ts, receive_ts)


# ---------------------------------------------------------------------------------------
# Simulator side



Window = tuple[dict[int, int], dict[int, int]]
"""The levels a ``books`` subscriber holds: (bids, asks) as tick → lots."""

EncodedStep = dict[tuple[str, str], list[str]]
"""(channel, instId) → frames of one step."""


class OkxSimulatedVenue(SimulatedVenue):
    """The simulator's market as OKX v5 serves it: spot as ``BASE-QUOTE``, perpetuals as
    ``BASE-QUOTE-SWAP``, 400-level ``books`` windows (levels pushed out are not deleted)."""

    def __init__(self, market: Market, venue: str = NAME) -> None:
        super().__init__(market, venue)
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
        kind = query.get("instType")
        if path != INSTRUMENTS_PATH or kind not in ("SPOT", "SWAP", "FUTURES", "OPTION"):
            return HttpReply(400, '{"code":"51000","msg":"Parameter instType error","data":[]}')
        return HttpReply(200, self.instruments_body(kind))

    def is_snapshot_request(self, path: str) -> bool:
        return False  # OKX books are snapshotted in the stream

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

    # ---- WebSocket -------------------------------------------------------------------------

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
        """Levels ``[px, sz, "0", numOrders]``; checksum 0, as OKX sends it since 2026-06-23."""
        price = self.prices[native].text
        size = self.sizes[native].text
        bid_text = ",".join(f'["{price(tick)}","{size(lots)}","0","1"]' for tick, lots in bids)
        ask_text = ",".join(f'["{price(tick)}","{size(lots)}","0","1"]' for tick, lots in asks)
        return (
            f'{{"arg":{{"channel":"books","instId":"{native}"}},"action":"{action}","data":[{{"asks":[{ask_text}],'
            f'"bids":[{bid_text}],"ts":"{timestamp_ns // 1_000_000}","checksum":0,'
            f'"prevSeqId":{previous},"seqId":{sequence}}}]}}'
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
            if channel not in (BOOK_CHANNEL, TRADE_CHANNEL):
                replies.append(self._error("60018", f"Wrong URL or channel:{channel}, instId:{native} doesn't exist"))
                continue
            if native not in self.venue.specs:
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
                replies.append(self.venue.snapshot_frame(native))
        return replies

    def frames(self, encoded_step: EncodedStep) -> list[str]:
        frames = []
        for key in self.subscriptions:
            frames.extend(encoded_step.get(key, ()))
        return frames


# The recording (OKX.ws.1.0, May 2022) is the live protocol minus seqId and plus non-zero
# checksums; each check runs when its field is present, so no option selects it.
RECORDED_OPTIONS: dict[str, Any] = {}

CONNECTOR = OkxConnector
SIMULATED_VENUE = OkxSimulatedVenue
