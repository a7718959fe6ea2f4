"""The C level kernel (actors/connectors/_kernel.c) against its Python twins in base.py: the
same books (dict and price list, the very float objects), the same record bytes, the same
errors with the same levels applied before them."""

from __future__ import annotations

import random

import pytest

from actors.connectors import base
from actors.connectors.base import (
    ASK_SIDE,
    BID_SIDE,
    RECORD_SIZE,
    _apply_level_python,
    _apply_sequenced_side_python,
    _apply_side_python,
)

levels_c = pytest.importorskip("actors.connectors._kernel", reason="the C level kernel is not built (no compiler)")


class Side:
    def __init__(self) -> None:
        self.levels: dict[float, float] = {}
        self.prices: list[float] = []

    def state(self) -> tuple[dict[float, float], list[float]]:
        return dict(self.levels), list(self.prices)


def random_texts(rng: random.Random, count: int) -> list[list[object]]:
    """Levels as venues send them: decimal texts (some repeated, some deletes), JSON numbers."""
    levels: list[list[object]] = []
    for _ in range(count):
        price = round(100 + rng.randint(-40, 40) * 0.25, 2)
        size = 0 if rng.random() < 0.3 else round(rng.random() * 5, rng.randint(0, 8))
        kind = rng.random()
        if kind < 0.6:
            levels.append([f"{price:.2f}", f"{size:.8f}"])
        elif kind < 0.8:
            levels.append((price, size, "extra"))
        else:
            levels.append([str(price), size])
    return levels


def test_apply_side_matches_the_python_twin_on_random_frames() -> None:
    rng = random.Random(7)
    c_side, py_side = Side(), Side()
    for frame in range(400):
        raw = random_texts(rng, rng.randint(0, 12))
        c_scratch = bytearray(RECORD_SIZE * 16)
        py_scratch = bytearray(RECORD_SIZE * 16)
        side = BID_SIDE if frame % 2 else ASK_SIDE
        args = (1_700_000_000_000_000_000 + frame, 2_000_000_000_000_000_000, frame * 7, side)
        c_end = levels_c.apply_side(c_side.levels, c_side.prices, raw, c_scratch, RECORD_SIZE, *args)
        py_end = _apply_side_python(py_side.levels, py_side.prices, raw, py_scratch, RECORD_SIZE, *args)
        assert c_end == py_end == RECORD_SIZE * (1 + len(raw))
        assert c_scratch == py_scratch
        assert c_side.state() == py_side.state()
        assert c_side.prices == sorted(c_side.levels)
        assert all(price.__class__ is float and size.__class__ is float for price, size in c_side.levels.items())


def test_apply_level_matches_the_python_twin() -> None:
    rng = random.Random(11)
    c_side, py_side = Side(), Side()
    c_scratch, py_scratch = bytearray(RECORD_SIZE * 4), bytearray(RECORD_SIZE * 4)
    for step in range(2_000):
        price = 50.0 + rng.randint(0, 60) * 0.5
        size = 0.0 if rng.random() < 0.35 else rng.random()
        offset = RECORD_SIZE * (step % 4)
        stamps = (step, step + 1, 2**64 - 1 - step, BID_SIDE)
        c_end = levels_c.apply_level(c_side.levels, c_side.prices, price, size, c_scratch, offset, *stamps)
        py_end = _apply_level_python(py_side.levels, py_side.prices, price, size, py_scratch, offset, *stamps)
        assert c_end == py_end == offset + RECORD_SIZE
        assert c_scratch == py_scratch
        assert c_side.state() == py_side.state()


@pytest.mark.parametrize(
    "raw, error",
    [
        ([["1.0", "1"], ["NaN", "1"]], ValueError),
        ([["1.0", "1"], ["2.0", "-1"]], ValueError),
        ([["1.0", "1"], ["2.0", "1e16"]], ValueError),
        ([["1.0", "1"], ["1e13", "1"]], ValueError),
        ([["1.0", "1"], ["abc", "1"]], ValueError),
        ([["1.0", "1"], ["2.0"]], ValueError),
        ([["1.0", "1"], []], ValueError),
        ([["1.0", "1"], {}], ValueError),
        ([["1.0", "1"], [None, "1"]], TypeError),
        ([["1.0", "1"], 5], TypeError),
    ],
)
def test_a_bad_level_raises_the_same_error_with_the_levels_before_it_applied(raw: list, error: type) -> None:
    outcomes = []
    for apply in (levels_c.apply_side, _apply_side_python):
        side, scratch = Side(), bytearray(RECORD_SIZE * 4)
        with pytest.raises(error):
            apply(side.levels, side.prices, raw, scratch, 0, 1, 2, 3, BID_SIDE)
        outcomes.append((side.state(), bytes(scratch[:RECORD_SIZE])))  # the records before the bad one
    assert outcomes[0] == outcomes[1] and outcomes[0][0] == ({1.0: 1.0}, [1.0])


@pytest.mark.parametrize(
    "exchange_ts, receive_ts, sequence",
    [(2**63, 0, 0), (0, -(2**63) - 1, 0), (0, 0, -1), (0, 0, 2**64)],
)
def test_values_the_record_cannot_hold_raise_value_error_in_both(exchange_ts: int, receive_ts: int, sequence: int) -> None:
    for apply in (levels_c.apply_level, _apply_level_python):
        side = Side()
        with pytest.raises(ValueError):
            apply(side.levels, side.prices, 1.0, 1.0, bytearray(RECORD_SIZE), 0, exchange_ts, receive_ts, sequence, ASK_SIDE)


def test_a_record_past_the_scratch_is_refused_not_written() -> None:
    side = Side()
    with pytest.raises(IndexError):
        levels_c.apply_level(side.levels, side.prices, 1.0, 1.0, bytearray(RECORD_SIZE), RECORD_SIZE, 0, 0, 0, BID_SIDE)


def test_the_connectors_use_the_c_kernel_when_it_is_built() -> None:
    assert base.KERNEL_PATH == "c" and base.apply_side is levels_c.apply_side


def random_changes(rng: random.Random, count: int) -> list[list[object]]:
    """KuCoin's changes: [price, size, sequence] texts, some of them sequence-only (price "0")."""
    changes: list[list[object]] = []
    for _ in range(count):
        price = "0" if rng.random() < 0.2 else f"{100 + rng.randint(-30, 30) * 0.5:.1f}"
        size = "0" if rng.random() < 0.3 else f"{rng.random() * 3:.6f}"
        changes.append([price, size, str(rng.randint(1, 10**13))])
    return changes


def test_apply_sequenced_side_matches_the_python_twin() -> None:
    rng = random.Random(13)
    c_side, py_side = Side(), Side()
    for frame in range(400):
        changes = random_changes(rng, rng.randint(0, 6))
        c_scratch, py_scratch = bytearray(RECORD_SIZE * 8), bytearray(RECORD_SIZE * 8)
        stamps = (frame, frame + 5, ASK_SIDE)
        c_end = levels_c.apply_sequenced_side(c_side.levels, c_side.prices, changes, c_scratch, 0, *stamps)
        py_end = _apply_sequenced_side_python(py_side.levels, py_side.prices, changes, py_scratch, 0, *stamps)
        assert c_end == py_end == RECORD_SIZE * sum(change[0] != "0" for change in changes)
        assert c_scratch == py_scratch
        assert c_side.state() == py_side.state()


@pytest.mark.parametrize(
    "changes, error",
    [
        ([["1.0", "1", "5"], ["2.0", "1"]], ValueError),
        ([["1.0", "1", "5"], ["2.0", "1", "6", "x"]], ValueError),
        ([["1.0", "1", "5"], ["2.0", "1", "-6"]], ValueError),
        ([["1.0", "1", "5"], ["2.0", "1", "six"]], ValueError),
        ([["1.0", "1", "5"], ["2.0", "-1", "6"]], ValueError),
        ([["1.0", "1", "5"], 7], TypeError),
    ],
)
def test_a_bad_change_raises_the_same_error_with_the_changes_before_it_applied(changes: list, error: type) -> None:
    outcomes = []
    for apply in (levels_c.apply_sequenced_side, _apply_sequenced_side_python):
        side, scratch = Side(), bytearray(RECORD_SIZE * 4)
        with pytest.raises(error):
            apply(side.levels, side.prices, changes, scratch, 0, 1, 2, BID_SIDE)
        outcomes.append((side.state(), bytes(scratch[:RECORD_SIZE])))  # the records before the bad one
    assert outcomes[0] == outcomes[1] and outcomes[0][0] == ({1.0: 1.0}, [1.0])


def stamp_texts(rng: random.Random) -> list[str]:
    """Microsecond stamps around every edge the C reader checks, valid or not."""
    texts = [
        "2021-04-17T16:43:37.075687Z", "1970-01-01T00:00:00.000000Z", "2261-12-31T23:59:59.999999Z",
        "2262-01-01T00:00:00.000000Z", "1969-12-31T23:59:59.999999Z", "2024-02-29T12:00:00.000001Z",
        "2023-02-29T12:00:00.000001Z", "2100-02-29T00:00:00.000000Z", "2000-02-29T00:00:00.000000Z",
        "2021-04-31T00:00:00.000000Z", "2021-13-01T00:00:00.000000Z", "2021-00-01T00:00:00.000000Z",
        "2021-04-17T24:00:00.000000Z", "2021-04-17T23:60:00.000000Z", "2021-04-17T23:59:60.000000Z",
        "2021-04-17 16:43:37.075687Z", "2021-04-17T16:43:37.07568 Z", "2021-04-17T16:43:37.+75687Z",
        "2021-04-17T16:43:37.075687", "2021-04-17T16:43:37.0756871Z", "2021-04-17T16:43:37Z", "",
        "２021-04-17T16:43:37.075687Z",
    ]
    for _ in range(5_000):
        year, month, day = rng.randint(1960, 2300), rng.randint(0, 13), rng.randint(0, 32)
        hour, minute, second = rng.randint(0, 25), rng.randint(0, 61), rng.randint(0, 61)
        texts.append(f"{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{rng.randint(0, 999_999):06}Z")
    return texts


def test_micros_stamp_ns_reads_exactly_what_rfc3339_ns_reads_or_leaves_it_to_it() -> None:
    from actors.connectors.base import _micros_stamp_ns_python

    rng = random.Random(17)
    read = 0
    for text in stamp_texts(rng):
        stamp_ns = levels_c.micros_stamp_ns(text)
        assert _micros_stamp_ns_python(text) is None
        base.micros_stamp_ns = _micros_stamp_ns_python  # rfc3339_ns's own reading, without the kernel
        try:
            try:
                expected = base.rfc3339_ns(text)
            except ValueError:
                expected = None
        finally:
            base.micros_stamp_ns = levels_c.micros_stamp_ns
        if stamp_ns is not None:
            assert stamp_ns == expected, text
            read += 1
    assert read > 1_000
    assert levels_c.micros_stamp_ns("2021-04-17T16:43:37.075687Z") == 1_618_677_817_075_687_000
