"""Helpers for tests that run real engine processes: unique instances, free ports, cleanup."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import Config, load_config, only_these_exchanges
from engine.supervisor import Supervisor
from shm.records import Kind, Side, empty_records
from shm.registry import list_segments
from shm.segment import unlink_segment

_counter = itertools.count()
ANY_PORT = "tcp://127.0.0.1:0"


def unique_instance(tag: str = "t") -> str:
    return f"{tag}{os.getpid() % 100000}{next(_counter)}"[:16]


def engine_config(instance: str, overrides: dict[str, Any] | None = None) -> Config:
    """The default config on free ports under its own instance, plus ``overrides``.

    Only the exchanges ``overrides`` names are enabled (Binance spot when it names none):
    overrides merge key by key, so every other exchange of the default config is disabled.
    """
    base: dict[str, Any] = {
        "engine": {"instance": instance, "runtime_dir": f"/tmp/coby-test-{instance}"},
        "endpoints": {"control": ANY_PORT, "bus_publish": ANY_PORT, "bus_subscribe": ANY_PORT},
        "supervisor": {"heartbeat_interval_s": 0.1, "heartbeat_timeout_s": 2.0, "restart_backoff_initial_s": 0.1},
        "storage": {"enabled": False},  # tests of storage turn it on, with their own database
        "api": {"enabled": False},  # tests of the api turn it on, on a free port
    }
    for section, values in (overrides or {}).items():
        base.setdefault(section, {}).update(values)
    base["exchanges"] = only_these_exchanges(base.get("exchanges") or {"binance": {}})
    return load_config(None, env={}, overrides=base)





@contextmanager
def running(supervisor: Supervisor) -> Iterator[Supervisor]:
    """Start a supervisor, supervise it from a background thread, always shut it down."""
    import threading

    supervisor.start()
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()
    try:
        yield supervisor
    finally:
        supervisor.request_stop()
        thread.join(30)
        for name in list_segments(supervisor.instance):
            unlink_segment(name)


def wait_for(condition: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.02, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or condition}")


def level_batch(
    exchange_id: int,
    symbol_id: int,
    bids: list[tuple[float, float]],
    asks: list[tuple[float, float]],
    snapshot: bool = False,
    sequence: int = 0,
) -> np.ndarray:
    """One frame's records as a producer writes them (optionally framed as a snapshot)."""
    levels = [(Side.BID, p, s) for p, s in bids] + [(Side.ASK, p, s) for p, s in asks]
    batch = empty_records(len(levels) + (2 if snapshot else 0))
    batch["exchange_id"] = exchange_id
    batch["symbol_id"] = symbol_id
    batch["sequence"] = sequence
    batch["receive_ts"] = time.time_ns()
    body = batch[1:-1] if snapshot else batch
    body["kind"] = Kind.LEVEL
    for record, (side, price, size) in zip(body, levels):
        record["side"], record["price"], record["size"] = side, price, size
    if snapshot:
        batch[0]["kind"] = Kind.SNAPSHOT_BEGIN
        batch[-1]["kind"] = Kind.SNAPSHOT_END
    return batch


def stores_in(directory: Path) -> dict[str, str]:
    """The environment of a ``coby demo`` that stores into ``directory`` rather than the project's ./data."""
    return {**os.environ, "COBY_ENGINE__DATA_DIR": str(directory / "data")}
