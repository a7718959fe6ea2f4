"""Helpers for tests of the api actor: the engine on the simulator with the api on a free port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from engine.config import Config
from engine.supervisor import Supervisor, default_actor_specs, free_ports
from tests.engine_support import engine_config, running, unique_instance, wait_for

SIMULATED = ("binance", "okx", "bybit")
SYMBOLS = ["BTC/USDT", "ETH/USDT"]


def simulated_supervisor(instance: str, api: dict[str, Any] | None = None,
                         exchanges: tuple[str, ...] = SIMULATED) -> tuple[Supervisor, str]:
    """A supervisor running the simulator, ``exchanges`` (BTC/USDT and ETH/USDT each), the
    aggregator, features, signals and the api on a free port; and the api's base URL."""
    ports = iter(free_ports(2 * len(exchanges) + 1))
    defaults = Config().exchanges
    overrides = {
        name: {
            "symbols": SYMBOLS,
            "ws_url": f"ws://127.0.0.1:{next(ports)}" + urlsplit(defaults[name].ws_url).path.rstrip("/"),
            "rest_url": f"http://127.0.0.1:{next(ports)}",
        }
        for name in exchanges
    }
    api_port = next(ports)
    config = engine_config(instance, {"exchanges": overrides, "api": {"enabled": True, "port": api_port, **(api or {})}})
    supervisor = Supervisor(config, default_actor_specs(config, with_simulator=True))
    return supervisor, f"http://127.0.0.1:{api_port}"


def get(url: str, headers: dict[str, str] | None = None, timeout_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a GET; 4xx and 5xx are returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, _, body = get(url, headers)
    return status, json.loads(body)


def reachable(url: str) -> bool:
    try:
        get(url, timeout_s=2.0)
    except OSError:
        return False
    return True


TOKEN = "api-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class ApiEngine:
    supervisor: Supervisor
    base: str
    token: str = TOKEN


@pytest.fixture(scope="session", name="api_engine")
def api_engine_fixture() -> Iterator[ApiEngine]:
    """``api_engine``: one engine on the simulator for the api and dashboard tests, with a token
    (so every test also exercises it); healthy before the first test uses it. A test module
    imports this function to have the fixture."""
    supervisor, base = simulated_supervisor(unique_instance("api"), {"token": TOKEN})
    with running(supervisor):
        wait_for(lambda: reachable(base + "/static/index.html"), timeout_s=60, what="the api listening")
        wait_for(lambda: get(base + "/health", AUTH)[0] == 200, timeout_s=60, what="/health 200")
        yield ApiEngine(supervisor, base)
