"""What a process outside the engine uses: attach by instance name, read, subscribe.

    from engine.client import attach
    engine = attach("main")
    book = engine.book("BTC/USDT")
    snapshot = book.snapshot()          # consistent private copy
    print(snapshot.best_bid, snapshot.best_ask, snapshot.bid_price[:10])

    with book.view() as live:           # zero copy; raises StaleRead if the writer lapped it
        mid = (live.bid_price[0] + live.ask_price[0]) / 2

    for topic, message in engine.subscribe(["book.BTC/USDT", "status."]):
        ...

    window = engine.features("BTC/USDT", 64)            # newest 64 CNN rows, (64, 220) float32, no copy
    batch = window.values.copy(); assert window.valid()  # or read in place, then check valid()
    seq = engine.wait_features("BTC/USDT", window.last_sequence)   # blocks until a newer row exists
    engine.recent_signals("BTC/USDT", 20)                # the signals actor's latest, newest last

Everything read from shared memory is a read-only numpy array. ``torch.from_numpy`` shares
such an array without copying (PyTorch warns that it is not writable: never write to that
tensor); take ``torch.from_numpy(array.copy())`` for a tensor of your own. Layout versions
are checked on attach; a mismatch raises ``LayoutMismatch``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from engine import bus, control
from engine import features as feature_layout
from engine.microstructure import (
    AnalyticsSettings,
    SideArrays,
    distance_bps,
    dominant_exchange,
    fill_buckets,
    liquidity_score,
    mid_price,
)
from shm import wake
from shm.book import FIRST_EXCHANGE, ORDERS, PRICE, SIZE, BookReader, BookSnapshotView
from shm.features import FeatureReader, FeatureWindow
from shm.records import Status
from shm.registry import read_directory
from shm.segment import LayoutMismatch

FEATURE_RECHECK_S = 0.01
"""Longest a :meth:`Engine.wait_features` sleeps between two looks at the tensor: the
features actor's doorbell normally wakes it at once, this bounds the wait when a message
is missed (a brand-new subscription misses what is sent before it is joined)."""


class StaleRead(RuntimeError):
    """The writer reused the slot while it was being read in place; read again."""


@dataclass(frozen=True)
class ExchangeState:
    name: str
    status: Status
    since_ns: int
    best_bid: float
    best_ask: float
    bid_levels: int
    ask_levels: int


class Book:
    """One consolidated book (a slot of the book segment), by field name."""

    def __init__(self, slot: np.void, exchanges: dict[str, int]) -> None:
        self.slot = slot
        self.exchanges = exchanges
        self.generation = int(slot["generation"])
        self.publish_ts = int(slot["publish_ts"])
        self.bids = slot["bids"][: int(slot["bid_levels"])]  # (levels, FIRST_EXCHANGE + exchanges)
        self.asks = slot["asks"][: int(slot["ask_levels"])]
        self.bid_price, self.ask_price = self.bids[:, PRICE], self.asks[:, PRICE]
        self.bid_size, self.ask_size = self.bids[:, SIZE], self.asks[:, SIZE]
        self.bid_orders, self.ask_orders = self.bids[:, ORDERS], self.asks[:, ORDERS]
        self.bid_exchange_size = self.bids[:, FIRST_EXCHANGE:]
        self.ask_exchange_size = self.asks[:, FIRST_EXCHANGE:]

    @property
    def mid(self) -> float:
        return mid_price(self._side(True), self._side(False))

    def _side(self, is_bid: bool) -> SideArrays:
        if is_bid:
            return SideArrays(self.bid_price, self.bid_size, self.bid_orders, self.bid_exchange_size)
        return SideArrays(self.ask_price, self.ask_size, self.ask_orders, self.ask_exchange_size)

    def notional(self, is_bid: bool) -> np.ndarray:
        """Per level, price × size in the quote currency."""
        side = self._side(is_bid)
        return side.price * side.size

    def dominant(self, is_bid: bool) -> np.ndarray:
        """Per level, the exchange id with the most size there."""
        return dominant_exchange(self._side(is_bid))

    def liquidity_score(self, is_bid: bool, decay_bps: float = 10.0) -> np.ndarray:
        """Per level, docs/metrics.md "Liquidity score" (the engine's default decay: 10 bp)."""
        side = self._side(is_bid)
        return liquidity_score(side, distance_bps(side, self.mid, is_bid), decay_bps)

    @property
    def best_bid(self) -> float | None:
        return float(self.bid_price[0]) if len(self.bid_price) else None

    @property
    def best_ask(self) -> float | None:
        return float(self.ask_price[0]) if len(self.ask_price) else None

    def exchange(self, name: str) -> ExchangeState:
        index = self.exchanges[name]
        slot = self.slot
        return ExchangeState(
            name=name,
            status=Status(int(slot["exchange_status"][index])),
            since_ns=int(slot["exchange_status_since"][index]),
            best_bid=float(slot["exchange_best_bid"][index]),
            best_ask=float(slot["exchange_best_ask"][index]),
            bid_levels=int(slot["exchange_bid_levels"][index]),
            ask_levels=int(slot["exchange_ask_levels"][index]),
        )

    def exchange_states(self) -> list[ExchangeState]:
        return [self.exchange(name) for name in self.exchanges]

    @property
    def metrics(self) -> np.void:
        """The microstructure metrics of this book (docs/metrics.md)."""
        return self.slot["metrics"]

    @property
    def buckets(self) -> np.void:
        """The buckets as last refreshed (``buckets["generation"]`` says on which book)."""
        return self.slot["buckets"]

    def _settings(self) -> AnalyticsSettings:
        metrics, buckets = self.metrics, self.buckets
        return AnalyticsSettings(
            tuple(metrics["imbalance_bps"].tolist()), tuple(metrics["depth_steps_bps"].tolist()),
            float(metrics["dominance_bps"]), 1.0, float(buckets["bps_width"]), float(buckets["abs_unit"]),
        )

    def compute_buckets(self) -> np.void:
        """The buckets of exactly this book, computed now with the aggregator's own code."""
        fresh = np.zeros((), dtype=self.slot.dtype["buckets"])[()]
        fill_buckets(fresh, self._side(True), self._side(False), self._settings())
        fresh["generation"] = self.generation
        return fresh


def _names(exchanges: dict[str, int]) -> dict[int, str]:
    return {index: name for name, index in exchanges.items()}


@dataclass(frozen=True)
class PriceBuckets:
    """Relative buckets (bucket ``k`` of a side: ``k*bps_width`` to ``(k+1)*bps_width`` bp from the
    mid) and absolute ones (bin ``j``: ``abs_first_price + j*abs_unit`` upwards); every array is a copy."""

    generation: int
    mid: float
    bps_width: float
    bid_bps: dict[str, np.ndarray]  # size, notional, orders, exchange_size (B, E)
    ask_bps: dict[str, np.ndarray]
    abs_unit: float
    abs_first_price: float
    bid_abs: dict[str, np.ndarray]
    ask_abs: dict[str, np.ndarray]
    exchanges: list[str]  # column order of every exchange_size

    @classmethod
    def of(cls, buckets: np.void, exchanges: dict[str, int]) -> "PriceBuckets":
        def part(side: str, kind: str) -> dict[str, np.ndarray]:
            return {f: np.array(buckets[f"{side}_{kind}_{f}"]) for f in ("size", "notional", "orders", "exchange_size")}

        names = _names(exchanges)
        columns = buckets["bid_bps_exchange_size"].shape[1]
        return cls(
            int(buckets["generation"]), float(buckets["mid"]), float(buckets["bps_width"]),
            part("bid", "bps"), part("ask", "bps"), float(buckets["abs_unit"]), float(buckets["abs_first_price"]),
            part("bid", "abs"), part("ask", "abs"), [names.get(i, "") for i in range(columns)],
        )


@dataclass(frozen=True)
class ExchangeShare:
    state: ExchangeState
    included: bool  # its levels are in the consolidated book now
    bid_size: float  # its size within the published levels
    ask_size: float
    spread_bps: float
    dominance: float  # share of the size within dominance_bps of the mid


@dataclass(frozen=True)
class DepthAnalysis:
    """docs/metrics.md defines each value."""

    generation: int
    mid: float
    vw_mid: float
    spread: float
    spread_bps: float
    imbalance: dict[float, float]  # distance (bp) → (bid − ask) / (bid + ask)
    bid_depth: dict[float, float]  # distance (bp) → cumulative size
    ask_depth: dict[float, float]
    dominance: dict[str, float]
    cross_spread: float
    cross_spread_bps: float
    cross_bid_exchange: str | None
    cross_ask_exchange: str | None
    total_bid_size: float
    total_ask_size: float
    total_bid_notional: float
    total_ask_notional: float

    @classmethod
    def of(cls, metrics: np.void, exchanges: dict[str, int]) -> "DepthAnalysis":
        """From a :func:`shm.book.metrics_dtype` record."""
        names = _names(exchanges)
        steps = metrics["depth_steps_bps"].tolist()
        return cls(
            generation=int(metrics["generation"]),
            mid=float(metrics["mid"]),
            vw_mid=float(metrics["vw_mid"]),
            spread=float(metrics["spread"]),
            spread_bps=float(metrics["spread_bps"]),
            imbalance=dict(zip(metrics["imbalance_bps"].tolist(), metrics["imbalance"].tolist())),
            bid_depth=dict(zip(steps, metrics["bid_depth"].tolist())),
            ask_depth=dict(zip(steps, metrics["ask_depth"].tolist())),
            dominance={names[i]: share for i, share in enumerate(metrics["dominance"].tolist()) if i in names},
            cross_spread=float(metrics["cross_spread"]),
            cross_spread_bps=float(metrics["cross_spread_bps"]),
            cross_bid_exchange=names.get(int(metrics["cross_bid_exchange"])),
            cross_ask_exchange=names.get(int(metrics["cross_ask_exchange"])),
            total_bid_size=float(metrics["total_bid_size"]),
            total_ask_size=float(metrics["total_ask_size"]),
            total_bid_notional=float(metrics["total_bid_notional"]),
            total_ask_notional=float(metrics["total_ask_notional"]),
        )


class _LiveView:
    def __init__(self, view: BookSnapshotView, exchanges: dict[str, int]) -> None:
        self._view = view
        self._book = Book(view.slot, exchanges)

    def __enter__(self) -> Book:
        return self._book

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is None and not self._view.valid():
            raise StaleRead("the book was overwritten while being read in place; read it again")


class BookHandle:
    def __init__(self, symbol: str, reader: BookReader, exchanges: dict[str, int]) -> None:
        self.symbol = symbol
        self.reader = reader
        self.exchanges = exchanges

    def snapshot(self) -> Book:
        """A consistent private copy of the newest published book."""
        return Book(self.reader.snapshot(), self.exchanges)

    def view(self) -> _LiveView:
        """The newest book in place, no copy; the ``with`` block checks it stayed whole."""
        return _LiveView(self.reader.view(), self.exchanges)

    @property
    def generation(self) -> int:
        return self.reader.generation

    def close(self) -> None:
        self.reader.close()


class Engine:
    """A handle on a running coby instance."""

    def __init__(self, instance: str = "main") -> None:
        self.instance = instance
        self.directory: dict[str, Any] = read_directory(instance)
        self.symbols: list[str] = self.directory["symbols"]
        self.exchanges: dict[str, int] = self.directory["exchanges"]
        self.endpoints: dict[str, str] = self.directory["endpoints"]
        self._books: dict[str, BookHandle] = {}
        self._features: dict[tuple[str, str], FeatureReader] = {}
        self._feature_doorbells: dict[str, bus.Subscriber] = {}

    def book(self, symbol: str) -> BookHandle:
        if symbol not in self._books:
            names = self.directory["segments"]["books"]
            if symbol not in names:
                raise KeyError(f"{symbol!r} is not configured in instance {self.instance!r}; symbols: {self.symbols}")
            self._books[symbol] = BookHandle(symbol, BookReader.attach(names[symbol]), self.exchanges)
        return self._books[symbol]

    @property
    def instruments(self) -> list[str]:
        """Every consolidated instrument: the configured symbols, then the synthetic ones."""
        return list(self.directory["segments"]["books"])

    def exchanges_of(self, symbol: str) -> list[str]:
        """The exchanges whose markets feed an instrument, in exchange id order."""
        names = {index: name for name, index in self.exchanges.items()}
        return [names[index] for index in self.directory["instruments"][symbol]]

    def snapshot(self, symbol: str) -> Book:
        """The consolidated book of an instrument: levels, per-exchange state and stats, untorn."""
        return self.book(symbol).snapshot()

    def price_buckets(self, symbol: str, fresh: bool = False) -> PriceBuckets:
        """The instrument's buckets as the aggregator last refreshed them, or computed now."""
        book = self.snapshot(symbol)
        return PriceBuckets.of(book.compute_buckets() if fresh else book.buckets, self.exchanges)

    def exchange_breakdown(self, symbol: str) -> list[ExchangeShare]:
        """Per exchange feeding the instrument: state, top of book, depth and its share of it."""
        book = self.snapshot(symbol)
        metrics = book.metrics
        shares = []
        for name, index in self.exchanges.items():
            state = book.exchange(name)
            shares.append(
                ExchangeShare(
                    state=state,
                    included=bool(book.slot["exchange_included"][index]),
                    bid_size=float(book.bid_exchange_size[:, index].sum()),
                    ask_size=float(book.ask_exchange_size[:, index].sum()),
                    spread_bps=float(metrics["exchange_spread_bps"][index]),
                    dominance=float(metrics["dominance"][index]),
                )
            )
        return shares

    def depth_analysis(self, symbol: str) -> DepthAnalysis:
        """The metrics of the newest book (computed by the aggregator on that very book)."""
        return DepthAnalysis.of(self.snapshot(symbol).metrics, self.exchanges)

    def subscribe(self, topics: list[str] | tuple[str, ...] = ("",), timeout_ms: int | None = None) -> Iterator[tuple[str, dict]]:
        """Yield ``(topic, message)`` from the bus; stops after ``timeout_ms`` of silence."""
        subscriber = bus.Subscriber(zmq.Context.instance(), self.endpoints["bus_subscribe"], topics)
        try:
            while (message := subscriber.receive(timeout_ms)) is not None:
                yield message
        finally:
            subscriber.close()

    def status(self, timeout_s: float = 5.0) -> dict[str, Any]:
        return control.request(self.endpoints["control"], "status", timeout_s)

    # ---- features and signals -----------------------------------------------------------

    def feature_tensor(self, symbol: str, kind: str = "cnn") -> FeatureReader:
        """The rolling tensor of one instrument (``kind`` "cnn": T × 220, "rl": T × 30)."""
        key = (symbol, kind)
        if key not in self._features:
            names = self.directory["segments"]["features"]
            if symbol not in names:
                raise KeyError(f"{symbol!r} has no feature tensors in instance {self.instance!r}; "
                               f"instruments: {sorted(names)}")
            if kind not in names[symbol]:
                raise ValueError(f"unknown feature kind {kind!r}: 'cnn' or 'rl'")
            reader = FeatureReader.attach(names[symbol][kind])
            if reader.schema_version != feature_layout.LAYOUT_VERSION or reader.width != feature_layout.width(kind):
                reader.close()
                raise LayoutMismatch(
                    f"{symbol} {kind} features are layout {reader.schema_version} ({reader.width} columns); this "
                    f"client reads layout {feature_layout.LAYOUT_VERSION}: update coby on one side"
                )
            self._features[key] = reader
        return self._features[key]

    def features(self, symbol: str, k: int, kind: str = "cnn") -> FeatureWindow:
        """The newest ``k`` rows as one zero-copy ``(K, F)`` float32 view (K = fewer while
        fewer rows exist), with ``timestamps`` and ``sequences``; trust what you read from it
        only if ``valid()`` is still True afterwards (docs/features.md, docs/consumers.md)."""
        return self.feature_tensor(symbol, kind).latest(k)

    @staticmethod
    def feature_names(kind: str = "cnn") -> list[str]:
        """Column names of a ``kind`` row, in order (docs/features.md)."""
        return feature_layout.feature_names(kind)

    def wait_features(self, symbol: str, after_seq: int, timeout_s: float = 1.0, kind: str = "cnn") -> int | None:
        """Block until the instrument has a row newer than ``after_seq``; return the newest
        row's sequence, or None after ``timeout_s``.

        Sleeps on the tensor's row counter (a futex: the writer's append wakes it, no message
        in between; ``shm.wake``), or where futexes are not available in ZeroMQ's poll on the
        features actor's doorbell (``features.<symbol>``, sent right after each row is
        complete); either way it burns no CPU, and looks at the tensor at least every
        :data:`FEATURE_RECHECK_S`.
        """
        reader = self.feature_tensor(symbol, kind)
        newest = int(reader.rows_written)
        if newest > after_seq:
            return newest
        deadline = time.monotonic() + timeout_s
        if wake.CAN_WAIT:
            while (left := deadline - time.monotonic()) > 0.0:
                if (found := reader.wait_for_row(after_seq, min(left, FEATURE_RECHECK_S))) is not None:
                    return found
            return None
        doorbell = self._feature_doorbell(symbol)
        while True:
            left = deadline - time.monotonic()
            if left <= 0.0:
                return None
            if doorbell.socket.poll(math.ceil(min(left, FEATURE_RECHECK_S) * 1000)):
                while True:
                    try:
                        doorbell.socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            newest = int(reader.rows_written)
            if newest > after_seq:
                return newest

    def _feature_doorbell(self, symbol: str) -> bus.Subscriber:
        if symbol not in self._feature_doorbells:
            self._feature_doorbells[symbol] = bus.Subscriber(
                zmq.Context.instance(), self.endpoints["features_doorbell"], [f"features.{symbol}"]
            )
        return self._feature_doorbells[symbol]

    def recent_signals(self, symbol: str, count: int = 100, timeout_s: float = 2.0) -> list[dict[str, Any]]:
        """The signals actor's latest ``count`` signals of an instrument, oldest first
        (docs/signals.md); raises :class:`control.ControlError` if the actor does not answer."""
        try:
            reply = control.request(self.endpoints["signals"], "recent", timeout_s, symbol=symbol, count=count)
        except control.ControlError:
            raise control.ControlError(
                f"the signals actor of instance {self.instance!r} did not answer within {timeout_s:g}s "
                f"(see 'coby status')"
            ) from None
        if not reply.get("ok"):
            raise KeyError(reply.get("error"))
        return reply["signals"]

    def close(self) -> None:
        for handle in self._books.values():
            handle.close()
        self._books = {}
        for reader in self._features.values():
            reader.close()
        self._features = {}
        for doorbell in self._feature_doorbells.values():
            doorbell.close()
        self._feature_doorbells = {}


def attach(instance: str = "main") -> Engine:
    """Attach to a running instance by name (raises if none is running)."""
    return Engine(instance)
