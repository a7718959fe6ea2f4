"""Storage write rates: book events per second into SQLite and PostgreSQL, and into the spool.

Book events are ring records (``shm.records``) as the aggregator feeds them to storage: level
updates of six exchanges and three symbols, a receive timestamp per frame, in batches of
``--batch`` records. For each backend, the same batches go through the storage actor's
path: ``EventBatch.from_records`` (records → columns) then ``StorageBackend.write`` (one
transaction per batch, idempotent keys), on a fresh database: SQLite in a temporary file,
PostgreSQL in a schema of its own on ``--postgres`` (dropped afterwards). Sustained rate =
events / wall time over all batches after the first (warm-up). The spool figure is
``EventBatch.to_bytes`` + ``Spool.append`` with the default ``interval`` fsync policy: what
storage sustains while the database is away.

Replay: the reading side only (``engine.storage.replay.ReplaySource``: stored book events and
trades merged back into ring records in received order), events/s, and that as a multiple of
real time at the density of this data (100,000 events per second of market time; a real busy
hour is sparser, so its multiple is higher). Then the end-to-end replay: ``--replay-minutes`` (an hour by default) of
six exchanges' BTC/USDT traffic at ``--replay-density`` level events per market second (2,000 by
default: ~10 frames/s of ~33 levels on each venue, a busy hour) are stored in SQLite and replayed
as fast as possible by a replay session (replay actor and aggregator in their own processes) until
the aggregator has consumed every record: × real time.

Targets (issue 6): ≥ 150,000 book events/s into PostgreSQL with COPY, ≥ 50,000/s into SQLite,
replay ≥ 200× real time for a busy BTC/USDT hour on six exchanges.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.replay import replay_session  # noqa: E402
from engine import control  # noqa: E402
from engine.client import attach  # noqa: E402
from engine.config import load_config, only_these_exchanges  # noqa: E402
from engine.storage import DatabaseUnavailable, EventBatch, StorageBackend  # noqa: E402
from engine.supervisor import Supervisor  # noqa: E402
from engine.storage.postgres import PostgresBackend  # noqa: E402
from engine.storage.replay import ReplaySource  # noqa: E402
from engine.storage.spool import Spool  # noqa: E402
from engine.storage.sqlite import SqliteBackend  # noqa: E402
from shm.records import Kind, Side, Status, empty_records  # noqa: E402

EXCHANGES = ["binance", "coinbase", "kraken", "okx", "bybit", "kucoin"]
SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
TARGETS = {"postgres_events_per_s": 150_000, "sqlite_events_per_s": 50_000, "replay_x_real_time": 200}


def record_batches(count: int, size: int, seed: int = 1) -> list[np.ndarray]:
    """``count`` batches of ``size`` level records, 10 records a frame, time moving on."""
    rng = np.random.default_rng(seed)
    start_ns = time.time_ns()
    batches = []
    for index in range(count):
        records = empty_records(size)
        frames = np.arange(size) // 10 + index * (size // 10)
        records["kind"] = Kind.LEVEL
        records["side"] = np.where(rng.random(size) < 0.5, Side.BID, Side.ASK)
        records["exchange_id"] = frames % len(EXCHANGES)
        records["symbol_id"] = (frames // 7) % len(SYMBOLS)
        records["price"] = np.round(60000.0 + rng.normal(0.0, 50.0, size), 2)
        records["size"] = np.where(rng.random(size) < 0.25, 0.0, np.round(rng.exponential(0.5, size), 5))
        records["sequence"] = frames + 1_000_000
        records["receive_ts"] = start_ns + frames * 100_000
        records["exchange_ts"] = records["receive_ts"] - 2_000_000
        batches.append(records)
    return batches


def write_rate(backend: StorageBackend, batches: list[np.ndarray], run_id: int) -> dict:
    """Events/s of from_records + write over every batch but the first (which warms up)."""
    backend.open()
    backend.migrate()
    position = 0
    convert_s = write_s = 0.0
    events = 0
    for index, records in enumerate(batches):
        started = time.perf_counter()
        batch = EventBatch.from_records(records, run_id=run_id, positions=position, exchanges=EXCHANGES,
                                        symbols=SYMBOLS)
        converted = time.perf_counter()
        backend.write(batch)
        written = time.perf_counter()
        position += len(records)
        if index:
            convert_s += converted - started
            write_s += written - converted
            events += len(records)
    again_started = time.perf_counter()
    backend.write(EventBatch.from_records(batches[-1], run_id=run_id, positions=position - len(batches[-1]),
                                          exchanges=EXCHANGES, symbols=SYMBOLS))
    again_s = time.perf_counter() - again_started
    stored = backend.count("book_events")
    read = replay_read_rate(backend, batches)
    backend.close()
    return {
        "replay_read": read,
        "events": events,
        "events_per_s": round(events / (convert_s + write_s)),
        "write_only_events_per_s": round(events / write_s),
        "from_records_us_per_event": round(convert_s / events * 1e6, 3),
        "same_batch_again_ms": round(again_s * 1000, 1),
        "stored_rows": stored,
    }


def replay_read_rate(backend: StorageBackend, batches: list[np.ndarray]) -> dict:
    """Everything just written, read back as ring records in received order (ReplaySource)."""
    first, last = int(batches[0]["receive_ts"][0]), int(batches[-1]["receive_ts"][-1])
    started = time.perf_counter()
    events = sum(len(chunk.records) for chunk in ReplaySource(backend, first, last + 1, EXCHANGES, SYMBOLS))
    elapsed = time.perf_counter() - started
    return {"events": events, "events_per_s": round(events / elapsed),
            "x_real_time_at_this_density": round((last - first) / 1e9 / elapsed, 1)}


def market_hour(minutes: float, events_per_s: int, seed: int = 2) -> list[np.ndarray]:
    """Six exchanges' BTC/USDT traffic as stored: a 500-level snapshot each, then 100 ms frames of
    level updates near the touch (``events_per_s`` across the six), in batches of one second."""
    rng = np.random.default_rng(seed)
    start_ns = time.time_ns() - int(minutes * 60e9) - 10 * 10**9
    batches = []
    for exchange in range(len(EXCHANGES)):
        snapshot = empty_records(1002)
        snapshot["kind"] = Kind.LEVEL
        snapshot["kind"][0], snapshot["kind"][-1] = Kind.SNAPSHOT_BEGIN, Kind.SNAPSHOT_END
        snapshot["side"][1:501], snapshot["side"][501:1001] = Side.BID, Side.ASK
        snapshot["price"][1:501] = 60000.0 - 0.01 * np.arange(1, 501) * (exchange + 1)
        snapshot["price"][501:1001] = 60000.0 + 0.01 * np.arange(1, 501) * (exchange + 1)
        snapshot["size"][1:1001] = 1.0
        snapshot["exchange_id"], snapshot["receive_ts"] = exchange, start_ns + exchange
        batches.append(snapshot)
    per_frame = max(events_per_s // (10 * len(EXCHANGES)), 1)
    for second in range(int(minutes * 60)):
        frames = 10 * len(EXCHANGES)
        records = empty_records(frames * per_frame)
        frame = np.repeat(np.arange(frames), per_frame)
        exchange = frame % len(EXCHANGES)
        is_bid = rng.random(len(records)) < 0.5
        depth = rng.integers(1, 50, len(records))
        tick = 0.01 * (exchange + 1)
        records["kind"], records["exchange_id"] = Kind.LEVEL, exchange
        records["side"] = np.where(is_bid, Side.BID, Side.ASK)
        records["price"] = np.round(np.where(is_bid, 60000.0 - depth * tick, 60000.0 + depth * tick), 2)
        records["size"] = np.where(rng.random(len(records)) < 0.2, 0.0, np.round(rng.exponential(1.0, len(records)), 4))
        records["receive_ts"] = start_ns + 10**9 + second * 10**9 + frame * (10**9 // frames)
        batches.append(records)
    return batches


def replay_through_engine(directory: Path, minutes: float, events_per_s: int) -> dict:
    """Store ``minutes`` of six-exchange traffic in SQLite, then replay it as fast as possible
    through a replay session (replay actor + aggregator, real processes): × real time."""
    instance = f"bs{os.getpid() % 100000}"
    config = load_config(None, env={}, overrides={
        "engine": {"instance": instance, "runtime_dir": str(directory / "run"), "log_level": "warning",
                   "data_dir": str(directory / "data")},
        "endpoints": {"control": "tcp://127.0.0.1:0", "bus_publish": "tcp://127.0.0.1:0",
                      "bus_subscribe": "tcp://127.0.0.1:0"},
        "exchanges": only_these_exchanges({name: {"symbols": ["BTC/USDT"]} for name in EXCHANGES}),
        "shm": {"ring_records": 1 << 20},
        "aggregator": {"stale_after_s": 3600.0},
    })
    batches = market_hour(minutes, events_per_s)
    backend = SqliteBackend(config.storage.sqlite_path)
    backend.open()
    backend.migrate()
    position = 0
    for records in batches:
        backend.write(EventBatch.from_records(records, run_id=1, positions=position, exchanges=EXCHANGES,
                                              symbols=["BTC/USDT"]))
        position += len(records)
    backend.close()
    first = int(batches[0]["receive_ts"][0])
    last = int(max(int(batch["receive_ts"].max()) for batch in batches))
    session, specs = replay_session(config, first, last + 1, speed=0.0)
    specs = [spec for spec in specs if spec.kind in ("replay", "aggregator")]
    supervisor = Supervisor(session, specs, extra_directory={"mode": "replay"})
    started = time.perf_counter()
    supervisor.start()
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()
    first_records_at = None
    try:
        while True:
            reply = control.request(supervisor.directory["endpoints"]["replay"], "status", timeout_s=30)
            if first_records_at is None and reply["records"]:
                first_records_at = time.perf_counter()
            drained = all(ring["fill"] == 0 for ring in supervisor.status()["rings"].values())
            if reply["done"] and drained:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        client = attach(session.engine.instance)
        book = client.snapshot("BTC/USDT")
        client.close()
        whole = [state.name for state in book.exchange_states() if state.status == Status.IN_SYNC]
        if len(whole) != len(EXCHANGES):  # records on books never seeded are skipped: a rate that means nothing
            raise RuntimeError(f"replay ended with books not whole (in sync: {whole}); its rate is not a replay's")
    finally:
        supervisor.request_stop()
        thread.join(60)
    market_s = (last - first) / 1e9
    streaming = elapsed - (first_records_at - started)
    return {"market_seconds": round(market_s, 1), "events": position, "wall_s": round(elapsed, 2),
            "startup_s": round(first_records_at - started, 2), "events_per_s": round(position / elapsed),
            "x_real_time": round(market_s / elapsed, 1),
            "x_real_time_after_startup": round(market_s / streaming, 1),
            "events_per_market_s": events_per_s, "exchanges": len(EXCHANGES), "books_whole_at_end": True,
            "pipeline": "replay actor + aggregator, real processes, as fast as possible; wall time from spawning "
                        "them to the aggregator having applied every record"}


def spool_rate(batches: list[np.ndarray], directory: Path) -> dict:
    spool = Spool(directory)
    position = events = 0
    total_bytes, elapsed = 0, 0.0
    for index, records in enumerate(batches):
        started = time.perf_counter()
        payload = EventBatch.from_records(records, run_id=1, positions=position, exchanges=EXCHANGES,
                                          symbols=SYMBOLS).to_bytes()
        spool.append(payload)
        if index:
            elapsed += time.perf_counter() - started
            events += len(records)
            total_bytes += len(payload)
        position += len(records)
    spool.close()
    return {"events_per_s": round(events / elapsed), "bytes_per_event": round(total_bytes / events, 1),
            "fsync": "interval"}


def postgres_rate(dsn: str, batches: list[np.ndarray], run_id: int) -> dict:
    schema = f"coby_bench_{uuid.uuid4().hex[:10]}"
    try:
        return write_rate(PostgresBackend(dsn, schema=schema), batches, run_id)
    except DatabaseUnavailable as error:
        return {"skipped": f"no PostgreSQL at {dsn}: {error}"}
    finally:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as connection:
                connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        except psycopg.OperationalError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=31, help="batches per backend (the first warms up)")
    parser.add_argument("--batch", type=int, default=10_000, help="records per batch")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test", help="PostgreSQL DSN")
    parser.add_argument("--replay-minutes", type=float, default=60.0, help="market minutes stored, then replayed")
    parser.add_argument("--replay-density", type=int, default=2000,
                        help="level events per market second over the six exchanges (a busy BTC/USDT)")
    args = parser.parse_args()
    batches = record_batches(args.batches, args.batch)
    run_id = time.time_ns()
    with tempfile.TemporaryDirectory(prefix="coby-bench-storage-") as directory:
        sqlite = write_rate(SqliteBackend(Path(directory) / "bench.sqlite"), batches, run_id)
        print(f"sqlite:   {sqlite['events_per_s']:>9,} book events/s ({sqlite['write_only_events_per_s']:,}/s in write), "
              f"read back for replay {sqlite['replay_read']['events_per_s']:,}/s", flush=True)
        postgres = postgres_rate(args.postgres, batches, run_id)
        if "skipped" in postgres:
            print(f"postgres: skipped: {postgres['skipped']}", flush=True)
        else:
            print(f"postgres: {postgres['events_per_s']:>9,} book events/s "
                  f"({postgres['write_only_events_per_s']:,}/s in write), "
                  f"read back for replay {postgres['replay_read']['events_per_s']:,}/s", flush=True)
        spool = spool_rate(batches, Path(directory) / "spool")
        print(f"spool:    {spool['events_per_s']:>9,} book events/s, {spool['bytes_per_event']} bytes each", flush=True)
        replay = replay_through_engine(Path(directory), args.replay_minutes, args.replay_density)
        print(f"replay:   {replay['events_per_s']:>9,} events/s through the engine, {replay['x_real_time']}x real time "
              f"({replay['market_seconds']} s of {args.replay_density:,} events/s; {replay['startup_s']} s of it "
              f"starting the processes)", flush=True)
    meets = {
        "sqlite_events_per_s": sqlite["events_per_s"] >= TARGETS["sqlite_events_per_s"],
        "postgres_events_per_s": postgres.get("events_per_s", 0) >= TARGETS["postgres_events_per_s"],
        "replay_x_real_time": replay["x_real_time"] >= TARGETS["replay_x_real_time"],
    }
    print(json.dumps({
        "benchmark": "storage",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "batch_records": args.batch,
        "sqlite": sqlite,
        "postgres": postgres,
        "spool": spool,
        "replay": replay,
        "targets": TARGETS,
        "meets": meets,
    }))


if __name__ == "__main__":
    main()
