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

Everything read from shared memory is a read-only numpy array. ``torch.from_numpy`` shares
such an array without copying (PyTorch warns that it is not writable: never write to that
tensor); take ``torch.from_numpy(array.copy())`` for a tensor of your own. Layout versions
are checked on attach; a mismatch raises ``LayoutMismatch``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from engine import bus, control
from shm.book import BookReader, BookSnapshotView
from shm.records import Status
from shm.registry import read_directory


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
        bid_levels, ask_levels = int(slot["bid_levels"]), int(slot["ask_levels"])
        self.bid_price = slot["bid_price"][:bid_levels]
        self.bid_size = slot["bid_size"][:bid_levels]
        self.bid_orders = slot["bid_orders"][:bid_levels]
        self.bid_exchange_size = slot["bid_exchange_size"][:bid_levels]
        self.ask_price = slot["ask_price"][:ask_levels]
        self.ask_size = slot["ask_size"][:ask_levels]
        self.ask_orders = slot["ask_orders"][:ask_levels]
        self.ask_exchange_size = slot["ask_exchange_size"][:ask_levels]

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

    def book(self, symbol: str) -> BookHandle:
        if symbol not in self._books:
            names = self.directory["segments"]["books"]
            if symbol not in names:
                raise KeyError(f"{symbol!r} is not configured in instance {self.instance!r}; symbols: {self.symbols}")
            self._books[symbol] = BookHandle(symbol, BookReader.attach(names[symbol]), self.exchanges)
        return self._books[symbol]

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

    def close(self) -> None:
        for handle in self._books.values():
            handle.close()
        self._books = {}


def attach(instance: str = "main") -> Engine:
    """Attach to a running instance by name (raises if none is running)."""
    return Engine(instance)
