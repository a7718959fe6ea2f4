"""Aggregator throughput and end-to-end latency, through real rings into real book segments.

A supervisor runs only the aggregator, in its own process as in production. A producer
process plays six connectors: it seeds every (exchange, symbol) book with a 1,000-level
snapshot per side, then writes frames of level records (mostly near the top of book, a
quarter of them deletes, on six different tick grids) into the six rings, ringing the
aggregator's doorbell as a connector does. A reader process plays a client: it reads
every published generation of every book from shared memory.

Phases, one run:

1. ``light``: 2,000 frames/s over the six exchanges (3 levels a frame), paced (the producer
   sleeps until each frame is due; a frame's stamp is taken just before it is written).
2. ``saturated``: frames of 20 levels as fast as the rings take them; the aggregator's
   sustained rate is the records it consumed per second while its rings never ran dry.
3. ``busy``: paced at 90 % of that rate, the highest rate it sustains with a bounded
   backlog.

Latency of a frame = the ``publish_ts`` of the first generation of its instrument whose
``exchange_sequence`` for its exchange has reached the frame's sequence (the moment the
book that includes the frame became readable: the slot goes whole right after that stamp)
minus the wall-clock time the producer took just before writing the frame into its ring.
Both stamps are ``time.time_ns()`` on the same host. The books have the default
``shm.book_slots`` (3, as a production engine: each publish writes into a slot still warm
in the cache; with 16 slots, as this bench had until 2026-12-07, a publish costs ~10 µs more
and the light p50 ~25 µs more). The reader looks every 0.5 ms; a generation it could not read
whole, or that was overwritten before it looked (at saturation), is counted, and its frames
are then attributed to the next one it read (never to an earlier one: a latency can only be
overstated).
``aggregator.publish_interval_ms`` is 0 here: every drained batch is published.
Before the phases, ``wake_up_us``: one process waking another at the light phase's rate with
nothing else to do, through a ZeroMQ PUSH/PULL doorbell (what the rings use) and through a
futex on shared memory (``shm.wake``): the floor under the light-load latency.
``aggregator_cpu_per_light_frame``: the aggregator's own CPU per 3-level frame, driven by hand
in this process (what its loop does for one frame), steadier than latencies on a shared host;
its ``steps_p50_us`` split the frame by wall clock: drain and apply, publish until the book is
readable (the slot's ``publish_ts``), the rest of the publish (the bus message), and the look at
the rings before sleeping. The first two are the aggregator's share of the light-load latency.
``--compare-numpy`` adds the light phase once more with the aggregator on its numpy fallback
(``COBY_ANALYTICS_KERNEL=off``), for the C kernel's worth measured in the same run.

Where the light-load latency goes is in docs/metrics.md ("Cost and latency"): mostly the
wake-up through the rings' ZeroMQ doorbell, then the aggregator's own work.

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engine.microstructure  # noqa: E402
from engine.cob import ConsolidatedBook, MemberSpec  # noqa: E402
from engine.microstructure import (  # noqa: E402
    AnalyticsSettings, SideArrays, fill_buckets, fill_metrics, kernel_metrics_arguments,
)
from engine.bus import RingDoorbell  # noqa: E402
from engine.config import load_config, only_these_exchanges  # noqa: E402
from engine.supervisor import Supervisor, default_actor_specs  # noqa: E402
from shm.book import (  # noqa: E402
    FIRST_EXCHANGE, ORDERS, PRICE, SIZE, BookLayout, BookReader, BookWriter, book_slot_dtype, wait_for_publish,
)
from shm.records import Kind, Side, empty_records  # noqa: E402
from shm.registry import list_segments, read_directory  # noqa: E402
from shm.ring import Ring  # noqa: E402
from shm.segment import SegmentKind, segment_name, unlink_segment  # noqa: E402
from shm.wake import CAN_WAIT  # noqa: E402

EXCHANGES = ("binance", "coinbase", "kraken", "okx", "bybit", "kucoin")
SYMBOLS = {"BTC/USDT": (60000.0, 0.01), "ETH/USDT": (3000.0, 0.01), "SOL/USDT": (150.0, 0.001)}
TICK_MULTIPLES = (1, 2, 5, 1, 10, 3)  # each exchange its own grid: levels merge only where grids meet
SNAPSHOT_LEVELS = 1000
FRAME_POOL = 2048
TARGETS = {"level_updates_per_s": 300_000, "light_p50_us": 100.0, "light_p99_us": 1000.0}


def engine_config(instance: str, depth: int):
    return load_config(
        None,
        env={},
        overrides={
            "engine": {"instance": instance, "runtime_dir": f"/tmp/coby-bench-{instance}", "log_level": "warning"},
            "endpoints": {"control": "tcp://127.0.0.1:0", "bus_publish": "tcp://127.0.0.1:0",
                          "bus_subscribe": "tcp://127.0.0.1:0"},
            "exchanges": only_these_exchanges({name: {"symbols": list(SYMBOLS)} for name in EXCHANGES}),
            "shm": {"ring_records": 1 << 20, "book_depth": depth},
            "aggregator": {"publish_interval_ms": 0, "stale_after_s": 600.0},
        },
    )


# ---- the producer (six connectors) -------------------------------------------------------


def _price(symbol: str, exchange: int, is_bid: bool, rank: int) -> float:
    mid, tick = SYMBOLS[symbol]
    step = tick * TICK_MULTIPLES[exchange]
    steps = rank + 1
    return round(mid - steps * step, 6) if is_bid else round(mid + steps * step, 6)


def _snapshot(exchange: int, symbol_id: int, symbol: str) -> np.ndarray:
    batch = empty_records(2 * SNAPSHOT_LEVELS + 2)
    batch["exchange_id"], batch["symbol_id"] = exchange, symbol_id
    batch["kind"] = Kind.LEVEL
    batch["kind"][0], batch["kind"][-1] = Kind.SNAPSHOT_BEGIN, Kind.SNAPSHOT_END
    for i in range(SNAPSHOT_LEVELS):
        for offset, is_bid in ((1, True), (1 + SNAPSHOT_LEVELS, False)):
            record = batch[offset + i]
            record["side"] = Side.BID if is_bid else Side.ASK
            record["price"] = _price(symbol, exchange, is_bid, i)
            record["size"] = 1.0 + (i % 7) * 0.25
    batch["receive_ts"] = time.time_ns()
    return batch


def _frame_pool(exchange: int, symbol_id: int, symbol: str, levels: int, seed: int) -> np.ndarray:
    """FRAME_POOL frames of ``levels`` records: ranks mostly near the top, a quarter deletes."""
    rng = random.Random(seed)
    pool = empty_records(FRAME_POOL * levels).reshape(FRAME_POOL, levels)
    pool["exchange_id"], pool["symbol_id"], pool["kind"] = exchange, symbol_id, Kind.LEVEL
    for frame in pool:
        for record in frame:
            is_bid = rng.random() < 0.5
            record["side"] = Side.BID if is_bid else Side.ASK
            record["price"] = _price(symbol, exchange, is_bid, min(int(rng.expovariate(1 / 25)), 1500))
            record["size"] = 0.0 if rng.random() < 0.25 else round(rng.uniform(0.01, 5.0), 4)
    return pool


def produce(instance: str, phases: list[tuple[str, float, int, float]], results) -> None:
    """Write the snapshots, then each phase (name, frames/s or 0 = flat out, levels, seconds)."""
    import zmq

    directory = read_directory(instance)
    context = zmq.Context()
    rings = []
    for name in EXCHANGES:
        ring = Ring.attach(directory["segments"]["rings"][name])
        ring.become_producer()
        ring.doorbell = RingDoorbell(context, directory["endpoints"]["doorbell_aggregator"], ring.write_word)
        rings.append(ring)
    symbols = list(SYMBOLS)
    symbol_ids = {symbol: directory["symbols"].index(symbol) for symbol in symbols}
    for exchange, ring in enumerate(rings):
        for symbol in symbols:
            assert ring.write(_snapshot(exchange, symbol_ids[symbol], symbol))
    time.sleep(1.0)
    pools = {}
    sequence = 0
    for name, rate, levels, seconds in phases:
        pairs = [(e, s) for e in range(len(rings)) for s in symbols]
        for e, s in pairs:
            if (e, s, levels) not in pools:
                pools[(e, s, levels)] = _frame_pool(e, symbol_ids[s], s, levels, seed=e * 31 + len(s) + levels)
        frames = int(rate * seconds) if rate else 50_000_000
        sent = np.zeros(min(frames, 4_000_000), dtype=np.int64)
        owner = np.zeros((len(sent), 2), dtype=np.int32)
        start = time.perf_counter()
        deadline = start + seconds
        count = 0
        blocked = 0
        while count < len(sent):
            now = time.perf_counter()
            if now >= deadline:
                break
            if rate:
                due = start + count / rate
                if due > now:  # sleep, not spin: a connector waits on its socket, and a spinning
                    time.sleep(due - now)  # producer takes a core from the aggregator on a 2-core host
                    continue
            exchange, symbol = pairs[count % len(pairs)]
            ring = rings[exchange]
            if ring.free() < levels:
                blocked += 1
                time.sleep(0.00005)
                continue
            sequence += 1
            frame = pools[(exchange, symbol, levels)][sequence % FRAME_POOL]
            frame["sequence"] = sequence
            stamp = time.time_ns()
            frame["receive_ts"] = stamp
            ring.write(frame)
            sent[count] = stamp
            owner[count] = (exchange, symbol_ids[symbol])
            count += 1
        elapsed = time.perf_counter() - start
        results.put((name, sent[:count], owner[:count], elapsed, blocked, levels))
        time.sleep(0.5)
    results.put(("done", None, None, 0.0, 0, 0))
    for ring in rings:
        ring.close()
    context.destroy(linger=0)


# ---- the reader (a client) -----------------------------------------------------------------


def read_generations(instance: str, stop, results) -> None:
    """Every generation of every book: (publish_ts, exchange_sequence) in order; unreadable counted."""
    directory = read_directory(instance)
    readers = {name: BookReader.attach(segment) for name, segment in directory["segments"]["books"].items()}
    seen = {name: int(reader.generation) for name, reader in readers.items()}
    stamps: dict[str, list[int]] = {name: [] for name in readers}
    sequences: dict[str, list[np.ndarray]] = {name: [] for name in readers}
    lost = 0
    while not stop.is_set():
        for name, reader in readers.items():
            newest = int(reader.generation)
            for generation in range(seen[name] + 1, newest + 1):
                slot = reader.slots[generation % reader.slot_count]
                seq_before = int(slot["seq"])
                if seq_before & 1 or int(slot["generation"]) != generation:
                    lost += 1
                    continue
                stamp = int(slot["publish_ts"])
                exchange_sequence = slot["exchange_sequence"].copy()
                if int(slot["seq"]) != seq_before:
                    lost += 1
                    continue
                stamps[name].append(stamp)
                sequences[name].append(exchange_sequence)
            seen[name] = newest
        time.sleep(0.0005)
    results.put(
        ({name: np.array(values, dtype=np.int64) for name, values in stamps.items()},
         {name: np.array(values).reshape(len(values), -1) for name, values in sequences.items()},
         lost)
    )
    for reader in readers.values():
        reader.close()


def latencies_us(sent: np.ndarray, owner: np.ndarray, sequences_of_phase: dict, names: list[str],
                 first_sequence: int) -> np.ndarray:
    """Per frame, first publish that includes it minus its write time (µs); NaN if never published."""
    out = np.full(len(sent), np.nan)
    frame_sequence = np.arange(first_sequence, first_sequence + len(sent))
    for symbol_id, name in enumerate(names):
        stamps, sequences = sequences_of_phase[name]
        for exchange in range(sequences.shape[1] if len(sequences) else 0):
            mine = np.flatnonzero((owner[:, 0] == exchange) & (owner[:, 1] == symbol_id))
            if not len(mine):
                continue
            reached = np.maximum.accumulate(sequences[:, exchange].astype(np.int64))
            index = np.searchsorted(reached, frame_sequence[mine], side="left")
            found = index < len(reached)
            out[mine[found]] = (stamps[index[found]] - sent[mine[found]]) / 1000
    return out


def summary(values: np.ndarray) -> dict:
    published = values[~np.isnan(values)]
    if not len(published):
        return {"frames": int(len(values)), "published": 0}
    return {
        "frames": int(len(values)),
        "published": int(len(published)),
        "p50_us": round(float(np.percentile(published, 50)), 1),
        "p99_us": round(float(np.percentile(published, 99)), 1),
        "p999_us": round(float(np.percentile(published, 99.9)), 1),
        "max_us": round(float(published.max()), 1),
    }


def core_updates_per_s(seconds: float = 1.5) -> float:
    """ConsolidatedBook.set_level alone, in this process: the ceiling of the apply loop."""
    rng = random.Random(5)
    book = ConsolidatedBook("X", [MemberSpec(e, 0) for e in range(len(EXCHANGES))], 1000)
    for exchange in range(len(EXCHANGES)):
        bids = {_price("BTC/USDT", exchange, True, i): 1.0 for i in range(SNAPSHOT_LEVELS)}
        asks = {_price("BTC/USDT", exchange, False, i): 1.0 for i in range(SNAPSHOT_LEVELS)}
        book.include(exchange, (bids, asks))
    updates = []
    for _ in range(100_000):
        exchange, is_bid = rng.randrange(len(EXCHANGES)), rng.random() < 0.5
        price = _price("BTC/USDT", exchange, is_bid, min(int(rng.expovariate(1 / 25)), 1500))
        updates.append((exchange, is_bid, price, 0.0 if rng.random() < 0.25 else rng.uniform(0.01, 5.0)))
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for exchange, is_bid, price, size in updates:
            book.set_level(exchange, is_bid, price, size)
        done += len(updates)
    return done / (time.perf_counter() - start)


def profile_us() -> dict:
    """Where an update's and a publish's time goes, in this process, at depth 1,000 with the
    six exchanges' books full: the pieces the aggregator runs, timed one by one."""
    exchanges = len(EXCHANGES)
    book = ConsolidatedBook("X", [MemberSpec(e, 0) for e in range(exchanges)], 1000)
    for exchange in range(exchanges):
        bids = {_price("BTC/USDT", exchange, True, i): 1.0 + i % 3 for i in range(SNAPSHOT_LEVELS)}
        asks = {_price("BTC/USDT", exchange, False, i): 1.0 + i % 5 for i in range(SNAPSHOT_LEVELS)}
        book.include(exchange, (bids, asks))
    layout = BookLayout(1000, exchanges, 3)
    slot = np.zeros((), book_slot_dtype(layout))[()]
    settings = AnalyticsSettings((10.0, 50.0, 100.0), (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0), 10.0, 10.0, 1.0, 10.0)

    kernel = engine.microstructure.kernel

    def sides() -> tuple[SideArrays, SideArrays]:
        out = []
        for key, side in (("bids", book.bids), ("asks", book.asks)):
            slot[key][: side.count] = side.top()
            levels = slot[key][: side.count]
            out.append(SideArrays(levels[:, PRICE], levels[:, SIZE], levels[:, ORDERS], levels[:, FIRST_EXCHANGE:]))
        return out[0], out[1]

    def timed(work, count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            work()
        return (time.perf_counter() - start) / count * 1e6

    bids, asks = sides()
    best = np.full(exchanges, 59999.9)
    worst = np.full(exchanges, 60000.1)
    figures = {
        "kernel": kernel is not None,
        "numpy_copy_top_both_sides_us": round(timed(sides, 300), 1),
        "metrics_us": round(timed(lambda: fill_metrics(slot["metrics"], bids, asks, best, worst, settings), 300), 1),
        "buckets_us": round(timed(lambda: fill_buckets(slot["buckets"], bids, asks, settings), 100), 1),
    }
    if kernel is not None:  # what the aggregator calls: both copies and the metrics in one call
        arguments = kernel_metrics_arguments(settings, slot["metrics"])
        blocks = [side.buffer[side.start : side.start + side.count] for side in (book.bids, book.asks)]
        figures["publish_sides_us"] = round(timed(lambda: kernel.publish_sides(
            *blocks, slot["bids"], slot["asks"], book.bids.count, book.asks.count, None, best, worst, *arguments), 300), 1)
        engine.microstructure.kernel = None  # the numpy fallback side by side
        try:
            figures["numpy_metrics_us"] = round(
                timed(lambda: fill_metrics(slot["metrics"], bids, asks, best, worst, settings), 300), 1)
            figures["numpy_buckets_us"] = round(timed(lambda: fill_buckets(slot["buckets"], bids, asks, settings), 100), 1)
        finally:
            engine.microstructure.kernel = kernel
    return {
        **figures,
        "set_level_us": round(1e6 / core_updates_per_s(0.5), 2),
        "levels_per_side": len(bids.price),
        "note": "a publish = publish_sides (both copies + metrics) + per-exchange fields; buckets every "
                "buckets.refresh_ms",
    }


def _ring_zmq_doorbells(endpoint: str, rate: float, count: int) -> None:
    """A producer ringing a PUSH doorbell as a connector does, each ring carrying its send time."""
    import zmq

    socket = zmq.Context.instance().socket(zmq.PUSH)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    time.sleep(0.5)
    for _ in range(count):
        socket.send(time.time_ns().to_bytes(8, "little"))
        time.sleep(1.0 / rate)
    socket.close()


def _publish_books(name: str, rate: float, count: int) -> None:
    """A writer publishing empty books (each publish wakes futex waiters)."""
    writer = BookWriter.attach(name)
    time.sleep(0.5)
    for _ in range(count):
        writer.begin()
        writer.end()
        time.sleep(1.0 / rate)
    writer.close()


def wake_up_us(instance: str, rate: float = 2000.0, count: int = 4000) -> dict:
    """One process waking another at the light phase's rate, nothing else done: the floor under
    the light-load latency. ``zmq``: a PUSH/PULL doorbell polled as the aggregator polls its
    rings' doorbell; ``futex``: a reader asleep on a book's generation (shm.wake), the
    mechanism the rings could use. µs from the send (or publish) to the waiter running."""
    import zmq

    context = mp.get_context("spawn")
    figures = {}
    pull = zmq.Context.instance().socket(zmq.PULL)
    endpoint = f"ipc:///tmp/coby-bench-{instance}-wake"
    pull.bind(endpoint)
    producer = context.Process(target=_ring_zmq_doorbells, args=(endpoint, rate, count), daemon=True)
    producer.start()
    delays = []
    while len(delays) < count and pull.poll(3000):
        delays.append(time.time_ns() - int.from_bytes(pull.recv(), "little"))
    producer.join(10)
    pull.close(linger=0)
    figures["zmq"] = summary(np.array(delays[count // 10 :], dtype=float) / 1000)
    if CAN_WAIT:
        name = segment_name(instance, SegmentKind.BOOK, "WAKE")
        writer = BookWriter.create(name, BookLayout(4, 1, 2), os.getpid())
        reader = BookReader.attach(name)
        producer = context.Process(target=_publish_books, args=(name, rate, count), daemon=True)
        producer.start()
        delays, seen = [], int(reader.generation)
        while len(delays) < count and wait_for_publish([reader], [seen], 3.0):
            woke = time.time_ns()
            seen = int(reader.generation)
            delays.append(woke - int(reader.slots[seen % reader.slot_count]["publish_ts"]))
        producer.join(10)
        reader.close()
        writer.close()
        unlink_segment(name)
        figures["futex"] = summary(np.array(delays[count // 10 :], dtype=float) / 1000)
    return {kind: {key: value for key, value in numbers.items() if key.endswith("_us")} for kind, numbers in figures.items()}


def cpu_per_frame_us(depth: int, frames: int = 6000) -> dict:
    """The aggregator's own CPU per light-load frame, without the other processes: an
    aggregator driven by hand in this process (segments from a supervisor that starts no
    actor), one 3-level frame written into its rings, then what its loop does for it (drain
    and apply, publish, look at the rings before sleeping), in thread CPU time. Steadier than
    the latencies on a shared host: what it measures is only the aggregator's work."""
    import asyncio

    from actors.aggregator import AggregatorActor
    from engine.actor import ActorSpec

    instance = f"bcpu{os.getpid() % 100000}"
    config = engine_config(instance, depth)
    supervisor = Supervisor(config, [])
    supervisor.start()
    loop = asyncio.new_event_loop()
    try:
        directory = read_directory(instance)
        actor = AggregatorActor(ActorSpec("aggregator", "aggregator", "actors.aggregator:AggregatorActor", -1),
                                config, directory)
        loop.run_until_complete(actor.setup())
        rings = [Ring.attach(directory["segments"]["rings"][name]) for name in EXCHANGES]
        symbol_ids = {symbol: directory["symbols"].index(symbol) for symbol in SYMBOLS}
        for exchange, ring in enumerate(rings):
            ring.become_producer()
            for symbol in SYMBOLS:
                assert ring.write(_snapshot(exchange, symbol_ids[symbol], symbol))
        actor.drain()
        actor.publish_due(time.monotonic())
        pools = {(exchange, symbol): _frame_pool(exchange, symbol_ids[symbol], symbol, 3, seed=exchange * 31 + len(symbol))
                 for exchange in range(len(EXCHANGES)) for symbol in SYMBOLS}
        pairs = list(pools)
        instruments = {instrument.plan.name: instrument for instrument in actor.instruments}
        spent, steps = [], []
        clock = time.time_ns
        for sequence in range(1, frames + 1):
            exchange, symbol = pairs[sequence % len(pairs)]
            frame = pools[(exchange, symbol)][sequence % FRAME_POOL]
            frame["sequence"], frame["receive_ts"] = sequence, time.time_ns()
            rings[exchange].write(frame)
            started = time.thread_time_ns()
            begun = clock()
            actor.drain()
            drained = clock()
            actor.publish_due(time.monotonic())
            published = clock()
            actor.wait_for_records(0.0)
            checked = clock()
            spent.append((time.thread_time_ns() - started) / 1000)
            writer = instruments[symbol].writer
            generation = int(writer.generation)
            readable = int(instruments[symbol].views[generation % writer.slot_count]["publish_ts"][0])
            steps.append((drained - begun, readable - drained, published - readable, checked - published))
        loop.run_until_complete(actor.teardown())
        for ring in rings:
            ring.close()
        steady = np.array(spent[frames // 6 :])
        step_us = np.array(steps[frames // 6 :]) / 1000
        names = ("drain_and_apply", "publish_until_readable", "publish_after_readable", "ring_check_before_sleep")
        return {"p50_us": round(float(np.percentile(steady, 50)), 1), "mean_us": round(float(steady.mean()), 1),
                "steps_p50_us": {name: round(float(np.percentile(step_us[:, index], 50)), 1)
                                 for index, name in enumerate(names)}}
    finally:
        loop.close()
        supervisor.shutdown()
        for name in list_segments(instance):
            unlink_segment(name)


def run_phases(instance: str, depth: int, phases: list[tuple[str, float, int, float]]) -> dict:
    config = engine_config(instance, depth)
    specs = [spec for spec in default_actor_specs(config) if spec.kind == "aggregator"]
    supervisor = Supervisor(config, specs)
    supervisor.start()
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()
    context = mp.get_context("spawn")
    produced, read = context.Queue(), context.Queue()
    stop = context.Event()
    helpers: list[mp.process.BaseProcess] = []
    try:
        deadline = time.monotonic() + 30
        while supervisor.status()["actors"][0]["state"] != "running":
            if time.monotonic() > deadline:
                raise RuntimeError("the aggregator did not start")
            time.sleep(0.05)
        directory = read_directory(instance)
        aggregator = psutil.Process(supervisor.status()["actors"][0]["pid"])
        reader = context.Process(target=read_generations, args=(instance, stop, read), daemon=True)
        producer = context.Process(target=produce, args=(instance, phases, produced), daemon=True)
        helpers += [reader, producer]
        for process in helpers:
            process.start()
        rings = {name: Ring.attach(segment) for name, segment in directory["segments"]["rings"].items()}
        outcomes = []
        while True:
            before = {name: ring.stats() for name, ring in rings.items()}
            started = time.perf_counter()
            cpu_before = sum(aggregator.cpu_times()[:2])
            fills = []
            while True:
                try:
                    item = produced.get(timeout=0.05)
                    break
                except Exception:
                    fills.append(sum(ring.stats()["fill"] for ring in rings.values()))
            if item[0] == "done":
                break
            after = {name: ring.stats() for name, ring in rings.items()}
            consumed = sum(
                (after[n]["written_records"] - after[n]["fill"]) - (before[n]["written_records"] - before[n]["fill"])
                for n in rings
            )
            cpu = sum(aggregator.cpu_times()[:2]) - cpu_before
            outcomes.append((item, consumed, time.perf_counter() - started, fills, cpu))
        producer.join(30)
        stop.set()
        stamps, sequences, lost = read.get(timeout=60)
        reader.join(30)
        for ring in rings.values():
            ring.close()
        restarts = supervisor.status()["actors"][0]["restarts"]
        if restarts:
            raise RuntimeError(f"the aggregator was restarted {restarts} time(s) during the run: see its log above")
    finally:
        stop.set()
        for process in helpers:  # a failed run must end, not wait on its helpers forever
            if process.is_alive():
                process.terminate()
                process.join(10)
        supervisor.request_stop()
        thread.join(30)
        for name in list_segments(instance):
            unlink_segment(name)
    names = list(directory["segments"]["books"])
    by_name = {name: (stamps[name], sequences[name]) for name in names}
    report = {"unreadable_generations": lost}
    first_sequence = 1
    for (name, sent, owner, elapsed, blocked, levels), consumed, window, fills, cpu in outcomes:
        latency = latencies_us(sent, owner, by_name, names, first_sequence)
        first_sequence += len(sent)
        busy = fills[2:-2] if len(fills) > 4 else fills
        report[name] = {
            "frames_per_s": round(len(sent) / elapsed),
            "level_updates_per_s_written": round(len(sent) * levels / elapsed),
            "level_updates_per_s_consumed": round(consumed / window),
            "aggregator_cpu_share": round(cpu / window, 2),  # of one core, over the phase
            "level_updates_per_aggregator_cpu_s": round(consumed / cpu) if cpu > 0 else None,
            "rings_never_empty": bool(busy) and min(busy) > 0,
            "producer_waits_for_room": blocked,
            **summary(latency),
        }
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--depth", type=int, default=1000, help="consolidated levels per side")
    parser.add_argument("--compare-numpy", action="store_true",
                        help="also run the light phase with the aggregator on its numpy fallback (no C kernel)")
    args = parser.parse_args(argv)
    instance = f"bagg{os.getpid() % 100000}"
    core = core_updates_per_s()
    pieces = profile_us()
    wake_up = wake_up_us(instance)
    cpu_per_frame = cpu_per_frame_us(args.depth)
    light = run_phases(instance, args.depth, [("light", 2000.0, 3, args.seconds), ("saturated", 0.0, 20, args.seconds)])
    sustained = light["saturated"]["level_updates_per_s_consumed"]
    busy_rate = 0.9 * sustained / 20
    busy = run_phases(instance + "b", args.depth, [("busy", busy_rate, 20, args.seconds)])
    numpy_light = numpy_cpu_per_frame = None
    if args.compare_numpy:
        import actors.aggregator

        kernel = engine.microstructure.kernel
        engine.microstructure.kernel = actors.aggregator.kernel = None
        try:
            numpy_cpu_per_frame = cpu_per_frame_us(args.depth)
        finally:
            engine.microstructure.kernel = actors.aggregator.kernel = kernel
        os.environ["COBY_ANALYTICS_KERNEL"] = "off"  # inherited by the aggregator process
        try:
            numpy_light = run_phases(instance + "n", args.depth, [("light", 2000.0, 3, args.seconds)])["light"]
        finally:
            del os.environ["COBY_ANALYTICS_KERNEL"]
    result = {
        "benchmark": "aggregate",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "exchanges": len(EXCHANGES),
        "instruments": len(SYMBOLS),
        "depth": args.depth,
        "book_slots": load_config(None, env={}).shm.book_slots,
        "core_set_level_updates_per_s": round(core),
        "profile": pieces,
        "wake_up_us": wake_up,
        "aggregator_cpu_per_light_frame": cpu_per_frame,
        "light": light["light"],
        "saturated": light["saturated"],
        "busy_90pct": busy["busy"],
        **({"light_numpy_fallback": numpy_light,
            "aggregator_cpu_per_light_frame_numpy_fallback": numpy_cpu_per_frame} if numpy_light else {}),
        "unreadable_generations": light["unreadable_generations"] + busy["unreadable_generations"],
        "targets": TARGETS,
        "meets": {
            "level_updates_per_s": sustained >= TARGETS["level_updates_per_s"],
            "light_p50_us": light["light"].get("p50_us", float("inf")) <= TARGETS["light_p50_us"],
            "light_p99_us": light["light"].get("p99_us", float("inf")) <= TARGETS["light_p99_us"],
        },
    }
    print(f"   wake-up: {wake_up} (µs, one process waking another at 2,000/s)")
    print(f"   aggregator CPU per light-load frame, in process: {cpu_per_frame}")
    for key in ("light", "saturated", "busy_90pct"):
        phase = result[key]
        print(f"{key:>11}: {phase['frames_per_s']:>7} frames/s, consumed {phase['level_updates_per_s_consumed']:>8} "
              f"levels/s, p50 {phase.get('p50_us')} µs, p99 {phase.get('p99_us')} µs, p99.9 {phase.get('p999_us')} µs")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
