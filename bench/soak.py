"""Soak: the whole engine on the simulator at high rate for a long time, watched for leaks and drift.

The simulator runs in this process (``sim.threaded``) at ``--pace`` times market pace (a step of
``pace × cadence`` market seconds every ``cadence``), serving every venue of ``--exchanges``; a
supervisor runs the connectors, aggregator, features, signals, storage (SQLite in a temporary
directory) and the api on it. Every ``--sample-s`` it records, per actor, RSS and open file
descriptors; the instance's shared-memory segments (count and bytes); every ring's fill and the
storage feed's; the connectors' resync total; and the end-to-end latency of the consolidated book
(a subscriber's ``book.`` message received → the newest connector receive time in that book: the
connector's parse, ring, aggregator, publish and bus, the whole engine path).

Prints one line per sample, then one JSON object on the last line:

- ``rss_growth_pct_per_hour``: per actor, the slope of RSS over the run after ``--warmup-s``
  (least squares), as % of its RSS at the end of the warm-up, per hour (target: within 5%);
  ``..._second_half``: the same over the second half of that window only, which tells a bounded
  cache still filling (its slope falls) from a leak (it does not);
  RSS counts the shared-memory pages an actor has touched (the aggregator maps every book), so
  ``private_growth_pct_per_hour`` gives the same for private memory (USS), where a leak shows;
- ``fds_start``/``fds_after_warmup``/``fds_end``, ``shm_segments_start``/``shm_segments_end``
  (target: equal; the first sample can still hold start-up's REST connections, so ``fds_flat``
  compares the end with the first sample after the warm-up);
- ``latency_p99_ms_first_10pct``/``last_10pct`` and their ratio (target: within 20%);
- resyncs over the run, max ring and feed fill, and the figures behind each verdict.

    .venv/bin/python bench/soak.py                     # 30 min at 20x market pace
    .venv/bin/python bench/soak.py --minutes 4         # a short check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.client import attach  # noqa: E402
from engine.config import Config, load_config, only_these_exchanges  # noqa: E402
from engine.supervisor import Supervisor, default_actor_specs, free_ports  # noqa: E402
from shm.records import Status  # noqa: E402
from shm.registry import list_segments  # noqa: E402
from sim.threaded import BackgroundSimulator  # noqa: E402
from tests.engine_support import running  # noqa: E402

DEFAULT_EXCHANGES = "binance,okx,kraken,bybit,gateio,bitfinex"
SYMBOLS = ["BTC/USDT", "ETH/USDT"]
EXCHANGE_SYMBOLS = {"bybit": ["BTC/USDT", "BTC/USDT:PERP"]}


def engine_config(instance: str, overrides: dict[str, Any]) -> Config:
    """The default config on free ports under its own instance, only the exchanges named."""
    any_port = "tcp://127.0.0.1:0"
    base: dict[str, Any] = {
        "engine": {"instance": instance, "runtime_dir": f"/tmp/coby-soak-{instance}"},
        "endpoints": {"control": any_port, "bus_publish": any_port, "bus_subscribe": any_port},
        **overrides,
    }
    base["exchanges"] = only_these_exchanges(overrides["exchanges"])
    return load_config(None, env={}, overrides=base)


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def soak_config(instance: str, exchanges: list[str], data: Path, simulator: BackgroundSimulator | None = None) -> Config:
    settings = {name: {"symbols": EXCHANGE_SYMBOLS.get(name, SYMBOLS)} for name in exchanges}
    overrides: dict[str, Any] = {
        "exchanges": settings,
        "storage": {"enabled": True, "sqlite_path": str(data / "soak.sqlite")},
        "api": {"enabled": True, "port": free_ports(1)[0]},
        "supervisor": {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 10.0, "restart_backoff_initial_s": 0.5},
    }
    config = engine_config(instance, overrides)
    if simulator is not None:
        for name, server in simulator.servers.items():
            path = config.exchanges[name].ws_url.split("://", 1)[1].partition("/")[2]
            settings[name].update({"ws_url": f"{server.ws_url}/{path}".rstrip("/"), "rest_url": server.http_url})
        config = engine_config(instance, overrides)
    return config


class LatencyProbe:
    """A consumer thread: for each ``book.`` message, now minus the newest connector receive time
    in that book (ms), kept with the time it was taken."""

    def __init__(self, instance: str) -> None:
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(instance,), daemon=True)
        self.thread.start()

    def _run(self, instance: str) -> None:
        client = attach(instance)
        handles = {}
        try:
            for topic, _message in client.subscribe(["book."], timeout_ms=1000):
                if self.stop.is_set():
                    return
                symbol = topic.removeprefix("book.")
                handle = handles.get(symbol) or handles.setdefault(symbol, client.book(symbol))
                try:
                    with handle.view() as live:
                        newest = int(live.slot["exchange_receive_ts"].max())
                except Exception:  # noqa: BLE001 - a stale read is skipped, never a reason to stop measuring
                    continue
                now = time.time_ns()
                if newest > 0:
                    self.samples.append((time.monotonic(), (now - newest) / 1e6))
        finally:
            client.close()


def process_fds(pid: int) -> int:
    try:
        return psutil.Process(pid).num_fds()
    except psutil.Error:
        return 0


def shm_bytes(names: list[str]) -> int:
    total = 0
    for name in names:
        path = Path("/dev/shm") / name.lstrip("/")
        if path.exists():
            total += path.stat().st_size
    return total


def sample(supervisor: Supervisor, instance: str) -> dict:
    status = supervisor.status()
    actors = {}
    for entry in status["actors"]:
        pid = entry["pid"]
        rss = private = 0
        if pid:
            try:
                memory = psutil.Process(pid).memory_full_info()
                rss, private = memory.rss, memory.uss
            except psutil.Error:
                pass
        actors[entry["name"]] = {"rss": rss, "private": private, "fds": process_fds(pid) if pid else 0,
                                 "restarts": entry["restarts"]}
    segments = list_segments(instance)
    resyncs = sum(
        symbol["resyncs"] for counters in status["exchanges"].values() for symbol in counters.get("symbols", {}).values()
    )
    return {
        "t": time.monotonic(),
        "actors": actors,
        "supervisor_fds": process_fds(psutil.Process().pid),
        "shm_segments": len(segments),
        "shm_bytes": shm_bytes(segments),
        "ring_fill": max((ring["fill_ratio"] for ring in status["rings"].values()), default=0.0),
        "feed_fill": status.get("storage_feed", {}).get("fill_ratio", 0.0),
        "resyncs": resyncs,
    }


def growth_pct_per_hour(times: np.ndarray, values: np.ndarray) -> float:
    if len(times) < 3 or values[0] <= 0:
        return 0.0
    slope = np.polyfit(times - times[0], values, 1)[0]  # bytes per second
    return float(slope * 3600.0 / values[0] * 100.0)


def summarise(samples: list[dict], latencies: list[tuple[float, float]], warmup_s: float, started: float) -> dict:
    after = [s for s in samples if s["t"] - started >= warmup_s] or samples
    late = after[len(after) // 2 :]  # a bounded cache still filling slows down here; a leak does not
    growth, private_growth, late_growth, late_private_growth = {}, {}, {}, {}
    for name in samples[-1]["actors"]:
        for window, rss_out, private_out in ((after, growth, private_growth), (late, late_growth, late_private_growth)):
            times = np.array([s["t"] for s in window])
            rss = np.array([s["actors"].get(name, {}).get("rss", 0) for s in window], dtype=float)
            private = np.array([s["actors"].get(name, {}).get("private", 0) for s in window], dtype=float)
            rss_out[name] = round(growth_pct_per_hour(times, rss), 2)
            private_out[name] = round(growth_pct_per_hour(times, private), 2)
    start, end = samples[0], samples[-1]

    def fds(sample: dict) -> int:
        return sample["supervisor_fds"] + sum(a["fds"] for a in sample["actors"].values())

    fds_start, fds_after_warmup, fds_end = fds(start), fds(after[0]), fds(end)
    span = end["t"] - started
    first = [ms for t, ms in latencies if t - started <= 0.1 * span]
    last = [ms for t, ms in latencies if t - started >= 0.9 * span]
    p99_first = float(np.percentile(first, 99)) if first else float("nan")
    p99_last = float(np.percentile(last, 99)) if last else float("nan")
    return {
        "duration_s": round(span, 1),
        "rss_growth_pct_per_hour": growth,
        "rss_growth_within_5pct": all(abs(value) <= 5.0 for value in growth.values()),
        "private_growth_pct_per_hour": private_growth,
        "private_growth_within_5pct": all(abs(value) <= 5.0 for value in private_growth.values()),
        "rss_growth_pct_per_hour_second_half": late_growth,
        "private_growth_pct_per_hour_second_half": late_private_growth,
        "rss_mb_end": {name: round(a["rss"] / 2**20, 1) for name, a in end["actors"].items()},
        "fds_start": fds_start,
        "fds_after_warmup": fds_after_warmup,  # the start sample may catch start-up's REST connections
        "fds_end": fds_end,
        "fds_flat": fds_end <= fds_after_warmup,
        "shm_segments_start": start["shm_segments"],
        "shm_segments_end": end["shm_segments"],
        "shm_bytes_start": start["shm_bytes"],
        "shm_bytes_end": end["shm_bytes"],
        "latency_samples": len(latencies),
        "latency_p50_ms": round(float(np.percentile([ms for _, ms in latencies], 50)), 3) if latencies else None,
        "latency_p99_ms_first_10pct": round(p99_first, 3),
        "latency_p99_ms_last_10pct": round(p99_last, 3),
        "latency_p99_last_over_first": round(p99_last / p99_first, 3) if first and last else None,
        "resyncs": end["resyncs"] - start["resyncs"],
        "restarts": {name: a["restarts"] for name, a in end["actors"].items() if a["restarts"]},
        "max_ring_fill": round(max(s["ring_fill"] for s in samples), 4),
        "max_feed_fill": round(max(s["feed_fill"] for s in samples), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    parser.add_argument("--pace", type=float, default=20.0, help="market seconds per wall second (default 20)")
    parser.add_argument("--cadence-ms", type=float, default=20.0, help="wall ms between market steps (default 20)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--warmup-s", type=float, default=None, help="excluded from RSS growth (default 20%% of the run)")
    parser.add_argument("--exchanges", default=DEFAULT_EXCHANGES, help=f"comma-separated (default {DEFAULT_EXCHANGES})")
    arguments = parser.parse_args()
    duration_s = arguments.minutes * 60.0
    warmup_s = arguments.warmup_s if arguments.warmup_s is not None else 0.2 * duration_s
    exchanges = arguments.exchanges.split(",")
    cadence_s = arguments.cadence_ms / 1000.0
    instance = f"soak{os.getpid() % 100000}"
    with tempfile.TemporaryDirectory(prefix="coby-soak-") as data:
        simulator = BackgroundSimulator(soak_config(instance, exchanges, Path(data)), cadence_s, cadence_s * arguments.pace)
        try:
            config = soak_config(instance, exchanges, Path(data), simulator)
            with running(Supervisor(config, default_actor_specs(config))) as supervisor:
                client = attach(instance)
                wait_for(lambda: all(
                    client.book(symbol).snapshot().exchange(exchange).status == Status.IN_SYNC
                    for exchange in exchanges for symbol in config.exchanges[exchange].symbols
                ), timeout_s=60, what="every book in sync")
                client.close()
                probe = LatencyProbe(instance)
                started = time.monotonic()
                samples = [sample(supervisor, instance)]
                while time.monotonic() - started < duration_s:
                    time.sleep(arguments.sample_s)
                    samples.append(current := sample(supervisor, instance))
                    recent = [ms for t, ms in probe.samples if t >= current["t"] - arguments.sample_s]
                    rss = sum(a["rss"] for a in current["actors"].values()) / 2**20
                    print(
                        f"{current['t'] - started:7.0f}s rss {rss:7.1f} MiB fds "
                        f"{current['supervisor_fds'] + sum(a['fds'] for a in current['actors'].values()):4d} "
                        f"shm {current['shm_segments']:3d} ring {current['ring_fill']:.3f} feed {current['feed_fill']:.3f} "
                        f"resyncs {current['resyncs']:4d} p99 {np.percentile(recent, 99) if recent else float('nan'):7.2f} ms",
                        flush=True,
                    )
                probe.stop.set()
                probe.thread.join(5)
                result = summarise(samples, list(probe.samples), warmup_s, started)
                result.update({"pace": arguments.pace, "exchanges": exchanges, "warmup_s": warmup_s})
        finally:
            simulator.stop()
    result["shm_segments_after_shutdown"] = len(list_segments(instance))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
