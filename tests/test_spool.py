"""The disk spool: round trips across reopen, torn and damaged tails, rotation, the disk cap,
a writer killed with SIGKILL mid-append, and memory that stays bounded by one entry."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from engine.storage.base import DatabaseUnavailable, EventBatch
from engine.storage.spool import HEADER, Spool, SpoolCorrupt, SpoolError, SpoolFull
from engine.storage.sqlite import SqliteBackend

REPOSITORY = Path(__file__).resolve().parent.parent


def payload(index: int, largest: int = 3000) -> bytes:
    """Entry ``index`` of a deterministic sequence of varied sizes (empty ones included)."""
    size = (index * 7919) % largest
    return index.to_bytes(4, "little") + np.random.default_rng(index).bytes(size)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def payloads(spool: Spool) -> list[bytes]:
    return [entry.payload for entry in spool.iterate()]


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_entries_come_back_in_order_and_acknowledged_ones_never_again(tmp_path, fsync):
    written = [payload(index) for index in range(12)] + [b""]
    with Spool(tmp_path, fsync=fsync, fsync_interval_ms=1) as spool:
        for data in written:
            spool.append(data)
        assert payloads(spool) == written
        for entry in itertools.islice(spool.iterate(), 5):
            spool.acknowledge(entry)
        assert spool.peek().payload == written[5]
    with Spool(tmp_path, fsync=fsync) as spool:
        assert payloads(spool) == written[5:]
        spool.append(b"after reopen")
        assert payloads(spool) == [*written[5:], b"after reopen"]
        for entry in spool.iterate():
            spool.acknowledge(entry)
        assert spool.peek() is None and spool.pending_bytes == 0
    assert segments(tmp_path) == []
    with Spool(tmp_path) as spool:
        assert spool.peek() is None


def test_an_old_entry_acknowledged_again_changes_nothing_and_a_foreign_one_is_refused(tmp_path):
    with Spool(tmp_path) as spool:
        for index in range(3):
            spool.append(payload(index))
        first, second, _ = spool.iterate()
        spool.acknowledge(second)
        spool.acknowledge(first)
        assert [entry.payload for entry in spool.iterate()] == [payload(2)]
        with pytest.raises(ValueError, match="not an entry"):
            spool.acknowledge(type(first)(segment=99, offset=0, end=10, payload=b""))


def write_three(directory: Path) -> tuple[bytes, int]:
    """Three entries in one segment: the segment's bytes, and where the last entry starts."""
    with Spool(directory) as spool:
        for index in range(3):
            spool.append(payload(index + 40, largest=60))
        last = list(spool.iterate())[-1]
    (segment,) = segments(directory)
    return segment.read_bytes(), last.offset


def test_a_torn_last_entry_is_cut_off_at_every_byte(tmp_path):
    whole, last = write_three(tmp_path)
    (segment,) = segments(tmp_path)
    kept = [payload(40, largest=60), payload(41, largest=60)]
    for cut in range(last, len(whole)):
        segment.write_bytes(whole[:cut])
        with Spool(tmp_path) as spool:
            assert spool.truncated_bytes == cut - last
            assert payloads(spool) == kept
        assert segment.stat().st_size == last
    segment.write_bytes(whole)
    with Spool(tmp_path) as spool:
        assert spool.truncated_bytes == 0 and len(payloads(spool)) == 3


def test_a_damaged_byte_in_the_last_entry_drops_it_and_keeps_the_rest(tmp_path):
    whole, last = write_three(tmp_path / "original")
    (segment,) = segments(tmp_path / "original")
    for offset in range(last, len(whole)):
        directory = tmp_path / f"damaged-at-{offset}"
        directory.mkdir()
        damaged = bytearray(whole)
        damaged[offset] ^= 0x5A
        (directory / segment.name).write_bytes(bytes(damaged))
        with Spool(directory) as spool:
            assert payloads(spool) == [payload(40, largest=60), payload(41, largest=60)], offset
            spool.append(b"new")
            assert payloads(spool)[-1] == b"new"


def test_a_damaged_earlier_segment_is_refused(tmp_path):
    with Spool(tmp_path, segment_bytes=200, max_bytes=10_000) as spool:
        for _ in range(10):
            spool.append(bytes(100))
    first = segments(tmp_path)[0]
    damaged = bytearray(first.read_bytes())
    damaged[HEADER.size + 5] ^= 1
    first.write_bytes(bytes(damaged))
    with pytest.raises(SpoolCorrupt, match=f"{first.name} is damaged at byte 0.*move it out"):
        Spool(tmp_path, segment_bytes=200, max_bytes=10_000)


def test_segments_rotate_at_their_size_and_go_once_drained(tmp_path):
    with Spool(tmp_path, segment_bytes=1000, max_bytes=100_000) as spool:
        for index in range(30):
            spool.append(bytes([index]) * 188)  # 200 bytes with the header: five per segment
        assert len(segments(tmp_path)) == 6
        assert spool.bytes_on_disk == spool.pending_bytes == 30 * 200
        for count, entry in enumerate(spool.iterate(), start=1):
            spool.acknowledge(entry)
            assert len(segments(tmp_path)) == 6 - count // 5
            assert spool.pending_bytes == (30 - count) * 200
        spool.append(bytes(3000))  # larger than a segment: one of its own
        assert len(segments(tmp_path)) == 1 and payloads(spool) == [bytes(3000)]


def test_the_disk_cap_is_reported_and_nothing_is_dropped(tmp_path):
    with Spool(tmp_path, segment_bytes=1000, max_bytes=2000) as spool:
        for index in range(10):
            spool.append(bytes([index]) * 188)
        with pytest.raises(SpoolFull, match="cap of 2000: drain it"):
            spool.append(b"x")
        assert [data[0] for data in payloads(spool)] == list(range(10))
        for entry in itertools.islice(spool.iterate(), 5):
            spool.acknowledge(entry)
        spool.append(b"x")
        assert payloads(spool)[-1] == b"x"


def test_one_spool_per_directory_and_bad_settings_are_refused(tmp_path):
    with Spool(tmp_path), pytest.raises(SpoolError, match="open in another process"):
        Spool(tmp_path)
    with pytest.raises(ValueError, match="fsync must be one of always, interval, never"):
        Spool(tmp_path, fsync="sometimes")
    with pytest.raises(TypeError, match="a spool entry is bytes"), Spool(tmp_path) as spool:
        spool.append("text")


WRITER = """
import sys
from engine.storage.spool import Spool
from tests.test_spool import payload
spool = Spool(sys.argv[1], segment_bytes=1 << 20, max_bytes=1 << 40, fsync="never")
index = 0
while True:
    spool.append(payload(index, largest=200_000))
    index += 1
"""


@pytest.mark.parametrize("spooled_bytes", [300_000, 2_000_000, 5_000_000])
def test_a_writer_killed_mid_append_leaves_whole_entries_in_order(tmp_path, spooled_bytes):
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": str(REPOSITORY)}
    )
    try:
        deadline = time.monotonic() + 20
        while sum(path.stat().st_size for path in segments(tmp_path)) < spooled_bytes:
            assert writer.poll() is None, "the writer stopped by itself"
            assert time.monotonic() < deadline, "the writer wrote too little"
            time.sleep(0.002)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    with Spool(tmp_path) as spool:
        found = payloads(spool)
    assert len(found) > 0
    assert found == [payload(index, largest=200_000) for index in range(len(found))]


def test_iterating_a_large_spool_holds_one_entry_at_a_time(tmp_path):
    entry = 1 << 20
    with Spool(tmp_path, segment_bytes=8 << 20, fsync="never") as spool:
        for index in range(64):
            spool.append(index.to_bytes(4, "little") * (entry // 4))
    tracemalloc.start()
    try:
        with Spool(tmp_path) as spool:
            count = 0
            for found in spool.iterate():
                assert found.payload[:4] == count.to_bytes(4, "little")
                count += 1
                spool.acknowledge(found)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 64
    assert peak < 4 * entry, f"iterating 64 MiB peaked at {peak} bytes of Python memory"


def test_a_batch_spooled_while_the_database_is_locked_is_written_once_it_is_free(tmp_path):
    batch = EventBatch(status_events={
        "run_id": [1, 1], "position": [0, 1], "exchange": ["kraken", "okx"], "symbol": ["", "BTC/USDT"],
        "status": [3, 5], "reason": [0, 7], "ts": [10, 20],
    })
    with SqliteBackend(tmp_path / "coby.sqlite", busy_timeout_s=0.05) as backend, Spool(tmp_path / "spool") as spool:
        backend.migrate()
        blocker = sqlite3.connect(tmp_path / "coby.sqlite", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(DatabaseUnavailable):
            backend.write(batch)
        spool.append(batch.to_bytes())
        blocker.execute("ROLLBACK")
        blocker.close()
        for entry in spool.iterate():
            backend.write(EventBatch.from_bytes(entry.payload))
            spool.acknowledge(entry)
        assert backend.count("status_events") == 2 and spool.peek() is None
