"""Binance spot hot path on the recorded depth frames, against ``orjson.loads`` of the same frames.

Every ``depthUpdate`` frame of ``BINANCE.ws.1.0`` goes through
``BinanceSpotConnector.on_message`` (parse, sync rule, exact book, one record batch
written to a sink that discards it), with the four recorded snapshots loaded before
each pass so the frames apply as they did live. Passes of the connector and of plain
``orjson.loads`` alternate in the same process (see docs/benchmarks.md); the figures are
the medians over passes of µs per frame. Last line: one JSON object.

    .venv/bin/python bench/binance_parse.py [--passes N]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.connectors.binance import BinanceSpotConnector, parse_exchange_info  # noqa: E402
from sim.recorded import LineKind, read_recorded, recorded_dir  # noqa: E402

SYMBOL_IDS = {"NKN/USDT": 1, "BLZ/ETH": 2, "LRC/BTC": 3, "RUNE/EUR": 4}


class DiscardSink:
    """Accepts every batch: the ring copy is the ring's cost, measured in bench/ring.py."""

    def write(self, batch: np.ndarray) -> bool:
        return True

    def write_records(self, buffer: bytearray, count: int) -> bool:
        return True

    def free(self) -> int:
        return 1 << 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=400)
    arguments = parser.parse_args()
    directory = recorded_dir()
    if directory is None:
        sys.exit("recorded traffic not found: set COBY_RECORDED_DIR or put it at ../shared/recorded")

    instruments = parse_exchange_info(next(read_recorded(directory / "BINANCE.0")).payload)
    snapshots = {
        parse_qs(urlsplit(line.url).query)["symbol"][0]: line.payload
        for line in read_recorded(directory / "BINANCE.http.0.0")
    }
    frames = [
        (line.payload, line.timestamp_ns)
        for line in read_recorded(directory / "BINANCE.ws.1.0")
        if line.kind == LineKind.RECEIVED and '"e":"depthUpdate"' in line.payload
    ]
    texts = [text for text, _ in frames]
    level_count = sum(len(event["data"]["b"]) + len(event["data"]["a"]) for event in map(orjson.loads, texts))

    connector = BinanceSpotConnector(DiscardSink(), 1, SYMBOL_IDS)
    connector.use_instruments(instruments)

    def synced_connector() -> BinanceSpotConnector:
        connector.on_close(0, 0)
        connector.on_open(0, 0)
        for request in connector.snapshot_requests(0):
            connector.on_snapshot(request.native_symbol, snapshots[request.native_symbol], 0)
        return connector

    def connector_pass() -> int:
        on_message = synced_connector().on_message
        start = time.perf_counter_ns()
        for text, receive_ts in frames:
            on_message(0, text, receive_ts)
        return time.perf_counter_ns() - start

    def orjson_pass() -> int:
        loads = orjson.loads
        start = time.perf_counter_ns()
        for text in texts:
            loads(text)
        return time.perf_counter_ns() - start

    connector_pass()
    applied = sum(connector.counters(symbol).frames_applied for symbol in SYMBOL_IDS)
    if applied != 172 or any(connector.counters(symbol).gaps for symbol in SYMBOL_IDS):
        sys.exit(f"the hot path did not sync the recording: {applied} of 172 frames applied")
    for _ in range(20):  # warm up caches and allocators
        connector_pass()
        orjson_pass()
    ours: list[float] = []
    reference: list[float] = []
    gc.disable()
    try:
        for _ in range(arguments.passes):
            ours.append(connector_pass() / len(frames) / 1000)
            reference.append(orjson_pass() / len(frames) / 1000)
    finally:
        gc.enable()

    ours_us = statistics.median(ours)
    orjson_us = statistics.median(reference)
    print(f"frames {len(frames)} ({level_count} levels), passes {arguments.passes}")
    print(f"connector on_message  {ours_us:6.2f} µs/frame")
    print(f"orjson.loads          {orjson_us:6.2f} µs/frame")
    print(f"ratio                 {ours_us / orjson_us:6.2f} ×")
    print(
        json.dumps(
            {
                "bench": "binance_parse",
                "frames": len(frames),
                "levels": level_count,
                "passes": arguments.passes,
                "connector_us_per_frame": round(ours_us, 3),
                "orjson_loads_us_per_frame": round(orjson_us, 3),
                "ratio": round(ours_us / orjson_us, 2),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )
    )


if __name__ == "__main__":
    main()
