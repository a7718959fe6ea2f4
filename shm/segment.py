"""Named shared-memory segments with a self-describing header.

Every segment coby creates is a POSIX shared-memory object (a file in ``/dev/shm``)
named ``coby_<instance>_<kind>_<name>`` and starting with one fixed 256-byte header:
magic, segment kind, layout version, header and payload sizes, the owning supervisor's
pid and start time (what :func:`shm.registry.sweep` uses to find orphans), and up to
eight kind-specific size parameters. Whoever attaches checks magic, kind, layout version
and sizes before trusting a byte, so a layout mismatch fails loudly instead of reading
garbage (numpy's habit: the layout description travels with the buffer).

Why not ``multiprocessing.shared_memory``: on Python < 3.13 *attaching* to a block
registers it with the attaching process's resource tracker, which unlinks it when that
process exits — a consumer process would delete the engine's books on its way out. We
open the same POSIX objects ourselves, so lifetime is owned by the supervisor alone.
"""

from __future__ import annotations

import mmap
import os
import re
import time
from enum import IntEnum
from pathlib import Path

import numpy as np
import psutil

SHM_DIR = Path("/dev/shm")
PREFIX = "coby_"
MAGIC = b"COBYSHM\x01"
HEADER_SIZE = 256
CACHE_LINE = 64

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

HEADER_DTYPE = np.dtype(
    [
        ("magic", "S8"),
        ("kind", "<u4"),
        ("layout_version", "<u4"),
        ("header_size", "<u8"),
        ("payload_size", "<u8"),
        ("owner_pid", "<u8"),
        ("owner_start_ms", "<u8"),
        ("created_ns", "<i8"),
        ("params", "<u8", (8,)),
        ("name", "S64"),
    ],
    align=True,
)
assert HEADER_DTYPE.itemsize <= HEADER_SIZE


class SegmentKind(IntEnum):
    RING = 1
    BOOK = 2
    FEATURES = 3
    ACTORS = 4
    DIRECTORY = 5


class LayoutMismatch(RuntimeError):
    """A segment exists but is not what the attaching code was built for."""


def segment_name(instance: str, kind: SegmentKind, name: str = "") -> str:
    """The /dev/shm name for one segment; symbols like ``BTC/USDT:PERP`` are made path-safe."""
    base = f"{PREFIX}{instance}_{kind.name.lower()}"
    return f"{base}_{_NAME_UNSAFE.sub('-', name)}" if name else base


def process_start_ms(pid: int) -> int:
    """A pid's start time, so a recycled pid is never mistaken for a live owner."""
    return int(psutil.Process(pid).create_time() * 1000)


class Segment:
    """One mapped segment: its header plus a raw view of the whole mapping."""

    def __init__(self, name: str, mapping: mmap.mmap, writable: bool) -> None:
        self.name = name
        self._mapping = mapping
        self.writable = writable
        self.buffer = memoryview(mapping)
        if not writable:
            self.buffer = self.buffer.toreadonly()
        self.header = np.frombuffer(self.buffer, dtype=HEADER_DTYPE, count=1)[0]

    @classmethod
    def create(
        cls,
        name: str,
        kind: SegmentKind,
        layout_version: int,
        payload_size: int,
        params: tuple[int, ...] = (),
        owner_pid: int | None = None,
    ) -> "Segment":
        """Create and zero a new segment; fails if one of that name already exists."""
        if len(params) > 8:
            raise ValueError("a segment header holds at most 8 parameters")
        owner_pid = os.getpid() if owner_pid is None else owner_pid
        size = HEADER_SIZE + payload_size
        fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        segment = cls(name, mapping, writable=True)
        header = segment.header
        header["kind"] = int(kind)
        header["layout_version"] = layout_version
        header["header_size"] = HEADER_SIZE
        header["payload_size"] = payload_size
        header["owner_pid"] = owner_pid
        header["owner_start_ms"] = process_start_ms(owner_pid)
        header["created_ns"] = time.time_ns()
        header["params"][: len(params)] = params
        header["name"] = name.encode()[:64]
        header["magic"] = MAGIC  # last: a segment without magic is still being created
        return segment

    @classmethod
    def attach(
        cls,
        name: str,
        kind: SegmentKind,
        layout_version: int,
        writable: bool = False,
    ) -> "Segment":
        """Map an existing segment after checking that its layout is the one we know."""
        path = SHM_DIR / name
        try:
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"shared-memory segment {name!r} does not exist: is the coby supervisor "
                f"running with this instance name?"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise LayoutMismatch(f"segment {name!r} is {size} bytes, smaller than a header")
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            mapping = mmap.mmap(fd, size, access=access)
        finally:
            os.close(fd)
        segment = cls(name, mapping, writable)
        segment._check(kind, layout_version, size)
        return segment

    def _check(self, kind: SegmentKind, layout_version: int, size: int) -> None:
        header = self.header
        if bytes(header["magic"]) != MAGIC:
            raise LayoutMismatch(f"segment {self.name!r} has no coby header (magic mismatch)")
        if header["kind"] != kind:
            raise LayoutMismatch(
                f"segment {self.name!r} is a {SegmentKind(int(header['kind'])).name} segment, "
                f"expected {kind.name}"
            )
        if header["layout_version"] != layout_version:
            raise LayoutMismatch(
                f"segment {self.name!r} has layout version {int(header['layout_version'])}, "
                f"this code reads version {layout_version}: upgrade the client or the engine"
            )
        if HEADER_SIZE + int(header["payload_size"]) != size:
            raise LayoutMismatch(f"segment {self.name!r} size does not match its header")

    @property
    def params(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.header["params"])

    @property
    def payload(self) -> memoryview:
        return self.buffer[HEADER_SIZE:]

    def close(self) -> None:
        """Unmap, unless numpy views still point into it (then the GC unmaps later)."""
        self.header = None
        self.buffer.release()
        try:
            self._mapping.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        unlink_segment(self.name)


def unlink_segment(name: str) -> bool:
    """Remove a segment by name; True if it existed."""
    try:
        os.unlink(SHM_DIR / name)
        return True
    except FileNotFoundError:
        return False
