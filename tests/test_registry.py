"""shm.registry and shm.segment: orphan sweeping, loud layout mismatches, the directory."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from shm import registry
from shm.book import BookLayout, BookReader, BookWriter
from shm.features import FeatureReader
from shm.registry import list_segments, read_directory, sweep, write_directory
from shm.ring import Ring, ring_payload_size
from shm.segment import SHM_DIR, LayoutMismatch, Segment, SegmentKind, segment_name


def wait_for_event(event) -> None:
    event.wait(60)


def exists(name: str) -> bool:
    return (SHM_DIR / name).exists()


def test_sweep_removes_segments_of_dead_owners_and_keeps_live_ones(instance):
    context = mp.get_context("spawn")
    release_dead, release_live = context.Event(), context.Event()
    dead_owner = context.Process(target=wait_for_event, args=(release_dead,), daemon=True)
    live_owner = context.Process(target=wait_for_event, args=(release_live,), daemon=True)
    dead_owner.start()
    live_owner.start()
    try:
        orphan = Ring.create(segment_name(instance, SegmentKind.RING, "binance"), 16, owner_pid=dead_owner.pid)
        kept_child = Ring.create(segment_name(instance, SegmentKind.RING, "kraken"), 16, owner_pid=live_owner.pid)
        kept_self = BookWriter.create(segment_name(instance, SegmentKind.BOOK, "BTC-USDT"), BookLayout(4, 2, 2))
        release_dead.set()
        dead_owner.join(10)
        assert dead_owner.exitcode == 0

        assert sweep(instance) == [orphan.name]
        assert not exists(orphan.name)
        assert exists(kept_child.name) and exists(kept_self.name)
        assert sweep(instance) == []
    finally:
        release_dead.set()
        release_live.set()
        dead_owner.join(10)
        live_owner.join(10)
    assert sweep(instance) == [kept_child.name], "once its owner exits the segment is an orphan too"
    for segment in (orphan, kept_child, kept_self):
        segment.close()


def test_sweep_of_one_instance_leaves_other_instances_alone(instance):
    context = mp.get_context("spawn")
    release = context.Event()
    owner = context.Process(target=wait_for_event, args=(release,), daemon=True)
    owner.start()
    mine = segment_name(instance, SegmentKind.RING, "a")
    theirs = segment_name(f"{instance}other", SegmentKind.RING, "a")
    for name in (mine, theirs):
        Ring.create(name, 16, owner_pid=owner.pid).close()
    release.set()
    owner.join(10)
    assert sweep(instance) == [mine]
    assert exists(theirs)
    assert sweep(f"{instance}other") == [theirs]


def test_a_recycled_pid_is_not_mistaken_for_the_owner(instance):
    """The owner's start time is part of its identity: same pid, other start time → orphan."""
    segment = Ring.create(segment_name(instance, SegmentKind.RING, "a"), 16)
    segment.segment.header["owner_start_ms"] -= 60_000
    assert sweep(instance) == [segment.name]
    segment.close()


def test_half_created_segment_is_removed_only_after_the_grace_period(instance, monkeypatch):
    headerless = SHM_DIR / segment_name(instance, SegmentKind.RING, "half")
    empty = SHM_DIR / segment_name(instance, SegmentKind.BOOK, "empty")
    headerless.write_bytes(bytes(4096))  # sized but the magic never written
    empty.write_bytes(b"")  # created, not even truncated yet
    assert sweep(instance) == [], "a segment being created right now must survive"

    monkeypatch.setattr(registry, "_HALF_CREATED_GRACE_S", 2.0)
    old = time.time() - 5
    os.utime(headerless, (old, old))
    assert sweep(instance) == [headerless.name]
    assert empty.exists()
    os.utime(empty, (old, old))
    assert sweep(instance) == [empty.name]


def test_attaching_the_wrong_kind_fails_loudly(instance):
    ring = Ring.create(segment_name(instance, SegmentKind.RING, "a"), 16)
    with pytest.raises(LayoutMismatch, match=r"is a RING segment, expected BOOK"):
        BookReader.attach(ring.name)
    with pytest.raises(LayoutMismatch, match=r"is a RING segment, expected FEATURES"):
        FeatureReader.attach(ring.name)
    ring.close()


def test_attaching_another_layout_version_fails_loudly(instance):
    name = segment_name(instance, SegmentKind.RING, "future")
    Segment.create(name, SegmentKind.RING, 99, ring_payload_size(16), params=(16, 64)).close()
    with pytest.raises(LayoutMismatch, match=r"layout version 99, this code reads version 2"):
        Ring.attach(name)


def test_attaching_something_that_is_not_a_coby_segment_fails_loudly(instance):
    junk = SHM_DIR / segment_name(instance, SegmentKind.RING, "junk")
    junk.write_bytes(b"not a header" * 100)
    with pytest.raises(LayoutMismatch, match=r"no coby header"):
        Ring.attach(junk.name)
    tiny = SHM_DIR / segment_name(instance, SegmentKind.RING, "tiny")
    tiny.write_bytes(b"x" * 10)
    with pytest.raises(LayoutMismatch, match=r"smaller than a header"):
        Ring.attach(tiny.name)
    ring = Ring.create(segment_name(instance, SegmentKind.RING, "grown"), 16)
    os.truncate(SHM_DIR / ring.name, (SHM_DIR / ring.name).stat().st_size + 4096)
    with pytest.raises(LayoutMismatch, match=r"size does not match"):
        Ring.attach(ring.name)
    with pytest.raises(FileNotFoundError, match=r"is the coby supervisor running"):
        Ring.attach(segment_name(instance, SegmentKind.RING, "missing"))
    ring.close()


def test_directory_round_trips_the_engine_description(instance):
    description = {
        "supervisor_pid": os.getpid(),
        "exchanges": {"binance": 1, "kraken": 2},
        "symbols": {"BTC/USDT": 1, "ÉTH/€": 2},
        "segments": {"rings": [segment_name(instance, SegmentKind.RING, "binance")]},
        "endpoints": {"bus": "ipc:///tmp/coby/bus", "control": "tcp://127.0.0.1:5555"},
        "depth": 1000,
        "ratio": 0.25,
        "nothing": None,
    }
    segment = write_directory(instance, description)
    assert read_directory(instance) == description
    assert registry.directory_name(instance) in list_segments(instance)
    segment.close()


def test_directory_being_written_or_missing_says_so(instance):
    with pytest.raises(FileNotFoundError, match=instance):
        read_directory(instance)
    empty = Segment.create(registry.directory_name(instance), SegmentKind.DIRECTORY, 1, 4096)
    with pytest.raises(RuntimeError, match="still starting"):
        read_directory(instance)
    empty.close()


def test_a_dead_owner_not_yet_reaped_is_dead(instance):
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    Ring.create(segment_name(instance, SegmentKind.RING, "zombie"), 16, owner_pid=child.pid).close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and open(f"/proc/{child.pid}/stat").read().split(")")[1].split()[0] != "Z":
        time.sleep(0.02)
    try:
        assert sweep(instance) == [segment_name(instance, SegmentKind.RING, "zombie")]
    finally:
        child.wait()
