"""The whole engine against the simulator: kill -9 under load, recovery to the exact truth."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

from engine.client import attach
from engine.config import Config
from engine.supervisor import Supervisor, default_actor_specs
from shm.records import Status
from shm.registry import list_segments
from sim.threaded import BackgroundSimulator
from tests.engine_support import engine_config, running, stores_in, unique_instance, wait_for

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]


def _watch_books(instance: str, seconds: float, results: "multiprocessing.Queue") -> None:
    """A consumer process: read every book as fast as possible and count half-shown books."""
    engine = attach(instance)
    books = [engine.book(symbol) for symbol in SYMBOLS]
    reads = violations = in_sync_reads = excluded_reads = 0
    examples: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for handle in books:
            book = handle.snapshot()
            reads += 1
            state = book.exchange("binance")
            if state.status == Status.IN_SYNC:
                in_sync_reads += 1
                whole = (
                    state.bid_levels >= 20
                    and state.ask_levels >= 20
                    and len(book.bid_price) == state.bid_levels
                    and len(book.ask_price) == state.ask_levels
                    and book.best_bid < book.best_ask
                    and np.all(np.diff(book.bid_price) < 0)
                    and np.all(np.diff(book.ask_price) > 0)
                )
            else:
                excluded_reads += 1
                whole = len(book.bid_price) == 0 and len(book.ask_price) == 0
            if not whole:
                violations += 1
                if len(examples) < 5:
                    examples.append(f"{handle.symbol} {state} levels {len(book.bid_price)}/{len(book.ask_price)}")
    engine.close()
    results.put({"reads": reads, "violations": violations, "in_sync": in_sync_reads, "excluded": excluded_reads, "examples": examples})


def _e2e_config(instance: str, simulator: BackgroundSimulator | None = None, base: Config | None = None) -> Config:
    overrides = {
        "aggregator": {"publish_interval_ms": 5},
        "exchanges": {"binance": {"symbols": SYMBOLS, "stale_after_s": 5.0, "reconnect_backoff_initial_s": 0.1}},
        "simulator": {"update_interval_ms": 10},
    }
    if simulator is not None:
        server = simulator.servers["binance"]
        overrides["exchanges"]["binance"].update({"ws_url": server.ws_url, "rest_url": server.http_url})
    return engine_config(instance, overrides)


def test_kill_9_of_a_connector_under_load_is_excluded_resynced_and_never_shown_half() -> None:
    instance = unique_instance("e2e")
    simulator = BackgroundSimulator(_e2e_config(instance), cadence_s=0.01)
    try:
        config = _e2e_config(instance, simulator)
        specs = [spec for spec in default_actor_specs(config) if spec.kind in ("connector", "aggregator")]
        with running(Supervisor(config, specs)) as supervisor:
            client = attach(instance)
            in_sync = lambda: all(client.book(s).snapshot().exchange("binance").status == Status.IN_SYNC for s in SYMBOLS)
            wait_for(in_sync, timeout_s=20, what="all books in sync")

            results: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
            watcher = multiprocessing.get_context("spawn").Process(target=_watch_books, args=(instance, 8.0, results))
            watcher.start()
            time.sleep(2.0)  # the watcher is attached and reading while the market runs at 100 steps/s
            victim = next(a["pid"] for a in supervisor.status()["actors"] if a["name"] == "connector:binance")
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_for(
                lambda: client.book("BTC/USDT").snapshot().exchange("binance").status != Status.IN_SYNC,
                timeout_s=5,
                what="binance excluded after the kill",
            )
            excluded_after = time.monotonic() - killed_at
            wait_for(in_sync, timeout_s=20, what="re-synced after restart")
            resynced_after = time.monotonic() - killed_at
            watcher.join(30)
            report = results.get(timeout=5)
            assert report["violations"] == 0, report
            assert report["in_sync"] > 100 and report["excluded"] > 0, report
            assert excluded_after < 2.0
            assert resynced_after < 15.0
            restarted = next(a for a in supervisor.status()["actors"] if a["name"] == "connector:binance")
            assert restarted["restarts"] == 1 and restarted["pid"] != victim

            for symbol in SYMBOLS:
                bids, asks = simulator.paused_truth("binance", [symbol])[symbol]
                # The last frames before the pause may still be on their way: wait for the
                # whole book (a size-only change leaves the prices equal before it lands).
                book = wait_for(
                    lambda: (b := client.book(symbol).snapshot()).bid_price.tolist() == [p for p, _ in bids]
                    and b.ask_price.tolist() == [p for p, _ in asks]
                    and b.bid_size.tolist() == [s for _, s in bids]
                    and b.ask_size.tolist() == [s for _, s in asks]
                    and b,
                    timeout_s=5,
                    what=f"{symbol} equal to the simulator's truth, level by level",
                )
                assert len(book.bid_price) == len(bids) and len(book.ask_price) == len(asks)
                simulator.resume()
            client.close()
    finally:
        simulator.stop()


def test_demo_runs_offline_prints_the_book_and_leaves_no_segment(tmp_path) -> None:
    instance = unique_instance("demo")
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo", "--seconds", "15", "--instance", instance],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.getcwd(),
        env=stores_in(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert re.match(r"demo ok: \d+s, 5 symbols, 35/35 exchange books synced", lines[-1]), lines[-1]
    every_spot_venue = {f"{name}:in_sync" for name in ("binance", "coinbase", "kraken", "htx", "bitfinex", "okx",
                                                        "bybit", "kucoin", "bitstamp", "gateio")}
    assert any(line.startswith("BTC/USDT ") and every_spot_venue <= set(line.split()) for line in lines)
    assert list_segments(instance) == []


def _error_lines(stderr: str) -> list[str]:
    """What went wrong in the actors (errors, tracebacks), not just the last log lines."""
    return [line for line in stderr.splitlines() if "error" in line.lower() or "warning" in line][-40:]


MULTI_VENUE_CONFIG = """
exchanges:
  binance: {symbols: [BTC/USDT, ETH/USDT], ws_url: "wss://stream.binance.com:9443", rest_url: "https://api.binance.com"}
  binance_futures: {symbols: [BTC/USDT:PERP], ws_url: "wss://fstream.binance.com", rest_url: "https://fapi.binance.com"}
  gateio: {symbols: [BTC/USDT, ETH/USDT], ws_url: "wss://api.gateio.ws", rest_url: "https://api.gateio.ws"}
  kucoin: {symbols: [BTC/USDT, ETH/USDT], rest_url: "https://api.kucoin.com", snapshot_depth: 100}
  bitstamp: {symbols: [BTC/USD], ws_url: "wss://ws.bitstamp.net", rest_url: "https://www.bitstamp.net"}
  kraken: {symbols: [BTC/USD, ETH/USDT], ws_url: "wss://ws.kraken.com/v2", rest_url: "https://api.kraken.com"}
simulator:
  symbols:
    BTC/USDT: {mid: 60000.0, tick: 0.01, lot: 0.00001, order_size: 0.05}
    ETH/USDT: {mid: 3000.0, tick: 0.01, lot: 0.0001, order_size: 0.5}
    BTC/USD: {mid: 60000.0, tick: 0.01, lot: 0.00001, order_size: 0.05}
    BTC/USDT:PERP: {mid: 60000.0, tick: 0.1, lot: 0.001, order_size: 0.05}
"""


def test_demo_with_six_venues_syncs_every_configured_book_through_the_real_runtime(tmp_path) -> None:
    """Each venue's runtime needs differ (KuCoin's token POST and pings, Gate's spot.ping,
    futures' routed connections, Bitstamp's heartbeat, Kraken's checksummed in-stream
    snapshots and re-subscriptions); all go through actors/connector.py."""
    config = tmp_path / "config.yaml"
    config.write_text(MULTI_VENUE_CONFIG)
    instance = unique_instance("multi")
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--config", str(config), "demo", "--seconds", "12", "--instance", instance],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.getcwd(),
        env=stores_in(tmp_path),
    )
    assert result.returncode == 0, result.stdout[-1500:] + "\n".join(_error_lines(result.stderr))
    assert "10/10 exchange books synced" in result.stdout.strip().splitlines()[-1]
    consolidated = [line for line in result.stdout.splitlines() if line.startswith("ETH/USDT ") and " bid " in line]
    venues = {"binance:in_sync", "gateio:in_sync", "kraken:in_sync", "kucoin:in_sync"}
    assert any(venues <= set(line.split()) for line in consolidated), consolidated[-3:]
    ladder_header = [line for line in result.stdout.splitlines() if line.split()[:2] == ["price", "total"]]
    assert any(line.split()[2:] == ["binance", "gateio", "kucoin", "kraken"] for line in ladder_header), ladder_header
    assert list_segments(instance) == []


STREAM_SEEDED_VENUES_CONFIG = """
exchanges:
  coinbase: {symbols: [BTC/USD], ws_url: "wss://ws-feed.exchange.coinbase.com", rest_url: "https://api.exchange.coinbase.com"}
  okx: {symbols: [BTC/USDT, BTC/USDT:PERP], ws_url: "wss://ws.okx.com:8443/ws/v5/public", rest_url: "https://www.okx.com"}
  bitfinex: {symbols: [BTC/USD], ws_url: "wss://api-pub.bitfinex.com/ws/2", rest_url: "https://api-pub.bitfinex.com"}
  bybit: {symbols: [BTC/USDT, BTC/USDT:PERP], ws_url: "wss://stream.bybit.com/v5/public", rest_url: "https://api.bybit.com"}
  htx: {symbols: [BTC/USDT, ETH/USDT], ws_url: "wss://api.huobi.pro/feed", rest_url: "https://api.huobi.pro"}
simulator:
  symbols:
    BTC/USDT: {mid: 60000.0, tick: 0.01, lot: 0.00001, order_size: 0.05}
    ETH/USDT: {mid: 3000.0, tick: 0.01, lot: 0.0001, order_size: 0.5}
    BTC/USD: {mid: 60000.0, tick: 0.01, lot: 0.00001, order_size: 0.05}
    BTC/USDT:PERP: {mid: 60000.0, tick: 0.1, lot: 0.001, order_size: 0.05}
"""


def test_demo_with_the_stream_seeded_venues_syncs_every_configured_book(tmp_path) -> None:
    """Coinbase, OKX (two instrument requests), Bitfinex (SEQ_ALL + checksums), Bybit (one
    connection per category) and HTX (gzip binary frames, pong replies) through the runtime."""
    config = tmp_path / "config.yaml"
    config.write_text(STREAM_SEEDED_VENUES_CONFIG)
    instance = unique_instance("multi")
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--config", str(config), "demo", "--seconds", "12", "--instance", instance],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.getcwd(),
        env=stores_in(tmp_path),
    )
    assert result.returncode == 0, result.stdout[-1500:] + "\n".join(_error_lines(result.stderr))
    assert "8/8 exchange books synced" in result.stdout.strip().splitlines()[-1]
    perpetual = [line for line in result.stdout.splitlines() if line.startswith("BTC/USDT:PERP") and " bid " in line]
    assert any({"bybit:in_sync", "okx:in_sync"} <= set(line.split()) for line in perpetual), perpetual[-3:]
    assert list_segments(instance) == []
