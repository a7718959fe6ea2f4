"""engine.cob and engine.microstructure: the consolidated book is the sum of the included
exchange books, level by level, whatever happens to them; buckets are the sum of the
levels inside them; metrics match hand-computed values on small books; fill_metrics and
fill_buckets write exactly the bits of their plain field-by-field definitions, through the
C kernel (engine/_analytics.c) and through the numpy fallback alike, and the kernel's side
copy and member tops equal their numpy definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.microstructure
from engine.cob import ConsolidatedBook, Conversion, MemberSpec
from engine.microstructure import (
    AnalyticsSettings,
    SideArrays,
    absolute_buckets,
    absolute_window,
    bps_buckets,
    cross_exchange_spread,
    distance_bps,
    fill_buckets,
    fill_metrics,
    imbalance,
    mid_price,
    volume_weighted_mid,
)
from shm.book import BookLayout, buckets_dtype, metrics_dtype

DEPTH = 6  # small, so levels keep moving in and out of the top arrays
EXCHANGES = 3

prices = st.integers(min_value=-12, max_value=12)
sizes = st.sampled_from([0.0, 0.0, 0.1, 0.25, 1.0, 2.5, 7.0])
level_update = st.tuples(st.just("level"), st.integers(0, EXCHANGES - 1), st.booleans(), prices, sizes)
snapshot = st.tuples(
    st.just("snapshot"), st.integers(0, EXCHANGES - 1),
    st.lists(st.tuples(prices, sizes.filter(bool)), max_size=8),
    st.lists(st.tuples(prices, sizes.filter(bool)), max_size=8),
)
drop_out = st.tuples(st.just("drop"), st.integers(0, EXCHANGES - 1))
rejoin = st.tuples(st.just("rejoin"), st.integers(0, EXCHANGES - 1))
operations = st.lists(st.one_of(level_update, level_update, level_update, snapshot, drop_out, rejoin), max_size=120)


def bid_price(tick: int) -> float:
    return round(100.0 - abs(tick) * 0.01 - 0.01, 2)


def ask_price(tick: int) -> float:
    return round(100.0 + abs(tick) * 0.01, 2)


def expected_side(books, included, is_bid: bool) -> list[tuple[float, float, list[float]]]:
    merged: dict[float, list[float]] = {}
    for member, (bids, asks) in enumerate(books):
        if included[member]:
            for price, size in (bids if is_bid else asks).items():
                merged.setdefault(price, [0.0] * EXCHANGES)[member] = size
    ordered = sorted(merged, reverse=is_bid)
    return [(price, sum(merged[price]), merged[price]) for price in ordered]


def assert_published_equals_included_books(book: ConsolidatedBook, books, included) -> None:
    for side, is_bid in ((book.bids, True), (book.asks, False)):
        expected = expected_side(books, included, is_bid)
        assert len(side) == len(expected)
        top = expected[:DEPTH]
        assert side.count == len(top)
        assert side.price[: side.count].tolist() == [price for price, _, _ in top]
        assert side.size[: side.count].tolist() == [total for _, total, _ in top]
        assert side.member_size[: side.count].tolist() == [row for _, _, row in top]


@settings(max_examples=300, deadline=None)
@given(operations)
def test_every_version_equals_the_sum_of_the_included_exchange_books(ops) -> None:
    book = ConsolidatedBook("BTC/USDT", [MemberSpec(e, 0) for e in range(EXCHANGES)], DEPTH)
    books = [({}, {}) for _ in range(EXCHANGES)]
    included = [False] * EXCHANGES
    for member in range(EXCHANGES):
        book.include(member, books[member])
        included[member] = True
    for operation in ops:
        kind, member = operation[0], operation[1]
        if kind == "level":
            _, _, is_bid, tick, size = operation
            price = bid_price(tick) if is_bid else ask_price(tick)
            levels = books[member][0 if is_bid else 1]
            if included[member]:  # the aggregator only applies deltas to books it trusts
                if size:
                    levels[price] = size
                else:
                    levels.pop(price, None)
                book.set_level(member, is_bid, price, size)
        elif kind == "snapshot":
            new = ({bid_price(t): s for t, s in operation[2]}, {ask_price(t): s for t, s in operation[3]})
            if included[member]:
                book.replace(member, books[member], new)
            books[member] = new
            if not included[member]:
                book.include(member, new)
                included[member] = True
        elif kind == "drop":
            book.exclude(member)
            included[member] = False
        else:
            if not included[member]:
                book.include(member, books[member])
                included[member] = True
        assert_published_equals_included_books(book, books, included)


def side_arrays(side, exchanges: int = EXCHANGES) -> SideArrays:
    count = side.count
    return SideArrays(side.price[:count], side.size[:count], side.orders[:count], side.member_size[:count, :exchanges])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, EXCHANGES - 1), st.integers(1, 400), sizes.filter(bool)), max_size=60),
    st.lists(st.tuples(st.integers(0, EXCHANGES - 1), st.integers(1, 400), sizes.filter(bool)), max_size=60),
)
def test_buckets_are_the_sum_of_the_levels_inside_them(bid_levels, ask_levels) -> None:
    book = ConsolidatedBook("ETH/USDT", [MemberSpec(e, 0) for e in range(EXCHANGES)], 1000)
    for member in range(EXCHANGES):
        book.include(member, ({}, {}))
    for member, tick, size in bid_levels:
        book.set_level(member, True, round(3000.0 - tick * 0.05, 2), size)
    for member, tick, size in ask_levels:
        book.set_level(member, False, round(3000.05 + tick * 0.05, 2), size)
    bids, asks = side_arrays(book.bids), side_arrays(book.asks)
    mid = 3000.025
    for side, is_bid in ((bids, True), (asks, False)):
        distances = distance_bps(side, mid, is_bid)
        width, count = 1.0, 30
        relative = bps_buckets(side, distances, width, count)
        for k in range(count):
            inside = (distances >= k * width) & (distances < (k + 1) * width)
            assert math.isclose(relative.size[k], side.size[inside].sum(), abs_tol=1e-12)
            assert np.allclose(relative.exchange_size[k], side.exchange_size[inside].sum(axis=0))
            assert math.isclose(relative.notional[k], (side.price * side.size)[inside].sum(), rel_tol=1e-12)
        first, unit, bins = 2990.0, 1.0, 20
        absolute = absolute_buckets(side, first, unit, bins)
        for j in range(bins):
            inside = (side.price >= first + j * unit - 1e-9) & (side.price < first + (j + 1) * unit - 1e-9)
            assert math.isclose(absolute.size[j], side.size[inside].sum(), abs_tol=1e-12)
            assert np.allclose(absolute.exchange_size[j], side.exchange_size[inside].sum(axis=0))


def test_different_prices_are_never_merged_and_equal_ones_always_are() -> None:
    book = ConsolidatedBook("BTC/USDT", [MemberSpec(0, 0), MemberSpec(1, 0)], 10)
    book.include(0, ({float("60000.1"): 1.0, float("60000.10000001"): 2.0}, {}))
    book.include(1, ({float("60000.10"): 0.5}, {}))  # same decimal, other text: one level
    assert book.bids.price[:2].tolist() == [60000.10000001, 60000.1]
    assert book.bids.member_size[:2].tolist() == [[2.0, 0.0], [1.0, 0.5]]


def test_a_live_rate_member_lands_on_the_grid_conservatively_and_sums_its_levels() -> None:
    book = ConsolidatedBook("BTC-USD*", [MemberSpec(0, 0), MemberSpec(1, 1)], 10, tick=0.5)
    book.include(0, ({60000.0: 1.0}, {60001.0: 1.0}))
    book.include(1, ({60010.2: 2.0, 60010.4: 3.0}, {60012.1: 1.0}), conversion=Conversion(rate=0.9999, tick=0.5))
    # 60010.2 * 0.9999 = 60004.199 and 60010.4 * 0.9999 = 60004.399: both round down to 60004.0
    assert book.bids.price[:2].tolist() == [60004.0, 60000.0]
    assert book.bids.member_size[0].tolist() == [0.0, 5.0]
    # 60012.1 * 0.9999 = 60006.099 rounds up to 60006.5
    assert book.asks.price[:2].tolist() == [60001.0, 60006.5]
    book.set_level(1, True, 60010.4, 0.0)
    assert book.bids.member_size[0].tolist() == [0.0, 2.0]
    book.set_level(1, True, 60010.2, 0.0)
    assert book.bids.price[:1].tolist() == [60000.0] and book.bids.count == 1


def test_metrics_on_a_crafted_two_exchange_book() -> None:
    book = ConsolidatedBook("BTC/USDT", [MemberSpec(0, 0), MemberSpec(1, 0)], 10)
    book.include(0, ({100.0: 2.0, 99.9: 1.0}, {100.2: 1.0}))
    book.include(1, ({99.95: 1.0}, {100.1: 3.0, 101.0: 4.0}))
    bids, asks = side_arrays(book.bids, 2), side_arrays(book.asks, 2)
    assert volume_weighted_mid(bids, asks) == pytest.approx((100.0 * 3.0 + 100.1 * 2.0) / 5.0)
    layout = BookLayout(10, 2, 2, bps_buckets=5, absolute_buckets=4, imbalance_depths=2, depth_steps=2)
    out = np.zeros((), metrics_dtype(layout))[()]
    settings_ = AnalyticsSettings((10.0, 100.0), (5.0, 100.0), 10.0, 10.0, 5.0, 0.5)
    fill_metrics(out, bids, asks, np.array([100.0, 99.95]), np.array([100.2, 100.1]), settings_)
    mid = 100.05
    assert out["mid"] == pytest.approx(mid)
    assert out["spread_bps"] == pytest.approx(0.1 / mid * 1e4)
    # within 10 bp of 100.05 (99.95 .. 100.15): bids 100.0 (2) + 99.95 (1); asks 100.1 (3)
    assert out["imbalance"][0] == pytest.approx(imbalance(3.0, 3.0)) == 0.0
    # within 100 bp: every level: bids 4, asks 8
    assert out["imbalance"][1] == pytest.approx((4.0 - 8.0) / 12.0)
    # within 5 bp: only 100.0 (4.9975 bp away); within 100 bp: all four bid units
    assert out["bid_depth"].tolist() == pytest.approx([2.0, 4.0])
    assert out["dominance"].tolist() == pytest.approx([2.0 / 6.0, 4.0 / 6.0])
    # exchange 1's bid 99.95 against exchange 0's ask 100.2, or 0's bid 100.0 against 1's ask 100.1
    assert cross_exchange_spread(np.array([100.0, 99.95]), np.array([100.2, 100.1])) == pytest.approx((0.1, 0, 1))
    assert (int(out["cross_bid_exchange"]), int(out["cross_ask_exchange"])) == (0, 1)
    assert out["total_ask_size"] == 8.0 and out["total_bid_notional"] == pytest.approx(200.0 + 99.9 + 99.95)
    assert out["exchange_spread_bps"].tolist() == pytest.approx([0.2 / 100.1 * 1e4, 0.15 / 100.025 * 1e4])


def test_crossed_venues_give_a_negative_cross_spread_and_empty_books_give_zeros() -> None:
    assert cross_exchange_spread(np.array([100.5, 0.0]), np.array([0.0, 100.2])) == pytest.approx((-0.3, 0, 1))
    assert cross_exchange_spread(np.array([100.0, 0.0]), np.array([100.1, 0.0])) == (0.0, -1, -1)
    empty = SideArrays(np.empty(0), np.empty(0), np.empty(0, np.uint32), np.empty((0, 2)))
    layout = BookLayout(10, 2, 2, bps_buckets=5, absolute_buckets=4, imbalance_depths=1, depth_steps=1)
    settings_ = AnalyticsSettings((10.0,), (5.0,), 10.0, 10.0, 1.0, 10.0)
    metrics = np.zeros((), metrics_dtype(layout))[()]
    fill_metrics(metrics, empty, empty, np.zeros(2), np.zeros(2), settings_)
    buckets = np.zeros((), buckets_dtype(layout))[()]
    fill_buckets(buckets, empty, empty, settings_)
    echoed = {"imbalance_bps", "depth_steps_bps", "dominance_bps", "bps_width", "abs_unit"}
    assert (int(metrics["cross_bid_exchange"]), int(metrics["cross_ask_exchange"])) == (-1, -1)
    for out in (metrics, buckets):
        for name in out.dtype.names:
            values = np.atleast_1d(out[name]).astype(float)
            assert np.isfinite(values).all(), name
            if name not in echoed | {"cross_bid_exchange", "cross_ask_exchange"}:
                assert not values.any(), name


def reference_metrics(
    out, bids: SideArrays, asks: SideArrays, best_bid: np.ndarray, best_ask: np.ndarray, analytics: AnalyticsSettings
) -> None:
    """fill_metrics written plainly, one field at a time: the arithmetic (and so the bits) the
    optimised code must reproduce."""
    mid = mid_price(bids, asks)
    both = len(bids.price) and len(asks.price)
    spread = float(asks.price[0]) - float(bids.price[0]) if both else 0.0
    out["mid"], out["vw_mid"], out["spread"] = mid, volume_weighted_mid(bids, asks), spread
    out["spread_bps"] = spread / mid * 1e4 if both and mid > 0.0 else 0.0
    limits = np.array([*analytics.imbalance_bps, *analytics.depth_steps_bps, analytics.dominance_bps])
    within, cumulative, running = [], [], []
    for side, is_bid in ((bids, True), (asks, False)):
        within.append(np.searchsorted(distance_bps(side, mid, is_bid), limits, side="right"))
        running.append(np.cumsum(np.ascontiguousarray(side.size)))
        cumulative.append(np.concatenate(([0.0], running[-1]))[within[-1]])
    count = len(analytics.imbalance_bps)
    steps = slice(count, count + len(analytics.depth_steps_bps))
    out["imbalance_bps"], out["depth_steps_bps"] = analytics.imbalance_bps, analytics.depth_steps_bps
    out["imbalance"] = [imbalance(float(cumulative[0][k]), float(cumulative[1][k])) for k in range(count)]
    out["bid_depth"], out["ask_depth"] = cumulative[0][steps], cumulative[1][steps]
    out["dominance_bps"] = analytics.dominance_bps
    def level_after_level(values: np.ndarray) -> np.ndarray:  # every sum adds in level order
        return np.cumsum(values, axis=0)[-1] if len(values) else np.zeros(values.shape[1:])

    near = level_after_level(bids.exchange_size[: within[0][-1]]) + level_after_level(asks.exchange_size[: within[1][-1]])
    near_total = level_after_level(near)
    out["dominance"] = near / near_total if near_total > 0.0 else 0.0
    cross, bid_exchange, ask_exchange = cross_exchange_spread(best_bid, best_ask)
    out["cross_spread"] = cross
    out["cross_spread_bps"] = cross / mid * 1e4 if mid > 0.0 and bid_exchange >= 0 else 0.0
    out["cross_bid_exchange"], out["cross_ask_exchange"] = bid_exchange, ask_exchange
    quoted = (best_bid > 0.0) & (best_ask > 0.0)
    exchange_mid = np.where(quoted, (best_bid + best_ask) / 2, 1.0)
    out["exchange_spread_bps"] = np.where(quoted, (best_ask - best_bid) / exchange_mid * 1e4, 0.0)
    for name, side, sums in (("bid", bids, running[0]), ("ask", asks, running[1])):
        out[f"total_{name}_size"] = float(sums[-1]) if len(sums) else 0.0
        prices = np.ascontiguousarray(side.price)
        out[f"total_{name}_notional"] = float(level_after_level(prices * np.ascontiguousarray(side.size)))


def reference_buckets(out, bids: SideArrays, asks: SideArrays, analytics: AnalyticsSettings) -> None:
    """fill_buckets written plainly: each kind from the definition functions, field by field."""
    mid = mid_price(bids, asks)
    bins = len(out["bid_abs_size"])
    absolute = analytics.abs_unit > 0.0 and mid > 0.0
    first = absolute_window(mid, analytics.abs_unit, bins) if absolute else 0.0
    out["mid"], out["bps_width"], out["abs_unit"] = mid, analytics.bps_width, analytics.abs_unit
    out["abs_first_price"] = first
    for name, side, is_bid in (("bid", bids, True), ("ask", asks, False)):
        count = len(out[f"{name}_bps_size"])
        kinds = [("bps", bps_buckets(side, distance_bps(side, mid, is_bid), analytics.bps_width, count))]
        if absolute:
            kinds.append(("abs", absolute_buckets(side, first, analytics.abs_unit, bins)))
        for kind, buckets in kinds:  # without absolute buckets their fields stay 0
            for field in ("size", "notional", "orders", "exchange_size"):
                out[f"{name}_{kind}_{field}"] = getattr(buckets, field)


def random_book(rng: np.random.Generator) -> tuple[SideArrays, SideArrays, np.ndarray, np.ndarray, BookLayout,
                                                   AnalyticsSettings]:
    """Up to 1,000 levels a side on a tick grid (sometimes sparse), some books one-sided or
    crossed across venues, levels placed on and one ulp around the bp limits and the bucket
    edges, zero sizes, exchanges without a quote, orders as counts or floats."""
    exchanges = int(rng.integers(1, 12))
    tick = float(10.0 ** rng.integers(-4, 1))
    best_bid = round(float(rng.uniform(1.0, 80_000.0)) / tick) * tick
    best_ask = best_bid + tick * int(rng.choice([1, 2, -1, -7]))  # negative: venues cross
    imbalance_bps = (10.0, 50.0, 100.0) if rng.random() < 0.5 else (5.0, 20.0)
    steps = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0) if rng.random() < 0.5 else (0.5, 3.0, 150.0)
    unit = float(rng.choice([0.0, tick * 10, best_bid / 50]))
    analytics = AnalyticsSettings(imbalance_bps, steps, float(rng.choice([1.0, 10.0])), 10.0,
                                  float(rng.choice([0.5, 1.0, 2.5])), unit)
    layout = BookLayout(1000, exchanges, 2, bps_buckets=int(rng.choice([1, 7, 100])),
                        absolute_buckets=int(rng.choice([1, 4, 200])), imbalance_depths=len(imbalance_bps),
                        depth_steps=len(steps))
    mid = (best_bid + best_ask) / 2
    edges = [*imbalance_bps, *steps, analytics.dominance_bps, analytics.bps_width, 3 * analytics.bps_width]
    sides = []
    for best, sign in ((best_bid, -1.0), (best_ask, 1.0)):
        count = int(rng.choice([0, 1, 5, 40, 300, 1000]))
        gaps = rng.integers(1, 2 if rng.random() < 0.5 else 60, count)
        price = best + sign * tick * (np.cumsum(gaps) - gaps[0]) if count else np.empty(0)
        if count and rng.random() < 0.5:
            at_edges = [mid + sign * edge * mid / 1e4 for edge in edges]
            at_edges += [np.nextafter(p, p + direction) for p in at_edges for direction in (-1.0, 1.0)]
            price = np.concatenate([price, [p for p in at_edges if sign * (p - best) > 0.0]])
        price = np.unique(price)[::-1][:1000] if sign < 0 else np.unique(price)[:1000]
        levels = np.zeros((len(price), 3 + exchanges))
        levels[:, 0] = price
        quoting = rng.random((len(price), exchanges)) < 0.6
        quoting[np.arange(len(price)), rng.integers(0, exchanges, len(price))] = True  # a level has some size
        levels[:, 3:] = np.where(quoting, np.round(rng.lognormal(0.0, 1.5, quoting.shape), 3) + 0.001, 0.0)
        levels[:, 1] = levels[:, 3:].sum(axis=1)
        levels[:, 2] = rng.integers(0, 9, len(price))
        if len(price) > 1:
            levels[rng.integers(1, len(price)), 1] = 0.0
        if rng.random() < 0.5:
            sides.append(SideArrays(levels[:, 0], levels[:, 1], levels[:, 2], levels[:, 3:]))
        else:
            sides.append(SideArrays(levels[:, 0].copy(), levels[:, 1].copy(), levels[:, 2].astype(np.uint32),
                                    np.ascontiguousarray(levels[:, 3:])))
    tops = []
    for side in sides:
        quoted = side.exchange_size > 0.0
        top = np.where(quoted.any(axis=0), side.price[quoted.argmax(axis=0)] if len(side.price) else 0.0, 0.0)
        tops.append(np.where(rng.random(exchanges) < 0.2, 0.0, top))
    return sides[0], sides[1], tops[0], tops[1], layout, analytics


def analytics_bytes(bids: SideArrays, asks: SideArrays, best_bid: np.ndarray, best_ask: np.ndarray,
                    layout: BookLayout, analytics: AnalyticsSettings) -> bytes:
    """fill_metrics and fill_buckets of one book, as the bytes of their records."""
    metrics, buckets = np.zeros(1, metrics_dtype(layout)), np.zeros(1, buckets_dtype(layout))
    fill_metrics(metrics[0], bids, asks, best_bid, best_ask, analytics)
    fill_buckets(buckets[0], bids, asks, analytics)
    return metrics.tobytes() + buckets.tobytes()


needs_kernel = pytest.mark.skipif(engine.microstructure.kernel is None, reason="engine._analytics not built")


@needs_kernel
def test_the_kernel_and_the_numpy_fallback_write_the_same_bytes(monkeypatch) -> None:
    rng = np.random.default_rng(23)
    books = [random_book(rng) for _ in range(1000)]
    with_kernel = [analytics_bytes(*book) for book in books]
    monkeypatch.setattr(engine.microstructure, "kernel", None)
    assert [analytics_bytes(*book) for book in books] == with_kernel


@pytest.mark.parametrize("path", ["in use", "numpy fallback"])
def test_metrics_and_buckets_equal_their_field_by_field_definitions_to_the_bit(path, monkeypatch) -> None:
    if path == "numpy fallback":
        monkeypatch.setattr(engine.microstructure, "kernel", None)
    rng = np.random.default_rng(11)
    for _ in range(300):
        bids, asks, best_bid, best_ask, layout, analytics = random_book(rng)
        for dtype, fill, reference in (
            (metrics_dtype(layout), lambda out: fill_metrics(out, bids, asks, best_bid, best_ask, analytics),
             lambda out: reference_metrics(out, bids, asks, best_bid, best_ask, analytics)),
            (buckets_dtype(layout), lambda out: fill_buckets(out, bids, asks, analytics),
             lambda out: reference_buckets(out, bids, asks, analytics)),
        ):
            fast, plain = np.zeros(1, dtype), np.zeros(1, dtype)
            fill(fast[0])
            reference(plain[0])
            differing = [name for name in dtype.names if fast[name].tobytes() != plain[name].tobytes()]
            assert fast.tobytes() == plain.tobytes(), differing


def random_consolidated_book(rng: np.random.Generator, members: int, depth: int) -> ConsolidatedBook:
    """A book whose members quote overlapping grids, some sides empty, some members absent."""
    book = ConsolidatedBook("X", [MemberSpec(member, 0) for member in range(members)], depth)
    for member in range(members):
        sides = []
        for sign in (-1.0, 1.0):
            count = int(rng.choice([0, 1, 3, 50, 400]))
            ticks = np.unique(rng.integers(1, 600, count))
            sides.append({100.0 + sign * 0.01 * int(t): float(rng.integers(1, 500)) / 100 for t in ticks})
        if rng.random() < 0.85:
            book.include(member, (sides[0], sides[1]))
    return book


@needs_kernel
def test_the_kernel_publishes_both_sides_and_their_metrics_and_finds_member_tops_as_numpy_does(monkeypatch) -> None:
    """``publish_sides`` (both working blocks into their level matrices, then the metrics read
    back from them) gives numpy's copy and the numpy ``fill_metrics``'s bytes; ``column_tops``
    each member's best level."""
    from engine import _analytics
    from engine.microstructure import kernel_metrics_arguments
    from shm.book import FIRST_EXCHANGE, PRICE

    rng = np.random.default_rng(5)
    for _ in range(200):
        members, depth = int(rng.integers(1, 9)), int(rng.choice([1, 7, 100, 1000]))
        book = random_consolidated_book(rng, members, depth)
        exchanges = int(rng.integers(1, 5))
        mapping = rng.integers(0, exchanges, members).astype(np.int64) if rng.random() < 0.5 else None
        width = FIRST_EXCHANGE + (members if mapping is None else exchanges)
        analytics = AnalyticsSettings((10.0, 50.0), (1.0, 5.0, 100.0), float(rng.choice([1.0, 10.0])), 10.0, 1.0, 0.0)
        layout = BookLayout(depth, width - FIRST_EXCHANGE, 2, imbalance_depths=2, depth_steps=3)
        best_bid, best_ask = rng.choice([0.0, 99.9, 100.0], width - FIRST_EXCHANGE), rng.choice(
            [0.0, 100.0, 100.1], width - FIRST_EXCHANGE)
        expected_sides, copied_sides, previous = [], [], []
        for side in (book.bids, book.asks):
            top = side.top()
            before = int(rng.integers(0, depth + 1))
            expected = np.zeros((depth, width))
            expected[:before] = rng.random((before, width))  # rows a slot held before
            copied = expected.copy()
            expected[len(top) : before] = 0.0
            if mapping is None:
                expected[: len(top)] = top
            else:
                expected[: len(top), :FIRST_EXCHANGE] = top[:, :FIRST_EXCHANGE]
                expected[: len(top), FIRST_EXCHANGE:] = 0.0
                for column, exchange in enumerate(mapping.tolist()):
                    expected[: len(top), FIRST_EXCHANGE + exchange] += top[:, FIRST_EXCHANGE + column]
            expected_sides.append(expected)
            copied_sides.append(copied)
            previous.append(before)
        record = np.zeros(1, metrics_dtype(layout))[0]
        _analytics.publish_sides(
            book.bids.buffer[book.bids.start : book.bids.start + book.bids.count],
            book.asks.buffer[book.asks.start : book.asks.start + book.asks.count],
            copied_sides[0], copied_sides[1], previous[0], previous[1], mapping, best_bid, best_ask,
            *kernel_metrics_arguments(analytics, record),
        )
        for copied, expected in zip(copied_sides, expected_sides):
            assert copied.tobytes() == expected.tobytes()
        monkeypatch.setattr(engine.microstructure, "kernel", None)
        reference = np.zeros(1, metrics_dtype(layout))[0]
        counts = (book.bids.count, book.asks.count)
        fill_metrics(reference, *(SideArrays(levels[:count, PRICE], levels[:count, 1], levels[:count, 2],
                                             levels[:count, FIRST_EXCHANGE:])
                                  for levels, count in zip(expected_sides, counts)), best_bid, best_ask, analytics)
        monkeypatch.undo()
        assert record.tobytes() == reference.tobytes()
        for side in (book.bids, book.asks):
            top, block = side.top(), side.buffer[side.start : side.start + side.count]
            price, size = np.full(members, 7.0), np.full(members, 7.0)
            _analytics.column_tops(block, price, size)
            for member in range(members):
                rows = np.flatnonzero(top[:, FIRST_EXCHANGE + member] > 0.0)
                want = (top[rows[0], PRICE], top[rows[0], FIRST_EXCHANGE + member]) if len(rows) else (0.0, 0.0)
                assert (price[member], size[member]) == want


@needs_kernel
def test_the_kernel_picks_the_same_cross_exchange_pair_on_ties(monkeypatch) -> None:
    """Per-exchange best prices drawn from a handful of values (many ties, missing quotes): the
    cross-exchange spread, its pair (lowest ids on a tie) and every other metric agree."""
    rng = np.random.default_rng(8)
    bids, asks, _, _, _, analytics = random_book(rng)
    for _ in range(2000):
        exchanges = int(rng.integers(1, 7))
        layout = BookLayout(1000, exchanges, 2, imbalance_depths=len(analytics.imbalance_bps),
                            depth_steps=len(analytics.depth_steps_bps))
        best_bid = rng.choice([0.0, 99.0, 100.0, 100.5], exchanges)
        best_ask = rng.choice([0.0, 100.0, 100.5, 101.0], exchanges)
        sides = [SideArrays(side.price, side.size, side.orders, np.zeros((len(side.price), exchanges)))
                 for side in (bids, asks)]
        outputs = []
        for path in ("kernel", "numpy"):
            if path == "numpy":
                monkeypatch.setattr(engine.microstructure, "kernel", None)
            out = np.zeros(1, metrics_dtype(layout))
            fill_metrics(out[0], *sides, best_bid, best_ask, analytics)
            outputs.append(out.tobytes())
        monkeypatch.undo()
        assert outputs[0] == outputs[1], (best_bid, best_ask)
