"""A disk spool for batches the database could not take yet: append now, drain oldest first later.

Layout: a directory of append-only segment files ``<number>.seg`` (numbers only grow) and a
file ``acknowledged`` holding how far the consumer has committed (``<segment> <offset>``,
replaced atomically by rename). An entry is a 12-byte header, then the payload::

    magic b"CSP1" | payload length (uint32 LE) | CRC32 of the payload (uint32 LE) | payload

A segment takes entries until the next one would pass ``segment_bytes`` (an entry larger than
that gets a segment of its own). Segments are never appended to after a reopen: a new one is
started, so a segment is only ever written by one open spool, front to back. A segment is
deleted once every entry in it is acknowledged; until then its whole size counts against
``max_bytes``, and an append that would pass it raises :class:`SpoolFull` (nothing is ever
dropped silently).

Crash recovery, on open: every segment from the acknowledged one on is read and checked entry
by entry. The last segment may end in a torn entry (a crash mid-append): it is truncated at
the first entry that is short or fails its magic or CRC, so garbage is never returned and
everything before it is kept. An earlier segment was complete and synced before the next one
began, so damage there is disk corruption and raises :class:`SpoolCorrupt`. The consumer
restarts after the last acknowledged entry: an entry committed but not yet acknowledged when
the process died is read once more, which idempotent writes make harmless.

``fsync`` policy, and what a power cut (or OS crash) can lose (a crash of the process alone
loses nothing in any mode: every append is a system call before it returns):

- ``always``: each append and acknowledgement is synced before it returns: nothing appended is lost.
- ``interval`` (default): syncs when ``fsync_interval_ms`` have passed since the last sync, on an
  append or acknowledgement, and on :meth:`Spool.flush` (call it from a timer) and close: loses
  the appends of at most the last interval (plus any made since the last flush when the spool
  then stayed idle); an acknowledgement lost with them only makes entries be read again.
- ``never``: left to the OS (Linux writes dirty pages back within ~30 s): loses up to that,
  and since pages reach the disk in any order, a segment other than the last can then be torn
  too, which open reports as :class:`SpoolCorrupt` (move that segment aside to go on).
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

MAGIC = b"CSP1"
HEADER = struct.Struct("<4sII")
MAX_PAYLOAD = 0xFFFFFFFF
SEGMENT_SUFFIX = ".seg"
ACKNOWLEDGED = "acknowledged"
LOCK = "lock"
CRC_CHUNK = 1 << 20
FsyncPolicy = Literal["always", "interval", "never"]
FSYNC_POLICIES = ("always", "interval", "never")


class SpoolError(Exception):
    """A problem of the spool itself."""


class SpoolFull(SpoolError):
    """Appending would pass the spool's disk cap: the caller decides (stop taking data, alert), nothing is dropped."""


class SpoolCorrupt(SpoolError):
    """A segment that should be whole is damaged (disk corruption, or a power cut under fsync='never')."""


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One appended payload and where it lies; hand it back to :meth:`Spool.acknowledge`."""

    segment: int
    offset: int
    end: int
    payload: bytes


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _scan(file: BinaryIO, size: int, mark: int) -> tuple[int, int]:
    """(end of the last whole entry, last entry boundary at or before ``mark``), reading one chunk at a time."""
    position = boundary = 0
    while position + HEADER.size <= size:
        file.seek(position)
        magic, length, crc = HEADER.unpack(file.read(HEADER.size))
        end = position + HEADER.size + length
        if magic != MAGIC or end > size:
            break
        computed, remaining = 0, length
        while remaining:
            chunk = file.read(min(remaining, CRC_CHUNK))
            computed = zlib.crc32(chunk, computed)
            remaining -= len(chunk)
        if computed != crc:
            break
        position = end
        if position <= mark:
            boundary = position
    return position, boundary


class Spool:
    """An append-only, crash-safe queue of byte payloads in ``directory`` (one open Spool per directory)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = 64 << 20,
        max_bytes: int = 4 << 30,
        fsync: FsyncPolicy = "interval",
        fsync_interval_ms: int = 200,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}; got {fsync!r}")
        if segment_bytes < HEADER.size + 1 or max_bytes < segment_bytes or fsync_interval_ms < 0:
            raise ValueError(
                f"need segment_bytes > {HEADER.size}, max_bytes >= segment_bytes and fsync_interval_ms >= 0; got "
                f"{segment_bytes}, {max_bytes} and {fsync_interval_ms}"
            )
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_ms / 1000
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.directory / LOCK, "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SpoolError(f"spool {self.directory} is open in another process; one spool per directory") from None
        self._sizes: dict[int, int] = {}  # segment → bytes of whole entries, oldest segment first
        self._active: int | None = None
        self._active_fd: int | None = None
        self._unsynced = False
        self._last_sync = time.monotonic()
        self.truncated_bytes = 0  # cut off the last segment by recovery at open: a torn append
        try:
            self._recover()
        except BaseException:
            self._lock.close()
            raise

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:016d}{SEGMENT_SUFFIX}"

    def _read_acknowledged(self) -> tuple[int, int] | None:
        try:
            segment, offset = (self.directory / ACKNOWLEDGED).read_text().split()
            return int(segment), int(offset)
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # unreadable after a power cut under a lax fsync policy: read everything again, harmless

    def _recover(self) -> None:
        segments = sorted(int(path.stem) for path in self.directory.glob(f"*{SEGMENT_SUFFIX}") if path.stem.isdigit())
        acknowledged = self._read_acknowledged() or (segments[0] if segments else 0, 0)
        for segment in segments:
            if segment < acknowledged[0]:
                self._path(segment).unlink()  # drained before a crash stopped its deletion
        remaining = [segment for segment in segments if segment >= acknowledged[0]]
        for index, segment in enumerate(remaining):
            path = self._path(segment)
            with open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                mark = acknowledged[1] if segment == acknowledged[0] else 0
                valid, boundary = _scan(file, size, mark)
            if valid < size:
                if index < len(remaining) - 1:
                    raise SpoolCorrupt(
                        f"spool segment {path} is damaged at byte {valid} of {size}, yet a later segment exists: move "
                        "it out of the directory to go on without its entries from that byte on"
                    )
                with open(path, "r+b") as file:
                    file.truncate(valid)
                    if self.fsync != "never":  # were the cut undone by a power cut, a later segment would follow it
                        os.fsync(file.fileno())
                self.truncated_bytes = size - valid
            self._sizes[segment] = valid
            if segment == acknowledged[0]:
                acknowledged = (segment, boundary)
        self._acknowledged = acknowledged
        self._next_segment = max([*segments, acknowledged[0]], default=-1) + 1
        self._collect()
        if self.fsync != "never" and (self.truncated_bytes or len(remaining) < len(segments)):
            _fsync_directory(self.directory)

    @property
    def bytes_on_disk(self) -> int:
        """Size of the segments kept, acknowledged parts of segments not yet drained included."""
        return sum(self._sizes.values())

    @property
    def pending_bytes(self) -> int:
        """Bytes of entries not acknowledged yet (headers included)."""
        segment, offset = self._acknowledged
        return sum(size for number, size in self._sizes.items() if number >= segment) - (
            min(offset, self._sizes[segment]) if segment in self._sizes else 0
        )

    def append(self, payload: bytes) -> None:
        """Store one payload at the end; SpoolFull when ``max_bytes`` would be passed."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"a spool entry is bytes; got {type(payload).__name__}")
        length = memoryview(payload).nbytes
        if length > MAX_PAYLOAD:
            raise ValueError(f"a spool entry holds at most {MAX_PAYLOAD} bytes; got {length}")
        size = HEADER.size + length
        if self.bytes_on_disk + size > self.max_bytes:
            raise SpoolFull(
                f"spool {self.directory} holds {self.bytes_on_disk} bytes and an entry of {size} would pass its cap of "
                f"{self.max_bytes}: drain it into the database, or raise the cap if the disk has room"
            )
        used = self._sizes[self._active] if self._active is not None else 0
        if self._active is None or (used and used + size > self.segment_bytes):
            self._rotate()
        assert self._active is not None and self._active_fd is not None
        start = self._sizes[self._active]
        pieces = [HEADER.pack(MAGIC, length, zlib.crc32(payload)), memoryview(payload).cast("B")]
        try:
            while pieces:
                written = os.writev(self._active_fd, pieces)
                while pieces and written >= len(pieces[0]):
                    written -= len(pieces[0])
                    pieces.pop(0)
                if pieces:
                    pieces[0] = pieces[0][written:]
        except BaseException:
            os.ftruncate(self._active_fd, start)  # leave no partial entry behind (e.g. disk full)
            raise
        self._sizes[self._active] = start + size
        self._unsynced = True
        self._sync_if_due()

    def _rotate(self) -> None:
        self._close_active()
        segment = self._next_segment
        self._next_segment += 1
        self._active_fd = os.open(self._path(segment), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._active = segment
        self._sizes[segment] = 0
        if self.fsync != "never":
            _fsync_directory(self.directory)

    def _close_active(self) -> None:
        """The finished segment is synced before any later one is written (fsync 'never' excepted)."""
        if self._active_fd is None:
            return
        if self.fsync != "never" and self._unsynced:
            os.fdatasync(self._active_fd)
            self._unsynced = False
        os.close(self._active_fd)
        self._active_fd = self._active = None

    def _sync_if_due(self) -> None:
        if self.fsync == "always" or (
            self.fsync == "interval" and time.monotonic() - self._last_sync >= self.fsync_interval_s
        ):
            self.flush()

    def flush(self) -> None:
        """Sync appended entries now (what a timer calls under ``interval``; a no-op under ``never``)."""
        if self.fsync == "never":
            return
        if self._active_fd is not None and self._unsynced:
            os.fdatasync(self._active_fd)
        self._unsynced = False
        self._last_sync = time.monotonic()

    def iterate(self) -> Iterator[SpoolEntry]:
        """Every entry not acknowledged, oldest first, one in memory at a time (appends made meanwhile included)."""
        segment, offset = self._acknowledged
        while True:
            following = [number for number in self._sizes if number >= segment]
            if not following:
                return
            if following[0] != segment:
                segment, offset = following[0], 0
            with open(self._path(segment), "rb") as file:
                file.seek(offset)
                position = offset
                while position < self._sizes.get(segment, 0):
                    entry = self._read_entry(file, segment, position)
                    yield entry
                    position = entry.end
            segment, offset = segment + 1, 0

    def _read_entry(self, file: BinaryIO, segment: int, position: int) -> SpoolEntry:
        header = file.read(HEADER.size)
        magic, length, crc = HEADER.unpack(header) if len(header) == HEADER.size else (b"", 0, 0)
        payload = file.read(length) if magic == MAGIC else b""
        if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            raise SpoolCorrupt(
                f"spool segment {self._path(segment)} changed under the spool at byte {position}: disk corruption or "
                "another writer; move the directory aside"
            )
        return SpoolEntry(segment, position, position + HEADER.size + length, payload)

    def peek(self) -> SpoolEntry | None:
        """The oldest entry not acknowledged, or None when the spool is drained."""
        return next(self.iterate(), None)

    def acknowledge(self, entry: SpoolEntry) -> None:
        """Record that ``entry`` and every entry before it are committed; drained segments are deleted."""
        if (entry.segment, entry.end) <= self._acknowledged:
            return
        if entry.end > self._sizes.get(entry.segment, -1):
            raise ValueError(f"{entry.segment}:{entry.offset} is not an entry of spool {self.directory}")
        self._acknowledged = (entry.segment, entry.end)
        sync = self.fsync == "always" or (
            self.fsync == "interval" and time.monotonic() - self._last_sync >= self.fsync_interval_s
        )
        temporary = self.directory / f"{ACKNOWLEDGED}.tmp"
        with open(temporary, "w") as file:
            file.write(f"{entry.segment} {entry.end}\n")
            file.flush()
            if sync:
                os.fsync(file.fileno())
        os.replace(temporary, self.directory / ACKNOWLEDGED)
        if sync:
            _fsync_directory(self.directory)
        self._collect()

    def _collect(self) -> None:
        """Delete the segments whose every entry is acknowledged (the active one too: the next append starts anew)."""
        segment, offset = self._acknowledged
        for number, size in list(self._sizes.items()):
            if number < segment or (number == segment and offset >= size):
                if number == self._active:
                    self._unsynced = False
                    self._close_active()
                self._path(number).unlink()
                del self._sizes[number]

    def close(self) -> None:
        """Sync (unless ``never``) and release the directory."""
        if self._lock.closed:
            return
        self._close_active()
        self._lock.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
