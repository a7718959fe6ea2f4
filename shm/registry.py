"""Finding, describing and cleaning up an engine instance's segments.

- **Directory**: one small segment per instance (``coby_<instance>_directory``) holding
  a JSON description written once by the supervisor before any actor starts: its pid,
  the exchange and symbol ids, every segment name and the bus/control endpoints actually
  bound. A client needs only the instance name to find everything else.
- **Sweep**: every segment header names its owning supervisor (pid and start time). A
  segment whose owner is gone — killed with ``kill -9``, say — is an orphan; the next
  supervisor (or ``coby status``/``coby sweep``) removes it before creating its own.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import psutil

from shm.segment import (
    HEADER_DTYPE,
    HEADER_SIZE,
    MAGIC,
    PREFIX,
    SHM_DIR,
    Segment,
    SegmentKind,
    segment_name,
    unlink_segment,
)

DIRECTORY_LAYOUT_VERSION = 1
_DIRECTORY_CAPACITY = 1 << 20
# A file without magic is one a supervisor is still creating; after this long it is debris.
_HALF_CREATED_GRACE_S = 10.0


def list_segments(instance: str | None = None) -> list[str]:
    """Names of coby segments in /dev/shm (of one instance, or all)."""
    prefix = f"{PREFIX}{instance}_" if instance else PREFIX
    try:
        return sorted(name for name in os.listdir(SHM_DIR) if name.startswith(prefix))
    except FileNotFoundError:
        return []


def _owner_alive(pid: int, start_ms: int) -> bool:
    """Alive and the same process: a recycled pid or a zombie (dead, not yet reaped) is not."""
    try:
        process = psutil.Process(pid)
        return int(process.create_time() * 1000) == start_ms and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def _read_header(name: str) -> np.void | None:
    try:
        with open(SHM_DIR / name, "rb") as file:
            raw = file.read(HEADER_SIZE)
    except FileNotFoundError:
        return None
    if len(raw) < HEADER_DTYPE.itemsize:
        return None
    return np.frombuffer(raw, dtype=HEADER_DTYPE, count=1)[0]


def segment_owner(name: str) -> int | None:
    header = _read_header(name)
    if header is None or bytes(header["magic"]) != MAGIC:
        return None
    return int(header["owner_pid"])


def sweep(instance: str | None = None) -> list[str]:
    """Remove segments whose owning supervisor is dead; return the names removed."""
    removed = []
    for name in list_segments(instance):
        header = _read_header(name)
        if header is not None and bytes(header["magic"]) == MAGIC:
            orphan = not _owner_alive(int(header["owner_pid"]), int(header["owner_start_ms"]))
        else:
            try:
                age = time.time() - os.stat(SHM_DIR / name).st_mtime
            except FileNotFoundError:
                continue
            orphan = age > _HALF_CREATED_GRACE_S
        if orphan and unlink_segment(name):
            removed.append(name)
    return removed


def directory_name(instance: str) -> str:
    return segment_name(instance, SegmentKind.DIRECTORY)


def write_directory(instance: str, description: dict[str, Any], owner_pid: int | None = None) -> Segment:
    """Create the instance's directory segment holding ``description`` as JSON."""
    body = json.dumps(description, sort_keys=True).encode()
    if len(body) + 8 > _DIRECTORY_CAPACITY:
        raise ValueError("engine description too large for the directory segment")
    segment = Segment.create(
        directory_name(instance),
        SegmentKind.DIRECTORY,
        DIRECTORY_LAYOUT_VERSION,
        _DIRECTORY_CAPACITY,
        owner_pid=owner_pid,
    )
    payload = segment.payload
    payload[8 : 8 + len(body)] = body
    payload[:8].cast("Q")[0] = len(body)  # length last: readers see all of the body or none
    return segment


def read_directory(instance: str) -> dict[str, Any]:
    """The description of a running instance (raises if none is running)."""
    segment = Segment.attach(directory_name(instance), SegmentKind.DIRECTORY, DIRECTORY_LAYOUT_VERSION)
    try:
        payload = segment.payload
        length = payload[:8].cast("Q")[0]
        if length == 0:
            raise RuntimeError(f"coby instance {instance!r} is still starting; try again")
        return json.loads(bytes(payload[8 : 8 + length]))
    finally:
        del payload
        segment.close()
