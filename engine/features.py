"""Feature layouts (the CNN input and the RL state) and how one row is computed from a book.

Defined once here and imported by the writer (``actors/features.py``) and every reader
(``engine.client``); docs/features.md lists every index. Changing what any index means,
its units or its normalisation bumps :data:`LAYOUT_VERSION`, which travels in each
feature segment's ``schema_version`` param and in the directory, so a model trained on
one layout refuses to read another.

CNN row, 220 float32: ``row[:200].reshape(2, 20, 5)`` is (side: bid, ask) × (level, best
first) × :data:`LEVEL_FEATURES`, then :data:`MICRO_FEATURES` at 200–219.
RL row, 30 float32: :data:`RL_BOOK_FEATURES` (0–19), then :data:`RL_MARKET_FEATURES` (20–29).

Normalisation never looks ahead. Every z-score uses exponentially weighted moments (by
time, half-life ``features.normalisation_half_life_s``) of the rows *before* it: a row
is computed first, then the moments are updated with it. Before ``features.warmup_rows``
rows a z-score is 0. Nothing is ever NaN or inf: a level a side does not have is
(distance 0, log size z −``z_clip``, both shares 0, cumulative share the side's last one),
so ``exchange_share == 0`` marks it (a present level always has some); any other value
that cannot exist is 0 (docs/features.md says where a column differs).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from engine.microstructure import kernel
from shm.book import FIRST_EXCHANGE, PRICE, SIZE, BookReader, slot_field_run

if TYPE_CHECKING:
    from engine.config import FeaturesConfig

LAYOUT_VERSION = 1

LEVELS = 20
SIDES = ("bid", "ask")
LEVEL_FEATURES = ("distance_bps", "log_size_z", "top_exchange_share", "exchange_share", "cumulative_depth_share")
MICRO_FEATURES = (
    "spread_bps", "microprice_offset_bps", "imbalance_0", "imbalance_1", "imbalance_2", "cross_spread_bps",
    "included_exchange_share", "dominance_hhi", "top_dominance",
    *(f"depth_z_{step}" for step in range(7)),
    "total_imbalance", "mid_return_bps", "book_age_log_ms", "spread_z",
)
RL_BOOK_FEATURES = (
    "spread_z", "microprice_position", "touch_imbalance", "imbalance_0", "imbalance_1", "imbalance_2",
    "total_imbalance", "bid_near_depth_z", "ask_near_depth_z", "bid_touch_size_z", "ask_touch_size_z",
    "cross_spread_z", "included_exchange_share", "dominance_hhi", "top_dominance", "bid_depth_concentration",
    "ask_depth_concentration", "crossed", "mid_return_z", "book_age_log_ms",
)
RL_MARKET_FEATURES = (
    "volatility_regime", "realized_vol_fast", "realized_vol_slow", "mid_vs_slow_mean_bps", "spread_state",
    "imbalance_trend", "imbalance_fast", "liquidity_state", "update_rate", "crossed_bps",
)
LEVEL_BLOCK = len(SIDES) * LEVELS * len(LEVEL_FEATURES)
CNN_WIDTH = LEVEL_BLOCK + len(MICRO_FEATURES)
RL_WIDTH = len(RL_BOOK_FEATURES) + len(RL_MARKET_FEATURES)
assert (CNN_WIDTH, RL_WIDTH) == (220, 30)

NEAR_DEPTH_STEP = 3  # metrics.depth_steps_bps[3], 10 bp by default: the RL state's "near" depth
FAR_DEPTH_STEP = 6  # metrics.depth_steps_bps[6], 100 bp by default
BOOK_AGE_CAP_MS = 60_000.0
BPS_CAP = 1000.0

# Normalisation statistics (exponentially weighted first and second moments).
STAT_LEVEL_SIZE = 0  # ln(size) of a consolidated level, pooled over the 40 visible levels
STAT_SPREAD = 1  # spread, bp
STAT_DEPTH = 2  # 2..8: bid + ask depth within depth step k (base units)
STAT_BID_NEAR, STAT_ASK_NEAR = 9, 10  # one side's depth within the near step
STAT_CROSS = 11  # cross-exchange spread, bp
STAT_RETURN = 12  # mid change since the previous row, bp
STAT_COUNT = 13
ABSOLUTE_STD_FLOOR = (0.01, 0.01, *[1e-12] * 7, 1e-12, 1e-12, 0.01, 0.01)
RELATIVE_STD_FLOOR = 0.01  # a z-score's std is at least 1 % of |mean|: a flat history does not blow z up


def cnn_index(side: str, level: int, feature: str) -> int:
    """The CNN column of one level feature (side "bid"/"ask", level 0 = best)."""
    return (SIDES.index(side) * LEVELS + level) * len(LEVEL_FEATURES) + LEVEL_FEATURES.index(feature)


def feature_names(kind: str) -> list[str]:
    """Column names of a row: ``bid.03.log_size_z``, ``spread_bps``, … (docs/features.md)."""
    if kind == "cnn":
        levels = [f"{side}.{level:02d}.{name}" for side in SIDES for level in range(LEVELS) for name in LEVEL_FEATURES]
        return levels + list(MICRO_FEATURES)
    if kind == "rl":
        return list(RL_BOOK_FEATURES + RL_MARKET_FEATURES)
    raise ValueError(f"unknown feature kind {kind!r}: 'cnn' or 'rl'")


def width(kind: str) -> int:
    return len(feature_names(kind))


class BookSampler:
    """Copies what a feature or signal computation reads out of a book segment, untorn.

    The per-slot views are made once; a sample is a few byte copies between two loads of
    the slot's seqlock ``seq`` (the reading protocol of ``shm/book.py``), so the
    computation then runs on private memory the aggregator can overwrite at will.
    :attr:`levels` is ``[side, column, row]`` (columns as in ``shm.book``: price, size,
    orders, then one size per exchange id), transposed on copy so that each column of a
    side is contiguous; it always has ``levels`` rows, and those beyond a side's level
    count (or beyond the book's depth) are zero. It is a view of :attr:`columns`, the same
    values as ``[column, side, row]``, where one column of both sides is one contiguous
    block (what the feature computation works on). :attr:`metrics` holds
    the slot's metrics by field name as Python values (arrays for the per-k and
    per-exchange fields).
    """

    def __init__(
        self,
        reader: BookReader,
        levels: int,
        exchange_fields: tuple[str, ...] = (),
        bucket_fields: tuple[str, ...] = (),
    ) -> None:
        """``exchange_fields``: per-exchange slot fields to copy into :attr:`exchange`
        (``exchange_included`` always is); ``bucket_fields``: fields of the slot's buckets
        record to copy into :attr:`buckets`."""
        self.reader = reader
        self.rows = min(levels, reader.depth)  # rows the book can fill
        slots = reader.slots
        self.columns = np.zeros((FIRST_EXCHANGE + reader.exchanges, 2, levels))
        self.levels = self.columns.transpose(1, 0, 2)
        self.counts = [0, 0]
        # the per-exchange fields and the metrics are copied as one run of the slot's bytes:
        # views of this private copy hold them
        record = slots.dtype.fields
        run, fields, views = slot_field_run(slots.dtype, ("exchange_included", *exchange_fields, "metrics"))
        self._metrics = views["metrics"]
        # metrics by name, in field order: the per-k and per-exchange fields are views of the
        # private copy (as ``tolist`` gives them), so a sample only refreshes the scalars
        self._metrics_template: dict[str, object] = dict(zip(self._metrics.dtype.names, self._metrics.tolist()[0]))
        self._metric_scalar_names = [
            name for name, value in self._metrics_template.items() if not isinstance(value, np.ndarray)
        ]
        self._metric_scalars = self._metrics[self._metric_scalar_names]
        self.metrics: dict[str, object] = dict(self._metrics_template)
        self.exchange = {name: views[name] for name in ("exchange_included", *exchange_fields)}
        buckets = slots.dtype["buckets"]
        bucket_copies = {name: np.zeros((1, *buckets[name].shape), dtype=buckets[name].base) for name in bucket_fields}
        self.buckets = {name: copy.reshape(buckets[name].shape) for name, copy in bucket_copies.items()}
        self.generation = 0
        self.publish_ts = 0
        asks_after_bids = record["asks"][1] - record["bids"][1]
        self._slot_views = []
        for index in range(reader.slot_count):
            # bids and asks are consecutive fields of a slot: one strided view reads both
            # sides as [column, side, row], the layout of :attr:`columns`
            bids = slots["bids"][index, : self.rows]
            both_sides = np.lib.stride_tricks.as_strided(
                bids, (bids.shape[1], 2, self.rows), (bids.strides[1], asks_after_bids, bids.strides[0]),
                writeable=False,
            )
            self._slot_views.append((
                memoryview(slots[index : index + 1].view(np.uint64))[:1],  # seq: the slot's first 8 bytes
                memoryview(slots["generation"][index : index + 1]),  # memoryviews: their items are Python ints
                memoryview(slots["publish_ts"][index : index + 1]),
                memoryview(slots["bid_levels"][index : index + 1]),
                memoryview(slots["ask_levels"][index : index + 1]),
                [(self.columns[:, :, : self.rows], both_sides),
                 (fields, slots[index : index + 1].view(np.uint8)[run]),
                 *((copy, slots["buckets"][name][index : index + 1]) for name, copy in bucket_copies.items())],
            ))

    @property
    def published(self) -> int:
        """The newest generation in the segment (0: nothing published yet)."""
        return int(self.reader.generation)

    def sample(self, retries: int = 100) -> bool:
        """Copy the newest book; False if the writer kept overwriting it (try again later)."""
        slot_count = len(self._slot_views)
        for _ in range(retries):
            generation = self.reader.generation
            seq, slot_generation, publish_ts, bid_levels, ask_levels, copies = self._slot_views[generation % slot_count]
            before = seq[0]
            if before & 1 or slot_generation[0] != generation:
                continue
            for target, source in copies:
                np.copyto(target, source)
            published, bids, asks = publish_ts[0], bid_levels[0], ask_levels[0]
            if seq[0] != before:  # shm.ordering point 2: the data loads happened before this one
                continue
            self.generation, self.publish_ts = int(generation), published
            self.counts[0], self.counts[1] = min(bids, self.rows), min(asks, self.rows)
            for side, count in enumerate(self.counts):
                if count < self.rows:
                    self.levels[side, :, count:] = 0.0
            metrics = self._metrics_template.copy()
            metrics.update(zip(self._metric_scalar_names, self._metric_scalars.item()))
            self.metrics = metrics
            return True
        return False


def _ew_alpha(dt_s: float, half_life_s: float) -> float:
    """Weight of a new observation after ``dt_s``: the old ones lose half per half-life."""
    return 1.0 - 0.5 ** (max(dt_s, 0.0) / half_life_s)


def _clip(value: float, bound: float) -> float:
    return bound if value > bound else -bound if value < -bound else value


class FeatureComputer:
    """One instrument's rows: :meth:`compute` turns a sampled book into (CNN, RL) rows.

    State (the normalisation moments and the fast/slow market-state averages) only ever
    holds rows already computed, and :meth:`compute` reads it before updating it. The
    arithmetic on single values is plain Python floats (a numpy scalar op costs ~10×
    more); numpy does only the 2 × 20 level grid, on views made once (a view or a slice
    costs about as much as the small ufunc call it feeds).
    """

    def __init__(self, exchanges: int, member_exchanges: int, settings: "FeaturesConfig") -> None:
        """``exchanges``: columns per level in the book segment; ``member_exchanges``: how
        many exchanges feed this instrument (the denominator of the exchange shares)."""
        self.member_exchanges = max(member_exchanges, 1)
        self.settings = settings
        self.moment1 = [0.0] * STAT_COUNT
        self.moment2 = [0.0] * STAT_COUNT
        self.samples = [0] * STAT_COUNT
        self.scales: list[tuple[float, float] | None] = [None] * STAT_COUNT  # (mean, std) once warmed up
        self.last_ns = 0
        self.last_mid = 0.0
        self.last_generation = 0
        self.var_fast = self.var_slow = 0.0  # EW of squared mid returns per second, bp²/s
        self.mid_slow = 0.0
        self.imbalance_fast = self.imbalance_slow = 0.0
        self.book_rate = 0.0  # EW of new books per second
        # the two rows in one buffer: the CNN's microstructure values and the whole RL row
        # are then one slice, written in one assignment
        rows = np.zeros(CNN_WIDTH + RL_WIDTH, dtype=np.float32)
        self.cnn, self.rl = rows[:CNN_WIDTH], rows[CNN_WIDTH:]
        self._values = rows[LEVEL_BLOCK:]
        self._grid = self.cnn[:LEVEL_BLOCK].reshape(len(SIDES), LEVELS, len(LEVEL_FEATURES))
        # the grid is worked out feature by feature in contiguous float64 (fast ufunc loops),
        # then copied into the row in one casting copy
        self._level_features = np.zeros((len(LEVEL_FEATURES), len(SIDES), LEVELS))
        self._level_features_by_row = self._level_features.transpose(1, 2, 0)
        self._level_planes = tuple(self._level_features)
        # Each plane is finished by one product, all five in one multiply: distance (mid − price)
        # × 10⁴/mid for bids and × −10⁴/mid for asks, log size (ln − mean) × 1/std, top
        # exchange share × 1 (already a ratio), exchange count × 1/members, cumulative size
        # × 1/visible size. Rows: plane × side.
        self._plane_scales = np.ones((len(LEVEL_FEATURES), len(SIDES), 1))
        self._plane_scale_values = self._plane_scales.reshape(-1)
        # the planes whose missing levels get a code other than 0, and those codes
        self._coded, self._missing_codes = self._level_features[:2], np.array([0.0, -settings.z_clip])[:, None, None]
        self._log_size, self._size_or_one = np.zeros((len(SIDES), LEVELS)), np.zeros((len(SIDES), LEVELS))
        self._absent = np.zeros((len(SIDES), LEVELS), dtype=bool)
        self._quoting = np.zeros((exchanges, len(SIDES), LEVELS), dtype=bool)
        self._source: np.ndarray | None = None  # the sampler's level array ``_views`` are of
        self._views: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _level_views(self, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Price and size ``[side, row]`` and per-exchange size ``[exchange, side, row]`` views
        of a sampler's ``levels``, made once per sampler (its :attr:`BookSampler.columns`
        layout makes each of them contiguous)."""
        if levels is not self._source or self._views is None:
            columns = levels.transpose(1, 0, 2)
            self._source, self._views = levels, (columns[PRICE], columns[SIZE], columns[FIRST_EXCHANGE:])
        return self._views

    # ---- normalisation ----------------------------------------------------------------

    def _z(self, stat: int, value: float) -> float:
        """``value`` as a clipped z-score of the rows before this one; 0 during warm-up."""
        scale = self.scales[stat]
        return 0.0 if scale is None else _clip((value - scale[0]) / scale[1], self.settings.z_clip)

    def _observe(self, observations: list[tuple[int, float, float]], alpha: float) -> None:
        """Fold (value, value²) per statistic into the moments, after the row is computed;
        a statistic's (mean, std) is ready from ``warmup_rows`` observations on, its std at
        least :data:`RELATIVE_STD_FLOOR` × |mean| and its absolute floor."""
        moment1, moment2, samples, scales = self.moment1, self.moment2, self.samples, self.scales
        warmup = self.settings.warmup_rows
        for stat, first, second in observations:
            if samples[stat] == 0:
                moment1[stat], moment2[stat] = first, second
            else:
                moment1[stat] += alpha * (first - moment1[stat])
                moment2[stat] += alpha * (second - moment2[stat])
            samples[stat] += 1
            if samples[stat] >= warmup:
                mean = moment1[stat]
                variance = moment2[stat] - mean * mean
                std = math.sqrt(variance) if variance > 0.0 else 0.0
                floor = RELATIVE_STD_FLOOR * abs(mean)
                if std < floor:
                    std = floor
                if std < ABSOLUTE_STD_FLOOR[stat]:
                    std = ABSOLUTE_STD_FLOOR[stat]
                scales[stat] = (mean, std)

    # ---- one row ----------------------------------------------------------------------

    def _level_grid(
        self, price: np.ndarray, size: np.ndarray, exchange_size: np.ndarray, has_book: bool, mid: float,
        distance_scale: tuple[float, float], size_scale: float, members_scale: float,
    ) -> None:
        """The level grid with numpy (the C kernel's ``level_grid`` does the same in one pass)."""
        clip_z = self.settings.z_clip
        log_size, size_or_one, absent = self._log_size, self._size_or_one, self._absent
        g_distance, g_size, g_top, g_share, g_cumulative = self._level_planes
        if has_book:
            np.subtract(mid, price, out=g_distance)
        else:
            g_distance.fill(0.0)  # and scaled by 0 below
        level_scale = self.scales[STAT_LEVEL_SIZE]
        if level_scale is not None:
            np.subtract(log_size, level_scale[0], out=g_size)
        else:
            g_size.fill(0.0)  # warming up: and scaled by 0 below
        np.maximum.reduce(exchange_size, axis=0, out=g_top)
        np.divide(g_top, size_or_one, out=g_top)
        np.greater(exchange_size, 0.0, out=self._quoting)
        np.add.reduce(self._quoting, axis=0, out=g_share)
        np.add.accumulate(size, axis=1, out=g_cumulative)
        visible = g_cumulative.item(0, -1) + g_cumulative.item(1, -1)
        visible_scale = 1.0 / visible if visible > 0.0 else 0.0
        self._plane_scale_values[:] = (
            *distance_scale, size_scale, size_scale, 1.0, 1.0, members_scale, members_scale,
            visible_scale, visible_scale,
        )
        np.multiply(self._level_features, self._plane_scales, out=self._level_features)
        if level_scale is not None:
            np.minimum(g_size, clip_z, out=g_size)
            np.maximum(g_size, -clip_z, out=g_size)
        np.copyto(self._coded, self._missing_codes, where=absent)  # distance 0, log size z −clip (absent: compute's)
        np.copyto(self._grid, self._level_features_by_row)

    def compute(self, book: BookSampler, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """The CNN and RL rows of ``book`` at ``now_ns`` (views of this computer's buffers)."""
        settings = self.settings
        clip_z = settings.z_clip
        metrics = book.metrics
        mid = metrics["mid"]
        bid_count, ask_count = book.counts
        both_sides = bid_count > 0 and ask_count > 0
        has_book = mid > 0.0
        dt_s = (now_ns - self.last_ns) / 1e9 if self.last_ns else 0.0
        observations: list[tuple[int, float, float]] = []

        # -- the level grid: sides × 20 levels × 5 ----------------------------------------
        price, size, exchange_size = self._level_views(book.levels)  # LEVELS rows
        log_size, size_or_one, absent = self._log_size, self._size_or_one, self._absent
        if kernel is not None:
            kernel.size_or_one(size, size_or_one)  # a missing level's log is 0 and its shares 0
        else:
            np.less_equal(size, 0.0, out=absent)  # the sampler zeroes rows beyond a side's count
            np.copyto(size_or_one, size)
            np.copyto(size_or_one, 1.0, where=absent)
        np.log(size_or_one, out=log_size)  # numpy's log (its SIMD one): the same bits on either path
        level_count = bid_count + ask_count
        if level_count:
            observations.append(
                (STAT_LEVEL_SIZE, float(log_size.sum()) / level_count, float(np.vdot(log_size, log_size)) / level_count)
            )
        level_scale = self.scales[STAT_LEVEL_SIZE]
        distance_scale = (1e4 / mid, -1e4 / mid) if has_book else (0.0, 0.0)
        size_scale = 1.0 / level_scale[1] if level_scale is not None else 0.0
        members_scale = 1.0 / self.member_exchanges
        if kernel is not None:
            kernel.level_grid(
                price, size, exchange_size, log_size, size_or_one, self._grid, has_book, mid, *distance_scale,
                level_scale[0] if level_scale is not None else 0.0, size_scale, level_scale is not None,
                members_scale, clip_z,
            )
        else:
            self._level_grid(price, size, exchange_size, has_book, mid, distance_scale, size_scale, members_scale)

        # -- microstructure values --------------------------------------------------------
        imbalances = (metrics["imbalance"].tolist() + [0.0, 0.0, 0.0])[:3]
        bid_depth, ask_depth = metrics["bid_depth"].tolist(), metrics["ask_depth"].tolist()
        step_count = len(bid_depth)
        spread_bps = _clip(metrics["spread_bps"], BPS_CAP) if both_sides else 0.0
        vw_mid = metrics["vw_mid"]
        microprice_bps = _clip((vw_mid - mid) / mid * 1e4, BPS_CAP) if has_book else 0.0
        quoting_pair = metrics["cross_bid_exchange"] >= 0
        cross_bps = _clip(metrics["cross_spread_bps"], BPS_CAP) if quoting_pair else 0.0
        included = float(np.count_nonzero(book.exchange["exchange_included"])) / self.member_exchanges
        dominance = metrics["dominance"].tolist()
        hhi = sum([share * share for share in dominance])
        top_dominance = max(dominance, default=0.0)
        total_bid, total_ask = metrics["total_bid_size"], metrics["total_ask_size"]
        total_imbalance = (total_bid - total_ask) / (total_bid + total_ask) if total_bid + total_ask > 0.0 else 0.0
        returned = has_book and self.last_mid > 0.0
        mid_return = _clip(math.log(mid / self.last_mid) * 1e4, BPS_CAP) if returned else 0.0
        age_ms = min(max((now_ns - book.publish_ts) / 1e6, 0.0), BOOK_AGE_CAP_MS) if book.publish_ts else 0.0
        book_age = math.log1p(age_ms)
        spread_z = self._z(STAT_SPREAD, spread_bps) if both_sides else 0.0
        depth_z = [0.0] * 7
        if has_book:
            for step in range(min(step_count, 7)):
                depth = bid_depth[step] + ask_depth[step]
                depth_z[step] = self._z(STAT_DEPTH + step, depth)
                observations.append((STAT_DEPTH + step, depth, depth * depth))

        # -- RL: book state --------------------------------------------------------------
        spread = metrics["spread"]
        microprice_position = (vw_mid - mid) / spread if both_sides and spread > 0.0 else 0.0
        touch_imbalance = bid_touch_z = ask_touch_z = 0.0
        if both_sides:
            bid_touch, ask_touch = size.item(0, 0), size.item(1, 0)
            touch_imbalance = (bid_touch - ask_touch) / (bid_touch + ask_touch)
            if level_scale is not None:
                bid_touch_z = _clip((math.log(bid_touch) - level_scale[0]) / level_scale[1], clip_z)
                ask_touch_z = _clip((math.log(ask_touch) - level_scale[0]) / level_scale[1], clip_z)
        near_ok = has_book and step_count > NEAR_DEPTH_STEP
        far_ok = has_book and step_count > FAR_DEPTH_STEP
        bid_near = bid_depth[NEAR_DEPTH_STEP] if near_ok else 0.0
        ask_near = ask_depth[NEAR_DEPTH_STEP] if near_ok else 0.0
        bid_far = bid_depth[FAR_DEPTH_STEP] if far_ok else 0.0
        ask_far = ask_depth[FAR_DEPTH_STEP] if far_ok else 0.0

        # -- RL: market state (fast/slow averages of the rows before this one) -----------
        vol_fast, vol_slow = math.sqrt(self.var_fast), math.sqrt(self.var_slow)
        regime = _clip(math.log(vol_fast / vol_slow), 3.0) if vol_fast > 0.0 and vol_slow > 0.0 else 0.0
        trend = _clip((mid - self.mid_slow) / mid * 1e4, BPS_CAP) if has_book and self.mid_slow > 0.0 else 0.0
        spread_scale = self.scales[STAT_SPREAD]
        spread_state = (
            min(max(spread_bps / spread_scale[0], 0.0), 10.0)
            if both_sides and spread_scale is not None and spread_scale[0] > 0.0 else 1.0
        )
        near_mean = self.moment1[STAT_DEPTH + NEAR_DEPTH_STEP]
        near_total = bid_near + ask_near
        liquidity_state = (
            _clip(math.log(near_total / near_mean), clip_z)
            if near_ok and near_total > 0.0 and near_mean > 0.0 else 0.0
        )
        self._values[:] = (  # CNN 200-219, then RL 0-29
            spread_bps, microprice_bps, *imbalances, cross_bps, included, hhi, top_dominance, *depth_z,
            total_imbalance, mid_return, book_age, spread_z,
            spread_z, microprice_position, touch_imbalance, *imbalances, total_imbalance,
            self._z(STAT_BID_NEAR, bid_near) if near_ok else 0.0,
            self._z(STAT_ASK_NEAR, ask_near) if near_ok else 0.0,
            bid_touch_z, ask_touch_z,
            self._z(STAT_CROSS, cross_bps) if quoting_pair else 0.0,
            included, hhi, top_dominance,
            bid_near / bid_far if bid_far > 0.0 else 0.0,
            ask_near / ask_far if ask_far > 0.0 else 0.0,
            1.0 if quoting_pair and cross_bps < 0.0 else 0.0,
            self._z(STAT_RETURN, mid_return) if returned else 0.0,
            book_age,
            regime, min(vol_fast, BPS_CAP), min(vol_slow, BPS_CAP), trend, spread_state,
            self.imbalance_fast - self.imbalance_slow, self.imbalance_fast, liquidity_state,
            math.log1p(self.book_rate), max(-cross_bps, 0.0),
        )

        # -- then, and only then, fold this row into the state ---------------------------
        if both_sides:
            observations.append((STAT_SPREAD, spread_bps, spread_bps * spread_bps))
        if near_ok:
            observations.append((STAT_BID_NEAR, bid_near, bid_near * bid_near))
            observations.append((STAT_ASK_NEAR, ask_near, ask_near * ask_near))
        if quoting_pair:
            observations.append((STAT_CROSS, cross_bps, cross_bps * cross_bps))
        if returned:
            observations.append((STAT_RETURN, mid_return, mid_return * mid_return))
        self._observe(observations, _ew_alpha(dt_s, settings.normalisation_half_life_s))
        new_book = book.generation != self.last_generation
        self._advance_market_state(dt_s, mid, mid_return, imbalances[0], has_book, new_book)
        self.last_ns = now_ns
        self.last_generation = book.generation
        if has_book:
            self.last_mid = mid
        return self.cnn, self.rl

    def _advance_market_state(
        self, dt_s: float, mid: float, mid_return: float, imbalance: float, has_book: bool, new_book: bool
    ) -> None:
        settings = self.settings
        if dt_s <= 0.0:  # the first row seeds the averages
            if has_book:
                self.mid_slow = mid
                self.imbalance_fast = self.imbalance_slow = imbalance
            return
        fast = _ew_alpha(dt_s, settings.fast_half_life_s)
        slow = _ew_alpha(dt_s, settings.slow_half_life_s)
        if has_book:
            per_second = mid_return * mid_return / dt_s
            self.var_fast += fast * (per_second - self.var_fast)
            self.var_slow += slow * (per_second - self.var_slow)
            self.mid_slow = mid if self.mid_slow <= 0.0 else self.mid_slow + slow * (mid - self.mid_slow)
            self.imbalance_fast += fast * (imbalance - self.imbalance_fast)
            self.imbalance_slow += slow * (imbalance - self.imbalance_slow)
        self.book_rate += fast * ((1.0 if new_book else 0.0) / dt_s - self.book_rate)
