"""What the simulator server needs from an exchange module's simulator side.

The server (``sim.server``) owns sockets, the clock and fault injection; a venue only
translates. Adding an exchange to the simulator means writing one
:class:`SimulatedVenue` subclass in that exchange's module: its REST answers, how a
WebSocket URL and client messages map to subscriptions, and how a market step is
encoded as frames.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from dataclasses import dataclass, field

from sim import faults
from sim.market import BookChange, Market, MarketStep

Frame = str | bytes
"""A WebSocket frame: text, or binary (HTX's gzip-compressed JSON)."""


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    body: str
    headers: Mapping[str, str] = field(default_factory=dict)


class VenueSession(ABC):
    """One client WebSocket connection as the venue sees it (its subscriptions).

    Frames are ``str`` (sent as text frames) or ``bytes`` (sent as binary frames, e.g.
    HTX's gzip-compressed JSON)."""

    @abstractmethod
    def on_client_message(self, text: str) -> list[str | bytes]:
        """Replies to a client message (subscribe acks, errors, pongs)."""

    @abstractmethod
    def frames(self, encoded_step: Any) -> list[str | bytes]:
        """This session's frames for a step encoded by :meth:`SimulatedVenue.encode_step`."""

    def greeting(self) -> list[str | bytes]:
        """Frames the venue sends as soon as a client connects (KuCoin's ``welcome``)."""
        return []


class SimulatedVenue(ABC):
    """One exchange's wire format over the shared :class:`~sim.market.Market`."""

    def __init__(self, market: Market, venue: str) -> None:
        self.market = market
        self.venue = venue

    @abstractmethod
    def http(self, path: str, query: Mapping[str, str]) -> HttpReply: ...

    def bound(self, ws_url: str, http_url: str) -> None:
        """The server's addresses once bound, for venues that hand them out (KuCoin's token)."""

    @abstractmethod
    def is_snapshot_request(self, path: str) -> bool:
        """Whether a REST path is a book snapshot (the target of snapshot faults)."""

    @abstractmethod
    def open_session(self, path: str) -> VenueSession | HttpReply:
        """A session for a WebSocket request path (with query), or the HTTP refusal."""

    @abstractmethod
    def encode_step(self, step: MarketStep) -> Any:
        """Encode this venue's events of a step once; sessions pick their frames from it."""

    # ---- fault rendering (sim.server.VenueFaults asks; a venue overrides what it renders its own way)

    def fault_frames(self, frame: Frame, change: BookChange, kind: str) -> list[Frame] | None:
        """What replaces ``frame`` for a frame fault of ``kind`` (``sim.faults.BAD_VALUES``
        keys, ``wrong_shape``, ``unknown_symbol``, ``duplicate``) if it is the book frame carrying one of
        ``change``'s levels, else None. The default finds the level in the decoded frame
        (:mod:`sim.faults`), which fits every venue that writes prices and symbol names."""
        symbol = change.symbol
        if kind == "duplicate":
            return [frame, frame] if any(self._holds_level(frame, change)) else None
        if kind == "unknown_symbol":
            if not any(self._holds_level(frame, change)):
                return None
            renamed = faults.rename_base(frame, self.market.symbols[symbol].base)
            return None if renamed is None else [renamed, frame]
        for price, size in self._holds_level(frame, change):
            if kind == "wrong_shape":
                replaced = faults.replace_level_shape(frame, price, size)
            else:
                field_name, token = faults.BAD_VALUES[kind]
                replaced = faults.replace_level_value(frame, price, size, field_name, token)
            if replaced is not None:
                return [replaced]
        return None

    def _holds_level(self, frame: Frame, change: BookChange) -> list[tuple[float, float]]:
        """The (price, size) of ``change``'s levels (bids first, resting ones only) that
        ``frame`` carries."""
        decoded = faults.decode_frame(frame)
        if decoded is None:
            return []
        message = decoded[0]
        symbol = change.symbol
        held = []
        for tick, lots in (*change.bids, *change.asks):
            if lots <= 0:
                continue
            price, size = self.market.price(symbol, tick), self.market.size(symbol, lots)
            if faults.find_level(message, price, size) is not None:
                held.append((price, size))
        return held

    def corrupt_checksums(self, symbol: str, count: int = 1) -> None:
        """The next ``count`` book updates of ``symbol`` carry a wrong checksum."""
        raise NotImplementedError(f"{self.venue} sends no checksum")

    def subscription_refusal(self, text: str) -> list[Frame] | None:
        """The venue's error reply to ``text`` if it is a subscribe request, else None
        (venues that subscribe in the URL refuse the upgrade instead: ``refuse_upgrades``)."""
        return None

    def maintenance_frames(self, starting: bool) -> list[Frame]:
        """The venue's own notice that maintenance is ``starting`` (or over)."""
        raise NotImplementedError(f"{self.venue} has no maintenance notice in the simulator")


def decimal_places(step: str) -> int:
    """Digits after the point a tick or lot step needs (``"0.0100"`` → 2)."""
    return max(0, -Decimal(step).normalize().as_tuple().exponent)


def rfc3339_micros(timestamp_ns: int) -> str:
    """``"2021-04-17T16:43:37.075687Z"``: how Coinbase and Kraken v2 stamp their messages."""
    seconds, nanoseconds = divmod(timestamp_ns, 1_000_000_000)
    whole = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{nanoseconds // 1000:06d}Z"
