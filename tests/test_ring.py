"""shm.ring: the SPSC record ring, alone and hammered by a real producer process.

The cross-process tests give every record a running counter in ``sequence`` and derive
every other field from it, so a consumer can tell an intact record from a torn or stale
one, and a gap in the counters from a refused batch.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import select
import time
from collections.abc import Callable

import numpy as np
import pytest

import shm.ring
from shm.records import RECORD_DTYPE, empty_records
from shm.ring import Ring
from shm.segment import SegmentKind, segment_name

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@pytest.fixture(autouse=True, params=["c", "python"])
def write_path(request, monkeypatch) -> str:
    """Every test runs against both producers: the C extension and the pure-Python one
    (spawned producer processes inherit the choice through the environment)."""
    if request.param == "c":
        if shm.ring._fastring is None:
            pytest.skip("the C ring extension is not built here (no compiler at install)")
        monkeypatch.delenv("COBY_PURE_PYTHON_RING", raising=False)
    else:
        monkeypatch.setattr(shm.ring, "_fastring", None)
        monkeypatch.setenv("COBY_PURE_PYTHON_RING", "1")
    return request.param


def new_ring(instance: str, capacity: int, name: str = "test") -> Ring:
    """A ring whose handle holds the producer role, as a connector's does."""
    ring = Ring.create(segment_name(instance, SegmentKind.RING, name), capacity)
    ring.become_producer()
    return ring


def records_for(counters: np.ndarray) -> np.ndarray:
    """One record per counter, every field a function of it, so the record is its own checksum."""
    counter = counters.astype(np.uint64)
    records = empty_records(len(counter))
    records["sequence"] = counter
    records["receive_ts"] = counter.astype(np.int64) * 7
    records["exchange_ts"] = counter.astype(np.int64) * 7 - 3
    records["price"] = counter * 0.25 + 1000.0
    records["size"] = (counter % 1009) * 0.5
    records["aux"] = counter * GOLDEN  # wraps modulo 2**64, like a hash
    records["symbol_id"] = counter % 97
    records["order_count"] = counter % 13
    records["exchange_id"] = counter % 11
    records["kind"] = 1 + counter % 7
    records["side"] = counter % 3
    records["flags"] = counter % 5
    records["reason"] = counter % 11
    return records


def counted_records(first: int, count: int) -> np.ndarray:
    return records_for(np.arange(first, first + count, dtype=np.uint64))


def corrupt_records(records: np.ndarray) -> int:
    """How many records differ in any byte from what their own ``sequence`` says they hold."""
    words = records.view(np.uint64).reshape(len(records), -1)
    expected = records_for(records["sequence"]).view(np.uint64).reshape(len(records), -1)
    return int(np.count_nonzero((words != expected).any(axis=1)))


# ---- single process ----------------------------------------------------------------


def test_batch_round_trips_field_by_field(instance):
    ring = new_ring(instance, 64)
    batch = counted_records(1_000_000, 10)
    assert ring.write(batch)
    got = ring.read()
    assert len(got) == 10
    for field in RECORD_DTYPE.names:
        np.testing.assert_array_equal(got[field], batch[field], err_msg=field)
    ring.commit(len(got))
    assert ring.available() == 0 and len(ring.read()) == 0
    assert ring.stats()["written_records"] == 10
    ring.close()


@pytest.mark.parametrize("consume", ["read_commit", "drain"])
def test_batches_straddling_the_end_read_back_in_order(instance, consume):
    """Random batch sizes through a 16-record ring: the wrap is crossed hundreds of times."""
    ring = new_ring(instance, 16)
    rng = np.random.default_rng(1)
    next_written = next_read = straddled = 0
    for _ in range(2000):
        size = int(rng.integers(1, 17))
        if ring.free() >= size:
            straddled += (next_written % 16) + size > 16
            assert ring.write(counted_records(next_written, size))
            next_written += size
        if rng.random() < 0.5:
            if consume == "drain":
                got = ring.drain(int(rng.integers(1, 17)))
            else:
                got = ring.read(int(rng.integers(1, 17)))
                got = got.copy()
                ring.commit(len(got))
            np.testing.assert_array_equal(got, counted_records(next_read, len(got)))
            next_read += len(got)
    assert straddled > 100
    assert ring.stats()["dropped_records"] == 0
    ring.close()


def test_read_stops_at_the_wrap_and_continues_after_commit(instance):
    ring = new_ring(instance, 16)
    assert ring.write(counted_records(0, 12))
    ring.commit(len(ring.read()))
    assert ring.write(counted_records(12, 9))  # occupies slots 12..15 then 0..4
    first = ring.read()
    assert first["sequence"].tolist() == [12, 13, 14, 15]
    ring.commit(len(first))
    second = ring.read()
    assert second["sequence"].tolist() == [16, 17, 18, 19, 20]
    ring.commit(len(second))
    assert ring.available() == 0
    ring.close()


def test_full_ring_refuses_the_whole_batch_and_the_consumer_hears_once(instance):
    producer = new_ring(instance, 16)
    consumer = Ring.attach(producer.name)
    consumer.become_consumer()
    assert producer.write(counted_records(0, 10))
    before = producer.records.copy()

    assert not producer.write(counted_records(10, 7))
    with pytest.raises(ValueError, match="never fit"):
        producer.write(counted_records(17, 20))  # larger than the ring: a bug, not an overflow
    np.testing.assert_array_equal(producer.records, before)  # nothing of either was written
    stats = producer.stats()
    assert (stats["written_records"], stats["fill"]) == (10, 10)
    assert (stats["dropped_records"], stats["dropped_batches"]) == (7, 1)
    assert consumer.take_missed() == 7
    assert consumer.take_missed() == 0

    assert producer.write(counted_records(37, 6))  # exactly fills the ring
    assert producer.free() == 0
    got = consumer.drain()
    assert got["sequence"].tolist() == list(range(10)) + list(range(37, 43))
    assert consumer.take_missed() == 0
    assert producer.write(counted_records(43, 10))
    assert not producer.write(counted_records(53, 7))
    assert consumer.take_missed() == 7
    assert producer.stats()["high_water"] == 16, "the largest backlog the consumer found"
    consumer.close()
    producer.close()


def test_packed_records_are_written_like_a_batch(instance):
    """``write_records(buffer, count)``: the first ``count`` records packed in a byte buffer (a
    connector's delta scratch), with a batch's contract: across the wrap, all or nothing."""
    ring = new_ring(instance, 16)
    scratch = bytearray(counted_records(0, 13).tobytes())
    assert ring.write_records(scratch, 12)  # the 13th record of the buffer is not written
    assert ring.drain()["sequence"].tolist() == list(range(12))
    scratch[:] = counted_records(12, 13).tobytes()
    assert ring.write_records(scratch, 9)  # slots 12..15, then 0..4
    assert not ring.write_records(scratch, 8)  # 9 + 8 > 16: refused whole and counted
    with pytest.raises(ValueError):
        ring.write_records(scratch, 14)  # more records than the buffer holds
    with pytest.raises(ValueError):
        ring.write_records(scratch, -1)
    stats = ring.stats()
    assert (stats["written_records"], stats["dropped_records"], stats["dropped_batches"]) == (21, 8, 1)
    got = ring.drain()
    assert got["sequence"].tolist() == list(range(12, 21))
    assert corrupt_records(got) == 0
    assert ring.write_records(memoryview(bytes(scratch)), 2)  # any buffer, not only a bytearray
    assert ring.drain()["sequence"].tolist() == [12, 13]
    ring.close()


def test_resnapshot_request_skips_the_queue_and_reaches_the_producer_once(instance):
    producer = new_ring(instance, 64)
    consumer = Ring.attach(producer.name)
    consumer.become_consumer()
    assert producer.write(counted_records(0, 5))
    assert not producer.take_resnapshot_request()

    consumer.request_resnapshot()
    assert consumer.available() == 0  # what was queued is skipped
    assert producer.take_resnapshot_request()
    assert not producer.take_resnapshot_request()

    consumer.request_resnapshot()
    consumer.request_resnapshot()
    assert producer.take_resnapshot_request()  # two requests before the producer looked: one resnapshot
    assert not producer.take_resnapshot_request()

    assert producer.write(counted_records(5, 3))
    assert consumer.drain()["sequence"].tolist() == [5, 6, 7]
    assert producer.free() == 64
    consumer.close()
    producer.close()


@pytest.mark.parametrize(
    "batch",
    [
        np.zeros(4, np.float64),
        np.zeros(4, dtype=[(name, RECORD_DTYPE.fields[name][0]) for name in reversed(RECORD_DTYPE.names)]),
        np.zeros(2, dtype=[("raw", "V64")]),
    ],
    ids=["float64", "fields-reordered", "opaque-64-bytes"],
)
def test_wrong_dtype_is_refused_and_nothing_is_written(instance, batch):
    ring = new_ring(instance, 64)
    with pytest.raises(TypeError, match="RECORD_DTYPE"):
        ring.write(batch)
    stats = ring.stats()
    assert (stats["written_records"], stats["dropped_records"]) == (0, 0)
    ring.close()


def test_wrong_dtype_is_refused_even_when_the_ring_is_full(instance):
    ring = new_ring(instance, 16)
    assert ring.write(counted_records(0, 16))
    with pytest.raises(TypeError):
        ring.write(np.zeros(4, np.float64))
    ring.close()


def test_doorbell_handshake_in_every_interleaving(instance):
    """The check-then-sleep protocol, step by step: no interleaving loses a wake-up."""
    producer = new_ring(instance, 64)
    consumer = Ring.attach(producer.name)
    consumer.become_consumer()
    rings = []
    producer.doorbell = lambda: rings.append(producer.stats()["written_records"])

    assert producer.write(counted_records(0, 1))
    assert rings == [], "nobody is waiting: no doorbell"
    consumer.drain()

    assert len(consumer.read()) == 0  # consumer finds nothing …
    assert producer.write(counted_records(1, 1))  # … the producer writes before it announces the sleep …
    assert not consumer.prepare_to_wait(), "… so it must not sleep"
    assert rings == []
    consumer.drain()

    assert consumer.prepare_to_wait()  # consumer announces the sleep first …
    assert producer.write(counted_records(2, 1))  # … so this write must ring
    assert producer.write(counted_records(3, 1))  # and keeps ringing until the consumer is up
    assert rings == [3, 4]
    consumer.done_waiting()
    assert producer.write(counted_records(4, 1))
    assert rings == [3, 4]
    assert consumer.drain()["sequence"].tolist() == [2, 3, 4]
    consumer.close()
    producer.close()


# ---- a real producer process overflowing a small ring --------------------------------


def produce_counted_batches(ring_name: str, total: int, seed: int, refused_path: str) -> None:
    """Write ``total`` counted records in random 1..64 batches flat out; log what was refused.

    The counter advances on every attempt, so a refused batch leaves a gap exactly as
    long as the batch; its (first counter, length) goes to ``refused_path``. Building
    each batch as it is sent paces the producer like a connector decoding frames.
    """
    ring = Ring.attach(ring_name)
    ring.become_producer()
    sizes = np.random.default_rng(seed).integers(1, 65, total // 16).tolist()
    refused = []
    counter = 0
    for size in sizes:
        size = min(size, total - counter)
        if not ring.write(counted_records(counter, size)):
            refused.append((counter, size))
        counter += size
        if counter == total:
            break
    assert counter == total, "not enough batch sizes drawn"
    np.save(refused_path, np.array(refused, dtype=np.int64).reshape(-1, 2))
    ring.close()


def merged_ranges(ranges: np.ndarray) -> list[tuple[int, int]]:
    """Adjacent (first, length) ranges joined, as (first, last) inclusive."""
    merged: list[tuple[int, int]] = []
    for first, length in ranges.tolist():
        if merged and merged[-1][1] + 1 == first:
            merged[-1] = (merged[-1][0], first + length - 1)
        else:
            merged.append((first, first + length - 1))
    return merged


def test_overflowing_producer_loses_no_accepted_record_and_reports_every_drop(instance, spawn, tmp_path):
    total = 3_000_000
    ring = new_ring(instance, 1024)
    ring.become_consumer()
    refused_path = tmp_path / "refused.npy"
    producer = spawn(produce_counted_batches, ring.name, total, 11, str(refused_path))

    rng = np.random.default_rng(12)
    received = corrupt = reads = pauses = 0
    expected_next = 0
    gaps: list[tuple[int, int]] = []
    gap_records = reported_missed = 0
    next_pause = time.monotonic() + 0.005
    deadline = time.monotonic() + 60
    while True:
        chunk = ring.read()
        if len(chunk):
            reads += 1
            sequences = chunk["sequence"].astype(np.int64)
            corrupt += corrupt_records(chunk)
            previous = np.concatenate(([expected_next - 1], sequences[:-1]))
            assert (sequences > previous).all(), "counters went backwards"
            jumps = sequences - previous > 1
            for before, after in zip(previous[jumps].tolist(), sequences[jumps].tolist()):
                gaps.append((before + 1, after - 1))
                gap_records += after - before - 1
            received += len(chunk)
            expected_next = int(sequences[-1]) + 1
            ring.commit(len(chunk))
            # The drop counter was bumped before the write that follows the gap was
            # published, and we loaded write_idx first: the gap must be reported by now.
            reported_missed += ring.take_missed()
            assert reported_missed >= gap_records, "a gap was seen before its drop was reported"
            if time.monotonic() >= next_pause:
                pauses += 1
                time.sleep(rng.uniform(0.0005, 0.003))
                next_pause = time.monotonic() + rng.uniform(0.001, 0.01)
        elif producer.exitcode is not None and ring.available() == 0:
            break
        assert time.monotonic() < deadline, "producer and consumer did not finish in time"

    assert producer.exitcode == 0
    reported_missed += ring.take_missed()
    refused = np.load(refused_path)
    refused_records = int(refused[:, 1].sum())
    trailing = (expected_next, total - 1) if expected_next < total else None
    print(
        f"\nring overflow: {received:,} received in {reads:,} reads, {refused_records:,} refused in "
        f"{len(refused):,} batches, {pauses} consumer pauses"
    )
    assert corrupt == 0, f"{corrupt} records were corrupt"
    assert received + refused_records == total
    assert received > total // 20 and len(refused) > 10, "the run did not exercise both paths"
    assert gaps + ([trailing] if trailing else []) == merged_ranges(refused)
    assert reported_missed == refused_records == ring.stats()["dropped_records"]
    assert ring.stats()["dropped_batches"] == len(refused)
    ring.close()


# ---- a producer ringing a real doorbell ------------------------------------------------


def pipe_doorbell(connection) -> Callable[[], None]:
    """A doorbell that writes one byte, never blocking, to the write end of a pipe."""
    fd = connection.fileno()
    os.set_blocking(fd, False)

    def ring_doorbell() -> None:
        try:
            os.write(fd, b"\x01")
        except BlockingIOError:
            pass  # pipe full: wake-ups are already pending

    return ring_doorbell


class DoorbellWaiter:
    """The consumer's end of the pipe: sleep until rung (or a timeout), then empty it."""

    def __init__(self, connection) -> None:
        self.fd = connection.fileno()
        os.set_blocking(self.fd, False)
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)

    def wait(self, timeout_ms: int) -> bool:
        """True if rung, False on timeout."""
        rung = bool(self.poller.poll(timeout_ms))
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass
        return rung


def produce_slowly_with_doorbell(ring_name: str, sizes: list[int], interval_s: float, doorbell, ready) -> None:
    """One batch every ``interval_s``, ringing the doorbell when the consumer sleeps."""
    ring = Ring.attach(ring_name)
    ring.become_producer()
    ring.doorbell = pipe_doorbell(doorbell)
    ready.set()
    counter = 0
    due = time.monotonic()
    for size in sizes:
        due += interval_s
        time.sleep(max(0.0, due - time.monotonic()))
        assert ring.write(counted_records(counter, size))
        counter += size
    ring.close()


def test_consumer_sleeps_on_the_doorbell_and_still_gets_everything(instance, spawn):
    ring = new_ring(instance, 4096)
    ring.become_consumer()
    sizes = np.random.default_rng(3).integers(1, 65, 500).tolist()
    total = sum(sizes)
    context = mp.get_context("spawn")
    doorbell_read, doorbell_write = context.Pipe(duplex=False)
    ready = context.Event()
    producer = spawn(produce_slowly_with_doorbell, ring.name, sizes, 0.002, doorbell_write, ready)
    doorbell_write.close()
    assert ready.wait(30), "producer did not start"
    doorbell = DoorbellWaiter(doorbell_read)

    received = wakeups = idle_timeouts = lost_wakeups = 0
    cpu_start, wall_start = time.process_time(), time.monotonic()
    while received < total:
        chunk = ring.read()
        if len(chunk):
            assert corrupt_records(chunk) == 0
            assert chunk["sequence"][0] == received
            received += len(chunk)
            ring.commit(len(chunk))
            continue
        if ring.prepare_to_wait():
            if doorbell.wait(200):
                wakeups += 1
            elif ring.available() and not doorbell.wait(50):
                lost_wakeups += 1  # records sat there while we slept and nobody rang
            else:
                idle_timeouts += 1  # the producer was slow (a loaded host), not a lost wake-up
            ring.done_waiting()
        assert time.monotonic() - wall_start < 20, f"stalled at {received}/{total} records"
    cpu = time.process_time() - cpu_start
    wall = time.monotonic() - wall_start
    producer.join(10)
    print(f"\ndoorbell: {wakeups} wake-ups, {idle_timeouts} idle timeouts, consumer cpu {cpu:.3f} s of {wall:.3f} s")
    assert producer.exitcode == 0
    assert ring.take_missed() == 0
    assert lost_wakeups == 0, "a wake-up was lost: the consumer slept through a write"
    assert wakeups >= len(sizes) // 2, "the consumer did not sleep between batches"
    assert cpu < 0.3 * wall, f"consumer burnt {cpu:.2f} s CPU in {wall:.2f} s: busy-spinning"
    doorbell_read.close()
    ring.close()


def produce_ping_pong(ring_name: str, rounds: int, doorbell, ready, cpu: int) -> None:
    """Write one record, wait until it is consumed, pause 0-15 µs, repeat.

    Every write is then the last one for a while, so a wake-up lost in the consumer's
    check-then-sleep window is not rescued by a later write: the consumer times out.
    The random pause, against the consumer's random spin, sweeps the write across that
    window.
    """
    ring = Ring.attach(ring_name)
    ring.become_producer()
    ring.doorbell = pipe_doorbell(doorbell)
    os.sched_setaffinity(0, {cpu})
    pauses = np.random.default_rng(4).integers(0, 15_000, rounds).tolist()
    ready.set()
    for counter, pause_ns in enumerate(pauses):
        while ring.free() < ring.capacity:
            pass
        resume = time.perf_counter_ns() + pause_ns
        while time.perf_counter_ns() < resume:
            pass
        assert ring.write(counted_records(counter, 1))
    ring.close()


def test_no_wake_up_is_lost_between_the_check_and_the_sleep(instance, spawn, request):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("the race needs producer and consumer running at once, on two CPUs")
    ring = new_ring(instance, 64)
    ring.become_consumer()
    rounds = 10_000
    context = mp.get_context("spawn")
    doorbell_read, doorbell_write = context.Pipe(duplex=False)
    ready = context.Event()
    # Pinned apart so the two always run at once: with prepare_to_wait's re-check
    # removed, this caught the lost wake-up in 5 of 5 runs pinned, 2 of 3 unpinned.
    producer = spawn(produce_ping_pong, ring.name, rounds, doorbell_write, ready, cpus[0])
    doorbell_write.close()
    assert ready.wait(30), "producer did not start"
    os.sched_setaffinity(0, {cpus[1]})
    request.addfinalizer(lambda: os.sched_setaffinity(0, cpus))
    doorbell = DoorbellWaiter(doorbell_read)
    # Spins of 15-45 µs: the producer needs ~20-30 µs from seeing its record consumed to
    # publishing the next (it builds the record with numpy, ~15 µs, and its previous
    # doorbell write, which woke this CPU, cost it ~7 µs), so shorter spins would always
    # end before the next write and the race would never run.
    spins = itertools.cycle(np.random.default_rng(5).integers(15_000, 45_000, 4096).tolist())
    received = sleeps = lost_wakeups = 0
    started = time.monotonic()
    while received < rounds and lost_wakeups < 3:
        chunk = ring.read()
        if len(chunk):
            assert chunk["sequence"].tolist() == list(range(received, received + len(chunk)))
            received += len(chunk)
            ring.commit(len(chunk))
            continue
        spin_until = time.perf_counter_ns() + next(spins)  # a bounded spin, as a real consumer may do
        while not ring.available() and time.perf_counter_ns() < spin_until:
            pass
        if ring.available():
            continue
        if ring.prepare_to_wait():
            sleeps += 1
            if not doorbell.wait(100) and ring.available() and not doorbell.wait(50):
                lost_wakeups += 1  # a record sat there while we slept and nobody rang
            ring.done_waiting()
        assert time.monotonic() - started < 20, f"stalled at {received}/{rounds}"
    print(f"\nping-pong: {received} records, {sleeps} sleeps, {lost_wakeups} lost wake-ups")
    assert lost_wakeups == 0, f"{lost_wakeups} wake-ups lost: the consumer slept while a record waited"
    assert sleeps > 100, "the consumer hardly slept, so the window was not exercised"
    producer.join(10)
    assert producer.exitcode == 0
    doorbell_read.close()
    ring.close()


def test_the_chosen_producer_is_the_one_writing(instance, write_path):
    ring = new_ring(instance, 16)
    assert ring.write_path == write_path
    assert ring.write(counted_records(0, 3)) and ring.free() == 13
