"""shm.features: zero-copy (K, F) windows across the wrap, consistent under a flat-out writer.

Row number ``n`` holds values derived from ``n`` alone, so a reader can check that a
window it accepted (``valid()``) is made of exactly the rows it claims, in order. A reader
asleep on a tensor wakes when another process appends; the features actor writes a row for
each new book whether the book segments (futex) or the bus wake it.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import pytest
import zmq

from shm import wake
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
    started_at = time.monotonic()
    deadline, cap = started_at + READ_SECONDS, started_at + 4 * READ_SECONDS
    # Past READ_SECONDS only while too few windows were seen (a loaded host starves the reader).
    while (now := time.monotonic()) < deadline or ((accepted <= 1000 or wrapped <= 100) and now < cap):
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


def append_later(name: str, delay_s: float) -> None:
    writer = FeatureWriter.attach(name)
    time.sleep(delay_s)
    append_rows(writer, 1)
    writer.close()


@pytest.mark.skipif(not wake.CAN_WAIT, reason="no futex_waitv here (or shm._wake not built)")
def test_a_reader_asleep_on_the_tensor_wakes_when_another_process_appends(instance, spawn):
    writer = new_writer(instance)
    reader = FeatureReader.attach(writer.name)
    append_rows(writer, 2)
    assert reader.wait_for_row(1, 5.0) == 2  # already there: at once
    started = time.monotonic()
    assert reader.wait_for_row(2, 0.2) is None and time.monotonic() - started >= 0.19
    spawn(append_later, writer.name, 0.3)
    assert reader.wait_for_row(2, 10.0) == 3
    reader.close()
    writer.close()


@pytest.mark.parametrize("futex", ["on", "off"])
def test_the_features_actor_writes_a_row_for_each_new_book_woken_either_way(futex, monkeypatch):
    """With futexes the actor sleeps on the book segments; with ``COBY_FUTEX=off`` (as without
    the extension) the aggregator's ``book.<symbol>`` bus message wakes it."""
    from engine import bus
    from engine.actor import ActorSpec
    from engine.client import attach
    from engine.supervisor import Supervisor
    from shm.book import BookWriter
    from tests.book_support import CraftedBooks
    from tests.engine_support import engine_config, running, unique_instance, wait_for

    monkeypatch.setenv("COBY_FUTEX", futex)  # inherited by the actor's process
    instance = unique_instance("fw")
    config = engine_config(instance, {"features": {"min_interval_ms": 1, "max_interval_ms": 60000}})
    specs = [ActorSpec("features", "features", "actors.features:FeaturesActor", -1)]
    with running(Supervisor(config, specs)) as supervisor:
        wait_for(lambda: supervisor.status()["actors"][0]["state"] == "running", what="features running")
        client = attach(instance)
        writer = BookWriter.attach(client.directory["segments"]["books"]["BTC/USDT"])
        crafted = CraftedBooks.__new__(CraftedBooks)  # crafted books into the engine's own segment
        crafted.writer, crafted.exchanges = writer, writer.exchanges
        publisher = bus.Publisher(zmq.Context.instance(), client.directory["endpoints"]["bus_publish"])
        time.sleep(0.5)  # the bus subscription is up
        tensor = client.feature_tensor("BTC/USDT")
        for step in range(3):
            written = int(tensor.rows_written)
            generation = crafted.publish([(100.0 - step, {0: 1.0})], [(101.0, {0: 2.0})])
            publisher.publish("book.BTC/USDT", {"symbol": "BTC/USDT", "generation": generation})
            wait_for(lambda: int(tensor.rows_written) > written, what=f"a row for book {generation}")
            published = int(writer.slots[generation % writer.slot_count]["publish_ts"])
            assert int(tensor.latest(1).timestamps[-1]) == published
        publisher.close()
        writer.close()
        client.close()
