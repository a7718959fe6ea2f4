"""The consolidated book of one instrument: its member markets' levels merged by price,
with per-member attribution, and the top ``depth`` levels of each side kept as arrays
ready to be copied into shared memory.

Members. An instrument is fed by member markets, each one (exchange, symbol) book; a
plain instrument has one member per exchange that lists the symbol, a synthetic one
(``BTC-USD*``) may have several per exchange (Kraken's BTC/USD and BTC/USDT). Sizes are
kept per member column; the per-exchange breakdown is the sum of an exchange's columns.

Prices. A member whose quote is the instrument's own (or converted 1:1) keeps its exact
exchange prices: levels merge only where two members quote the same price as parsed (the
same decimal always parses to the same double, and different decimals at market
magnitudes never do), so an exchange with a coarser tick sits on a subset of a finer
exchange's grid and nothing is rounded. A member converted at a live rate has each price
multiplied by the rate and placed on the instrument's tick grid, bids rounded down and asks
up (a converted quote never looks better than it is); its levels that land on one grid
price are summed there. That is the only place where different native prices share a
level, and :class:`ConvertedMember` is where it happens.

Exactness. A level's total is ``sum`` over its member columns in column order and a
column holds the member's size as received, so the consolidated book is a pure function
of the included members' books: the same books give the same bits whatever the order of
the updates that built them (what replay and the property tests rely on).

Cost. An update is one dict lookup, one ``bisect`` and, only when the level is within the
top ``depth``, a few scalar stores into the arrays (a new or vanished level shifts the
rows below it). Levels deeper than ``depth`` cost no array work at all.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from shm.book import FIRST_EXCHANGE, ORDERS, PRICE, SIZE

Levels = Mapping[float, float]
"""A member book side as price → size (sizes > 0)."""


class ConsolidatedSide:
    """One side of an instrument: every level (sorted keys + per-member rows) and its top.

    Sort keys are ``-price`` for bids and ``price`` for asks, so rank 0 is the best level
    on both sides. A row is ``[size per member…, orders per member…, members present]``.

    The top ``depth`` levels live in ``buffer[start:start + count]`` **worst first**, in the
    columns of a published book side (:data:`shm.book.FIRST_EXCHANGE`: member ``m`` is column
    ``FIRST_EXCHANGE + m``), so
    the level of rank ``r`` is row ``start + count - 1 - r``. Feeds change the best levels
    most, and a level appearing or vanishing at rank ``r`` then moves only the ``r``
    better rows; the worst level falling out of the top is ``start += 1``. The buffer has
    ``depth`` spare rows on each side of the block, recentred when one side runs out.
    :meth:`top` gives the best-first arrays (a reversed view, no copy).
    """

    __slots__ = ("is_bid", "depth", "members", "keys", "rows", "count", "start", "buffer", "_empty")

    def __init__(self, is_bid: bool, depth: int, members: int) -> None:
        self.is_bid = is_bid
        self.depth = depth
        self.members = members
        self.keys: list[float] = []
        self.rows: dict[float, list] = {}
        self.count = 0
        self.start = depth
        self.buffer = np.zeros((3 * depth, FIRST_EXCHANGE + members))
        self._empty = [0.0] * members + [0] * members + [0]

    def __len__(self) -> int:
        return len(self.keys)

    def top(self) -> np.ndarray:
        """The top levels best first, as a (count, FIRST_EXCHANGE + members) view."""
        return self.buffer[self.start : self.start + self.count][::-1]

    @property
    def price(self) -> np.ndarray:
        return self.top()[:, PRICE]

    @property
    def size(self) -> np.ndarray:
        return self.top()[:, SIZE]

    @property
    def orders(self) -> np.ndarray:
        return self.top()[:, ORDERS]

    @property
    def member_size(self) -> np.ndarray:
        return self.top()[:, FIRST_EXCHANGE:]

    def set(self, member: int, price: float, size: float, orders: int = 0) -> None:
        """Member ``member`` now has ``size`` at ``price`` (0 removes it)."""
        key = -price if self.is_bid else price
        row = self.rows.get(key)
        members = self.members
        if row is None:
            if size == 0.0:
                return
            row = self._empty[:]
            row[member] = size
            row[members + member] = orders
            row[-1] = 1
            self.rows[key] = row
            rank = bisect_left(self.keys, key)
            self.keys.insert(rank, key)
            if rank < self.depth:
                self._insert_top(rank, price, row)
            return
        present = row[member] != 0.0
        counted = orders or row[members + member]
        if size == 0.0:
            if not present:
                return
            row[member] = 0.0
            row[members + member] = 0
            row[-1] -= 1
            if row[-1] == 0:
                del self.rows[key]
                rank = bisect_left(self.keys, key)
                del self.keys[rank]
                if rank < self.depth:
                    self._remove_top(rank)
                return
        else:
            row[member] = size
            row[members + member] = orders
            if not present:
                row[-1] += 1
        rank = bisect_left(self.keys, key)
        if rank < self.depth:
            index = self.start + self.count - 1 - rank
            buffer = self.buffer
            buffer[index, FIRST_EXCHANGE + member] = size
            buffer[index, SIZE] = sum(row[:members])
            if counted:
                buffer[index, ORDERS] = sum(row[members : 2 * members])

    def _fill(self, index: int, price: float, row: list) -> None:
        members = self.members
        line = self.buffer[index]
        line[PRICE] = price
        line[SIZE] = sum(row[:members])
        line[ORDERS] = sum(row[members : 2 * members])
        line[FIRST_EXCHANGE:] = row[:members]

    def _recentre(self) -> None:
        block = self.buffer[self.start : self.start + self.count].copy()
        self.start = self.depth
        self.buffer[self.start : self.start + self.count] = block

    def _insert_top(self, rank: int, price: float, row: list) -> None:
        if self.start + self.count == len(self.buffer):
            self._recentre()
        top = self.start + self.count  # one past the best row
        index = top - rank  # the new row's place; the ``rank`` better rows move up by one
        if rank:
            self.buffer[index + 1 : top + 1] = self.buffer[index:top]
        self._fill(index, price, row)
        if self.count == self.depth:
            self.start += 1  # the worst level leaves the top
        else:
            self.count += 1

    def _remove_top(self, rank: int) -> None:
        top = self.start + self.count
        index = top - 1 - rank
        if rank:
            self.buffer[index : top - 1] = self.buffer[index + 1 : top]
        self.count -= 1
        if len(self.keys) > self.count:  # the best level below the top moves in as the worst
            if self.start == 0:
                self._recentre()
            self.start -= 1
            self.count += 1
            key = self.keys[self.count - 1]
            self._fill(self.start, -key if self.is_bid else key, self.rows[key])

    def levels(self, member: int | None = None) -> list[tuple[float, float]]:
        """(price, size) best first: the consolidated side, or one member's column of it."""
        sign = -1.0 if self.is_bid else 1.0
        if member is None:
            return [(sign * key, sum(self.rows[key][: self.members])) for key in self.keys]
        return [(sign * key, row[member]) for key in self.keys if (row := self.rows[key])[member] != 0.0]

    def best(self) -> float | None:
        if not self.keys:
            return None
        key = self.keys[0]
        return -key if self.is_bid else key


@dataclass(frozen=True, slots=True)
class Conversion:
    """How a member's prices reach the instrument's quote: ``rate`` times, on ``tick``."""

    rate: float
    tick: float

    def bid(self, price: float) -> float:
        return _on_grid(math.floor(price * self.rate / self.tick + 1e-9), self.tick)

    def ask(self, price: float) -> float:
        return _on_grid(math.ceil(price * self.rate / self.tick - 1e-9), self.tick)


def _on_grid(ticks: int, tick: float) -> float:
    """``ticks * tick`` as the decimal a venue would print (no 0.30000000000000004)."""
    decimals = max(0, -math.floor(math.log10(tick)) + 1) if tick < 1 else 0
    return round(ticks * tick, decimals + 8)


class ConvertedMember:
    """A member at a live rate: its native levels grouped by the grid price they land on,
    so a change re-sums exactly the one grid level it touches."""

    __slots__ = ("conversion", "bid_groups", "ask_groups", "bid_home", "ask_home")

    def __init__(self, conversion: Conversion) -> None:
        self.conversion = conversion
        self.bid_groups: dict[float, dict[float, tuple[float, int]]] = {}
        self.ask_groups: dict[float, dict[float, tuple[float, int]]] = {}
        self.bid_home: dict[float, float] = {}  # native price → grid price
        self.ask_home: dict[float, float] = {}

    def set(self, is_bid: bool, price: float, size: float, orders: int) -> tuple[float, float, int]:
        """Record a native level; returns (grid price, new total size there, total orders)."""
        groups, home = (self.bid_groups, self.bid_home) if is_bid else (self.ask_groups, self.ask_home)
        grid = home.get(price)
        if grid is None:
            grid = self.conversion.bid(price) if is_bid else self.conversion.ask(price)
        group = groups.get(grid)
        if size == 0.0:
            if group is None or group.pop(price, None) is None:
                return grid, 0.0, 0
            del home[price]
            if not group:
                del groups[grid]
                return grid, 0.0, 0
        else:
            if group is None:
                group = groups[grid] = {}
            group[price] = (size, orders)
            home[price] = grid
        return grid, sum(s for s, _ in group.values()), sum(o for _, o in group.values())

    def grid_levels(self, is_bid: bool) -> Iterable[tuple[float, float, int]]:
        groups = self.bid_groups if is_bid else self.ask_groups
        for grid, group in groups.items():
            yield grid, sum(s for s, _ in group.values()), sum(o for _, o in group.values())


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """One market feeding an instrument; ``rate`` None = exact prices (1:1)."""

    exchange: int
    symbol: int


class ConsolidatedBook:
    """One instrument across its members: the sides, and which members are included.

    The aggregator owns the members' own books and tells this class what changed: a level
    (:meth:`set_level`), a whole book swapped in (:meth:`replace`), a member leaving or
    rejoining (:meth:`exclude`, :meth:`include`). Only included members are in the sides.
    """

    def __init__(self, name: str, members: Sequence[MemberSpec], depth: int, tick: float = 0.0) -> None:
        self.name = name
        self.members = list(members)
        self.column = {(m.exchange, m.symbol): index for index, m in enumerate(self.members)}
        self.tick = tick
        self.bids = ConsolidatedSide(True, depth, len(self.members))
        self.asks = ConsolidatedSide(False, depth, len(self.members))
        self.included = [False] * len(self.members)
        self.converted: list[ConvertedMember | None] = [None] * len(self.members)

    def side(self, is_bid: bool) -> ConsolidatedSide:
        return self.bids if is_bid else self.asks

    def set_level(self, column: int, is_bid: bool, price: float, size: float, orders: int = 0) -> None:
        if not self.included[column]:
            return
        converted = self.converted[column]
        side = self.bids if is_bid else self.asks
        if converted is None:
            side.set(column, price, size, orders)
        else:
            grid, total, total_orders = converted.set(is_bid, price, size, orders)
            side.set(column, grid, total, total_orders)

    def replace(self, column: int, old: tuple[Levels, Levels], new: tuple[Levels, Levels],
                orders: tuple[Mapping[float, int], Mapping[float, int]] = ({}, {})) -> None:
        """The member's book went from ``old`` to ``new`` (a snapshot): apply the difference."""
        if not self.included[column]:
            return
        for is_bid, before, after, counts in ((True, old[0], new[0], orders[0]), (False, old[1], new[1], orders[1])):
            for price in before.keys() - after.keys():
                self.set_level(column, is_bid, price, 0.0)
            for price, size in after.items():
                if before.get(price) != size or counts.get(price, 0):
                    self.set_level(column, is_bid, price, size, counts.get(price, 0))

    def include(self, column: int, book: tuple[Levels, Levels],
                orders: tuple[Mapping[float, int], Mapping[float, int]] = ({}, {}),
                conversion: Conversion | None = None) -> None:
        """Bring a member (back) in with its whole book."""
        if self.included[column]:
            self.exclude(column)
        self.included[column] = True
        self.converted[column] = ConvertedMember(conversion) if conversion is not None else None
        self.replace(column, ({}, {}), book, orders)

    def exclude(self, column: int) -> None:
        """Take every level of a member out (stale, resyncing, disconnected, crossed)."""
        if not self.included[column]:
            return
        for side in (self.bids, self.asks):
            for price, _ in side.levels(column):
                side.set(column, price, 0.0)
        self.included[column] = False
        self.converted[column] = None
