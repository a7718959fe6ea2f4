"""How a consolidated book is stored: the ``consolidated_snapshots.payload`` format (docs/storage.md)."""

from __future__ import annotations

import zlib

import msgpack
import numpy as np

SNAPSHOT_FORMAT = 1
ALL_EXCHANGES = "*"  # the exchange of data consolidated across exchanges (ohlcv bars)


def snapshot_payload(slot: np.void, depth: int) -> bytes:
    """One consolidated book as stored: zlib of msgpack, arrays as their raw little-endian bytes."""
    bid_rows, ask_rows = min(int(slot["bid_levels"]), depth), min(int(slot["ask_levels"]), depth)
    message = {
        "format": SNAPSHOT_FORMAT,
        "generation": int(slot["generation"]),
        "publish_ts": int(slot["publish_ts"]),
        "columns": int(slot["bids"].shape[1]),
        "bids": slot["bids"][:bid_rows].tobytes(),
        "asks": slot["asks"][:ask_rows].tobytes(),
        **{name: slot[name].tobytes() for name in slot.dtype.names if name.startswith("exchange_")},
        "metrics": slot["metrics"].tobytes(),
        "buckets": slot["buckets"].tobytes(),
    }
    return zlib.compress(msgpack.packb(message, use_bin_type=True), 1)
