"""Connector hot paths on the recorded traffic: frames/s, level updates/s, cost per frame.

Each recording in ../shared/recorded (or ``--recorded DIR``) that coby has a connector for is
replayed through the real connector code path (``engine.verify``: parse, sequence and
checksum checks, book, and the write into a real shared-memory ring), ``--passes`` times;
the time inside ``on_message`` is the hot path. In the same run, ``orjson.loads`` of the same frames (gunzipped first where the
venue sends gzip) is timed back to back, and the connector's cost per frame is reported as a
multiple of it (the stable figure). Every received frame counts (book deltas and in-stream
snapshots, trades, tickers, acks), so these ratios are not the delta-frame-only figures of
../shared/docs/benchmarks.md; bench/binance_parse.py and bench/kraken_parse.py give those.

``--cryptofeed`` adds cryptofeed 2.4.0's own handlers side by side, on every recorded exchange it
has a class for and whose recorded generation both sides read (bench/cryptofeed_handlers.py
``SUPPORTED``; ``NOT_COMPARED`` says why Bybit is not). cryptofeed pins aiohttp==3.9.1, so it lives
in its own venv (``.venv-cryptofeed``, made by bench/cryptofeed_venv.sh when missing), and
bench/cryptofeed_handlers.py ``--serve`` runs there as one long-lived subprocess, driven as
../shared/docs/benchmarks.md describes, timing book delta frames only. coby is replayed again
(same connector path, same ring) with only those same delta frames timed (every frame is still
fed); coby's and cryptofeed's passes alternate, so both see the same machine load, and their
medians are merged per exchange: ``coby_over_cryptofeed_throughput`` = cryptofeed µs per delta
frame / coby µs per delta frame; the top-level ``meets_2x_target`` says whether it is >= 2 on
every compared exchange (``below_2x_target`` lists the others). ``--only`` limits the run to
some recordings.

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
from actors.connectors.base import KERNEL_PATH
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
    return [_gunzipped(line.payload) for path in ws_files for line in read_recorded(path)
            if line.kind == LineKind.RECEIVED]


def _gunzipped(payload: str | bytes) -> str | bytes:
    """The JSON text of a frame (Huobi's arrive gzip-compressed)."""
    return zlib.decompress(payload, 16 + zlib.MAX_WBITS) if isinstance(payload, bytes) else payload


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


class DeltaTimer:
    """coby's connector on one whole recording (every frame fed, as in ``measure``), with only the
    frames in ``timed_payloads`` (the book delta frames cryptofeed is timed on) timed."""

    def __init__(self, prefix: str, files: list[Path], ring: Ring, timed_payloads: list[str | bytes]) -> None:
        self.prefix, self.files, self.ring = prefix, files, ring
        self.timed_payloads = set(timed_payloads)
        self.texts = [_gunzipped(payload) for payload in timed_payloads]  # in order, repeats kept
        self.module = load_exchange_module(RECORDED_NAMES.get(prefix, prefix.lower()))
        self.report: dict = {}
        self.frames = 0

    def one_pass(self) -> tuple[int, int]:
        """(ns inside on_message for the timed frames, ns of orjson.loads on the same frames)."""
        module, timed_payloads = self.module, self.timed_payloads
        # the class engine.verify replays the recording with (OKX's recorded generation has its own)
        attribute = "RECORDED_CONNECTOR" if hasattr(module, "RECORDED_CONNECTOR") else "CONNECTOR"
        base = getattr(module, attribute)
        clock = time.perf_counter_ns
        totals = [0, 0]

        class DeltaTimed(base):  # the timer wraps the real on_message, nothing else changes
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **kwargs)
                # some connectors bind on_message per instance (Kraken v1): wrap whatever is bound
                inner = self.__dict__.get("on_message") or base.on_message.__get__(self)

                def on_message(connection, data, receive_ts):
                    if data in timed_payloads:  # hashed outside the timed region
                        started = clock()
                        action = inner(connection, data, receive_ts)
                        totals[0] += clock() - started
                        totals[1] += 1
                        return action
                    return inner(connection, data, receive_ts)

                self.on_message = on_message

        setattr(module, attribute, DeltaTimed)
        try:
            self.report = verify_recording(self.prefix, self.files, timed=False, sink=self.ring)
        finally:
            setattr(module, attribute, base)
        self.ring.commit(self.ring.available())  # the consumer's side, outside the timed path
        self.frames = totals[1]
        return totals[0], orjson_ns(self.texts)


class CryptofeedProcess:
    """bench/cryptofeed_handlers.py --serve in the cryptofeed venv (made if missing): one pass per
    request, so its passes can alternate with coby's."""

    def __init__(self, recorded: Path, prefixes: list[str], untimed: dict[str, list[str]]) -> None:
        subprocess.run(["bash", str(BENCH_DIR / "cryptofeed_venv.sh"), str(CRYPTOFEED_VENV)], check=True,
                       stdout=sys.stderr)
        self.process = subprocess.Popen(
            [str(CRYPTOFEED_VENV / "bin" / "python"), str(BENCH_DIR / "cryptofeed_handlers.py"), "--serve",
             "--recorded", str(recorded), "--only", *prefixes,
             "--untimed", *[f"{prefix}:{symbol}" for prefix, symbols in untimed.items() for symbol in symbols]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.header = self._answer()

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"bench/cryptofeed_handlers.py exited with {self.process.wait()}")
        return json.loads(line)

    def one_pass(self, prefix: str) -> dict:
        self.process.stdin.write(prefix + "\n")
        return self._answer()

    def summaries(self) -> dict:
        self.process.stdin.write("\n")
        return self._answer()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


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
    theirs = CryptofeedProcess(recorded, prefixes, untimed)
    try:
        failed = dict(theirs.header.get("failed", {}))
        for prefix in prefixes:
            if prefix not in theirs.header["ready"]:
                figures[prefix]["cryptofeed_error"] = failed.get(prefix, "not measured")
                continue
            compared = compare(prefix, handlers, recorded, all_recordings[prefix], untimed[prefix], passes, ring, theirs)
            if "cryptofeed_error" in compared:
                failed[prefix] = compared["cryptofeed_error"]
            figures[prefix].update(compared)
        medians = theirs.summaries()
    finally:
        theirs.close()
    for prefix, cf in medians.items():
        figures[prefix].update({
            "cryptofeed_orjson_loads_us_per_frame": cf["orjson_loads_us_per_frame"],
            "cryptofeed_l2_book_callbacks": cf["l2_book_callbacks"],
            "cryptofeed_warnings_logged_per_pass": cf["warnings_logged_per_pass"],
            "cryptofeed_rest_snapshots_served": cf["rest_snapshots_served"],
            "timed_frames": cf["timed_frames"],
            **({"cryptofeed_driving_notes": cf["driving_notes"]} if "driving_notes" in cf else {}),
        })
    compared = [prefix for prefix in prefixes if "coby_over_cryptofeed_throughput" in figures[prefix]]
    return {
        "version": theirs.header.get("cryptofeed"),
        "python": theirs.header.get("python"),
        "venv": str(CRYPTOFEED_VENV),
        "exchanges": compared,
        "meets_2x_target": {prefix: figures[prefix]["meets_2x_target"] for prefix in compared},
        "failed": failed,
        "not_compared": {prefix: reason for prefix, reason in theirs.header.get("not_compared", {}).items()
                         if prefix in all_recordings},
        "target": f"coby_over_cryptofeed_throughput >= {CRYPTOFEED_TARGET} on every exchange, checksums on in both",
        "how_cryptofeed_was_driven": (
            "../shared/docs/benchmarks.md: symbols loaded from the recorded REST metadata through the "
            "exchange class's own symbol_mapping/_parse_symbol_data; Feed(symbols=<recording l2_book>, "
            "channels=[L2_BOOK], callbacks={L2_BOOK: async counter}, checksum_validation=True); subscribe "
            "awaited with a stand-in connection; http_conn serving the recorded REST snapshots; then "
            "await feed.message_handler(frame, conn, ts) for every book frame in file order (trades/tickers/"
            "acks not fed where an L2_BOOK-only feed would not act on them; Bitfinex gets every frame, see "
            "its cryptofeed_driving_notes); fresh Feed per pass"),
        "how_coby_was_driven": (
            "the same replay as the all-frame figures (engine.verify: every received frame of the "
            "recording through the connector's on_message into the shared-memory ring, checksums and "
            "sequence checks on), but only the frames cryptofeed is timed on are timed"),
        "frames_compared": (
            "book delta frames only, the identical frames on both sides (bench/cryptofeed_handlers.py "
            "classify; per exchange in timed_frames); snapshots, and the delta on which cryptofeed fetches "
            "a REST snapshot, are fed to both but timed by neither, and so are the delta frames of "
            "recording symbols coby does not book (book_delta_symbols_not_timed)"),
        "passes": ("coby's and cryptofeed's passes alternate, one recording at a time (cryptofeed in a "
                   "long-lived subprocess), so both see the same machine load; medians of the passes"),
        "ratio": ("coby_over_cryptofeed_throughput = cryptofeed_us_per_frame / coby_book_delta_us_per_frame "
                  "(medians); coby_over_cryptofeed_throughput_orjson_normalised = cryptofeed_ratio_to_orjson_loads "
                  "/ coby_book_delta_ratio_to_orjson_loads, each side divided by orjson.loads of the same frames "
                  "timed in its own process; meets_2x_target needs both >= 2"),
    }


def compare(prefix: str, handlers, recorded: Path, files: list[Path], untimed: list[str], passes: int, ring: Ring,
            theirs: CryptofeedProcess) -> dict:
    """Alternating passes of coby and cryptofeed over the same book delta frames of one recording."""
    timed = [payload for kind, _, payload in handlers.book_frames(recorded, prefix, frozenset(untimed))
             if kind == handlers.TIMED]
    ours = DeltaTimer(prefix, files, ring, timed)
    coby_ns, coby_orjson_ns, cf_ns, cf_orjson_ns, cf_frames = [], [], [], [], 0
    for number in range(passes):
        for side in ("coby", "cryptofeed") if number % 2 == 0 else ("cryptofeed", "coby"):
            if side == "coby":
                handler_ns, orjson_total = ours.one_pass()
                coby_ns.append(handler_ns)
                coby_orjson_ns.append(orjson_total)
                continue
            cf = theirs.one_pass(prefix)
            if "error" in cf:
                return {"cryptofeed_error": cf["error"]}
            cf_ns.append(cf["handler_ns"])
            cf_orjson_ns.append(cf["orjson_ns"])
            cf_frames = cf["timed"]
    frames = ours.frames
    coby_us = statistics.median(coby_ns) / frames / 1000 if frames else None
    cf_us = statistics.median(cf_ns) / cf_frames / 1000 if cf_frames else None
    coby_ratio = statistics.median(coby_ns) / statistics.median(coby_orjson_ns) if frames else None
    cf_ratio = statistics.median(cf_ns) / statistics.median(cf_orjson_ns) if cf_frames else None
    ratio = round(cf_us / coby_us, 2) if coby_us and cf_us else None
    normalised = round(cf_ratio / coby_ratio, 2) if coby_ratio and cf_ratio else None
    per_pass = sorted(round((c / cf_frames) / (o / frames), 2) for c, o in zip(cf_ns, coby_ns)) if frames and cf_frames else []
    report = ours.report
    print(f"[bench.connectors] {prefix:16s} book deltas: coby {coby_us and round(coby_us, 3)} us, "
          f"cryptofeed {cf_us and round(cf_us, 3)} us -> {ratio}x", file=sys.stderr)
    return {
        "book_delta_frames_timed": {"coby": frames, "cryptofeed": cf_frames},
        "book_delta_symbols_not_timed": untimed,
        "coby_book_delta_us_per_frame": coby_us and round(coby_us, 3),
        "coby_book_delta_frames_per_s": coby_us and round(1e6 / coby_us),
        "coby_book_delta_ratio_to_orjson_loads": coby_ratio and round(coby_ratio, 2),
        "coby_book_delta_checksums": {"ok": report["checksums_ok"], "failed": report["checksums_failed"]},
        "coby_gaps": report["gaps"],
        "cryptofeed_us_per_frame": cf_us and round(cf_us, 3),
        "cryptofeed_frames_per_s": cf_us and round(1e6 / cf_us),
        "cryptofeed_ratio_to_orjson_loads": cf_ratio and round(cf_ratio, 2),
        "coby_over_cryptofeed_throughput": ratio,
        "coby_over_cryptofeed_throughput_orjson_normalised": normalised,
        "coby_over_cryptofeed_throughput_per_pass": per_pass,
        "meets_2x_target": None not in (ratio, normalised) and min(ratio, normalised) >= CRYPTOFEED_TARGET,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recorded", type=Path, default=recorded_dir(), help="directory of recordings")
    parser.add_argument("--passes", type=int, default=7, help="replays per recording (median kept)")
    parser.add_argument("--cryptofeed", action="store_true",
                        help="also time cryptofeed 2.4.0's handlers (own venv, made if missing) on the same book delta frames")
    parser.add_argument("--only", nargs="*", default=None, metavar="PREFIX", help="recording prefixes (default: all)")
    args = parser.parse_args(argv)
    if args.recorded is None:
        raise SystemExit("no recordings: set COBY_RECORDED_DIR or pass --recorded DIR")
    figures, skipped, cryptofeed = {}, {}, None
    all_recordings = recordings([args.recorded])
    if args.only is not None:
        all_recordings = {prefix: files for prefix, files in all_recordings.items() if prefix in args.only}
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
        "connector_kernel_path": KERNEL_PATH,
        "exchanges": figures,
        "skipped": skipped,
        **({"cryptofeed": cryptofeed, **_target_summary(cryptofeed)} if cryptofeed is not None else {}),
    }


def _target_summary(cryptofeed: dict) -> dict:
    """The issue's target at the top level: met on every compared exchange, and where it is not."""
    met = cryptofeed["meets_2x_target"]
    return {
        "meets_2x_target": bool(met) and all(met.values()) and not cryptofeed["failed"],
        "below_2x_target": sorted(prefix for prefix, ok in met.items() if not ok),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
