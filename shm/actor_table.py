"""Per-actor liveness and state, shared between each actor and the supervisor.

One slot per actor (index given by the supervisor at spawn). The actor owns
``heartbeat`` and ``last_beat_ns`` and bumps them from its event loop, so a process that
is alive but whose loop is stuck stops beating; the supervisor owns ``pid``, ``state``
and ``restarts``. Every field is an aligned 8-byte word (``shm.ordering`` point 1), so
no field is ever torn and no lock is needed.
"""

from __future__ import annotations

import time
from enum import IntEnum

import numpy as np

from shm.segment import Segment, SegmentKind

LAYOUT_VERSION = 1

SLOT_DTYPE = np.dtype(
    [
        ("heartbeat", "<u8"),
        ("last_beat_ns", "<i8"),
        ("pid", "<u8"),
        ("state", "<u8"),
        ("restarts", "<u8"),
        ("started_ns", "<i8"),
        ("spare", "<u8", (2,)),
    ],
    align=True,
)


class ActorState(IntEnum):
    EMPTY = 0
    STARTING = 1
    RUNNING = 2
    STOPPING = 3
    STOPPED = 4
    BACKOFF = 5  # died, waiting to be restarted
    FAILED = 6  # exceeded the restart intensity


class ActorTable:
    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.name = segment.name
        self.size = segment.params[0]
        self.slots = np.frombuffer(segment.payload, dtype=SLOT_DTYPE, count=self.size)

    @classmethod
    def create(cls, name: str, size: int, owner_pid: int | None = None) -> "ActorTable":
        segment = Segment.create(
            name, SegmentKind.ACTORS, LAYOUT_VERSION, size * SLOT_DTYPE.itemsize, (size,), owner_pid
        )
        return cls(segment)

    @classmethod
    def attach(cls, name: str, writable: bool = True) -> "ActorTable":
        return cls(Segment.attach(name, SegmentKind.ACTORS, LAYOUT_VERSION, writable=writable))

    def beat(self, index: int) -> None:
        slot = self.slots[index]
        slot["last_beat_ns"] = time.time_ns()
        slot["heartbeat"] = slot["heartbeat"] + 1

    def close(self) -> None:
        self.slots = None
        self.segment.close()
