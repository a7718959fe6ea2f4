"""Kraken v1 hot path on the recorded book update frames, against ``orjson.loads`` of the same frames.

Every book update frame of ``KRAKEN.ws.50.0`` (4,269, each with its checksum) goes
through ``KrakenConnector.on_message`` (parse, exact book with checksum tokens,
truncation to the subscribed depth, crossed-book check, CRC32 verification, one record
batch written to a sink that discards it), with the ten recorded snapshots loaded
before each pass so the frames apply as they did live. Passes of the connector and of
plain ``orjson.loads`` alternate in the same process (see docs/benchmarks.md, where
cryptofeed 2.4.0 costs 44× ``orjson.loads`` on these frames); the figures are the
medians over passes of µs per frame. Last line: one JSON object.

    .venv/bin/python bench/kraken_parse.py [--passes N]
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

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.connectors.kraken import WS_V1_URL, KrakenConnector
from sim.recorded import LineKind, read_recorded, recorded_dir

SYMBOLS = ("KSM/BTC", "XMR/USD", "ETH/CHF", "OMG/USD", "GRT/ETH", "WAVES/EUR", "ADA/BTC", "BTC/CHF", "SC/EUR", "OCEAN/BTC")
UPDATE_FRAMES = 4269


class DiscardSink:
    """Accepts every batch: the ring copy is the ring's cost, measured in bench/ring.py."""

    def write(self, batch: np.ndarray) -> bool:
        return True

    def free(self) -> int:
        return 1 << 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=40)
    arguments = parser.parse_args()
    directory = recorded_dir()
    if directory is None:
        sys.exit("recorded traffic not found: set COBY_RECORDED_DIR or put it at ../shared/recorded")

    asset_pairs = next(line for line in read_recorded(directory / "KRAKEN.0") if line.kind == LineKind.HTTP_RESPONSE)
    book_frames = [
        (line.payload, line.timestamp_ns)
        for line in read_recorded(directory / "KRAKEN.ws.50.0")
        if line.kind == LineKind.RECEIVED and line.payload.startswith("[")
    ]
    snapshots = [(text, stamp) for text, stamp in book_frames if '"as":' in text or '"bs":' in text]
    frames = [(text, stamp) for text, stamp in book_frames if '"as":' not in text and '"bs":' not in text]
    texts = [text for text, _ in frames]
    level_count = sum(
        len(part.get("a", ())) + len(part.get("b", ()))
        for message in map(orjson.loads, texts)
        for part in message[1:-2]
    )

    connector = KrakenConnector(DiscardSink(), 1, {symbol: index for index, symbol in enumerate(SYMBOLS, 1)},
                                ws_base_url=WS_V1_URL)
    connector.load_instruments(asset_pairs.payload)

    def synced_connector() -> KrakenConnector:
        connector.on_close(0, 0)
        connector.on_open(0, 0)
        for text, stamp in snapshots:
            connector.on_message(0, text, stamp)
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
    verified = sum(connector.counters(symbol).checksums_ok for symbol in SYMBOLS)
    if len(frames) != UPDATE_FRAMES or verified != UPDATE_FRAMES:
        sys.exit(f"the hot path did not verify the recording: {verified} of {len(frames)} checksums")
    for _ in range(5):  # warm up caches and allocators
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
    print(f"frames {len(frames)} ({level_count} levels), passes {arguments.passes}, every checksum verified")
    print(f"connector on_message  {ours_us:6.2f} µs/frame")
    print(f"orjson.loads          {orjson_us:6.2f} µs/frame")
    print(f"ratio                 {ours_us / orjson_us:6.2f} ×")
    print(
        json.dumps(
            {
                "bench": "kraken_parse",
                "protocol": "v1",
                "frames": len(frames),
                "levels": level_count,
                "checksums_ok": verified,
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
