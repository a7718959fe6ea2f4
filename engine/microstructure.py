"""Microstructure metrics and price buckets of a consolidated book, from its level arrays.

Pure numpy over the published arrays (best level first on both sides), so the aggregator
that writes them into shared memory and a client that recomputes them on demand from a
snapshot use the same code and get the same numbers. Every definition is in
docs/metrics.md; the short form is in each function's docstring. Distances are in basis
points of the consolidated mid, ``(mid - price) / mid * 1e4`` for bids and
``(price - mid) / mid * 1e4`` for asks (negative for a level on the wrong side of the
mid, which only a book crossed across venues has). Nothing here returns NaN or inf: an
empty side gives 0 and a flag says the value is missing.

The per-level loops (prefix sums within each distance, the buckets) run in the optional C
kernel ``engine/_analytics.c`` when it is built: the same IEEE operations in the same order
as the numpy code here, which stays as the fallback (``tests/test_cob.py`` compares the two
byte for byte). ``kernel`` is the module in use (None: numpy only; the environment variable
``COBY_ANALYTICS_KERNEL=off`` makes a process use numpy, for tests and side-by-side benchmarks).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np

try:
    from engine import _analytics as kernel
except ImportError:  # built without a C compiler: numpy does it all
    kernel = None
if os.environ.get("COBY_ANALYTICS_KERNEL", "on") == "off":
    kernel = None

BPS = 1e4


@dataclass(frozen=True, slots=True)
class SideArrays:
    """One side's levels, best first: ``price``, ``size`` (n,) and ``exchange_size`` (n, E)."""

    price: np.ndarray
    size: np.ndarray
    orders: np.ndarray
    exchange_size: np.ndarray


def mid_price(bids: SideArrays, asks: SideArrays) -> float:
    """(best bid + best ask) / 2; the one side's best when the other is empty; 0 when both are."""
    if len(bids.price) and len(asks.price):
        return (float(bids.price[0]) + float(asks.price[0])) / 2
    if len(bids.price):
        return float(bids.price[0])
    if len(asks.price):
        return float(asks.price[0])
    return 0.0


def distance_bps(side: SideArrays, mid: float, is_bid: bool) -> np.ndarray:
    return _distances(side.price, mid, is_bid)


def _distances(price: np.ndarray, mid: float, is_bid: bool) -> np.ndarray:
    if mid <= 0.0:
        return np.zeros(len(price))
    offset = (mid - price) if is_bid else (price - mid)
    return offset / mid * BPS


def volume_weighted_mid(bids: SideArrays, asks: SideArrays) -> float:
    """Touch prices weighted by the opposite touch size (the "micro-price"):
    ``(bid * ask_size + ask * bid_size) / (bid_size + ask_size)``; the mid when a side is empty."""
    if not (len(bids.price) and len(asks.price)):
        return mid_price(bids, asks)
    bid, ask = float(bids.price[0]), float(asks.price[0])
    bid_size, ask_size = float(bids.size[0]), float(asks.size[0])
    return (bid * ask_size + ask * bid_size) / (bid_size + ask_size)


def imbalance(bid_depth: float, ask_depth: float) -> float:
    """(bid − ask) / (bid + ask) in [−1, 1]; 0 when there is nothing on either side."""
    total = bid_depth + ask_depth
    return (bid_depth - ask_depth) / total if total > 0.0 else 0.0


def cross_exchange_spread(best_bids: np.ndarray, best_asks: np.ndarray) -> tuple[float, int, int]:
    """The cheapest ask on one exchange minus the highest bid on another: (spread, bid
    exchange, ask exchange), the pair that minimises it. Negative when two venues' books
    cross (an arbitrage, shown as it is). Exchanges without a price are 0 and skipped;
    (0, −1, −1) when no two exchanges have both. Lowest ids win ties."""
    bids = sorted([(-price, index) for index, price in enumerate(best_bids.tolist()) if price > 0.0])[:2]
    asks = sorted([(price, index) for index, price in enumerate(best_asks.tolist()) if price > 0.0])[:2]
    candidates = [
        (ask - -bid, bid_index, ask_index)
        for bid, bid_index in bids
        for ask, ask_index in asks
        if bid_index != ask_index
    ]
    return min(candidates) if candidates else (0.0, -1, -1)  # tuples: the spread, then the lowest ids


def liquidity_score(side: SideArrays, distances: np.ndarray, decay_bps: float) -> np.ndarray:
    """Per level: its notional (quote currency) discounted by its distance from the mid,
    ``price * size * exp(-max(distance, 0) / decay_bps)``: how much tradeable liquidity the
    level is worth now (a level at the touch counts fully, one ``decay_bps`` away 37 %)."""
    return side.price * side.size * np.exp(-np.maximum(distances, 0.0) / decay_bps)


def dominant_exchange(side: SideArrays) -> np.ndarray:
    """Per level, the exchange with the most size there (the lowest id on a tie)."""
    if not len(side.price):
        return np.empty(0, dtype=np.int16)
    return side.exchange_size.argmax(axis=1).astype(np.int16)


@dataclass(frozen=True, slots=True)
class Buckets:
    """Size, notional, order count and the per-exchange size of each bucket."""

    size: np.ndarray  # (B,)
    notional: np.ndarray  # (B,)
    orders: np.ndarray  # (B,)
    exchange_size: np.ndarray  # (B, E)


def _bucket(side: SideArrays, index: np.ndarray, count: int) -> Buckets:
    """The buckets by their definition, one bincount per field over the levels inside
    (:func:`fill_buckets` gets the same sums, to the bit, in one bincount per kind)."""
    keep = (index >= 0) & (index < count)
    index = index[keep]
    exchanges = side.exchange_size.shape[1]
    size = np.bincount(index, side.size[keep], count)
    notional = np.bincount(index, (side.price * side.size)[keep], count)
    orders = np.bincount(index, side.orders[keep].astype(np.float64), count)
    flat = (index[:, None] * exchanges + np.arange(exchanges)).ravel()
    by_exchange = np.bincount(flat, side.exchange_size[keep].ravel(), count * exchanges).reshape(count, exchanges)
    return Buckets(size, notional, orders.astype(np.uint32), by_exchange)


def _bps_index(distances: np.ndarray, width_bps: float) -> np.ndarray:
    return np.floor(np.maximum(distances, 0.0) / width_bps).astype(np.int64)


def _absolute_index(side: SideArrays, first_price: float, unit: float) -> np.ndarray:
    return np.floor((side.price - first_price) / unit + 1e-9).astype(np.int64)


def bps_buckets(side: SideArrays, distances: np.ndarray, width_bps: float, count: int) -> Buckets:
    """Bucket ``k`` holds the levels ``k * width <= distance < (k + 1) * width`` from the mid
    (a level on the wrong side of the mid, in a book crossed across venues, goes to 0)."""
    return _bucket(side, _bps_index(distances, width_bps), count)


def absolute_buckets(side: SideArrays, first_price: float, unit: float, count: int) -> Buckets:
    """Bucket ``j`` holds the levels ``first + j * unit <= price < first + (j + 1) * unit``:
    fixed price bins (a heatmap row keeps its price as the mid moves)."""
    return _bucket(side, _absolute_index(side, first_price, unit), count)


def absolute_window(mid: float, unit: float, count: int) -> float:
    """The first bin's price: ``count`` bins of ``unit`` centred on the bin holding the mid."""
    return (math.floor(mid / unit) - count // 2) * unit


@dataclass(frozen=True, slots=True)
class AnalyticsSettings:
    """What the analytics of one instrument are computed with (config ``metrics`` + ``buckets``)."""

    imbalance_bps: tuple[float, ...]
    depth_steps_bps: tuple[float, ...]
    dominance_bps: float
    liquidity_decay_bps: float
    bps_width: float
    abs_unit: float  # 0: no absolute buckets


@functools.lru_cache(maxsize=64)
def _field_slots(dtype: np.dtype) -> dict[str, slice]:
    """Where each field of a record lies in the record viewed as that field's element type
    (a float64 field in the float64 view, a uint32 one in the uint32 view): writing a field
    through a slice of such a view costs a fraction of ``record[name] = value`` on a ``np.void``."""
    slots = {}
    for name, (field, offset, *_) in dtype.fields.items():
        item = field.base.itemsize
        slots[name] = slice(offset // item, (offset + field.itemsize) // item)
    return slots


def _record_view(out: np.void, dtype: np.dtype) -> np.ndarray:
    """The bytes of the record ``out`` as a 1-d array of ``dtype``, writing through to ``out``."""
    return np.ndarray(out.dtype.itemsize // dtype.itemsize, dtype, np.asarray(out))


_FLOAT64, _UINT32, _INT16, _UINT8 = np.dtype(np.float64), np.dtype(np.uint32), np.dtype(np.int16), np.dtype(np.uint8)


def _side_sums(
    side: SideArrays, mid: float, is_bid: bool, limits: np.ndarray
) -> tuple[np.ndarray, float, float, np.ndarray]:
    """One side's size within each of ``limits`` bp of the mid, its total size and notional,
    and its size per exchange within the last limit (the dominance distance). Distances grow
    along a side, so "within d bp" is a prefix, found by one search, and its size is a prefix
    sum: the running sum whose last value is also the total. Every sum adds level after level
    (np.add.accumulate), the order the C kernel's loops add in."""
    levels = len(side.price)
    prices = np.ascontiguousarray(side.price)  # columns of the level matrix are strided: one copy, then fast
    sizes = np.ascontiguousarray(side.size)
    within = _distances(prices, mid, is_bid).searchsorted(limits, side="right")
    running = np.empty(levels + 1)
    running[0] = 0.0
    np.add.accumulate(sizes, out=running[1:])
    notional = float(np.add.accumulate(prices * sizes)[-1]) if levels else 0.0
    near = int(within[-1])
    by_exchange = side.exchange_size[:near]
    near_sizes = np.add.accumulate(by_exchange, axis=0)[-1] if near else np.zeros(by_exchange.shape[1])
    return running[within], float(running[levels]), notional, near_sizes


def _exchange_spreads_bps(best_bids: np.ndarray, best_asks: np.ndarray) -> list[float]:
    """Each exchange's own spread over its own mid, bp; 0 where it does not quote both sides.
    Plain floats: the same IEEE operations as the array expression, at a tenth of the cost
    for a dozen exchanges."""
    return [
        (ask - bid) / ((bid + ask) / 2) * BPS if bid > 0.0 and ask > 0.0 else 0.0
        for bid, ask in zip(best_bids.tolist(), best_asks.tolist())
    ]


@functools.lru_cache(maxsize=64)
def _limits(settings: AnalyticsSettings) -> np.ndarray:
    """The distances the metrics sum within: imbalance distances, depth steps, then dominance."""
    limits = np.array([*settings.imbalance_bps, *settings.depth_steps_bps, settings.dominance_bps])
    limits.flags.writeable = False
    return limits


_KERNEL_METRIC_FIELDS = (
    "mid", "vw_mid", "spread", "spread_bps", "imbalance_bps", "imbalance", "depth_steps_bps", "bid_depth", "ask_depth",
    "dominance_bps", "cross_spread", "cross_spread_bps", "cross_bid_exchange", "cross_ask_exchange",
    "exchange_spread_bps", "total_bid_size", "total_ask_size", "dominance", "total_bid_notional", "total_ask_notional",
)


@functools.lru_cache(maxsize=64)
def _kernel_metric_offsets(dtype: np.dtype) -> np.ndarray:
    """Byte offsets of the fields the C kernel's ``book_metrics`` writes, in its order."""
    return np.array([dtype.fields[name][1] for name in _KERNEL_METRIC_FIELDS], dtype=np.int64)


def kernel_metrics_arguments(settings: AnalyticsSettings, out: np.void) -> tuple:
    """The trailing arguments of the kernel's ``publish_sides`` for metrics written into the
    record ``out`` (limits, their counts, the record's bytes, its field offsets): made once per
    record by a caller that publishes into the same records over and over."""
    return (_limits(settings), len(settings.imbalance_bps), len(settings.depth_steps_bps),
            _record_view(out, _UINT8), _kernel_metric_offsets(out.dtype))


def _float64(*arrays: np.ndarray) -> bool:
    return all(array.dtype == _FLOAT64 for array in arrays)


def fill_metrics(
    out: np.void,
    bids: SideArrays,
    asks: SideArrays,
    exchange_best_bid: np.ndarray,
    exchange_best_ask: np.ndarray,
    settings: AnalyticsSettings,
) -> None:
    """Every metric of one book into ``out`` (a :func:`shm.book.metrics_dtype` record); the
    caller sets ``generation``. With the C kernel, one call writes every field; otherwise the
    float fields from ``mid`` to ``cross_spread_bps`` and from ``exchange_spread_bps`` to the end
    are consecutive, so each run is one slice assignment."""
    limits = _limits(settings)
    if kernel is not None and _float64(bids.price, bids.size, asks.price, asks.size, exchange_best_bid,
                                       exchange_best_ask, bids.exchange_size, asks.exchange_size):
        kernel.book_metrics(
            bids.price, bids.size, asks.price, asks.size, exchange_best_bid, exchange_best_ask, limits,
            len(settings.imbalance_bps), len(settings.depth_steps_bps), _record_view(out, _UINT8),
            _kernel_metric_offsets(out.dtype), bids.exchange_size, asks.exchange_size,
        )
        return
    slots = _field_slots(out.dtype)
    mid = mid_price(bids, asks)
    both = len(bids.price) and len(asks.price)
    spread = float(asks.price[0]) - float(bids.price[0]) if both else 0.0
    bid_within, bid_total, bid_notional, bid_near = _side_sums(bids, mid, True, limits)
    ask_within, ask_total, ask_notional, ask_near = _side_sums(asks, mid, False, limits)
    near = bid_near + ask_near
    near_total = float(np.add.accumulate(near)[-1]) if len(near) else 0.0
    dominance = slots["dominance"]
    shares = (near / near_total).tolist() if near_total > 0.0 else [0.0] * (dominance.stop - dominance.start)
    imbalances = len(settings.imbalance_bps)
    steps = slice(imbalances, imbalances + len(settings.depth_steps_bps))
    bid_within, ask_within = bid_within.tolist(), ask_within.tolist()
    cross, bid_exchange, ask_exchange = cross_exchange_spread(exchange_best_bid, exchange_best_ask)
    floats = _record_view(out, _FLOAT64)
    floats[slots["mid"].start : slots["cross_spread_bps"].stop] = [
        mid,
        volume_weighted_mid(bids, asks),
        spread,
        spread / mid * BPS if both and mid > 0.0 else 0.0,
        *settings.imbalance_bps,
        *[imbalance(bid, ask) for bid, ask in zip(bid_within[:imbalances], ask_within[:imbalances])],
        *settings.depth_steps_bps,
        *bid_within[steps],
        *ask_within[steps],
        settings.dominance_bps,
        *shares,
        cross,
        cross / mid * BPS if mid > 0.0 and bid_exchange >= 0 else 0.0,
    ]
    exchange_ids = floats.view(_INT16)
    exchange_ids[slots["cross_bid_exchange"].start : slots["cross_ask_exchange"].stop] = bid_exchange, ask_exchange
    floats[slots["exchange_spread_bps"].start : slots["total_ask_notional"].stop] = [
        *_exchange_spreads_bps(exchange_best_bid, exchange_best_ask),
        bid_total,
        ask_total,
        bid_notional,
        ask_notional,
    ]


def _level_weights(side: SideArrays, levels: int) -> np.ndarray:
    """What a bucket sums, for the first ``levels`` levels: (levels, 3 + E) of size, notional,
    order count and the size per exchange, row-major so that one bincount sums them all."""
    exchange_size = side.exchange_size[:levels]
    weights = np.empty((len(exchange_size), 3 + exchange_size.shape[1]))
    weights[:, 0] = side.size[:levels]
    np.multiply(side.price[:levels], side.size[:levels], out=weights[:, 1])
    weights[:, 2] = side.orders[:levels]
    weights[:, 3:] = exchange_size
    return weights


@functools.lru_cache(maxsize=64)
def _bucket_bins(count: int, exchanges: int) -> np.ndarray:
    """The bincount bins of each :func:`_level_weights` column of a level in bucket ``j``
    (row ``j + 1``), laid out as a record stores one bucket kind: ``count`` sizes, ``count``
    notionals, ``count`` order counts, then ``count × exchanges`` per-exchange sizes. Rows 0
    and ``count + 1`` (below and above the buckets) send a level to one spare bin at the end."""
    bucket = np.arange(count)[:, None]
    by_exchange = 3 * count + bucket * exchanges + np.arange(exchanges)
    inside = np.hstack([bucket, count + bucket, 2 * count + bucket, by_exchange])
    spare = np.full((1, 3 + exchanges), (3 + exchanges) * count)
    bins = np.vstack([spare, inside, spare])
    bins.flags.writeable = False
    return bins


def _bucket_sums(weights: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
    """Every column of :func:`_level_weights` summed per bucket ``index`` (levels outside
    ``0 <= index < count`` left out), in the layout of :func:`_bucket_bins`. One bincount:
    it adds each bin's weights from 0 in level order, as one bincount per column did, so
    the sums are the same to the bit."""
    bins = _bucket_bins(count, weights.shape[1] - 3)
    rows = index + 1  # "clip" sends every row below 0 or past the buckets to a spare row
    return np.bincount(bins.take(rows, axis=0, mode="clip").ravel(), weights.ravel(), bins[0, 0] + 1)[:-1]


def _store_buckets(
    floats: np.ndarray, counts: np.ndarray, slots: dict[str, slice], prefix: str, sums: np.ndarray
) -> None:
    """One side's bucket kind (``prefix``: ``bid_bps``, ``ask_abs``…) from :func:`_bucket_sums`
    into the record's float64 and uint32 views."""
    count = slots[f"{prefix}_size"].stop - slots[f"{prefix}_size"].start
    floats[slots[f"{prefix}_size"]] = sums[:count]
    floats[slots[f"{prefix}_notional"]] = sums[count : 2 * count]
    counts[slots[f"{prefix}_orders"]] = sums[2 * count : 3 * count].astype(np.uint32)
    floats[slots[f"{prefix}_exchange_size"]] = sums[3 * count :]


@functools.lru_cache(maxsize=64)
def _field_offsets(dtype: np.dtype) -> dict[str, int]:
    """Byte offset of each field of a record (where the C kernel writes it)."""
    return {name: field[1] for name, field in dtype.fields.items()}


def _kernel_buckets(
    record: np.ndarray, dtype: np.dtype, prefix: str, side: SideArrays, relative: bool, origin: float,
    width: float, is_bid: bool, count: int,
) -> None:
    """One side's bucket kind through the C kernel, straight into the record's bytes."""
    offsets = _field_offsets(dtype)
    orders = side.orders if side.orders.dtype == _FLOAT64 else side.orders.astype(np.float64)
    kernel.bucket_side(
        side.price, side.size, orders, side.exchange_size, relative, origin, width, is_bid, record,
        offsets[f"{prefix}_size"], offsets[f"{prefix}_notional"], offsets[f"{prefix}_orders"],
        offsets[f"{prefix}_exchange_size"], count,
    )


def fill_buckets(out: np.void, bids: SideArrays, asks: SideArrays, settings: AnalyticsSettings) -> None:
    """Both kinds of bucket of one book into ``out`` (a :func:`shm.book.buckets_dtype`
    record); the caller sets ``generation`` and ``computed_ts``. A side's level weights are
    gathered once for both kinds and each kind is one bincount (or one pass of the C kernel);
    distances grow along a side, so the levels past the last relative bucket are a suffix,
    left out of that kind."""
    mid = mid_price(bids, asks)
    slots = _field_slots(out.dtype)
    count = slots["bid_bps_size"].stop - slots["bid_bps_size"].start
    bins = slots["bid_abs_size"].stop - slots["bid_abs_size"].start
    absolute = settings.abs_unit > 0.0 and mid > 0.0
    first = absolute_window(mid, settings.abs_unit, bins) if absolute else 0.0
    floats, counts = _record_view(out, _FLOAT64), _record_view(out, _UINT32)
    floats[slots["mid"].start : slots["abs_first_price"].stop] = [mid, settings.bps_width, settings.abs_unit, first]
    use_kernel = kernel is not None and all(
        side.price.dtype == _FLOAT64 and side.size.dtype == _FLOAT64 and side.exchange_size.dtype == _FLOAT64
        for side in (bids, asks)
    )
    record = _record_view(out, _UINT8) if use_kernel else None
    for name, side, is_bid in (("bid", bids, True), ("ask", asks, False)):
        if use_kernel:
            _kernel_buckets(record, out.dtype, f"{name}_bps", side, True, mid, settings.bps_width, is_bid, count)
            if absolute:
                _kernel_buckets(record, out.dtype, f"{name}_abs", side, False, first, settings.abs_unit, is_bid, bins)
        else:
            index = _bps_index(distance_bps(side, mid, is_bid), settings.bps_width)
            inside = int(index.searchsorted(count))
            weights = _level_weights(side, len(index) if absolute else inside)
            _store_buckets(floats, counts, slots, f"{name}_bps", _bucket_sums(weights[:inside], index[:inside], count))
            if absolute:
                sums = _bucket_sums(weights, _absolute_index(side, first, settings.abs_unit), bins)
                _store_buckets(floats, counts, slots, f"{name}_abs", sums)
        if not absolute:
            floats[slots[f"{name}_abs_size"]] = 0.0
            floats[slots[f"{name}_abs_notional"]] = 0.0
            counts[slots[f"{name}_abs_orders"]] = 0
            floats[slots[f"{name}_abs_exchange_size"]] = 0.0
