"""The simulator's synthetic market, exchange-agnostic.

One latent mid per symbol follows a geometric random walk. Each venue sees it through
its own offset, a slowly varying noise and occasional dislocations, and keeps its own
exact book per symbol in integer ticks and lots (so every price and size has one exact
decimal text on every venue) with its own update-id counter. Every step, orders arrive,
get cancelled and trade; when a venue's mid moves through resting orders those trade
too; liquidity shocks sweep several levels at once. Scripted events (a test's or a
demo's plan) shift a venue's price for a while (:meth:`Market.dislocate`), sweep its
book (:meth:`Market.liquidity_shock`) or make market makers pull their quotes near the
mid on several venues at once for a while (:meth:`Market.withdraw_liquidity`). All
randomness comes from one seeded :class:`random.Random`, so a seed and a sequence of
``step`` calls give the same books, ids and trades every time, whatever the wall clock
says.

A step returns what changed as venue-neutral events (:class:`BookChange`,
:class:`Trade`); each venue module's simulator side encodes them in its wire format.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from shm.records import Side

Level = tuple[float, float]


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One instrument of the synthetic market (the same instrument on every venue)."""

    canonical: str  # "BTC/USDT", or "BTC/USDT:PERP" for a perpetual
    price: str  # initial latent mid, decimal text
    tick_size: str
    lot_size: str
    volatility: float = 0.0001  # stdev of the latent log mid per sqrt(second)
    order_size: str = "1"  # typical order size near the mid, base units

    @property
    def base(self) -> str:
        return self.canonical.split("/")[0]

    @property
    def quote(self) -> str:
        return self.canonical.split("/")[1].split(":")[0]

    @property
    def perpetual(self) -> bool:
        return self.canonical.endswith(":PERP")


@dataclass(frozen=True, slots=True)
class VenueSpec:
    """How one venue deviates from the latent market, and how busy its books are."""

    name: str
    offset_bps: float = 0.0
    noise_bps: float = 0.2
    depth: int = 60  # levels kept per side (the book refills its far end up to this)
    arrival_rate: float = 40.0  # new orders per second per symbol
    cancel_rate: float = 30.0  # cancels per second per symbol
    trade_rate: float = 4.0  # market orders per second per symbol
    shock_rate: float = 0.02  # random liquidity shocks per second per symbol
    dislocation_rate: float = 0.01  # random dislocations (5-30 bps for 1-10 s) per second per symbol


@dataclass(frozen=True, slots=True)
class BookChange:
    """One venue's net book change for one symbol during one step.

    ``bids``/``asks`` hold (tick, lots) with the new absolute size (0 = deleted), each
    price once. Every individual change consumed one update id, so ``first_update_id``
    .. ``last_update_id`` may span more ids than there are levels;
    ``previous_update_id`` is the last id of the venue's previous change of the symbol.
    """

    venue: str
    symbol: str
    first_update_id: int
    last_update_id: int
    previous_update_id: int
    bids: tuple[tuple[int, int], ...]
    asks: tuple[tuple[int, int], ...]
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class Trade:
    venue: str
    symbol: str
    trade_id: int
    price_ticks: int
    lots: int
    aggressor: Side  # BID: a buyer took the ask
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class MarketStep:
    number: int
    timestamp_ns: int
    book_changes: tuple[BookChange, ...]
    trades: tuple[Trade, ...]


class FixedPoint:
    """Exact decimal text of integer multiples of a step (tick or lot), at fixed places."""

    __slots__ = ("units", "scale", "places")

    def __init__(self, step: str, places: int) -> None:
        units = Decimal(step).scaleb(places)
        if units != units.to_integral_value() or units <= 0:
            raise ValueError(f"step {step} does not fit in {places} decimal places")
        self.units = int(units)
        self.scale = 10**places
        self.places = places

    def text(self, count: int) -> str:
        value = count * self.units
        if not self.places:
            return str(value)
        return f"{value // self.scale}.{value % self.scale:0{self.places}d}"


@dataclass(slots=True)
class VenueBook:
    """One venue's exact book of one symbol: tick → lots per side, and its counters."""

    bids: dict[int, int] = field(default_factory=dict)
    asks: dict[int, int] = field(default_factory=dict)
    last_update_id: int = 0
    next_trade_id: int = 1
    noise_bps: float = 0.0
    dislocation_bps: float = 0.0
    dislocation_until_s: float = 0.0

    def best_bid(self) -> tuple[int, int] | None:
        if not self.bids:
            return None
        tick = max(self.bids)
        return tick, self.bids[tick]

    def best_ask(self) -> tuple[int, int] | None:
        if not self.asks:
            return None
        tick = min(self.asks)
        return tick, self.asks[tick]

    def top(self, depth: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(bids best first, asks best first), at most ``depth`` levels each."""
        bids = sorted(self.bids.items(), reverse=True)[:depth]
        asks = sorted(self.asks.items())[:depth]
        return bids, asks


class _StepChanges:
    """Collects one step's changes to one venue book and spends one update id each."""

    __slots__ = ("book", "bids", "asks", "count")

    def __init__(self, book: VenueBook) -> None:
        self.book = book
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.count = 0

    def set(self, side: Side, tick: int, lots: int) -> None:
        levels = self.book.bids if side == Side.BID else self.book.asks
        if lots > 0:
            levels[tick] = lots
        else:
            levels.pop(tick, None)
        (self.bids if side == Side.BID else self.asks)[tick] = max(lots, 0)
        self.count += 1


class Market:
    """Latent mids, per-venue books, and the rules that move them one step at a time."""

    def __init__(self, symbols: Sequence[SymbolSpec], venues: Sequence[VenueSpec], seed: int = 0) -> None:
        self.symbols = {spec.canonical: spec for spec in symbols}
        self.venues = {spec.name: spec for spec in venues}
        self.random = random.Random(seed)
        self.elapsed_s = 0.0
        self.step_number = 0
        self._ticks = {spec.canonical: Decimal(spec.tick_size) for spec in symbols}
        self._lots = {spec.canonical: Decimal(spec.lot_size) for spec in symbols}
        self._order_lots = {
            spec.canonical: max(1, int(Decimal(spec.order_size) / Decimal(spec.lot_size))) for spec in symbols
        }
        self.latent_ticks = {spec.canonical: float(Decimal(spec.price) / Decimal(spec.tick_size)) for spec in symbols}
        self.books: dict[tuple[str, str], VenueBook] = {}
        self._pending_shocks: list[tuple[str, str, Side, int]] = []
        # (venue, symbol) → active withdrawals: side, distance (bp), until (market s), the
        # orders pulled (distance from the mid in ticks, lots) to put back when it ends
        self._withdrawals: dict[tuple[str, str], list[tuple[Side, float, float, list[tuple[int, int]]]]] = {}
        for venue in venues:
            for spec in symbols:
                book = VenueBook(last_update_id=1_000_000 + self.random.randrange(1_000_000_000))
                self.books[venue.name, spec.canonical] = book
                self._seed_book(venue, spec.canonical, book)

    # ---- inspection ----------------------------------------------------------------------

    def book(self, venue: str, symbol: str) -> VenueBook:
        return self.books[venue, symbol]

    def price(self, symbol: str, ticks: int) -> float:
        return float(self._ticks[symbol] * ticks)

    def size(self, symbol: str, lots: int) -> float:
        return float(self._lots[symbol] * lots)

    def truth(self, venue: str, symbol: str, depth: int | None = None) -> tuple[list[Level], list[Level]]:
        """The venue's exact book as floats (bids best first, asks best first).

        ``float`` of an exact decimal is correctly rounded, so these equal what a client
        gets from ``float()`` of the venue's price and size texts.
        """
        bids, asks = self.books[venue, symbol].top(depth if depth is not None else 1 << 30)
        return (
            [(self.price(symbol, tick), self.size(symbol, lots)) for tick, lots in bids],
            [(self.price(symbol, tick), self.size(symbol, lots)) for tick, lots in asks],
        )

    # ---- scripted events -------------------------------------------------------------------

    def dislocate(self, venue: str, symbol: str, bps: float, seconds: float) -> None:
        """Shift one venue's price of ``symbol`` by ``bps`` for ``seconds`` of market time."""
        book = self.books[venue, symbol]
        book.dislocation_bps = bps
        book.dislocation_until_s = self.elapsed_s + seconds

    def liquidity_shock(self, venue: str, symbol: str, side: Side, levels: int) -> None:
        """At the next step, one market order sweeps the best ``levels`` levels of ``side``."""
        self._pending_shocks.append((venue, symbol, side, levels))

    def withdraw_liquidity(
        self, symbol: str, bps: float, seconds: float, venues: Iterable[str] | None = None,
        sides: Iterable[Side] = (Side.BID, Side.ASK),
    ) -> None:
        """For ``seconds`` of market time, the venues (all by default) keep no order of
        ``sides`` within ``bps`` of their mid: resting ones are cancelled at the next step and
        new ones only arrive beyond that distance (a thin book; the spread opens to 2 × ``bps``
        when both sides are pulled). When it ends, the pulled orders are put back at the
        distance from the mid they had (market makers quoting again)."""
        until = self.elapsed_s + seconds
        for venue in self.venues if venues is None else venues:
            self._withdrawals.setdefault((venue, symbol), []).extend((side, bps, until, []) for side in sides)

    # ---- evolution -------------------------------------------------------------------------

    def step(self, dt: float, now_ns: int) -> MarketStep:
        """Advance ``dt`` seconds of market time; ``now_ns`` only stamps the events."""
        rng = self.random
        self.elapsed_s += dt
        self.step_number += 1
        for symbol, spec in self.symbols.items():
            self.latent_ticks[symbol] *= math.exp(spec.volatility * math.sqrt(dt) * rng.gauss(0.0, 1.0))
        shocks = self._pending_shocks
        self._pending_shocks = []
        changes: list[BookChange] = []
        trades: list[Trade] = []
        for venue in self.venues.values():
            for symbol in self.symbols:
                book = self.books[venue.name, symbol]
                step = _StepChanges(book)
                venue_trades: list[Trade] = []
                highest_bid, lowest_ask = self._move_book(venue, symbol, book, step, venue_trades, dt, now_ns)
                for shock_venue, shock_symbol, side, levels in shocks:
                    if shock_venue == venue.name and shock_symbol == symbol:
                        self._sweep(venue.name, symbol, book, step, venue_trades, side, levels, now_ns)
                self._refill(venue, symbol, book, step, highest_bid, lowest_ask)
                trades.extend(venue_trades)
                if step.count:
                    previous = book.last_update_id
                    book.last_update_id += step.count
                    changes.append(
                        BookChange(
                            venue=venue.name,
                            symbol=symbol,
                            first_update_id=previous + 1,
                            last_update_id=book.last_update_id,
                            previous_update_id=previous,
                            bids=tuple(step.bids.items()),
                            asks=tuple(step.asks.items()),
                            timestamp_ns=now_ns,
                        )
                    )
        return MarketStep(self.step_number, now_ns, tuple(changes), tuple(trades))

    def _venue_mid(self, venue: VenueSpec, symbol: str, book: VenueBook, dt: float) -> float:
        rng = self.random
        persistence = math.exp(-dt)  # noise decorrelates over about a second
        book.noise_bps = book.noise_bps * persistence + venue.noise_bps * math.sqrt(
            1.0 - persistence * persistence
        ) * rng.gauss(0.0, 1.0)
        if venue.dislocation_rate and rng.random() < venue.dislocation_rate * dt:
            book.dislocation_bps = rng.choice((-1.0, 1.0)) * rng.uniform(5.0, 30.0)
            book.dislocation_until_s = self.elapsed_s + rng.uniform(1.0, 10.0)
        if book.dislocation_bps and self.elapsed_s >= book.dislocation_until_s:
            book.dislocation_bps = 0.0
        bps = venue.offset_bps + book.noise_bps + book.dislocation_bps
        return self.latent_ticks[symbol] * (1.0 + bps / 1e4)

    def _move_book(
        self,
        venue: VenueSpec,
        symbol: str,
        book: VenueBook,
        step: _StepChanges,
        trades: list[Trade],
        dt: float,
        now_ns: int,
    ) -> tuple[int, int]:
        """Trades, arrivals and cancels; returns the highest bid and lowest ask ticks allowed."""
        rng = self.random
        mid = self._venue_mid(venue, symbol, book, dt)
        highest_bid = max(1, math.ceil(mid) - 1)
        lowest_ask = max(highest_bid + 1, math.floor(mid) + 1)
        highest_bid, lowest_ask = self._withdraw(venue.name, symbol, book, step, mid, highest_bid, lowest_ask)
        # The venue's price moved through resting orders: they trade.
        for tick in sorted((tick for tick in book.bids if tick > highest_bid), reverse=True):
            self._trade(venue.name, symbol, book, step, trades, Side.ASK, tick, book.bids[tick], now_ns)
        for tick in sorted(tick for tick in book.asks if tick < lowest_ask):
            self._trade(venue.name, symbol, book, step, trades, Side.BID, tick, book.asks[tick], now_ns)
        order_lots = self._order_lots[symbol]
        for _ in range(_poisson(rng, venue.trade_rate * dt)):
            aggressor = Side.BID if rng.random() < 0.5 else Side.ASK
            self._market_order(venue.name, symbol, book, step, trades, aggressor, _order_size(rng, order_lots), now_ns)
        for _ in range(_poisson(rng, venue.arrival_rate * dt)):
            distance = int(rng.expovariate(0.3))
            lots = _order_size(rng, order_lots * (1.0 + 0.15 * distance))
            if rng.random() < 0.5:
                tick = highest_bid - distance
                if tick >= 1:
                    step.set(Side.BID, tick, book.bids.get(tick, 0) + lots)
            else:
                tick = lowest_ask + distance
                step.set(Side.ASK, tick, book.asks.get(tick, 0) + lots)
        for _ in range(_poisson(rng, venue.cancel_rate * dt)):
            side = Side.BID if rng.random() < 0.5 else Side.ASK
            levels = book.bids if side == Side.BID else book.asks
            if levels:
                tick = rng.choice(list(levels))
                remaining = levels[tick] - math.ceil(levels[tick] * rng.uniform(0.2, 1.0))
                step.set(side, tick, remaining)
        if venue.shock_rate and rng.random() < venue.shock_rate * dt:
            side = Side.BID if rng.random() < 0.5 else Side.ASK
            self._sweep(venue.name, symbol, book, step, trades, side, rng.randint(3, 10), now_ns)
        return highest_bid, lowest_ask

    def _withdraw(
        self,
        venue: str,
        symbol: str,
        book: VenueBook,
        step: _StepChanges,
        mid: float,
        highest_bid: int,
        lowest_ask: int,
    ) -> tuple[int, int]:
        """Pull the orders a withdrawal keeps away from the mid, or put them back once it
        has ended; return the bounds new orders respect."""
        entries = self._withdrawals.get((venue, symbol))
        if not entries:
            return highest_bid, lowest_ask
        centre = round(mid)
        active = []
        for side, bps, until, pulled in entries:
            levels = book.bids if side == Side.BID else book.asks
            if until <= self.elapsed_s:
                for offset, lots in pulled:
                    tick = centre - offset if side == Side.BID else centre + offset
                    allowed = 1 <= tick <= highest_bid if side == Side.BID else tick >= lowest_ask
                    if allowed:
                        step.set(side, tick, levels.get(tick, 0) + lots)
                continue
            active.append((side, bps, until, pulled))
            if side == Side.BID:
                highest_bid = max(1, min(highest_bid, math.floor(mid * (1.0 - bps / 1e4))))
                inside = [tick for tick in levels if tick > highest_bid]
            else:
                lowest_ask = max(lowest_ask, math.ceil(mid * (1.0 + bps / 1e4)))
                inside = [tick for tick in levels if tick < lowest_ask]
            for tick in inside:
                pulled.append((centre - tick if side == Side.BID else tick - centre, levels[tick]))
                step.set(side, tick, 0)
        if active:
            self._withdrawals[venue, symbol] = active
        else:
            del self._withdrawals[venue, symbol]
        return highest_bid, lowest_ask

    def _refill(
        self, venue: VenueSpec, symbol: str, book: VenueBook, step: _StepChanges, highest_bid: int, lowest_ask: int
    ) -> None:
        """Keep ``venue.depth`` levels per side: add at the far end, drop beyond twice that."""
        rng = self.random
        order_lots = self._order_lots[symbol]
        while len(book.bids) < venue.depth:
            if book.bids:
                tick = min(book.bids) - 1 - int(rng.expovariate(1.0))
            else:
                tick = min(highest_bid, min(book.asks, default=highest_bid + 1) - 1)
            if tick < 1:
                break
            step.set(Side.BID, tick, _order_size(rng, order_lots * (1.0 + 0.15 * len(book.bids))))
        while len(book.asks) < venue.depth:
            if book.asks:
                tick = max(book.asks) + 1 + int(rng.expovariate(1.0))
            else:
                tick = max(lowest_ask, max(book.bids, default=0) + 1)
            step.set(Side.ASK, tick, _order_size(rng, order_lots * (1.0 + 0.15 * len(book.asks))))
        while len(book.bids) > 2 * venue.depth:
            step.set(Side.BID, min(book.bids), 0)
        while len(book.asks) > 2 * venue.depth:
            step.set(Side.ASK, max(book.asks), 0)

    def _market_order(
        self,
        venue: str,
        symbol: str,
        book: VenueBook,
        step: _StepChanges,
        trades: list[Trade],
        aggressor: Side,
        lots: int,
        now_ns: int,
    ) -> None:
        resting = book.asks if aggressor == Side.BID else book.bids
        while lots > 0 and resting:
            tick = min(resting) if aggressor == Side.BID else max(resting)
            filled = min(lots, resting[tick])
            self._trade(venue, symbol, book, step, trades, aggressor, tick, filled, now_ns)
            lots -= filled

    def _sweep(
        self,
        venue: str,
        symbol: str,
        book: VenueBook,
        step: _StepChanges,
        trades: list[Trade],
        side: Side,
        levels: int,
        now_ns: int,
    ) -> None:
        """A market order that takes the best ``levels`` levels of ``side`` whole."""
        resting = book.bids if side == Side.BID else book.asks
        ticks = sorted(resting, reverse=side == Side.BID)[:levels]
        aggressor = Side.ASK if side == Side.BID else Side.BID
        for tick in ticks:
            self._trade(venue, symbol, book, step, trades, aggressor, tick, resting[tick], now_ns)

    def _trade(
        self,
        venue: str,
        symbol: str,
        book: VenueBook,
        step: _StepChanges,
        trades: list[Trade],
        aggressor: Side,
        tick: int,
        lots: int,
        now_ns: int,
    ) -> None:
        resting_side = Side.ASK if aggressor == Side.BID else Side.BID
        resting = book.asks if aggressor == Side.BID else book.bids
        step.set(resting_side, tick, resting[tick] - lots)
        trades.append(Trade(venue, symbol, book.next_trade_id, tick, lots, aggressor, now_ns))
        book.next_trade_id += 1

    def _seed_book(self, venue: VenueSpec, symbol: str, book: VenueBook) -> None:
        rng = self.random
        mid = self.latent_ticks[symbol] * (1.0 + venue.offset_bps / 1e4)
        order_lots = self._order_lots[symbol]
        tick = max(1, math.ceil(mid) - 1)
        for distance in range(venue.depth):
            if tick < 1:
                break
            book.bids[tick] = _order_size(rng, order_lots * (1.0 + 0.15 * distance))
            tick -= 1 + int(rng.expovariate(1.0))
        tick = max(math.floor(mid) + 1, max(book.bids, default=0) + 1)
        for distance in range(venue.depth):
            book.asks[tick] = _order_size(rng, order_lots * (1.0 + 0.15 * distance))
            tick += 1 + int(rng.expovariate(1.0))


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method; the means here are small (rates × a step of ~0.1 s)."""
    if mean <= 0.0:
        return 0
    limit = math.exp(-mean)
    count = 0
    product = rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _order_size(rng: random.Random, typical_lots: float) -> int:
    return max(1, round(typical_lots * rng.lognormvariate(0.0, 0.6)))


def default_market(
    venues: Iterable[str] = ("binance",), seed: int = 0, symbols: Sequence[SymbolSpec] | None = None
) -> Market:
    """A small ready-made market (BTC, ETH, a small-price coin) for the demo and tests."""
    specs = symbols or (
        SymbolSpec("BTC/USDT", price="30000.00", tick_size="0.50", lot_size="0.00001", order_size="0.05"),
        SymbolSpec(
            "ETH/USDT", price="2000.00", tick_size="0.05", lot_size="0.0001", order_size="0.5", volatility=0.0002
        ),
        SymbolSpec("NKN/USDT", price="0.3521", tick_size="0.0001", lot_size="1", order_size="2000", volatility=0.0005),
    )
    return Market(specs, [VenueSpec(name) for name in venues], seed=seed)
