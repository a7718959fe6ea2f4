"""The one record that crosses processes: connector (or replay) → ring → aggregator.

Every book change, snapshot boundary, trade and status change is one fixed-width,
64-byte, 8-byte-aligned record (the hftbacktest habit), so a ring is a plain numpy
structured array and a batch is a slice of it.

Book semantics, which every producer follows and the aggregator relies on:

- ``LEVEL``: the new *absolute* size at ``price`` on ``side`` (size 0 deletes the level).
  Outside a snapshot it is a delta applied to the exchange's current book.
- ``SNAPSHOT_BEGIN`` … ``LEVEL``\\* … ``SNAPSHOT_END``: a complete book for one
  (exchange, symbol). The consumer builds it aside and swaps it in only at
  ``SNAPSHOT_END``, which also marks the book in sync; nobody ever sees half of it.
  A producer writes a whole snapshot as one ring batch.
- ``CLEAR``: the producer no longer trusts its book for that symbol (gap, checksum
  failure, crossed book, stale stream, reconnect, ring overflow; ``reason`` says
  which). The consumer drops the book and excludes it until the next snapshot.
- ``STATUS``: connection-level state for an exchange (``aux`` holds a ``Status``),
  ``symbol_id`` is ``ALL_SYMBOLS`` when it applies to every symbol. Any state but
  IN_SYNC makes the consumer drop the books it applies to; IN_SYNC is informational,
  since a book becomes trusted only through ``SNAPSHOT_END``.
- ``TRADE``: one trade; ``side`` is the aggressor side, ``aux`` the exchange trade id.
- ``HEARTBEAT``: liveness when the market is quiet; carries the exchange timestamp.

``sequence`` is the exchange's own update id for the frame the record came from
(Binance ``u``), 0 where the exchange has none. Timestamps are int64 nanoseconds since
the Unix epoch: ``exchange_ts`` as the exchange stamped it (0 if it does not),
``receive_ts`` as our clock saw the frame arrive.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

RECORD_DTYPE = np.dtype(
    [
        ("exchange_ts", "<i8"),
        ("receive_ts", "<i8"),
        ("price", "<f8"),
        ("size", "<f8"),
        ("sequence", "<u8"),
        ("aux", "<u8"),
        ("symbol_id", "<u4"),
        ("order_count", "<u4"),
        ("exchange_id", "<u2"),
        ("kind", "u1"),
        ("side", "u1"),
        ("flags", "<u2"),
        ("reason", "<u2"),
    ],
    align=True,
)
assert RECORD_DTYPE.itemsize == 64, "the record layout is a cross-process contract: 64 bytes"

ALL_SYMBOLS = 0xFFFFFFFF


class Kind(IntEnum):
    LEVEL = 1
    SNAPSHOT_BEGIN = 2
    SNAPSHOT_END = 3
    CLEAR = 4
    TRADE = 5
    STATUS = 6
    HEARTBEAT = 7


class Side(IntEnum):
    """Book side for levels; aggressor side for trades (BID = buyer took the ask)."""

    NONE = 0
    BID = 1
    ASK = 2


class Flag(IntEnum):
    """Bits of ``flags``."""

    REPLAYED = 1  # written by the replay actor, not a live connector


class Status(IntEnum):
    """Connection/book state of one exchange, carried in ``aux`` of STATUS records."""

    UNKNOWN = 0
    CONNECTING = 1
    SYNCING = 2
    IN_SYNC = 3
    RESYNCING = 4
    DISCONNECTED = 5
    STALE = 6
    ERROR = 7  # the aggregator found the book unusable (crossed within the exchange) until its next snapshot


class Reason(IntEnum):
    """Why a book was cleared or a status changed (``reason`` field)."""

    NONE = 0
    STARTUP = 1
    SEQUENCE_GAP = 2
    CHECKSUM = 3
    CROSSED = 4
    STALE_STREAM = 5
    RING_OVERFLOW = 6
    DISCONNECTED = 7
    SNAPSHOT_FAILED = 8
    PRODUCER_DIED = 9
    SHUTDOWN = 10
    MALFORMED = 11  # a frame that could not be applied whole: lost, so the book is resynced
    CROSS_CHECK = 12  # the venue's own top of book (e.g. Binance bookTicker) disagreed with ours


def empty_records(count: int) -> np.ndarray:
    """A zeroed batch of ``count`` records, ready to be filled field by field."""
    return np.zeros(count, dtype=RECORD_DTYPE)
