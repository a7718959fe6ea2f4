"""Host and process faults against the whole engine under load: ``kill -9`` of every actor kind,
a consumer that dies holding a view, a slow consumer, a ring that overflows, and the supervisor
itself killed and started again.

One engine (Binance spot and OKX, two books each, on a simulator the test owns, with features,
signals, SQLite storage and the api) takes the actor kills in turn; each kill must be followed
by a restart of that actor only, the books back in sync and equal to the simulator's truth, and
the actor doing its work again. At the end the sources are stopped and storage must hold every
record the aggregator fed it exactly once. The supervisor test runs ``coby demo`` in its own
process so that it can be killed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest

from engine import control
from engine.client import StaleRead, attach
from engine.storage import configured_backend
from engine.supervisor import free_ports
from shm.records import Status
from shm.registry import list_segments, read_directory
from tests.engine_support import unique_instance, wait_for
from tests.fault_support import RECOVERY_TARGET_S, FaultEngine, disturbed, fault_engine

SYMBOLS = ["BTC/USDT", "ETH/USDT"]
EVERYTHING = (0, 2**62)
RING_RECORDS = 4096  # small enough to overflow in seconds with the aggregator stopped


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    data = tmp_path_factory.mktemp("process-faults")
    extra = {
        "storage": {"enabled": True, "sqlite_path": str(data / "coby.sqlite"), "flush_ms": 100},
        "api": {"enabled": True, "port": free_ports(1)[0]},
        "shm": {"ring_records": RING_RECORDS},
    }
    kinds = ("connector", "aggregator", "features", "signals", "storage", "api")
    with fault_engine({"binance": SYMBOLS, "okx": SYMBOLS}, kinds=kinds, extra=extra) as running_engine:
        yield running_engine


def actor(engine: FaultEngine, name: str) -> dict:
    return next(entry for entry in engine.supervisor.status()["actors"] if entry["name"] == name)


def kill_9(engine: FaultEngine, name: str) -> int:
    """SIGKILL the actor; returns the time (ns) of the kill once the supervisor has restarted it."""
    victim = actor(engine, name)
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.time_ns()
    wait_for(lambda: (now := actor(engine, name))["restarts"] == victim["restarts"] + 1
             and now["state"] == "running" and now["pid"] not in (None, victim["pid"]),
             timeout_s=30, what=f"{name} restarted")
    return killed_at


def health(engine: FaultEngine) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{engine.config.api.port}/health", timeout=5) as response:
        import json

        return json.loads(response.read())


@pytest.mark.parametrize("name", ["connector:binance", "aggregator", "features", "signals", "storage", "api"])
def test_kill_9_of_each_actor_kind_under_load_restarts_only_it_and_the_engine_recovers(engine, name) -> None:
    wait_for(engine.all_in_sync, timeout_s=20, what="every book in sync before the kill")
    others = {key: value for key, value in engine.restarts().items() if key != name}
    before = engine.states()
    features_before = engine.client.wait_features("BTC/USDT", 0, timeout_s=5)
    killed_at = kill_9(engine, name)

    if name == "connector:binance":  # its books go out and come back; nobody else's move
        recovery = engine.wait_resynced("binance", SYMBOLS, killed_at, timeout_s=30)
        assert disturbed(engine, before, [("binance", s) for s in SYMBOLS]) == []
    elif name == "aggregator":  # a new aggregator asks every connector for fresh books
        wait_for(engine.all_in_sync, timeout_s=30, what="every book in sync after the aggregator restart")
        recovery = (time.time_ns() - killed_at) / 1e9
    else:
        assert disturbed(engine, before) == [], "a downstream actor's death never touches a book"
        recovery = 0.0
    if name == "features":
        assert engine.client.wait_features("BTC/USDT", features_before, timeout_s=10) is not None
    if name == "api":
        assert wait_for(lambda: _healthy(engine), timeout_s=20, what="api answering /health again")
    if name == "storage":
        wait_for(lambda: engine.supervisor.status()["storage_feed"]["fill"] < 10_000, timeout_s=20,
                 what="storage reading its feed again")
    assert {key: value for key, value in engine.restarts().items() if key != name} == others
    engine.assert_equals_truth()
    print(f"{name}: back {recovery:.2f} s after kill -9")


def _healthy(engine: FaultEngine) -> bool:
    try:
        return bool(health(engine))
    except OSError:
        return False


def _hold_a_view_and_die(instance: str, ready: "multiprocessing.Event") -> None:
    client = attach(instance)
    view = client.book("BTC/USDT").view()
    view.__enter__()
    ready.set()
    time.sleep(60)  # killed before this ends


def test_a_consumer_killed_while_holding_a_view_disturbs_nothing(engine) -> None:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    consumer = context.Process(target=_hold_a_view_and_die, args=(engine.supervisor.instance, ready))
    consumer.start()
    assert ready.wait(30)
    generation = engine.client.book("BTC/USDT").generation
    os.kill(consumer.pid, signal.SIGKILL)
    consumer.join(10)
    wait_for(lambda: engine.client.book("BTC/USDT").generation > generation + 50, timeout_s=10,
             what="the aggregator publishing on")
    assert engine.all_in_sync()
    assert len(attach(engine.supervisor.instance).book("BTC/USDT").snapshot().bid_price) > 0


def test_a_slow_consumer_gets_stale_read_never_a_torn_book_and_slows_nobody(engine) -> None:
    handle = engine.client.book("BTC/USDT")
    with pytest.raises(StaleRead):
        with handle.view() as live:
            first = live.bid_price[0]
            wait_for(lambda: handle.generation > engine.config.shm.book_slots + 2, timeout_s=5)
            generation = handle.generation
            wait_for(lambda: handle.generation > generation + 2 * engine.config.shm.book_slots, timeout_s=5,
                     what="the slot being overwritten under the reader")
            assert first > 0
    subscriber = engine.client.subscribe(["book.BTC/USDT"], timeout_ms=5000)
    start = handle.generation
    time.sleep(2.0)  # a subscriber that does not read: ZeroMQ drops at its high-water mark, never blocks
    published = handle.generation - start
    assert published > 100, f"the aggregator published {published} books while the subscriber slept"
    topic, message = next(subscriber)
    assert topic == "book.BTC/USDT" and message["generation"] > 0


def test_a_ring_overflow_is_counted_and_the_books_resent_whole(engine) -> None:
    endpoint = engine.supervisor.directory["endpoints"]["control"]
    overflowed = lambda: engine.supervisor.status()["rings"]["binance"]["dropped_records"]  # noqa: E731
    dropped_before = overflowed()
    assert control.request(endpoint, "stop", timeout_s=30, actor="aggregator")["ok"]
    try:
        wait_for(lambda: overflowed() > dropped_before, timeout_s=60, interval_s=0.1,
                 what="the binance ring refusing writes with the aggregator stopped")
    finally:
        assert control.request(endpoint, "start", timeout_s=30, actor="aggregator")["ok"]
    started_at = time.time_ns()
    wait_for(engine.all_in_sync, timeout_s=30, what="every book resent after the overflow")
    assert (time.time_ns() - started_at) / 1e9 < 10 * RECOVERY_TARGET_S
    engine.assert_equals_truth()


def test_zz_storage_holds_every_fed_record_exactly_once_after_all_the_kills(engine) -> None:
    """Runs last in this module: stops the sources and waits for storage to drain its feed."""
    endpoint = engine.supervisor.directory["endpoints"]["control"]
    for name in ("connector:binance", "connector:okx"):
        assert control.request(endpoint, "stop", timeout_s=30, actor=name)["ok"]
    wait_for(lambda: engine.supervisor.status()["storage_feed"]["fill"] == 0, timeout_s=60,
             what="storage caught up with its feed")
    assert control.request(endpoint, "stop", timeout_s=30, actor="storage")["ok"]
    feed = engine.supervisor.status()["storage_feed"]
    run_id = engine.supervisor.directory["started_ns"]
    backend = configured_backend(engine.config.storage)
    try:
        events = backend.read("book_events", *EVERYTHING)
        trades = backend.read("trades", *EVERYTHING)
    finally:
        backend.close()
    positions = np.sort(np.concatenate([
        *(batch["position"][batch["run_id"] == run_id] for batch in events),
        *(batch["position"][batch["run_id"] == run_id] for batch in trades),
        np.empty(0, np.int64),
    ]))
    assert feed["written_records"] > 5_000
    assert np.array_equal(positions, np.arange(feed["written_records"])), "every fed record stored once"


def test_the_supervisor_killed_under_load_leaves_orphans_the_next_one_sweeps_and_runs(tmp_path: Path) -> None:
    instance = unique_instance("kill")
    config = tmp_path / "config.yaml"
    config.write_text(SUPERVISED_CONFIG.format(data=tmp_path / "data"))
    command = [sys.executable, "-m", "engine.cli", "--config", str(config), "demo", "--seconds", "120",
               "--instance", instance]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, cwd=os.getcwd())
    second = None
    try:
        wait_for(lambda: _books_in_sync(instance), timeout_s=60, interval_s=0.2, what="the first engine in sync")
        segments = set(list_segments(instance))
        actors = psutil.Process(first.pid).children()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # Checked at once: any coby supervisor starting on this host sweeps a dead owner's segments.
        assert set(list_segments(instance)) == segments, "a killed supervisor cannot clean up"
        gone, alive = psutil.wait_procs(actors, timeout=30)  # actors notice their parent is gone
        assert alive == [], [process.pid for process in alive]

        second = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=(tmp_path / "second.log").open("w"),
                                  cwd=os.getcwd())
        wait_for(lambda: _books_in_sync(instance, newer_than=first.pid), timeout_s=60, interval_s=0.2,
                 what="the second engine in sync on the same instance")
        second.send_signal(signal.SIGTERM)
        second.wait(60)  # the demo's own verdict (it was cut short) is not the point: the shutdown is
        stopped = [line for line in (tmp_path / "second.log").read_text().splitlines() if "supervisor_stopped" in line]
        assert stopped and "exit_code=0" in stopped[-1], stopped
        assert list_segments(instance) == [], "no segment left behind"
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)


SUPERVISED_CONFIG = """
engine: {{data_dir: "{data}"}}
exchanges:
  binance: {{symbols: [BTC/USDT, ETH/USDT], ws_url: "wss://stream.binance.com:9443", rest_url: "https://api.binance.com"}}
  okx: {{symbols: [BTC/USDT], ws_url: "wss://ws.okx.com:8443/ws/v5/public", rest_url: "https://www.okx.com"}}
api: {{enabled: false}}
"""


def _books_in_sync(instance: str, newer_than: int | None = None) -> bool:
    try:
        directory = read_directory(instance)
        if newer_than is not None and directory["supervisor_pid"] == newer_than:
            return False
        client = attach(instance)
    except (FileNotFoundError, RuntimeError, KeyError, OSError, ValueError):
        return False
    try:
        return all(
            client.book(symbol).snapshot().exchange(exchange).status == Status.IN_SYNC
            for symbol in ("BTC/USDT", "ETH/USDT")
            for exchange in client.exchanges_of(symbol)
        )
    except (KeyError, OSError, ValueError):
        return False
    finally:
        client.close()
