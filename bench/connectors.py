"""Connector hot paths on the recorded traffic: frames/s, level updates/s, cost per frame.

Each recording in ../shared/recorded (or ``--recorded DIR``) that coby has a connector for is
replayed through the real connector code path (``engine.verify``: parse, sequence and
checksum checks, book, and the write into a real shared-memory ring), ``--passes`` times;
the time inside ``on_message`` is the hot path. In the same run, ``orjson.loads`` of the same frames (gunzipped first where the
venue sends gzip) is timed back to back, and the connector's cost per frame is reported as a
multiple of it (the stable figure). Every received frame counts (book deltas and in-stream
snapshots, trades, tickers, acks), so these ratios are not the delta-frame-only figures of
../shared/docs/benchmarks.md; bench/binance_parse.py and bench/kraken_parse.py give those.

Not yet here: cryptofeed's own handlers side by side (an optional bench dependency).

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import zlib
from pathlib import Path

import orjson

from actors.connectors import UnknownExchangeError
from engine.verify import _files, recordings, verify_recording
from shm.ring import Ring
from shm.segment import SegmentKind, segment_name
from sim.recorded import LineKind, read_recorded, recorded_dir

RING_RECORDS = 1 << 22  # holds every record of the largest recording: nothing is ever refused


def frame_payloads(files: list[Path]) -> list[str | bytes]:
    _, _, ws_files = _files(files)
    payloads = []
    for path in ws_files:
        for line in read_recorded(path):
            if line.kind == LineKind.RECEIVED:
                payload = line.payload
                payloads.append(zlib.decompress(payload, 16 + zlib.MAX_WBITS) if isinstance(payload, bytes) else payload)
    return payloads


def orjson_ns(payloads: list[str | bytes]) -> int:
    loads, clock = orjson.loads, time.perf_counter_ns
    total = 0
    for payload in payloads:
        started = clock()
        loads(payload)
        total += clock() - started
    return total


def measure(prefix: str, files: list[Path], passes: int, ring: Ring) -> dict:
    payloads = frame_payloads(files)
    handler, baseline, report = [], [], {}
    for _ in range(passes):
        report = verify_recording(prefix, files, timed=True, sink=ring)
        ring.commit(ring.available())  # the consumer's side, outside the timed path
        handler.append(report["handler_ns"])
        baseline.append(orjson_ns(payloads))
    frames, levels = report["frames"], report["levels"]
    handler_ns, orjson_total = statistics.median(handler), statistics.median(baseline)
    return {
        "frames": frames,
        "book_updates": report["book_updates"],
        "levels": levels,
        "checksums_ok": report["checksums_ok"],
        "frames_per_s": round(frames / (handler_ns / 1e9)),
        "levels_per_s": round(levels / (handler_ns / 1e9)),
        "us_per_frame": round(handler_ns / frames / 1000, 3),
        "orjson_loads_us_per_frame": round(orjson_total / frames / 1000, 3),
        "ratio_to_orjson_loads": round(handler_ns / orjson_total, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recorded", type=Path, default=recorded_dir(), help="directory of recordings")
    parser.add_argument("--passes", type=int, default=7, help="replays per recording (median kept)")
    args = parser.parse_args(argv)
    if args.recorded is None:
        raise SystemExit("no recordings: set COBY_RECORDED_DIR or pass --recorded DIR")
    figures, skipped = {}, {}
    ring = Ring.create(segment_name(f"bench{os.getpid()}", SegmentKind.RING, "connectors"), RING_RECORDS)
    ring.become_producer()
    ring.become_consumer()
    write_path = ring.write_path
    try:
        for prefix, files in sorted(recordings([args.recorded]).items()):
            try:
                figures[prefix] = measure(prefix, files, args.passes, ring)
            except UnknownExchangeError as error:
                skipped[prefix] = str(error).split(";")[0]
                continue
            print(f"[bench.connectors] {prefix:16s} {figures[prefix]['us_per_frame']:8.2f} us/frame "
                  f"({figures[prefix]['ratio_to_orjson_loads']}x orjson.loads)", file=sys.stderr)
    finally:
        ring.segment.unlink()
        ring.close()
    return {
        "bench": "connectors",
        "passes": args.passes,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "frames": "every received frame of the recording, through on_message into a shared-memory ring",
        "ring_write_path": write_path,
        "exchanges": figures,
        "skipped": skipped,
    }


if __name__ == "__main__":
    print(json.dumps(main()))
