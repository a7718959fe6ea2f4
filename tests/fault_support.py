"""A running engine on a simulator the test process owns, for fault injection.

The simulator runs on its own event-loop thread in the test process, so a test can switch
faults on for one venue (``sim.server.VenueFaults``), read the market's exact truth, and wait
on the market clock (fault fired, steps taken) rather than on wall time. The engine is a real
supervisor with real connector and aggregator processes; tests read what a consumer reads
(``engine.client``: per-exchange status and the consolidated book's per-exchange columns), the
connectors' ``counters.<exchange>`` (through the supervisor's status) and the actors' restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from engine.client import Engine, attach
from engine.config import Config
from engine.supervisor import Supervisor, default_actor_specs
from shm.records import Status
from sim.server import VenueServer
from sim.threaded import BackgroundSimulator, Levels
from tests.engine_support import engine_config, running, unique_instance, wait_for

RECOVERY_TARGET_S = 2.0  # issue 8: resynced within 2 s of the venue being reachable again


def simulated_urls(config: Config, simulator: BackgroundSimulator) -> dict[str, dict[str, str]]:
    """Each exchange's URLs on the simulator, keeping the configured WebSocket path (it can
    pick the protocol generation: Kraken's ``/v2``)."""
    urls = {}
    for name, server in simulator.servers.items():
        path = urlsplit(config.exchanges[name].ws_url).path.rstrip("/")
        urls[name] = {"ws_url": server.ws_url + path, "rest_url": server.http_url}
    return urls


@dataclass
class Snapshot:
    """One exchange's state in one consolidated book, and that exchange's levels in it."""

    status: Status
    since_ns: int
    bids: Levels
    asks: Levels


class FaultEngine:
    """A supervisor running connectors and the aggregator against a :class:`BackgroundSimulator`."""

    def __init__(self, supervisor: Supervisor, simulator: BackgroundSimulator, client: Engine) -> None:
        self.supervisor = supervisor
        self.simulator = simulator
        self.client = client
        self.config = supervisor.config

    def symbols(self, exchange: str) -> list[str]:
        return list(self.config.exchanges[exchange].symbols)

    def server(self, exchange: str) -> VenueServer:
        return self.simulator.servers[exchange]

    def book(self, exchange: str, symbol: str) -> Snapshot:
        book = self.client.book(symbol).snapshot()
        state = book.exchange(exchange)
        column = book.exchanges[exchange]
        bid_sizes, ask_sizes = book.bid_exchange_size[:, column], book.ask_exchange_size[:, column]
        return Snapshot(
            state.status,
            state.since_ns,
            [(float(p), float(s)) for p, s in zip(book.bid_price[bid_sizes > 0], bid_sizes[bid_sizes > 0])],
            [(float(p), float(s)) for p, s in zip(book.ask_price[ask_sizes > 0], ask_sizes[ask_sizes > 0])],
        )

    def states(self) -> dict[tuple[str, str], tuple[Status, int]]:
        """(exchange, symbol) → (status, since) of every book."""
        states = {}
        for exchange in self.config.exchange_ids():
            for symbol in self.symbols(exchange):
                snapshot = self.book(exchange, symbol)
                states[exchange, symbol] = (snapshot.status, snapshot.since_ns)
        return states

    def in_sync(self, exchange: str, symbols: Iterable[str] | None = None) -> bool:
        return all(self.book(exchange, s).status == Status.IN_SYNC for s in symbols or self.symbols(exchange))

    def all_in_sync(self) -> bool:
        return all(self.in_sync(exchange) for exchange in self.config.exchange_ids())

    def restarts(self) -> dict[str, int]:
        return {actor["name"]: actor["restarts"] for actor in self.supervisor.status()["actors"]}

    def counters(self, exchange: str) -> dict:
        return self.supervisor.status()["exchanges"].get(exchange, {})

    def symbol_counter(self, exchange: str, name: str) -> int:
        return sum(symbol[name] for symbol in self.counters(exchange).get("symbols", {}).values())

    def connection_counter(self, exchange: str, name: str) -> int:
        return sum(connection[name] for connection in self.counters(exchange).get("connections", []))

    def fresh_counters(self, exchange: str) -> dict:
        """Counters published after now (every 0.1 s in these engines, once a second by default)."""
        previous = self.counters(exchange)
        return wait_for(
            lambda: (latest := self.counters(exchange)) is not previous and latest != previous and latest,
            timeout_s=5, what=f"fresh counters of {exchange}",
        )

    def wait_resynced(self, exchange: str, symbols: Iterable[str], after_ns: int, timeout_s: float = 15.0) -> float:
        """Wait until each book is back in sync with a status set after ``after_ns``; returns
        the seconds from ``after_ns`` to the latest of those (the recovery time)."""
        symbols = list(symbols)

        def recovered() -> list[int] | None:
            books = [self.book(exchange, symbol) for symbol in symbols]
            if all(book.status == Status.IN_SYNC and book.since_ns > after_ns for book in books):
                return [book.since_ns for book in books]
            return None

        since = wait_for(recovered, timeout_s, interval_s=0.01, what=f"{exchange} {symbols} resynced")
        return (max(since) - after_ns) / 1e9

    def assert_equals_truth(self, exchanges: Iterable[str] | None = None, timeout_s: float = 10.0) -> None:
        """Pause the market; each exchange's levels in each consolidated book equal the
        venue's book level by level (frames still on their way are waited for); resume."""
        try:
            for exchange in exchanges or self.config.exchange_ids():
                truth = self.simulator.paused_truth(exchange, self.symbols(exchange))
                for symbol, (bids, asks) in truth.items():
                    wait_for(
                        lambda: (b := self.book(exchange, symbol)).status == Status.IN_SYNC
                        and b.bids == bids and b.asks == asks,
                        timeout_s, what=f"{exchange} {symbol} equal to the simulator's truth, level by level",
                    )
        finally:
            self.simulator.resume()

    def fired_at(self, exchange: str, what: str, timeout_s: float = 10.0) -> int:
        """Wait until the venue's fault ``what`` has fired; its wall-clock time (ns)."""
        faults = self.server(exchange).faults
        return wait_for(
            lambda: next((at for name, at in list(faults.fired) if name == what), None),
            timeout_s, what=f"fault {what!r} fired on {exchange}",
        )


def fault_engine_config(instance: str, exchanges: dict[str, list[str]], extra: dict[str, Any] | None = None,
                        simulator: BackgroundSimulator | None = None) -> Config:
    """The engine's config for ``exchanges`` (name → symbols), pointed at ``simulator`` once it exists."""
    settings = {name: {"symbols": symbols, "stale_after_s": 1.5} for name, symbols in exchanges.items()}
    overrides: dict[str, Any] = {
        "aggregator": {"publish_interval_ms": 5},
        "exchanges": settings,
        "simulator": {"update_interval_ms": 20},
        **(extra or {}),
    }
    config = engine_config(instance, overrides)
    if simulator is None:
        return config
    for name, urls in simulated_urls(config, simulator).items():
        settings[name].update(urls)
    return engine_config(instance, overrides)


@contextmanager
def fault_engine(
    exchanges: dict[str, list[str]], kinds: Iterable[str] = ("connector", "aggregator"),
    extra: dict[str, Any] | None = None, cadence_s: float = 0.02,
) -> Iterator[FaultEngine]:
    """Start the simulator and an engine of the actor ``kinds`` on it; yield once every book is in sync."""
    instance = unique_instance("fault")
    simulator = BackgroundSimulator(fault_engine_config(instance, exchanges, extra), cadence_s)
    try:
        config = fault_engine_config(instance, exchanges, extra, simulator)
        specs = [
            replace(spec, arguments={**spec.arguments, "counters_interval_s": 0.1}) if spec.kind == "connector" else spec
            for spec in default_actor_specs(config) if spec.kind in set(kinds)
        ]
        with running(Supervisor(config, specs)) as supervisor:
            client = attach(instance)
            try:
                engine = FaultEngine(supervisor, simulator, client)
                wait_for(engine.all_in_sync, timeout_s=30, what="every book in sync")
                yield engine
            finally:
                client.close()
    finally:
        simulator.stop()


def disturbed(engine: FaultEngine, before: dict[tuple[str, str], tuple[Status, int]],
              affected: Iterable[tuple[str, str]] = ()) -> list[str]:
    """The books other than ``affected`` ((exchange, symbol) pairs) whose status changed since ``before``."""
    now = engine.states()
    allowed = set(affected)
    return [f"{key}: {before[key]} -> {now[key]}" for key in before if key not in allowed and now[key] != before[key]]
