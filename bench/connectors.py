"""Connector hot paths on the recorded traffic: frames/s, level updates/s, cost per frame.

Each recording in ../shared/recorded (or ``--recorded DIR``) that coby has a connector for is
replayed through the real connector code path (``engine.verify``: parse, sequence and
checksum checks, book, and the write into a real shared-memory ring), ``--passes`` times;
the time inside ``on_message`` is the hot path. In the same run, ``orjson.loads`` of the same frames (gunzipped first where the
venue sends gzip) is timed back to back, and the connector's cost per frame is reported as a
multiple of it (the stable figure). Every received frame counts (book deltas and in-stream
snapshots, trades, tickers, acks), so these ratios are not the delta-frame-only figures of
../shared/docs/benchmarks.md; bench/binance_parse.py and bench/kraken_parse.py give those.

``--cryptofeed`` adds cryptofeed 2.4.0's own handlers side by side. cryptofeed pins aiohttp==3.9.1,
so it lives in its own venv (``.venv-cryptofeed``, made by bench/cryptofeed_venv.sh when missing)
and bench/cryptofeed_handlers.py runs there as a subprocess, driven as
../shared/docs/benchmarks.md describes, timing book delta frames only. For a like-for-like figure
coby is then replayed again (same connector path, same ring) with only those same delta frames
timed (every frame is still fed), and both are merged per exchange:
``coby_over_cryptofeed_throughput`` = cryptofeed µs per delta frame / coby µs per delta frame.

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

import orjson

from actors.connectors import UnknownExchangeError, load_exchange_module
from engine.verify import (
    RECORDED_NAMES,
    UnreadableRecording,
    _canonical,
    _files,
    recordings,
    verify_recording,
)
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


BENCH_DIR = Path(__file__).resolve().parent
CRYPTOFEED_VENV = BENCH_DIR.parent / ".venv-cryptofeed"
CRYPTOFEED_TARGET = 2.0  # the target: coby >= 2x cryptofeed's throughput, checksums on in both


def _cryptofeed_handlers():
    """bench/cryptofeed_handlers.py, loaded by path for its stdlib-only ``book_frames``/``classify``
    (it imports cryptofeed only inside functions that run in its own venv)."""
    spec = importlib.util.spec_from_file_location("_bench_cryptofeed_handlers", BENCH_DIR / "cryptofeed_handlers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def measure_book_deltas(prefix: str, files: list[Path], passes: int, ring: Ring, timed_texts: set[str]) -> dict:
    """coby's connector on the whole recording (every frame fed, as in ``measure``), with only the
    frames in ``timed_texts`` (the book delta frames cryptofeed is timed on) timed."""
    module = load_exchange_module(RECORDED_NAMES.get(prefix, prefix.lower()))
    base = module.CONNECTOR
    clock = time.perf_counter_ns
    totals = [0, 0]

    class DeltaTimed(base):  # the timer wraps the real on_message, nothing else changes
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            # some connectors bind on_message per instance (Kraken v1): wrap whatever is bound
            inner = self.__dict__.get("on_message") or base.on_message.__get__(self)

            def on_message(connection, data, receive_ts):
                if data in timed_texts:  # hashed outside the timed region
                    started = clock()
                    action = inner(connection, data, receive_ts)
                    totals[0] += clock() - started
                    totals[1] += 1
                    return action
                return inner(connection, data, receive_ts)

            self.on_message = on_message

    handler, baseline, frames, report = [], [], 0, {}
    texts = list(timed_texts)
    module.CONNECTOR = DeltaTimed
    try:
        for _ in range(passes):
            totals[:] = [0, 0]
            report = verify_recording(prefix, files, timed=False, sink=ring)
            ring.commit(ring.available())
            handler.append(totals[0])
            frames = totals[1]
            baseline.append(orjson_ns(texts))
    finally:
        module.CONNECTOR = base
    handler_ns, orjson_total = statistics.median(handler), statistics.median(baseline)
    return {
        "frames_timed": frames,
        "checksums_ok": report["checksums_ok"],
        "checksums_failed": report["checksums_failed"],
        "gaps": report["gaps"],
        "us_per_frame": round(handler_ns / frames / 1000, 3) if frames else None,
        "orjson_loads_us_per_frame": round(orjson_total / len(texts) / 1000, 3) if texts else None,
        "ratio_to_orjson_loads": round(handler_ns / orjson_total, 2) if frames else None,
    }


def run_cryptofeed(recorded: Path, passes: int, prefixes: list[str], untimed: dict[str, list[str]]) -> dict:
    """Makes the cryptofeed venv if missing, runs bench/cryptofeed_handlers.py in it, returns its JSON."""
    subprocess.run(["bash", str(BENCH_DIR / "cryptofeed_venv.sh"), str(CRYPTOFEED_VENV)], check=True,
                   stdout=sys.stderr)
    result = subprocess.run(
        [str(CRYPTOFEED_VENV / "bin" / "python"), str(BENCH_DIR / "cryptofeed_handlers.py"),
         "--recorded", str(recorded), "--passes", str(passes), "--only", *prefixes,
         "--untimed", *[f"{prefix}:{symbol}" for prefix, symbols in untimed.items() for symbol in symbols]],
        check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def add_cryptofeed(figures: dict, recorded: Path, all_recordings: dict, passes: int, ring: Ring) -> dict:
    handlers = _cryptofeed_handlers()
    prefixes = [prefix for prefix in sorted(handlers.SUPPORTED) if prefix in figures]
    # Recording symbols coby does not book (e.g. OKX's dated future BTC-USD-220527, which the
    # recording's configuration names in a form engine.verify maps to no instrument): their frames
    # are dropped unparsed by coby, so they are fed to both sides but timed by neither.
    untimed = {}
    for prefix in prefixes:
        missing = set(verify_recording(prefix, all_recordings[prefix])["missing_symbols"])
        metadata = _files(all_recordings[prefix])[0]
        configured = next(json.loads(line.payload)["l2_book"] for line in read_recorded(metadata)
                          if line.kind == LineKind.CONFIGURATION)
        untimed[prefix] = [symbol for symbol in configured if _canonical(symbol) in missing]
    theirs = run_cryptofeed(recorded, passes, prefixes, untimed)
    for prefix in prefixes:
        cf = theirs["exchanges"].get(prefix)
        if cf is None:
            figures[prefix]["cryptofeed_error"] = theirs.get("failed", {}).get(prefix, "not measured")
            continue
        frozen = frozenset(untimed[prefix])
        timed = {text for kind, _, text in handlers.book_frames(recorded, prefix, frozen) if kind == handlers.TIMED}
        ours = measure_book_deltas(prefix, all_recordings[prefix], passes, ring, timed)
        ratio = round(cf["us_per_frame"] / ours["us_per_frame"], 2) if ours["us_per_frame"] else None
        normalised = (round(cf["ratio_to_orjson_loads"] / ours["ratio_to_orjson_loads"], 2)
                      if ours["ratio_to_orjson_loads"] else None)
        figures[prefix].update({
            "book_delta_frames_timed": {"coby": ours["frames_timed"], "cryptofeed": cf["frames_timed"]},
            "book_delta_symbols_not_timed": untimed[prefix],
            "coby_book_delta_us_per_frame": ours["us_per_frame"],
            "coby_book_delta_ratio_to_orjson_loads": ours["ratio_to_orjson_loads"],
            "coby_book_delta_checksums": {"ok": ours["checksums_ok"], "failed": ours["checksums_failed"]},
            "cryptofeed_us_per_frame": cf["us_per_frame"],
            "cryptofeed_orjson_loads_us_per_frame": cf["orjson_loads_us_per_frame"],
            "cryptofeed_ratio_to_orjson_loads": cf["ratio_to_orjson_loads"],
            "cryptofeed_l2_book_callbacks": cf["l2_book_callbacks"],
            "coby_over_cryptofeed_throughput": ratio,
            "coby_over_cryptofeed_throughput_orjson_normalised": normalised,
            "meets_2x_target": None not in (ratio, normalised) and min(ratio, normalised) >= CRYPTOFEED_TARGET,
        })
        print(f"[bench.connectors] {prefix:16s} book deltas: coby {ours['us_per_frame']} us, "
              f"cryptofeed {cf['us_per_frame']} us -> {ratio}x", file=sys.stderr)
    return {
        "version": theirs.get("cryptofeed"),
        "python": theirs.get("python"),
        "venv": str(CRYPTOFEED_VENV),
        "exchanges": prefixes,
        "failed": theirs.get("failed", {}),
        "target": f"coby_over_cryptofeed_throughput >= {CRYPTOFEED_TARGET} on every exchange, checksums on in both",
        "how_cryptofeed_was_driven": (
            "../shared/docs/benchmarks.md: symbols loaded from the recorded REST metadata through the "
            "exchange class's own symbol_mapping/_parse_symbol_data; Feed(symbols=<recording l2_book>, "
            "channels=[L2_BOOK], callbacks={L2_BOOK: async counter}, checksum_validation=True); subscribe "
            "awaited with a stand-in connection; http_conn serving the recorded REST snapshots; then "
            "await feed.message_handler(text, conn, ts) for every book frame in file order (trades/tickers/"
            "acks not fed: an L2_BOOK-only feed would not receive them); fresh Feed per pass, median pass"),
        "how_coby_was_driven": (
            "the same replay as the all-frame figures (engine.verify: every received frame of the "
            "recording through the connector's on_message into the shared-memory ring, checksums and "
            "sequence checks on), but only the frames cryptofeed is timed on are timed"),
        "frames_compared": (
            "book delta frames only, the identical frame texts on both sides (bench/cryptofeed_handlers.py "
            "classify): Binance depthUpdate except each symbol's first (on which cryptofeed fetches and "
            "parses the REST snapshot inside its handler), Kraken book updates, Coinbase l2update, OKX "
            "books action=update; snapshots are fed to both but timed by neither, and so are the delta "
            "frames of recording symbols coby does not book (book_delta_symbols_not_timed)"),
        "ratio": ("coby_over_cryptofeed_throughput = cryptofeed_us_per_frame / coby_book_delta_us_per_frame, same "
                  "run (the two sides run one after the other, coby in-process, cryptofeed in a subprocess, so "
                  "machine load can differ between them); coby_over_cryptofeed_throughput_orjson_normalised = "
                  "cryptofeed_ratio_to_orjson_loads / coby_book_delta_ratio_to_orjson_loads, each side divided by "
                  "orjson.loads of the same frames timed in its own process (the stable figure); meets_2x_target "
                  "needs both >= 2"),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recorded", type=Path, default=recorded_dir(), help="directory of recordings")
    parser.add_argument("--passes", type=int, default=7, help="replays per recording (median kept)")
    parser.add_argument("--cryptofeed", action="store_true",
                        help="also time cryptofeed 2.4.0's handlers (own venv, made if missing) on the same book delta frames")
    args = parser.parse_args(argv)
    if args.recorded is None:
        raise SystemExit("no recordings: set COBY_RECORDED_DIR or pass --recorded DIR")
    figures, skipped, cryptofeed = {}, {}, None
    all_recordings = recordings([args.recorded])
    ring = Ring.create(segment_name(f"bench{os.getpid()}", SegmentKind.RING, "connectors"), RING_RECORDS)
    ring.become_producer()
    ring.become_consumer()
    write_path = ring.write_path
    try:
        for prefix, files in sorted(all_recordings.items()):
            try:
                figures[prefix] = measure(prefix, files, args.passes, ring)
            except (UnknownExchangeError, UnreadableRecording) as error:
                skipped[prefix] = str(error).split(";")[0]
                continue
            print(f"[bench.connectors] {prefix:16s} {figures[prefix]['us_per_frame']:8.2f} us/frame "
                  f"({figures[prefix]['ratio_to_orjson_loads']}x orjson.loads)", file=sys.stderr)
        if args.cryptofeed:
            cryptofeed = add_cryptofeed(figures, args.recorded, all_recordings, args.passes, ring)
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
        **({"cryptofeed": cryptofeed} if cryptofeed is not None else {}),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
