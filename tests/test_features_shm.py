"""shm.features: zero-copy (K, F) windows across the wrap, consistent under a flat-out writer.

Row number ``n`` holds values derived from ``n`` alone, so a reader can check that a
window it accepted (``valid()``) is made of exactly the rows it claims, in order.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import pytest

from shm.features import FeatureReader, FeatureWriter
from shm.segment import SegmentKind, segment_name

ROWS = 256
WIDTH = 16
READ_SECONDS = 2.5


def row_values(sequences: np.ndarray) -> np.ndarray:
    """Row ``n``: ``(31 n + j) mod 1000003`` for column ``j``, exact in float32."""
    sequences = np.asarray(sequences, dtype=np.int64)
    return ((sequences[:, None] * 31 + np.arange(WIDTH)) % 1_000_003).astype(np.float32)


def row_timestamp(sequences: np.ndarray) -> np.ndarray:
    return np.asarray(sequences, dtype=np.int64) * 1000 + 17


def new_writer(instance: str) -> FeatureWriter:
    return FeatureWriter.create(segment_name(instance, SegmentKind.FEATURES, "BTC/USDT"), ROWS, WIDTH, 1)


def append_rows(writer: FeatureWriter, count: int) -> None:
    for _ in range(count):
        number = writer.rows_written + 1
        assert writer.append(row_values([number])[0], int(row_timestamp(number))) == number


def test_window_across_the_wrap_is_one_contiguous_zero_copy_block(instance):
    writer = new_writer(instance)
    reader = FeatureReader.attach(writer.name)
    assert len(reader.latest(10).sequences) == 0 and reader.latest(10).valid()
    append_rows(writer, 5)
    early = reader.latest(10)  # fewer rows written than asked for
    assert early.values.shape == (5, WIDTH) and early.sequences.tolist() == [1, 2, 3, 4, 5]

    append_rows(writer, ROWS + 40)  # the newest rows wrapped past the end
    for count in (1, 41, ROWS - 1, ROWS):
        window = reader.latest(count)
        last = ROWS + 45
        expected = np.arange(last - count + 1, last + 1)
        assert window.valid()
        assert window.values.shape == (count, WIDTH) and window.values.flags.c_contiguous
        assert np.shares_memory(window.values, reader.values), "window is a copy"
        assert window.sequences.tolist() == expected.tolist()
        np.testing.assert_array_equal(window.values, row_values(expected))
        np.testing.assert_array_equal(window.timestamps, row_timestamp(expected))
    with pytest.raises(ValueError):
        reader.latest(ROWS + 1)
    assert not reader.values.flags.writeable, "a reader must not be able to write the tensor"
    reader.close()
    writer.close()


def test_window_goes_invalid_once_its_oldest_row_is_overwritten(instance):
    writer = new_writer(instance)
    reader = FeatureReader.attach(writer.name)
    append_rows(writer, ROWS)
    window = reader.latest(ROWS)
    assert window.valid()
    append_rows(writer, 1)  # row ROWS + 1 replaces row 1, the window's oldest
    assert not window.valid()
    assert reader.latest(ROWS).valid()
    reader.close()
    writer.close()


def append_flat_out(name: str, stop, started) -> None:
    """Append self-describing rows as fast as possible until told to stop."""
    writer = FeatureWriter.attach(name)
    started.set()
    while not stop.is_set():
        number = writer.rows_written + 1
        writer.append(row_values([number])[0], int(row_timestamp(number)))
    writer.close()


def test_reader_in_another_process_only_accepts_consistent_windows(instance, spawn):
    writer = new_writer(instance)
    reader = FeatureReader.attach(writer.name)
    context = mp.get_context("spawn")
    stop, started = context.Event(), context.Event()
    appender = spawn(append_flat_out, writer.name, stop, started)
    assert started.wait(30), "writer did not start"
    while reader.rows_written < ROWS:
        time.sleep(0.001)

    rng = np.random.default_rng(5)
    accepted = rejected = wrapped = inconsistent = mixed_among_rejected = 0
    deadline = time.monotonic() + READ_SECONDS
    while time.monotonic() < deadline:
        count = int(rng.integers(1, ROWS + 1))
        window = reader.latest(count)
        values, timestamps, sequences = window.values.copy(), window.timestamps.copy(), window.sequences.copy()
        expected = np.arange(window.last_sequence - count + 1, window.last_sequence + 1)
        consistent = (
            np.array_equal(sequences, expected)
            and np.array_equal(values, row_values(expected))
            and np.array_equal(timestamps, row_timestamp(expected))
        )
        if not window.valid():
            rejected += 1
            mixed_among_rejected += not consistent
            continue
        accepted += 1
        assert window.values.shape == (count, WIDTH) and window.values.flags.c_contiguous
        assert np.shares_memory(window.values, reader.values), "window is a copy"
        inconsistent += not consistent
        wrapped += (window.last_sequence - count) % ROWS + count > ROWS
    stop.set()
    appender.join(10)
    rows = reader.rows_written
    print(f"\nfeatures: {rows:,} rows written; {accepted:,} windows accepted ({wrapped:,} across the wrap), "
          f"{rejected:,} rejected ({mixed_among_rejected:,} of them really mixed rows)")
    assert appender.exitcode == 0
    assert inconsistent == 0, f"{inconsistent} accepted windows mixed rows"
    assert accepted > 1000 and wrapped > 100
    assert rows > 10 * ROWS, "the writer hardly ran"
    reader.close()
    writer.close()
