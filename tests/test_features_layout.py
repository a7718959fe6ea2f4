"""engine.features: every column of the CNN and RL rows against hand-computed values on
crafted books, normalisation from the past only, the documented codes for missing data,
and the client's zero-copy windows under a flat-out writer in another process."""

from __future__ import annotations

import math
import multiprocessing as mp
import time

import numpy as np
import pytest

from engine import features
from engine.client import Engine
from engine.config import FeaturesConfig
from engine.features import CNN_WIDTH, LEVELS, RL_WIDTH, BookSampler, FeatureComputer, cnn_index, feature_names
from shm.features import FeatureReader, FeatureWriter
from shm.segment import SegmentKind, segment_name
from tests.book_support import CraftedBooks

BIDS = [(100.0, {0: 1.0, 1: 3.0}), (99.0, {0: 2.0})]
ASKS = [(101.0, {1: 1.0}), (102.0, {0: 4.0, 1: 4.0})]
MID = 100.5


def cnn_of(row: np.ndarray) -> dict[str, float]:
    return dict(zip(feature_names("cnn"), row.tolist()))


def rl_of(row: np.ndarray) -> dict[str, float]:
    return dict(zip(feature_names("rl"), row.tolist()))


@pytest.fixture
def books(instance):
    crafted = CraftedBooks(instance, exchanges=2)
    yield crafted
    crafted.close()


def sample(books: CraftedBooks) -> BookSampler:
    sampler = BookSampler(books.reader, LEVELS)
    assert sampler.sample()
    return sampler


def test_layout_sizes_names_and_version():
    assert (CNN_WIDTH, RL_WIDTH) == (220, 30) and features.LAYOUT_VERSION == 1
    names = feature_names("cnn")
    assert len(names) == 220 and len(set(names)) == 220
    assert names[0] == "bid.00.distance_bps" and names[199] == "ask.19.cumulative_depth_share"
    assert names[200] == "spread_bps" and names[219] == "spread_z"
    assert cnn_index("ask", 3, "log_size_z") == 100 + 3 * 5 + 1
    assert len(feature_names("rl")) == 30 and feature_names("rl")[20] == "volatility_regime"


def test_first_row_of_a_crafted_book_is_the_hand_computed_one(books):
    books.publish(BIDS, ASKS)
    sampler = sample(books)
    computer = FeatureComputer(2, 2, FeaturesConfig())
    cnn, rl = computer.compute(sampler, sampler.publish_ts + 5_000_000)
    values = cnn_of(cnn)
    near, far = (MID - 100.0) / MID * 1e4, (MID - 99.0) / MID * 1e4  # 49.75 and 149.25 bp
    expected_levels = {
        ("bid", 0): (near, 0.0, 0.75, 1.0, 4 / 15),  # 1 + 3 on two exchanges, the larger is 3 of 4
        ("bid", 1): (far, 0.0, 1.0, 0.5, 6 / 15),
        ("ask", 0): (near, 0.0, 1.0, 0.5, 1 / 15),
        ("ask", 1): (far, 0.0, 0.5, 1.0, 9 / 15),
    }
    for (side, level), expected in expected_levels.items():
        got = [values[f"{side}.{level:02d}.{name}"] for name in features.LEVEL_FEATURES]
        assert got == pytest.approx(expected, rel=1e-6), (side, level)
    for side, carried in (("bid", 6 / 15), ("ask", 9 / 15)):  # missing levels: the documented codes
        for level in range(2, LEVELS):
            got = [values[f"{side}.{level:02d}.{name}"] for name in features.LEVEL_FEATURES]
            assert got == pytest.approx([0.0, -5.0, 0.0, 0.0, carried], rel=1e-6)
    vw_mid = (100.0 * 1.0 + 101.0 * 4.0) / 5.0  # bid × ask size + ask × bid size
    assert [values[name] for name in features.MICRO_FEATURES] == pytest.approx([
        1.0 / MID * 1e4,  # spread_bps
        (vw_mid - MID) / MID * 1e4,  # microprice_offset_bps
        0.0, 0.6, 0.6,  # imbalance within 10 bp (nothing there), 50 and 100 bp: (4 − 1) / 5
        1.0 / MID * 1e4,  # cross spread: kraken-like ask 101 (exchange 1) − bid 100 (exchange 0)
        1.0, 0.0, 0.0,  # both exchanges included; nothing within 10 bp, so no dominance
        *[0.0] * 7,  # depth z-scores: warming up
        (6.0 - 9.0) / 15.0, 0.0, math.log1p(5.0), 0.0,  # total imbalance, no previous mid, 5 ms old, warming
    ], rel=1e-6, abs=1e-9)
    state = rl_of(rl)
    assert state["microprice_position"] == pytest.approx((vw_mid - MID) / 1.0)
    assert state["touch_imbalance"] == pytest.approx(0.6)
    assert [state["imbalance_0"], state["imbalance_1"], state["total_imbalance"]] == pytest.approx([0.0, 0.6, -0.2])
    assert state["bid_depth_concentration"] == 0.0  # nothing within 10 bp, 4 within 100 bp
    assert state["included_exchange_share"] == 1.0 and state["crossed"] == 0.0
    assert state["book_age_log_ms"] == pytest.approx(math.log1p(5.0))
    market = rl[20:].tolist()
    assert market == pytest.approx([0, 0, 0, 0, 1.0, 0, 0, 0, 0, 0])  # nothing seen before: neutral values


def test_z_scores_use_exponentially_weighted_moments_of_earlier_rows_only(books):
    settings = FeaturesConfig(warmup_rows=1, normalisation_half_life_s=300.0, z_clip=100.0)
    computer = FeatureComputer(2, 2, settings)
    books.publish(BIDS, ASKS)  # spread 1.0 → 99.50 bp
    start = sample(books).publish_ts
    computer.compute(sample(books), start)
    first = 1.0 / MID * 1e4
    wide_asks = [(101.5, {1: 1.0}), (102.0, {0: 4.0, 1: 4.0})]  # spread 1.5 around mid 100.75
    books.publish(BIDS, wide_asks)
    second = 1.5 / 100.75 * 1e4
    cnn, _ = computer.compute(sample(books), start + 300 * 10**9)  # one half-life later
    # one earlier row: mean = first, variance 0 → the std is the 1 % relative floor
    assert cnn_of(cnn)["spread_z"] == pytest.approx((second - first) / (0.01 * first))
    books.publish(BIDS, ASKS)
    cnn, _ = computer.compute(sample(books), start + 600 * 10**9)
    mean = first + 0.5 * (second - first)  # the second row weighs ½ after one half-life
    variance = first**2 + 0.5 * (second**2 - first**2) - mean**2
    assert cnn_of(cnn)["spread_z"] == pytest.approx((first - mean) / math.sqrt(variance), rel=1e-6)


def test_a_future_spike_changes_no_earlier_row_and_its_own_row_sees_only_the_past(books, instance):
    settings = FeaturesConfig(warmup_rows=3)
    tensor = FeatureWriter.create(segment_name(instance, SegmentKind.FEATURES, "spike"), 64, CNN_WIDTH, 1)
    reader = FeatureReader.attach(tensor.name)
    quiet, spiked = FeatureComputer(2, 2, settings), FeatureComputer(2, 2, settings)
    start = time.time_ns()
    for step in range(10):
        sizes = 1.0 + 0.1 * (step % 3)
        books.publish([(100.0, {0: sizes, 1: 3.0}), (99.0, {0: 2.0})], ASKS)
        sampler = sample(books)
        row, _ = quiet.compute(sampler, start + step * 10**7)
        tensor.append(row, sampler.publish_ts)
        assert np.array_equal(spiked.compute(sampler, start + step * 10**7)[0], row)
    before = reader.latest(10).values.copy()
    books.publish([(100.0, {0: 500.0, 1: 3.0}), (99.0, {0: 2.0})], ASKS)  # a huge bid appears
    row, _ = spiked.compute(sample(books), start + 10 * 10**7)
    tensor.append(row, 0)
    assert np.array_equal(reader.latest(11).values[:10], before), "a later row rewrote history"
    six = features.STAT_DEPTH + 6  # depth within 100 bp: bid 100 (49.75 bp) 503, ask 101 (49.75 bp) 1
    mean, std = quiet.scales[six]  # what the spiked computer knew before the spike
    assert cnn_of(row)["depth_z_6"] == pytest.approx(min((503.0 + 1.0 - mean) / std, 5.0), rel=1e-5)
    assert cnn_of(row)["depth_z_6"] == 5.0  # far outside the quiet rows, clipped
    assert spiked.scales[six] != quiet.scales[six], "the spike is folded in after its own row"
    reader.close()
    tensor.close()


def test_missing_exchanges_and_empty_sides_give_the_documented_values_never_nan(books):
    computer = FeatureComputer(2, 2, FeaturesConfig(warmup_rows=1))
    start = time.time_ns()
    cases = [
        ([(100.0, {0: 1.0})], [], (1,)),  # one side empty, exchange 1 excluded
        ([], [(101.0, {1: 2.0})], (0,)),
        ([], [], (0, 1)),  # nothing at all
        (BIDS, ASKS, ()),
    ]
    rows = []
    for step, (bids, asks, excluded) in enumerate(cases):
        books.publish(bids, asks, excluded)
        sampler = sample(books)
        cnn, rl = computer.compute(sampler, start + step * 10**8)
        assert np.isfinite(cnn).all() and np.isfinite(rl).all(), step
        rows.append((cnn_of(cnn), rl_of(rl)))
    only_bids, only_asks, empty, _ = rows
    assert only_bids[0]["included_exchange_share"] == 0.5
    assert only_bids[0]["bid.00.distance_bps"] == 0.0  # the mid is the one side's best
    assert only_bids[0]["bid.00.exchange_share"] == 0.5 and only_bids[0]["ask.00.exchange_share"] == 0.0
    assert [only_bids[0][f"ask.00.{name}"] for name in features.LEVEL_FEATURES] == [0.0, -5.0, 0.0, 0.0, 0.0]
    assert only_bids[0]["spread_bps"] == 0.0 and only_bids[0]["spread_z"] == 0.0
    assert only_bids[1]["touch_imbalance"] == 0.0 and only_bids[1]["microprice_position"] == 0.0
    assert only_asks[0]["ask.00.cumulative_depth_share"] == 1.0 and only_asks[0]["bid.00.log_size_z"] == -5.0
    level_codes = [0.0, -5.0, 0.0, 0.0, 0.0] * (2 * LEVELS)
    assert list(empty[0].values())[:200] == level_codes
    assert list(empty[0].values())[200:] == pytest.approx([0.0] * 17 + [0.0, empty[0]["book_age_log_ms"], 0.0])
    assert empty[0]["included_exchange_share"] == 0.0


def append_rows_flat_out(name: str, stop, started) -> None:
    """A writer at full speed: row ``n`` holds ``n`` in every column and as its timestamp."""
    writer = FeatureWriter.attach(name)
    started.set()
    row = np.zeros(CNN_WIDTH, dtype=np.float32)
    while not stop.is_set():
        number = writer.rows_written + 1
        row[:] = number % 1_000_000
        writer.append(row, number)
    writer.close()


def test_client_windows_of_the_cnn_layout_are_never_torn_under_a_flat_out_writer(instance, spawn):
    names = {"cnn": segment_name(instance, SegmentKind.FEATURES, "X.cnn")}
    writer = FeatureWriter.create(names["cnn"], 128, CNN_WIDTH, features.LAYOUT_VERSION)
    engine = Engine.__new__(Engine)  # a client whose directory names only this tensor
    engine.instance, engine._features, engine._feature_doorbells, engine._books = instance, {}, {}, {}
    engine.directory = {"segments": {"features": {"X": names}}}
    context = mp.get_context("spawn")
    stop, started = context.Event(), context.Event()
    process = spawn(append_rows_flat_out, names["cnn"], stop, started)
    assert started.wait(30)
    while engine.feature_tensor("X").rows_written < 128:
        time.sleep(0.001)
    accepted = torn_accepted = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        window = engine.features("X", 32)
        values, stamps = window.values.copy(), window.timestamps.copy()
        if not window.valid():
            continue
        accepted += 1
        expected = np.arange(window.last_sequence - 31, window.last_sequence + 1)
        torn_accepted += not (np.array_equal(stamps, expected)
                              and np.array_equal(values, np.repeat((expected % 1_000_000)[:, None], CNN_WIDTH, 1)))
    stop.set()
    process.join(10)
    assert accepted > 200 and torn_accepted == 0
    engine.close()
    writer.close()


def test_a_book_shallower_than_twenty_levels_leaves_the_rest_missing(instance):
    shallow = CraftedBooks(instance, exchanges=2, depth=10)
    bids = [(100.0 - step, {0: 1.0}) for step in range(10)]
    shallow.publish(bids, ASKS)
    sampler = BookSampler(shallow.reader, LEVELS)
    assert sampler.sample() and sampler.levels.shape == (2, 3 + 2, LEVELS)
    cnn, _ = FeatureComputer(2, 2, FeaturesConfig()).compute(sampler, sampler.publish_ts)
    values = cnn_of(cnn)
    assert values["bid.09.exchange_share"] == 0.5 and values["bid.10.exchange_share"] == 0.0
    assert values["bid.19.log_size_z"] == -5.0 and values["bid.19.cumulative_depth_share"] == pytest.approx(10 / 19)
    shallow.close()


def random_levels(rng: np.random.Generator, exchanges: int, best: float, sign: float) -> list:
    """Up to 30 levels (20 are visible), some sides empty, some levels with one exchange only."""
    count = int(rng.choice([0, 1, 3, 19, 20, 30]))
    levels = []
    for row in range(count):
        quoting = [e for e in range(exchanges) if rng.random() < 0.6] or [int(rng.integers(0, exchanges))]
        sizes = {e: float(np.round(rng.lognormal(-1.0, 1.5), 4)) + 0.0001 for e in quoting}
        levels.append((round(best + sign * 0.01 * (row + int(rng.integers(0, 3))) * (row + 1), 2), sizes))
    return levels


@pytest.mark.skipif(features.kernel is None, reason="engine._analytics not built")
def test_the_kernel_and_the_numpy_fallback_compute_the_same_rows(instance, monkeypatch) -> None:
    """Two computers, one on each path, fed the same 600 random books (empty and one-sided ones,
    exchanges excluded, warm-up and warmed-up z-scores): every row is the same bytes."""
    rng = np.random.default_rng(3)
    exchanges = 5
    crafted = CraftedBooks(instance, exchanges=exchanges)
    try:
        settings = FeaturesConfig(warmup_rows=10)
        computers = {path: FeatureComputer(exchanges, exchanges, settings) for path in ("kernel", "numpy")}
        start = time.time_ns()
        for step in range(600):
            mid = 100.0 + float(rng.normal(0.0, 0.5))
            excluded = tuple(e for e in range(exchanges) if rng.random() < 0.1)
            crafted.publish(random_levels(rng, exchanges, mid - 0.01, -1.0), random_levels(rng, exchanges, mid, 1.0),
                            excluded)
            sampler = sample(crafted)
            rows = {}
            for path, computer in computers.items():
                monkeypatch.setattr(features, "kernel", features.kernel if path == "kernel" else None)
                cnn, rl = computer.compute(sampler, start + step * 7_000_000)
                rows[path] = cnn.tobytes() + rl.tobytes()
                monkeypatch.undo()
            assert rows["kernel"] == rows["numpy"], step
    finally:
        crafted.close()
