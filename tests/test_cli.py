"""The command line against real engines: failure paths (one clear line, a non-zero exit, never
a traceback) and status, restart, bus subscriptions and shutdown of a running demo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.client import attach
from engine.config import Config
from shm.registry import list_segments, read_directory, sweep
from tests.engine_support import stores_in, unique_instance, wait_for


def coby(*arguments: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=os.getcwd(),
    )


def assert_one_clear_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].count("config error") <= 1, lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_config_key_stops_start_up(tmp_path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("aggregator:\n  publish_intervl_ms: 5\n")
    result = coby("--config", str(config), "run")
    assert_one_clear_line(result, "config error", "aggregator.publish_intervl_ms")


def test_bad_environment_override_stops_start_up() -> None:
    result = coby("run", env={"COBY_SHM__RING_RECORDS": "1000"})
    assert_one_clear_line(result, "shm.ring_records", "power of two", "COBY_SHM__RING_RECORDS")


def test_busy_port_stops_start_up_and_leaves_nothing_behind() -> None:
    instance = unique_instance("cli")
    sweep()  # orphans left by an earlier test's killed supervisor would add the start-up sweep's log line
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = coby(
            "run",
            env={
                "COBY_ENGINE__INSTANCE": instance,
                "COBY_ENDPOINTS__CONTROL": f"tcp://127.0.0.1:{port}",
                "COBY_ENDPOINTS__BUS_PUBLISH": "tcp://127.0.0.1:0",
                "COBY_ENDPOINTS__BUS_SUBSCRIBE": "tcp://127.0.0.1:0",
            },
        )
    assert_one_clear_line(result, f"tcp://127.0.0.1:{port}", "already in use")
    assert list_segments(instance) == []


def test_status_without_a_running_engine_says_so() -> None:
    result = coby("status", "--instance", unique_instance("cli"))
    assert_one_clear_line(result, "is running")


def test_status_restart_bus_and_shutdown_against_a_running_demo(tmp_path: Path) -> None:
    instance = unique_instance("cli")
    # Its output goes to a file: an unread pipe fills in ~30 s of ladders and the demo's
    # supervisor, blocked in print(), would stop answering control requests.
    demo_output = tmp_path / "demo.out"
    with demo_output.open("w") as output:
        demo = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "demo", "--seconds", "60", "--instance", instance],
            stdout=output,
            stderr=subprocess.DEVNULL,
            cwd=os.getcwd(),
            env=stores_in(tmp_path),
        )
    try:
        wait_for(lambda: list_segments(instance) and _directory_ready(instance), timeout_s=30, what="demo started")
        engine = attach(instance)
        wait_for(
            lambda: engine.book("BTC/USDT").snapshot().exchange("binance").status.name == "IN_SYNC",
            timeout_s=30,
            what="binance in sync",
        )
        def status_with_counters():
            result = coby("status", "--json", "--instance", instance)
            assert result.returncode == 0, result.stderr
            reply = json.loads(result.stdout)
            return reply if reply.get("exchanges", {}).get("binance") else None

        status = wait_for(status_with_counters, timeout_s=10, what="connector counters in status")
        actors = {actor["name"]: actor for actor in status["actors"]}
        assert set(actors) == {"simulator", "aggregator", "features", "signals", "storage", "api"} | {
            f"connector:{name}" for name in Config().exchange_ids()
        }
        for actor in actors.values():
            assert actor["state"] == "running" and actor["pid"] > 0 and actor["restarts"] == 0
            assert actor["heartbeat_age_s"] < 3.0 and actor["rss_bytes"] > 10 * 2**20
            assert actor["cpu_percent"] >= 0.0
        ring = status["rings"]["binance"]
        assert ring["capacity"] == 262144 and ring["written_records"] > 0 and ring["dropped_batches"] == 0
        counters = status["exchanges"]["binance"]["symbols"]["BTC/USDT"]
        assert counters["frames"] > 0 and counters["snapshots"] >= 1 and counters["levels_applied"] > 0
        assert counters["gaps"] == 0 and counters["parse_errors"] == 0
        assert status["exchanges"]["binance"]["connections"][0]["frames"] > 0
        table = coby("status", "--instance", instance)
        assert table.returncode == 0 and "connector:binance" in table.stdout and "fill %" in table.stdout
        assert "storage feed" in table.stdout and status["storage_feed"]["written_records"] > 0
        assert "binance BTC/USDT" in table.stdout
        dashboard = coby("dashboard", "--instance", instance)
        assert dashboard.returncode == 0 and dashboard.stdout.startswith("http://127.0.0.1:"), dashboard
        assert f"dashboard {dashboard.stdout.strip()}" in table.stdout
        assert f"dashboard: {dashboard.stdout.strip()}" in demo_output.read_text()

        ladder = coby("book", "BTC/USDT", "--once", "--depth", "3", "--instance", instance)
        assert ladder.returncode == 0, ladder.stderr
        lines = ladder.stdout.splitlines()
        assert lines[0].startswith("BTC/USDT") and "binance:" in lines[0]
        assert lines[1].split() == ["price", "total", "binance", "coinbase", "kraken", "htx", "bitfinex", "okx",
                                    "bybit", "kucoin", "bitstamp", "gateio"]
        assert [line.split()[0] for line in lines[2:]] == ["ask"] * 3 + ["bid"] * 3
        snapshot = json.loads(coby("book", "BTC/USDT", "--json", "--depth", "5", "--instance", instance).stdout)
        assert len(snapshot["bids"]) == 5 and set(snapshot["exchanges"]) == set(Config().exchange_ids()) - {
            "binance_futures"}
        top = snapshot["bids"][0]
        assert top["size"] == pytest.approx(sum(top["exchanges"].values()))
        unknown = coby("book", "XRP/USDT", "--once", "--instance", instance)
        assert unknown.returncode == 2 and "instruments: BTC/USDT" in unknown.stderr

        books = list(_take(engine.subscribe(["book.BTC/USDT"], timeout_ms=5000), 3))
        # consolidated across venues: may cross during a simulated dislocation (an arbitrage, shown as it is)
        assert all(topic == "book.BTC/USDT" and message["best_bid"] and message["best_ask"] and message["exchanges"]
                   and message["mid"] == (message["best_bid"] + message["best_ask"]) / 2 and message["mode"] == "live"
                   for topic, message in books), books
        trades = list(_take(engine.subscribe(["trade."], timeout_ms=10000), 1))
        assert trades and trades[0][1]["exchange"] in Config().exchange_ids() and trades[0][1]["size"] > 0

        statuses = engine.subscribe(["status.binance"], timeout_ms=15000)
        next_status = iter(statuses)
        time.sleep(0.3)  # let the subscription reach the forwarder
        assert coby("restart", "connector:binance", "--instance", instance).returncode == 0
        seen = [message["status"] for _, message in _take(next_status, 12)]
        assert "in_sync" in seen and any(state != "in_sync" for state in seen), seen
        assert coby("restart", "nope", "--instance", instance).returncode == 1

        refused = coby("actor", "aggregator", "--instance", instance)
        assert refused.returncode == 2 and "coby stop aggregator" in refused.stderr
        assert coby("stop", "aggregator", "--instance", instance).returncode == 0
        held = engine.book("BTC/USDT").generation
        time.sleep(0.5)
        assert engine.book("BTC/USDT").generation == held, "the held aggregator publishes nothing"
        by_hand_log = tmp_path / "aggregator-by-hand.log"
        with by_hand_log.open("w") as log:
            by_hand = subprocess.Popen(
                [sys.executable, "-m", "engine.cli", "actor", "aggregator", "--instance", instance],
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=os.getcwd(),
            )
        try:
            wait_for(lambda: engine.book("BTC/USDT").generation > held + 5 or by_hand.poll() is not None,
                     timeout_s=20, what="hand-run aggregator publishing")
        finally:
            by_hand.terminate()
            assert by_hand.wait(20) == 0, by_hand_log.read_text()[-3000:]
        assert coby("start", "aggregator", "--instance", instance).returncode == 0

        engine.close()
        assert coby("shutdown", "--instance", instance).returncode == 0
        demo.wait(timeout=60)
        assert "exchange books synced" in demo_output.read_text().strip().splitlines()[-1]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
    assert list_segments(instance) == []


def _directory_ready(instance: str) -> bool:
    try:
        read_directory(instance)
        return True
    except (FileNotFoundError, RuntimeError):
        return False


def _take(messages, count: int):
    for index, message in enumerate(messages):
        yield message
        if index + 1 >= count:
            return
