"""Shared-memory ring vs multiprocessing.Queue vs ZeroMQ ipc PUSH/PULL, side by side.

Each transport carries the same 64-byte records in the same batches (a seeded
distribution of frame sizes like a Binance depth stream's) from one spawned producer
process to one spawned consumer process, in the same run:

- throughput: the producer sends ``--records`` records as fast as the transport lets it
  (the ring's producer waits when the ring is full and counts those waits; the Queue is
  bounded and ZeroMQ has its default high-water mark, so every transport has
  backpressure), the consumer receives them all; wall time runs from the producer's
  first send to the consumer's last receive. ``--repeats`` rounds, median kept.
- latency: the producer stamps ``receive_ts = time.monotonic_ns()`` (one clock for every
  process on Linux) into each batch just before sending it, at a fixed modest rate; the
  consumer takes ``now - receive_ts`` on arrival. Per-record percentiles, pooled over
  ``--latency-segments`` segments, and the median of the segments' p99s.

All pairs are started up front and their phases interleaved (ring, queue, zmq, ring,
…), one pair running at a time, so a host hiccup lands in one segment of one transport
instead of biasing a whole transport. The host's steal time during the run is
reported: on a shared VM it, not the transport, sets the millisecond tails.

The ring consumer never busy-spins: with nothing to read it spins for at most
``--spin-us`` and then blocks on a pipe doorbell the producer rings only while the
consumer has announced it is waiting (``Ring.prepare_to_wait``).

Progress goes to stderr; the last stdout line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import select
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np
import zmq

import shm.ring
from shm.records import RECORD_DTYPE, Kind, Side, empty_records
from shm.ring import Ring
from shm.segment import SegmentKind, segment_name, unlink_segment

TRANSPORTS = ("ring", "ring_python", "ring_nospin", "queue", "zmq")
RING_KINDS = ("ring", "ring_python", "ring_nospin")
DEFAULT_BATCH_MAX = 20
POOL_RECORDS = 1 << 16
QUEUE_MAXSIZE = 1000
DOORBELL_TIMEOUT_S = 0.1
WARMUP_BATCHES = 200


def cpu_times() -> list[int]:
    """The host's aggregate CPU jiffies from /proc/stat (user … steal), or [] off Linux."""
    try:
        with open("/proc/stat") as stat:
            return [int(value) for value in stat.readline().split()[1:9]]
    except OSError:
        return []


def steal_percent(before: list[int], after: list[int]) -> float | None:
    """Share of CPU time the hypervisor gave to other guests: on a shared host, the
    usual cause of millisecond latency tails that no transport can avoid."""
    if not before or not after:
        return None
    deltas = [late - early for early, late in zip(before, after)]
    return round(100.0 * deltas[7] / sum(deltas), 1) if sum(deltas) else None


def log(message: str) -> None:
    print(f"[bench.ring] {message}", file=sys.stderr, flush=True)


def batch_sizes(seed: int, count: int, batch_max: int) -> np.ndarray:
    """Frame sizes uniform in 1..batch_max levels (Binance depth frames carry ~1-20 levels)."""
    return np.random.default_rng(seed).integers(1, batch_max + 1, count)


def sizes_for_records(seed: int, records: int, batch_max: int) -> np.ndarray:
    """The seeded batch sizes, trimmed so they add up to exactly ``records``."""
    mean = (1 + batch_max) / 2
    sizes = batch_sizes(seed, int(records / mean * 1.2) + 16, batch_max)
    ends = np.cumsum(sizes)
    last = int(np.searchsorted(ends, records))
    sizes = sizes[: last + 1].copy()
    sizes[-1] -= int(ends[last]) - records
    return sizes


def record_pool() -> np.ndarray:
    """Plausible level records to slice batches from (contents do not affect transport)."""
    pool = empty_records(POOL_RECORDS)
    index = np.arange(POOL_RECORDS)
    pool["exchange_ts"] = 1_700_000_000_000_000_000 + index * 1_000_000
    pool["price"] = 65_000.0 + (index % 200) * 0.1
    pool["size"] = 0.001 * (index % 997)
    pool["sequence"] = index
    pool["symbol_id"] = 1
    pool["exchange_id"] = 1
    pool["kind"] = int(Kind.LEVEL)
    pool["side"] = np.where(index % 2, int(Side.BID), int(Side.ASK))
    return pool


def batches(pool: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    """Slices of the pool, one per batch, prepared before the clock starts."""
    out, offset = [], 0
    for size in sizes.tolist():
        if offset + size > len(pool):
            offset = 0
        out.append(pool[offset : offset + size])
        offset += size
    return out


# ---- transports: a sender and a receiver per kind -------------------------------------


class RingSender:
    """Producer side; when the ring is full it waits for room, counting each wait."""

    def __init__(self, ring_name: str, doorbell_fd: int) -> None:
        self.ring = Ring.attach(ring_name)
        self.ring.become_producer()
        os.set_blocking(doorbell_fd, False)
        self._doorbell_fd = doorbell_fd
        self.ring.doorbell = self._ring_doorbell
        self.full_waits = 0

    def _ring_doorbell(self) -> None:
        try:
            os.write(self._doorbell_fd, b"\x01")
        except BlockingIOError:
            pass  # pipe full: the consumer has wake-ups pending anyway

    def send(self, batch: np.ndarray) -> None:
        ring = self.ring
        if ring.write(batch):
            return
        self.full_waits += 1
        while ring.free() < len(batch):
            time.sleep(0)
        ring.write(batch)

    def close(self) -> None:
        self.ring.close()


class RingReceiver:
    """Consumer side: zero-copy chunks; a bounded spin, then a blocking doorbell wait."""

    def __init__(self, ring_name: str, doorbell_fd: int, spin_ns: int) -> None:
        self.ring = Ring.attach(ring_name)
        self.ring.become_consumer()
        os.set_blocking(doorbell_fd, False)
        self._doorbell_fd = doorbell_fd
        self._poller = select.poll()
        self._poller.register(doorbell_fd, select.POLLIN)
        self._spin_ns = spin_ns
        self._pending = 0
        self.sleeps = 0
        self.timeouts = 0
        self.timeouts_with_records_waiting = 0

    def receive(self) -> np.ndarray:
        ring = self.ring
        if self._pending:
            ring.commit(self._pending)
            self._pending = 0
        while True:
            chunk = ring.read()
            if len(chunk):
                self._pending = len(chunk)
                return chunk
            if self._spin_ns:
                deadline = time.monotonic_ns() + self._spin_ns
                while not ring.available() and time.monotonic_ns() < deadline:
                    pass
                if ring.available():
                    continue
            if ring.prepare_to_wait():
                self.sleeps += 1
                if not self._poller.poll(DOORBELL_TIMEOUT_S * 1000):
                    self.timeouts += 1
                    # Records waiting after a silent doorbell would mean a lost wake-up;
                    # none waiting means the producer itself was silent (a host stall).
                    self.timeouts_with_records_waiting += ring.available() > 0
                self._drain_doorbell()
                ring.done_waiting()

    def _drain_doorbell(self) -> None:
        try:
            while os.read(self._doorbell_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def stats(self) -> dict[str, Any]:
        stats = self.ring.stats()
        return {
            "doorbell_sleeps": self.sleeps,
            "doorbell_timeouts": self.timeouts,
            "doorbell_timeouts_with_records_waiting": self.timeouts_with_records_waiting,
            "dropped_records": stats["dropped_records"],
        }

    def close(self) -> None:
        if self._pending:
            self.ring.commit(self._pending)
        self.ring.close()


class QueueSender:
    """``multiprocessing.Queue`` carrying each batch's raw bytes (cheaper than pickling arrays)."""

    full_waits = 0

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def send(self, batch: np.ndarray) -> None:
        self.queue.put(batch.tobytes())

    def close(self) -> None:
        self.queue.close()
        self.queue.join_thread()


class QueueReceiver:
    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def receive(self) -> np.ndarray:
        return np.frombuffer(self.queue.get(), RECORD_DTYPE)

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class ZmqSender:
    """ZeroMQ PUSH over ipc://, one message per batch (the records' bytes)."""

    full_waits = 0

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUSH)
        self.socket.connect(endpoint)

    def send(self, batch: np.ndarray) -> None:
        self.socket.send(batch)

    def close(self) -> None:
        self.socket.close(linger=1000)
        self.context.term()


class ZmqReceiver:
    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PULL)
        self.socket.bind(endpoint)

    def receive(self) -> np.ndarray:
        return np.frombuffer(self.socket.recv(), RECORD_DTYPE)

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


def open_sender(kind: str, channel: dict[str, Any]) -> Any:
    if kind in RING_KINDS:
        if kind == "ring_python":
            shm.ring._fastring = None  # this producer process only: the pure-Python write path
        return RingSender(channel["ring_name"], channel["doorbell_write"].fileno())
    if kind == "queue":
        return QueueSender(channel["queue"])
    return ZmqSender(channel["endpoint"])


def open_receiver(kind: str, channel: dict[str, Any], spin_ns: int) -> Any:
    if kind in RING_KINDS:
        spin = 0 if kind == "ring_nospin" else spin_ns
        return RingReceiver(channel["ring_name"], channel["doorbell_read"].fileno(), spin)
    if kind == "queue":
        return QueueReceiver(channel["queue"])
    return ZmqReceiver(channel["endpoint"])


# ---- the two processes -------------------------------------------------------------


def producer_main(kind: str, channel: dict[str, Any], plan: dict[str, Any], barrier: Any, results: Any) -> None:
    """Runs each scheduled phase when the parent releases it; reports start times and waits."""
    sender = open_sender(kind, channel)
    pool = record_pool()
    throughput_batches = batches(pool, plan["throughput_sizes"])
    latency_batches = batches(pool, plan["latency_sizes"])
    interval_ns = int(1e9 / plan["latency_rate"])
    starts, full_waits = [], []
    barrier.wait()  # set up
    for phase in plan["schedule"]:
        barrier.wait()
        if phase == "throughput":
            waits_before = sender.full_waits
            starts.append(time.monotonic_ns())
            for batch in throughput_batches:
                sender.send(batch)
            full_waits.append(sender.full_waits - waits_before)
        else:
            due = time.monotonic_ns()
            for batch in latency_batches:
                due += interval_ns
                delay = due - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
                batch["receive_ts"] = time.monotonic_ns()
                sender.send(batch)
        barrier.wait()  # the consumer has everything
    write_path = sender.ring.write_path if kind in RING_KINDS else None
    results.put((kind, "producer", {"starts": starts, "full_waits": full_waits, "write_path": write_path}))
    sender.close()


def consumer_main(kind: str, channel: dict[str, Any], plan: dict[str, Any], barrier: Any, results: Any) -> None:
    """Receives every record of every phase; reports end times and per-record latencies."""
    receiver = open_receiver(kind, channel, plan["spin_ns"])
    throughput_total = int(plan["throughput_sizes"].sum())
    latency_total = int(plan["latency_sizes"].sum())
    ends, latency_segments = [], []
    latency_cpu = latency_wall = 0.0
    barrier.wait()
    for phase in plan["schedule"]:
        barrier.wait()
        received = 0
        if phase == "throughput":
            while received < throughput_total:
                received += len(receiver.receive())
            ends.append(time.monotonic_ns())
        else:
            latencies = np.empty(latency_total, np.int64)
            cpu_before, wall_before = time.process_time(), time.monotonic()
            while received < latency_total:
                chunk = receiver.receive()
                now = time.monotonic_ns()
                latencies[received : received + len(chunk)] = now - chunk["receive_ts"]
                received += len(chunk)
            latency_cpu += time.process_time() - cpu_before
            latency_wall += time.monotonic() - wall_before
            latency_segments.append(latencies)
        barrier.wait()
    report = {
        "ends": ends,
        "latency_segments_ns": latency_segments,
        "latency_consumer_cpu_fraction": round(latency_cpu / latency_wall, 3) if latency_wall else None,
        **receiver.stats(),
    }
    results.put((kind, "consumer", report))
    receiver.close()


# ---- orchestration -----------------------------------------------------------------


def open_channel(kind: str, context: Any, capacity: int, workdir: str) -> dict[str, Any]:
    if kind in RING_KINDS:
        ring_name = segment_name(f"bench{os.getpid()}", SegmentKind.RING, kind)
        Ring.create(ring_name, capacity).close()
        doorbell_read, doorbell_write = context.Pipe(duplex=False)
        return {"ring_name": ring_name, "doorbell_read": doorbell_read, "doorbell_write": doorbell_write}
    if kind == "queue":
        return {"queue": context.Queue(maxsize=QUEUE_MAXSIZE)}
    return {"endpoint": f"ipc://{workdir}/zmq-{os.getpid()}"}


def latency_figures(segments_ns: list[np.ndarray], warmup_records: int) -> dict[str, Any]:
    """Pooled percentiles, plus the median of per-segment p99s (robust to one host stall)."""
    segments_us = [segment[warmup_records:] / 1000.0 for segment in segments_ns]
    pooled = np.concatenate(segments_us)
    return {
        "p50": round(float(np.percentile(pooled, 50)), 1),
        "p99": round(float(np.percentile(pooled, 99)), 1),
        "p99_9": round(float(np.percentile(pooled, 99.9)), 1),
        "max": round(float(pooled.max()), 1),
        "p99_each_segment": [round(float(np.percentile(segment, 99)), 1) for segment in segments_us],
        "p99_median_of_segments": round(float(np.median([np.percentile(segment, 99) for segment in segments_us])), 1),
        "records": int(len(pooled)),
    }


def run_all(kinds: list[str], plan: dict[str, Any], capacity: int, workdir: str) -> dict[str, dict[str, Any]]:
    """One producer/consumer pair per transport, all started up front; phases are
    run one pair at a time and interleaved across transports, so a stall of the host
    hits one segment of one transport rather than a transport's whole measurement."""
    context = mp.get_context("spawn")
    channels = {kind: open_channel(kind, context, capacity, workdir) for kind in kinds}
    barriers = {kind: context.Barrier(3) for kind in kinds}
    results = context.Queue()
    processes = [
        context.Process(
            target=main, args=(kind, channels[kind], plan, barriers[kind], results), name=f"{kind}-{role}", daemon=True
        )
        for kind in kinds
        for role, main in (("consumer", consumer_main), ("producer", producer_main))
    ]
    timeout = plan["timeout_s"]
    try:
        for process in processes:
            process.start()
        for kind in kinds:
            barriers[kind].wait(timeout)
        for number, phase in enumerate(plan["schedule"]):
            for kind in kinds:
                began = time.monotonic()
                barriers[kind].wait(timeout)
                barriers[kind].wait(timeout)
                elapsed = time.monotonic() - began
                log(f"phase {number + 1}/{len(plan['schedule'])} {phase:10s} {kind:11s} {elapsed:5.2f} s")
        reports: dict[str, dict[str, Any]] = {kind: {} for kind in kinds}
        for _ in processes:
            kind, role, report = results.get(timeout=timeout)
            reports[kind][role] = report
        for process in processes:
            process.join(timeout=10)
            if process.exitcode != 0:
                raise RuntimeError(f"{process.name} exited with {process.exitcode}")
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        for channel in channels.values():
            if "ring_name" in channel:
                unlink_segment(channel["ring_name"])
    throughput_total = int(plan["throughput_sizes"].sum())
    warmup_records = int(plan["latency_sizes"][:WARMUP_BATCHES].sum())
    figures = {}
    for kind in kinds:
        producer, consumer = reports[kind]["producer"], reports[kind]["consumer"]
        rates = [throughput_total / ((end - start) / 1e9) for start, end in zip(producer["starts"], consumer["ends"])]
        figures[kind] = {
            "records_per_s": round(statistics.median(rates)),
            "records_per_s_each_round": [round(rate) for rate in rates],
            "latency_us": latency_figures(consumer["latency_segments_ns"], warmup_records)
            if consumer["latency_segments_ns"]
            else None,
            "latency_consumer_cpu_fraction": consumer["latency_consumer_cpu_fraction"],
        }
        if kind in RING_KINDS:
            figures[kind]["write_path"] = producer["write_path"]
            figures[kind]["producer_full_waits_each_round"] = producer["full_waits"]
            figures[kind]["doorbell_sleeps"] = consumer["doorbell_sleeps"]
            figures[kind]["doorbell_timeouts"] = consumer["doorbell_timeouts"]
            figures[kind]["doorbell_timeouts_with_records_waiting"] = consumer["doorbell_timeouts_with_records_waiting"]
            # The ring counts a refused write as dropped; here each one was retried.
            figures[kind]["refused_then_retried_records"] = consumer["dropped_records"]
    return figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 10 s instead of about 60 s")
    parser.add_argument("--records", type=int, help="records per throughput round")
    parser.add_argument("--repeats", type=int, help="throughput rounds per transport (median kept)")
    parser.add_argument("--latency-seconds", type=float, help="length of each paced latency segment")
    parser.add_argument("--latency-segments", type=int, help="latency segments per transport")
    parser.add_argument("--latency-rate", type=int, default=3000, help="batches per second when measuring latency")
    parser.add_argument("--capacity", type=int, default=1 << 14, help="ring capacity in records (power of two)")
    parser.add_argument("--spin-us", type=float, default=50.0, help="ring consumer's bounded spin before blocking")
    parser.add_argument("--batch-max", type=int, default=DEFAULT_BATCH_MAX, help="batch sizes are uniform in 1..this")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument(
        "--sweep",
        default="1,100,2000",
        help="fixed batch sizes for an extra throughput-only comparison (empty: none); 1 = one record per "
        "message (trades), 2000 = a 1000-level snapshot",
    )
    args = parser.parse_args(argv)
    quick_defaults = {"records": 300_000, "repeats": 2, "latency_seconds": 0.6, "latency_segments": 2}
    full_defaults = {"records": 1_500_000, "repeats": 3, "latency_seconds": 1.2, "latency_segments": 5}
    for name, value in (quick_defaults if args.quick else full_defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def sweep_records(size: int, quick: bool) -> int:
    """Enough records for each round to last well past process scheduling noise."""
    records = 200_000 if size == 1 else min(size * 40_000, 16_000_000)
    return records // 5 if quick else records


def throughput_sweep(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    """Throughput at fixed batch sizes: how the ring's lead depends on records per call."""
    kinds = [kind for kind in ("ring", "queue", "zmq") if kind in args.transports.split(",")]
    sweep: dict[str, Any] = {}
    for size in (int(text) for text in args.sweep.split(",") if text):
        records = sweep_records(size, args.quick) // size * size
        plan = {
            "throughput_sizes": np.full(records // size, size),
            "latency_sizes": np.full(1, size),
            "schedule": ["throughput"] * 2,
            "latency_rate": args.latency_rate,
            "spin_ns": int(args.spin_us * 1000),
            "timeout_s": 300.0,
        }
        log(f"sweep: batches of {size} records, {records:,} records a round")
        figures = run_all(kinds, plan, max(args.capacity, 1 << (2 * size - 1).bit_length()), workdir)
        rates = {kind: figures[kind]["records_per_s"] for kind in kinds}
        sweep[str(size)] = {
            "records_per_s": rates,
            "ring_over_queue": ratio(rates.get("ring", 0), rates.get("queue", 0)),
            "ring_over_zmq": ratio(rates.get("ring", 0), rates.get("zmq", 0)),
        }
    return sweep


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 2) if denominator else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    kinds = [kind for kind in args.transports.split(",") if kind]
    unknown = set(kinds) - set(TRANSPORTS)
    if unknown:
        raise SystemExit(f"unknown transports {sorted(unknown)}; choose from {TRANSPORTS}")
    latency_batch_count = int(args.latency_rate * args.latency_seconds)
    schedule = []
    for index in range(max(args.repeats, args.latency_segments)):
        schedule += ["throughput"] * (index < args.repeats) + ["latency"] * (index < args.latency_segments)
    plan = {
        "throughput_sizes": sizes_for_records(args.seed, args.records, args.batch_max),
        "latency_sizes": batch_sizes(args.seed + 1, latency_batch_count, args.batch_max),
        "schedule": schedule,
        "latency_rate": args.latency_rate,
        "spin_ns": int(args.spin_us * 1000),
        "timeout_s": 120.0,
    }
    log(
        f"{', '.join(kinds)}: {args.repeats} rounds of {args.records:,} records and {args.latency_segments} "
        f"latency segments of {latency_batch_count:,} batches at {args.latency_rate}/s, interleaved"
    )
    workdir = tempfile.mkdtemp(prefix="coby-bench-ring-")
    times_before = cpu_times()
    try:
        figures = run_all(kinds, plan, args.capacity, workdir)
        sweep = throughput_sweep(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    host_steal = steal_percent(times_before, cpu_times())
    for kind, figure in figures.items():
        latency = figure["latency_us"]
        log(f"{kind:11s}: {figure['records_per_s']:>12,} records/s   latency p50 {latency['p50']} us, "
            f"p99 {latency['p99']} us (median of segments {latency['p99_median_of_segments']} us)")
    report: dict[str, Any] = {
        "bench": "ring",
        "records_per_round": args.records,
        "record_bytes": RECORD_DTYPE.itemsize,
        "batch_sizes": f"uniform integer 1..{args.batch_max} records (numpy default_rng seed {args.seed}), "
        f"mean {float(plan['throughput_sizes'].mean()):.2f}",
        "throughput_rounds": args.repeats,
        "throughput": "median over rounds of records / (consumer's last receive - producer's first send)",
        "latency_rate_batches_per_s": args.latency_rate,
        "latency_segments": args.latency_segments,
        "latency_batches_per_segment": latency_batch_count,
        "latency_clock": "time.monotonic_ns stamped into receive_ts just before send; per record; "
        f"first {WARMUP_BATCHES} batches of each segment skipped",
        "schedule": "all pairs started up front, phases interleaved across transports one pair at a time",
        "ring_capacity_records": args.capacity,
        "ring_consumer": f"read()+commit zero-copy; when empty, spin up to {args.spin_us:g} us on available() "
        f"(ring_nospin: no spin; ring_python: the pure-Python producer), then prepare_to_wait() and block on a pipe doorbell (poll, "
        f"{DOORBELL_TIMEOUT_S * 1000:g} ms timeout)",
        "ring_producer": "Ring.write (the C producer of shm/_fastring.c when built; see write_path); if refused "
        "(full), sleep(0) until free() fits, then write again (counted)",
        "queue": f"multiprocessing.Queue(maxsize={QUEUE_MAXSIZE}) of batch.tobytes()",
        "zmq": f"pyzmq {zmq.__version__} PUSH/PULL ipc://, one message per batch, default HWM",
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "steal_percent_during_run": host_steal,
        },
        "records_per_s": {kind: figures[kind]["records_per_s"] for kind in figures},
        "latency_us": {
            kind: {key: figures[kind]["latency_us"][key] for key in ("p50", "p99", "p99_median_of_segments")}
            for kind in figures
        },
        "transports": figures,
        "throughput_by_batch_size": sweep,
    }
    if {"ring", "queue", "zmq"} <= figures.keys():
        ring, queue, zmq_ = figures["ring"], figures["queue"], figures["zmq"]
        report["throughput_ratio"] = {
            "ring_over_queue": ratio(ring["records_per_s"], queue["records_per_s"]),
            "ring_over_zmq": ratio(ring["records_per_s"], zmq_["records_per_s"]),
        }
        report["latency_ratio"] = {
            f"ring_over_{other}_{percentile}": ratio(ring["latency_us"][percentile], theirs["latency_us"][percentile])
            for other, theirs in (("queue", queue), ("zmq", zmq_))
            for percentile in ("p50", "p99", "p99_median_of_segments")
        }
        report["targets_met"] = {
            "throughput_ring_ge_20x_queue": report["throughput_ratio"]["ring_over_queue"] >= 20,
            "throughput_ring_ge_5x_zmq": report["throughput_ratio"]["ring_over_zmq"] >= 5,
            "p99_ring_below_queue_and_zmq": ring["latency_us"]["p99"]
            < min(queue["latency_us"]["p99"], zmq_["latency_us"]["p99"]),
        }
    return report


if __name__ == "__main__":
    print(json.dumps(main()))
