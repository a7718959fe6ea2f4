"""The dashboard's binary stream: heatmap columns and ladders, encoded once per instrument and
tick and sent as the same bytes to every dashboard watching that instrument.

Why this shape (docs/api.md has the byte layout):

- **A column is per exchange.** Each heatmap column holds, for every price row of the window,
  the resting size of *each* exchange feeding the instrument (float32, rows × exchanges), not
  only the consolidated total. The page sums the exchanges that are switched on, so turning
  an exchange off removes its liquidity from the whole visible history at once, with no
  round trip and no per-client work on the server: every dashboard of an instrument gets the
  same bytes, which is what keeps the cost per client near a socket write.
- **Rows are absolute.** Row ``r`` holds the levels priced in ``[r·step, (r+1)·step)``; a column
  carries the first row of its window, so a row keeps its price while the window follows the
  mid, and consecutive columns line up without any mapping.
- **Deltas.** A column is sent as the cells that changed since the previous column (the
  previous one moved to this window; rows it did not cover count as empty): index + float32
  per changed cell, or the whole column (a keyframe) when that is smaller. A dashboard that
  joins, falls behind or sees a gap in the sequence gets a keyframe.
- Per exchange, each column also carries its best bid and ask (float64) and its state, so the
  page draws the best bid/ask line of the exchanges switched on, and the trades of the tick
  (per exchange and aggressor side: volume-weighted price, size, count) for the bubbles.

:class:`ColumnDecoder` is the reference reader (tests, the benchmark and the history kept for
new dashboards use it); ``static/stream.js`` is the same reader in the browser.
"""

from __future__ import annotations

import math
import struct
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from engine.client import Book, BookHandle, StaleRead

PROTOCOL_VERSION = 1
COLUMN_FRAME = 1
LADDER_FRAME = 2

KEYFRAME = 0x01
WIDE_INDICES = 0x02  # delta cell indices are u32 (rows × exchanges > 65535)

COLUMN_HEADER = struct.Struct("<BBHIdqdHHHHII")  # 48 bytes
LADDER_HEADER = struct.Struct("<BBHHHHHIdd")  # 32 bytes
TRADE_DTYPE = np.dtype([("price", "<f8"), ("size", "<f4"), ("exchange", "u1"), ("side", "u1"), ("count", "<u2")])
INCLUDED_BIT = 0x80  # in a column's per-exchange state byte: its levels are in the consolidated book
NICE_MANTISSAS = (1.0, 2.0, 2.5, 5.0)
STEP_SETTLE_S = 3.0
STEP_WAIT_S = 10.0
_ROW_EPSILON = 1e-9  # a price exactly on a row boundary must not fall into the row below by rounding


class ProtocolError(ValueError):
    """A frame that cannot be applied: malformed, or a delta that does not follow the last column."""


def nice_step(raw: float) -> float:
    """The smallest 1, 2, 2.5 or 5 × 10^k that is at least ``raw``: row prices people can read."""
    if not raw > 0 or not math.isfinite(raw):
        raise ValueError(f"a row height must be a positive number, not {raw!r}")
    exponent = math.floor(math.log10(raw))
    for power in (exponent, exponent + 1):
        for mantissa in NICE_MANTISSAS:
            step = round(mantissa * 10.0**power, 12)
            if step >= raw * (1 - 1e-12):
                return step
    return round(10.0 ** (exponent + 1), 12)


def automatic_step(bid_price: np.ndarray, ask_price: np.ndarray, rows: int) -> float:
    """A row height for an instrument from its book: twice the distance of its median level
    from the mid (the wider side) fills three quarters of ``rows`` (the dense part of the book
    in view, a few far quotes left out), and a row is never finer than the price increment."""
    mid = (float(bid_price[0]) + float(ask_price[0])) / 2
    half = 2 * max(
        abs(mid - float(bid_price[(len(bid_price) - 1) // 2])),
        abs(float(ask_price[(len(ask_price) - 1) // 2]) - mid),
    )
    prices = np.concatenate([bid_price[:200], ask_price[:200]])
    increments = np.diff(np.unique(prices))
    tick = float(increments.min()) if len(increments) else 0.0
    raw = max(2 * half / (0.75 * rows), tick, abs(mid) * 1e-9, 1e-12)
    return nice_step(raw)


def price_row(price: np.ndarray | float, step: float) -> np.ndarray:
    """Absolute row of each price: row ``r`` covers ``[r·step, (r+1)·step)``."""
    return np.floor(np.asarray(price, dtype=np.float64) / step + _ROW_EPSILON).astype(np.int64)


@dataclass
class Column:
    """One heatmap column as a dashboard holds it."""

    sequence: int
    ts_ms: float
    first_row: int
    step: float  # row height: row r holds the levels priced in [r·step, (r+1)·step)
    sizes: np.ndarray  # (rows, exchanges) float32: resting size per price row and exchange
    best_bid: np.ndarray  # (exchanges,) float64, 0 = none
    best_ask: np.ndarray
    state: np.ndarray  # (exchanges,) u8: shm.records.Status | INCLUDED_BIT
    trades: np.ndarray  # TRADE_DTYPE


def moved(sizes: np.ndarray, from_row: int, to_row: int) -> np.ndarray:
    """``sizes`` (a window starting at ``from_row``) as seen from a window starting at ``to_row``."""
    rows = len(sizes)
    shift = to_row - from_row
    result = np.zeros_like(sizes)
    if abs(shift) < rows:
        if shift >= 0:
            result[: rows - shift] = sizes[shift:]
        else:
            result[-shift:] = sizes[: rows + shift]
    return result


def encode_column(instrument: int, column: Column, previous: Column | None) -> bytes:
    """A column frame: a delta against ``previous`` (same instrument, the column just before)
    when that is smaller than the whole column, else a keyframe."""
    rows, exchanges = column.sizes.shape
    cells = rows * exchanges
    flat = column.sizes.reshape(-1)
    keyframe = previous is None
    changed = None
    if not keyframe:
        before = moved(previous.sizes, previous.first_row, column.first_row).reshape(-1)
        changed = np.flatnonzero(before != flat)
        index_bytes = 4 if cells > 0xFFFF else 2
        keyframe = len(changed) * (index_bytes + 4) >= cells * 4
    flags = 0
    if keyframe:
        body = [flat.astype("<f4", copy=False).tobytes()]
        count = cells
        flags |= KEYFRAME
    else:
        wide = cells > 0xFFFF
        flags |= WIDE_INDICES if wide else 0
        indices = changed.astype("<u4" if wide else "<u2").tobytes()
        body = [indices, b"\0" * (-len(indices) % 4), flat[changed].astype("<f4", copy=False).tobytes()]
        count = len(changed)
    header = COLUMN_HEADER.pack(
        COLUMN_FRAME, flags, instrument, column.sequence & 0xFFFFFFFF, column.ts_ms, column.first_row, column.step,
        rows, exchanges, len(column.trades), 0, count, 0,
    )
    state = column.state.astype("u1").tobytes()
    return b"".join([
        header, column.best_bid.astype("<f8").tobytes(), column.best_ask.astype("<f8").tobytes(), state,
        b"\0" * (-len(state) % 8), column.trades.astype(TRADE_DTYPE, copy=False).tobytes(), *body,
    ])


class ColumnDecoder:
    """Rebuilds the columns of one instrument from its frames (the page does the same in JS)."""

    def __init__(self) -> None:
        self.last: Column | None = None

    def apply(self, frame: bytes | memoryview) -> Column:
        view = memoryview(frame)
        if len(view) < COLUMN_HEADER.size:
            raise ProtocolError(f"a column frame has at least {COLUMN_HEADER.size} bytes, this one {len(view)}")
        (kind, flags, _instrument, sequence, ts_ms, first_row, step, rows, exchanges, trade_count, _, count, _) = (
            COLUMN_HEADER.unpack_from(view)
        )
        if kind != COLUMN_FRAME:
            raise ProtocolError(f"not a column frame (type {kind})")
        offset = COLUMN_HEADER.size
        try:
            best_bid = np.frombuffer(view, "<f8", exchanges, offset).copy()
            offset += 8 * exchanges
            best_ask = np.frombuffer(view, "<f8", exchanges, offset).copy()
            offset += 8 * exchanges
            state = np.frombuffer(view, "u1", exchanges, offset).copy()
            offset += exchanges + (-exchanges % 8)
            trades = np.frombuffer(view, TRADE_DTYPE, trade_count, offset).copy()
            offset += TRADE_DTYPE.itemsize * trade_count
            if flags & KEYFRAME:
                if count != rows * exchanges:
                    raise ProtocolError(f"a keyframe has {rows * exchanges} cells, this one says {count}")
                sizes = np.frombuffer(view, "<f4", count, offset).reshape(rows, exchanges).copy()
                offset += 4 * count
            else:
                last = self.last
                if last is None or (last.sequence + 1) & 0xFFFFFFFF != sequence:
                    raise ProtocolError(
                        f"delta column {sequence} does not follow {None if last is None else last.sequence}: "
                        "ask for a keyframe"
                    )
                if last.sizes.shape != (rows, exchanges):
                    raise ProtocolError("delta column of a different shape than the last one")
                width = 4 if flags & WIDE_INDICES else 2
                indices = np.frombuffer(view, "<u4" if width == 4 else "<u2", count, offset)
                offset += width * count + (-(width * count) % 4)
                values = np.frombuffer(view, "<f4", count, offset)
                offset += 4 * count
                if count and int(indices.max()) >= rows * exchanges:
                    raise ProtocolError("delta cell index outside the column")
                sizes = moved(last.sizes, last.first_row, first_row)
                sizes.reshape(-1)[indices] = values
        except ValueError as error:  # np.frombuffer past the end
            raise ProtocolError(f"truncated column frame: {error}") from None
        if offset != len(view):
            raise ProtocolError(f"column frame has {len(view) - offset} bytes too many")
        self.last = Column(sequence, ts_ms, first_row, step, sizes, best_bid, best_ask, state, trades)
        return self.last


@dataclass
class Ladder:
    """The top of the consolidated book with one size column per member exchange."""

    generation: int
    ts_ms: float
    bid_price: np.ndarray
    ask_price: np.ndarray
    bid_sizes: np.ndarray  # (levels, exchanges) float32
    ask_sizes: np.ndarray
    mid: float = 0.0


def encode_ladder(instrument: int, ladder: Ladder) -> bytes:
    bids, asks = len(ladder.bid_price), len(ladder.ask_price)
    exchanges = ladder.bid_sizes.shape[1]
    header = LADDER_HEADER.pack(
        LADDER_FRAME, 0, instrument, bids, asks, exchanges, 0, ladder.generation & 0xFFFFFFFF, ladder.ts_ms,
        ladder.mid,
    )
    return b"".join([
        header, ladder.bid_price.astype("<f8").tobytes(), ladder.ask_price.astype("<f8").tobytes(),
        ladder.bid_sizes.astype("<f4").tobytes(), ladder.ask_sizes.astype("<f4").tobytes(),
    ])


def decode_ladder(frame: bytes | memoryview) -> Ladder:
    view = memoryview(frame)
    try:
        kind, _, _, bids, asks, exchanges, _, generation, ts_ms, mid = LADDER_HEADER.unpack_from(view)
        if kind != LADDER_FRAME:
            raise ProtocolError(f"not a ladder frame (type {kind})")
        offset = LADDER_HEADER.size
        bid_price = np.frombuffer(view, "<f8", bids, offset)
        offset += 8 * bids
        ask_price = np.frombuffer(view, "<f8", asks, offset)
        offset += 8 * asks
        bid_sizes = np.frombuffer(view, "<f4", bids * exchanges, offset).reshape(bids, exchanges)
        offset += 4 * bids * exchanges
        ask_sizes = np.frombuffer(view, "<f4", asks * exchanges, offset).reshape(asks, exchanges)
    except (struct.error, ValueError) as error:
        raise ProtocolError(f"truncated ladder frame: {error}") from None
    return Ladder(generation, ts_ms, bid_price, ask_price, bid_sizes, ask_sizes, mid)


@dataclass
class _TradeTotals:
    notional: float = 0.0
    size: float = 0.0
    count: int = 0


@dataclass
class InstrumentStream:
    """One instrument's heatmap: reads its book from shared memory once per tick, keeps the
    newest column and frame, and a history of frames for dashboards that open it.

    ``members`` are the exchange ids feeding the instrument, in the column order of every
    frame (the instrument's ``exchanges`` in /api/instruments and in the ``meta`` message).
    """

    index: int
    name: str
    handle: BookHandle
    members: list[int]
    rows: int
    history_columns: int
    step: float | None = None
    first_row: int | None = None
    sequence: int = 0
    column: Column | None = None
    frame: bytes | None = None
    _keyframe: bytes | None = None
    _history: deque = field(default_factory=deque)  # (frame, column header fields) per tick, oldest first
    _history_base: ColumnDecoder = field(default_factory=ColumnDecoder)
    _trades: dict[tuple[int, int], _TradeTotals] = field(default_factory=dict)
    generation: int = -1
    _first_book_at: float | None = None
    _whole_since: float | None = None
    _step_estimates: list[float] = field(default_factory=list)

    def add_trade(self, exchange_id: int, side: int, price: float, size: float) -> None:
        """A trade on one of the members since the last column (aggressor side: 1 buy, 2 sell)."""
        try:
            column = self.members.index(exchange_id)
        except ValueError:
            return
        totals = self._trades.setdefault((column, side), _TradeTotals())
        totals.notional += price * size
        totals.size += size
        totals.count += 1

    def _take_trades(self) -> np.ndarray:
        trades = np.zeros(len(self._trades), TRADE_DTYPE)
        for row, ((column, side), totals) in enumerate(self._trades.items()):
            trades[row] = (totals.notional / totals.size if totals.size else 0.0, totals.size, column, side,
                           min(totals.count, 0xFFFF))
        self._trades.clear()
        return trades

    def tick(self, now_ns: int | None = None) -> bytes | None:
        """Build this tick's column and its frame; None while the book has no two-sided top yet."""
        read = self._read_book()
        if read is None:
            return None
        prices, sizes, best_bid, best_ask, state, generation = read
        rows = price_row(prices, self.step) - self.first_row
        keep = (rows >= 0) & (rows < self.rows)
        exchanges = len(self.members)
        cells = (rows[keep, None] * exchanges + np.arange(exchanges)).reshape(-1)
        column_sizes = np.bincount(cells, weights=sizes[keep].reshape(-1), minlength=self.rows * exchanges)
        self.sequence += 1
        column = Column(
            self.sequence, (now_ns or time.time_ns()) / 1e6, self.first_row, self.step,
            column_sizes.astype(np.float32).reshape(self.rows, exchanges), best_bid, best_ask, state,
            self._take_trades(),
        )
        self.frame = encode_column(self.index, column, self.column)
        self.column, self._keyframe, self.generation = column, None, generation
        self._remember(column)
        return self.frame

    def keyframe(self) -> bytes | None:
        """The newest column as a keyframe (for a dashboard that has nothing to apply a delta to)."""
        if self.column is None:
            return None
        if self._keyframe is None:
            self._keyframe = encode_column(self.index, self.column, None)
        return self._keyframe

    def history(self) -> list[bytes]:
        """The frames of the kept history, oldest first, starting with a keyframe: applied in
        order they end on the newest column, so the next live delta follows them."""
        if not self._history:
            return []
        frames = [encode_column(self.index, self._history_base.last, None)]
        frames += [frame for frame, _ in list(self._history)[1:]]
        return frames

    def _remember(self, column: Column) -> None:
        if self.history_columns <= 0:
            return
        self._history.append((self.frame, column.sequence))
        if len(self._history) == 1:
            self._history_base.last = column
        while len(self._history) > self.history_columns:
            self._history.popleft()
            self._history_base.apply(self._history[0][0])

    def _read_book(self) -> tuple | None:
        """Prices and member sizes of the levels in the window, and the members' tops, read in
        place and kept only if the writer did not touch the slot meanwhile."""
        for _ in range(5):
            try:
                with self.handle.view() as book:
                    if not len(book.bid_price) or not len(book.ask_price):
                        return None
                    if self.step is None and not self._choose_step(book):
                        return None
                    slot = book.slot
                    self._follow(slot["exchange_best_bid"][self.members], slot["exchange_best_ask"][self.members],
                                 float(book.bid_price[0]), float(book.ask_price[0]))
                    # half a row of slack: whether a level on the window's edge is in is price_row's call
                    low = (self.first_row - 0.5) * self.step
                    high = (self.first_row + self.rows + 0.5) * self.step
                    bids = int(np.searchsorted(-book.bid_price, -low, side="right"))
                    asks = int(np.searchsorted(book.ask_price, high, side="left"))
                    prices = np.concatenate([book.bid_price[:bids], book.ask_price[:asks]])
                    sizes = np.concatenate([book.bid_exchange_size[:bids, self.members],
                                            book.ask_exchange_size[:asks, self.members]])
                    best_bid = np.array(slot["exchange_best_bid"][self.members], dtype=np.float64)
                    best_ask = np.array(slot["exchange_best_ask"][self.members], dtype=np.float64)
                    state = (np.array(slot["exchange_status"][self.members], dtype=np.uint8)
                             | np.where(slot["exchange_included"][self.members] != 0, INCLUDED_BIT, 0).astype(np.uint8))
                    generation = book.generation
                return prices, sizes, best_bid, best_ask, state, generation
            except StaleRead:
                continue
        return None

    def _choose_step(self, book: Book) -> bool:
        """Fix the row height once the book has been whole (every member included) for
        ``STEP_SETTLE_S``, or ``STEP_WAIT_S`` after the first two-sided book (a venue may be
        down): the median of the estimates seen meanwhile, so neither one venue's first
        snapshot nor a moment of dislocation across venues sets it."""
        now = time.monotonic()
        if self._first_book_at is None:
            self._first_book_at = now
        self._step_estimates.append(automatic_step(book.bid_price, book.ask_price, self.rows))
        if all(book.slot["exchange_included"][self.members]):
            self._whole_since = self._whole_since or now
        else:
            self._whole_since = None
        settled = self._whole_since is not None and now - self._whole_since >= STEP_SETTLE_S
        if not settled and now - self._first_book_at < STEP_WAIT_S:
            return False
        self.step = sorted(self._step_estimates)[len(self._step_estimates) // 2]
        return True

    def _follow(self, bids: np.ndarray, asks: np.ndarray, best_bid: float, best_ask: float) -> None:
        """Keep the market's mid in the middle half of the window; move the window only when it
        leaves it, so most columns share their window with the one before. The market's mid is
        the median of the members' own mids: one venue dislocated far away crosses the
        consolidated book, and its touch would drag the window off the rest of the book."""
        quoted = (bids > 0) & (asks > 0)
        mid = float(np.median((bids[quoted] + asks[quoted]) / 2)) if quoted.any() else (best_bid + best_ask) / 2
        mid_row = int(price_row(mid, self.step))
        if self.first_row is None or not self.rows // 4 <= mid_row - self.first_row < 3 * self.rows // 4:
            self.first_row = mid_row - self.rows // 2

    def ladder(self, depth: int) -> Ladder | None:
        """The top ``depth`` levels per side with the members' sizes, as one consistent copy."""
        book = self.handle.snapshot()
        bids, asks = min(depth, len(book.bid_price)), min(depth, len(book.ask_price))
        mid = (book.best_bid + book.best_ask) / 2 if bids and asks else 0.0
        return Ladder(
            book.generation, book.publish_ts / 1e6, book.bid_price[:bids].copy(), book.ask_price[:asks].copy(),
            book.bid_exchange_size[:bids, self.members].astype(np.float32),
            book.ask_exchange_size[:asks, self.members].astype(np.float32), mid,
        )
