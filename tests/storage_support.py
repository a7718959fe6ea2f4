"""Running the engine on the simulator with storage on, for the storage and replay tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from engine import control
from engine.cli import demo_config
from engine.config import Config
from engine.supervisor import Supervisor, default_actor_specs
from tests.engine_support import running, unique_instance, wait_for

CONFIG = """
exchanges:
  binance: {symbols: [BTC/USDT, ETH/USDT], ws_url: "wss://stream.binance.com:9443", rest_url: "https://api.binance.com"}
  okx: {symbols: [BTC/USDT], ws_url: "wss://ws.okx.com:8443/ws/v5/public", rest_url: "https://www.okx.com"}
simulator:
  update_interval_ms: 20
supervisor:
  heartbeat_interval_s: 0.1
  restart_backoff_initial_s: 0.1
api: {enabled: false}
"""
EVERYTHING = (0, 2**62)


def stop(supervisor: Supervisor, name: str) -> None:
    assert control.request(supervisor.directory["endpoints"]["control"], "stop", timeout_s=30, actor=name)["ok"]


def actor(supervisor: Supervisor, name: str) -> dict:
    return next(actor for actor in supervisor.status()["actors"] if actor["name"] == name)


def run_engine(tmp_path: Path, storage: dict, fault: Callable[[Supervisor], None]) -> tuple[Config, dict, int]:
    """Run until records flow, inject ``fault``, stop the sources, let storage catch up, stop it."""
    config_file = tmp_path / "config.yaml"
    settings = {"engine": {"data_dir": str(tmp_path / "data")},
                "storage": {"flush_ms": 100, "snapshot_interval_ms": 300, **storage}}
    config_file.write_text(CONFIG + yaml.safe_dump(settings))
    config = demo_config(str(config_file), unique_instance("store"))
    simulated = {name: {"ws_url": config.exchanges[name].ws_url, "rest_url": config.exchanges[name].rest_url}
                 for name in config.exchange_ids()}
    specs = default_actor_specs(config, with_simulator=True)
    with running(Supervisor(config, specs, extra_directory={"simulator": simulated})) as supervisor:
        wait_for(lambda: supervisor.status()["storage_feed"]["written_records"] > 2000, timeout_s=30,
                 what="records flowing to storage")
        fault(supervisor)
        for name in ("simulator", "connector:binance", "connector:okx"):  # no new records from here on
            stop(supervisor, name)
        wait_for(lambda: supervisor.status()["storage_feed"]["fill"] == 0, timeout_s=30,
                 what="storage caught up with its feed")
        for name in ("features", "signals", "aggregator", "storage"):
            stop(supervisor, name)
        return config, supervisor.status()["storage_feed"], supervisor.directory["started_ns"]
