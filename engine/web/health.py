"""What the api actor knows about the engine's health, for /health, /api/exchanges, the
dashboard's health panel and /metrics.

Sources, each read where it is freshest:

- the **actor table** (shared memory, live): every actor's state, pid and heartbeat, so a
  killed aggregator shows at once, without waiting for the supervisor's next status;
- the **supervisor's status** (control socket, polled by the actor every
  ``supervisor.status_interval_s``): that the supervisor answers at all, per-actor CPU and
  RSS, ring fill and overflows;
- the **books** (shared memory): each exchange's state in each market (in sync, stale since,
  reason, included), its top of book, and how fresh each book is;
- the **bus**: connectors' ``counters.<exchange>`` (frames, resyncs, gaps, parse errors,
  receive lag; message rates are the difference of two consecutive reports) and
  ``status.<exchange>`` changes; checksum failures are the connector's own count where it
  keeps one (``checksums_failed``: the venues that checksum their stream), else the status
  changes with reason ``checksum``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.client import BookHandle, StaleRead
from shm.actor_table import ActorState, ActorTable
from shm.records import Reason, Status

HEALTHY_MARKET_STATES = {Status.IN_SYNC}
CONNECTED_MARKET_STATES = {Status.SYNCING, Status.IN_SYNC, Status.RESYNCING, Status.STALE, Status.ERROR}


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class ExchangeTelemetry:
    """What the bus said about one exchange."""

    counters: dict[str, Any] | None = None
    counters_at: float = 0.0  # monotonic time of ``counters``
    rates: dict[str, float] = field(default_factory=dict)  # symbol → book frames per second
    checksum_failures: dict[str, int] = field(default_factory=dict)  # symbol → count since the api started
    status_changes: dict[str, int] = field(default_factory=dict)  # symbol → count since the api started

    def checksum_failures_of(self, symbol: str) -> int:
        """The connector's own count where it keeps one (the venues that checksum their stream),
        else the status changes with reason checksum seen since the api started."""
        counted = ((self.counters or {}).get("symbols") or {}).get(symbol, {})
        if isinstance(counted, dict) and isinstance(counted.get("checksums_failed"), int):
            return counted["checksums_failed"]
        return self.checksum_failures.get(symbol, 0)


class Telemetry:
    """Bus-fed state: the newest counters of each connector and the status changes seen."""

    def __init__(self, exchanges: list[str]) -> None:
        self.exchanges = {name: ExchangeTelemetry() for name in exchanges}

    def on_counters(self, message: dict[str, Any], now: float) -> None:
        telemetry = self.exchanges.get(message.get("exchange"))
        symbols = message.get("symbols")
        if telemetry is None or not isinstance(symbols, dict):
            return
        previous, elapsed = telemetry.counters, now - telemetry.counters_at
        if previous is not None and elapsed > 0:
            for symbol, counters in symbols.items():
                before = previous.get("symbols", {}).get(symbol)
                if isinstance(before, dict) and isinstance(counters, dict):
                    frames = counters.get("frames", 0) - before.get("frames", 0)
                    telemetry.rates[symbol] = max(frames, 0) / elapsed  # a restarted connector counts from 0
        telemetry.counters, telemetry.counters_at = message, now

    def on_status(self, message: dict[str, Any]) -> None:
        telemetry = self.exchanges.get(message.get("exchange"))
        symbol = message.get("symbol")
        if telemetry is None or not isinstance(symbol, str):
            return
        telemetry.status_changes[symbol] = telemetry.status_changes.get(symbol, 0) + 1
        if message.get("reason") == Reason.CHECKSUM.name.lower():
            telemetry.checksum_failures[symbol] = telemetry.checksum_failures.get(symbol, 0) + 1


@dataclass(frozen=True)
class MarketState:
    """One exchange's book in one instrument, as the aggregator last published it."""

    status: Status
    reason: Reason
    since_ns: int
    included: bool
    best_bid: float
    best_ask: float
    receive_ts: int


@dataclass(frozen=True)
class BookState:
    generation: int
    publish_ts: int
    markets: dict[int, MarketState]  # exchange id → state


def read_book_state(handle: BookHandle, members: list[int]) -> BookState | None:
    """The per-exchange fields of an instrument's newest book, read in place (no copy of the levels)."""
    for _ in range(5):
        try:
            with handle.view() as book:
                slot = book.slot
                markets = {
                    exchange: MarketState(
                        Status(int(slot["exchange_status"][exchange])),
                        _reason(int(slot["exchange_reason"][exchange])),
                        int(slot["exchange_status_since"][exchange]),
                        bool(slot["exchange_included"][exchange]),
                        float(slot["exchange_best_bid"][exchange]),
                        float(slot["exchange_best_ask"][exchange]),
                        int(slot["exchange_receive_ts"][exchange]),
                    )
                    for exchange in members
                }
                state = BookState(book.generation, book.publish_ts, markets)
            return state
        except StaleRead:
            continue
    return None


def _lag_ms(counters: dict[str, Any]) -> float | None:
    """Receive time minus the exchange's own timestamp of the last frame; None when the
    exchange stamps none of its book frames (its lag would be the whole epoch)."""
    if not counters.get("last_exchange_ts"):
        return None
    return round(counters.get("receive_lag_ns", 0) / 1e6, 3)


def _reason(value: int) -> Reason:
    try:
        return Reason(value)
    except ValueError:
        return Reason.NONE


@dataclass
class SupervisorStatus:
    """The newest answer of the supervisor's control socket."""

    reply: dict[str, Any] | None = None
    received_at: float = 0.0  # monotonic
    error: str = ""


class HealthModel:
    """Everything /health, /api/exchanges, the health panel and /metrics are computed from."""

    def __init__(
        self,
        directory: dict[str, Any],
        table: ActorTable,
        books: dict[str, BookHandle],
        members: dict[str, list[int]],
        heartbeat_timeout_s: float,
        status_max_age_s: float,
    ) -> None:
        self.directory = directory
        self.table = table
        self.books = books
        self.members = members
        self.exchange_ids: dict[str, int] = directory["exchanges"]
        self.exchange_names = {index: name for name, index in self.exchange_ids.items()}
        self.markets = {name: name for name in directory["symbols"] if name in books}  # plain market instruments
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.status_max_age_s = status_max_age_s
        self.telemetry = Telemetry(list(self.exchange_ids))
        self.supervisor = SupervisorStatus()

    # ---- actors -----------------------------------------------------------------------

    def actor(self, name: str) -> dict[str, Any] | None:
        """An actor's state from the actor table (live), with CPU/RSS from the last status."""
        slot_index = self.directory["actors"].get(name)
        if slot_index is None:
            return None
        slot = self.table.slots[slot_index]
        state = ActorState(int(slot["state"]))
        pid = int(slot["pid"])
        beat = int(slot["last_beat_ns"])
        alive = pid_alive(pid) if state in (ActorState.STARTING, ActorState.RUNNING) else False
        age = (time.time_ns() - beat) / 1e9 if beat else None
        report = {
            "name": name,
            "state": state.name.lower() if alive or state not in (ActorState.STARTING, ActorState.RUNNING) else "dead",
            "pid": pid if alive else None,
            "restarts": int(slot["restarts"]),
            "heartbeat_age_s": round(age, 3) if age is not None and alive else None,
            "cpu_percent": 0.0,
            "rss_bytes": 0,
            "started_ns": int(slot["started_ns"]),
        }
        for sampled in (self.supervisor.reply or {}).get("actors", []):
            if sampled.get("name") == name and alive:
                report["cpu_percent"] = sampled.get("cpu_percent", 0.0)
                report["rss_bytes"] = sampled.get("rss_bytes", 0)
        report["healthy"] = (
            report["state"] == "running" and age is not None and age < self.heartbeat_timeout_s
        )
        return report

    def supervisor_report(self, now: float) -> dict[str, Any]:
        pid = int(self.directory["supervisor_pid"])
        alive = pid_alive(pid)
        age = now - self.supervisor.received_at if self.supervisor.reply is not None else None
        answering = age is not None and age <= self.status_max_age_s
        report: dict[str, Any] = {"pid": pid, "alive": alive, "answering": answering, "healthy": alive and answering}
        if age is not None:
            report["status_age_s"] = round(age, 3)
        if not answering:
            report["problem"] = (
                "the supervisor process is gone" if not alive else
                f"the supervisor's control socket has not answered for {self.status_max_age_s:g}s"
                + (f" ({self.supervisor.error})" if self.supervisor.error else "")
            )
        return report

    # ---- books and exchanges ----------------------------------------------------------

    def book_states(self) -> dict[str, BookState]:
        states = {}
        for name, handle in self.books.items():
            state = read_book_state(handle, self.members[name])
            if state is not None:
                states[name] = state
        return states

    def exchanges(self, book_states: dict[str, BookState] | None = None) -> dict[str, dict[str, Any]]:
        """Per exchange: its connector, its ring, and per market its book state and counters."""
        book_states = self.book_states() if book_states is None else book_states
        aggregator = self.actor("aggregator")
        # a book counts as in sync only if the aggregator running now published it: after a
        # restart, the old one's last book still says in_sync until the new one publishes
        current_since = aggregator["started_ns"] if aggregator and aggregator["healthy"] else None
        status = self.supervisor.reply or {}
        rings = status.get("rings", {})
        report: dict[str, dict[str, Any]] = {}
        for name, exchange_id in self.exchange_ids.items():
            connector = self.actor(f"connector:{name}")
            telemetry = self.telemetry.exchanges[name]
            counters = (telemetry.counters or {}).get("symbols", {})
            markets = {}
            for symbol, instrument in self.markets.items():
                state = book_states.get(instrument)
                if state is None or exchange_id not in state.markets:
                    continue
                market = state.markets[exchange_id]
                symbol_counters = counters.get(symbol, {})
                markets[symbol] = {
                    "current": current_since is not None and state.publish_ts >= current_since,
                    "status": market.status.name.lower(),
                    "reason": market.reason.name.lower(),
                    "since_ns": market.since_ns,
                    "included": market.included,
                    "best_bid": market.best_bid or None,
                    "best_ask": market.best_ask or None,
                    "messages_per_s": round(telemetry.rates.get(symbol, 0.0), 2),
                    "frames": symbol_counters.get("frames", 0),
                    "snapshots": symbol_counters.get("snapshots", 0),
                    "resyncs": symbol_counters.get("resyncs", 0),
                    "gaps": symbol_counters.get("gaps", 0),
                    "checksum_failures": telemetry.checksum_failures_of(symbol),
                    "parse_errors": symbol_counters.get("parse_errors", 0),
                    "receive_lag_ms": _lag_ms(symbol_counters),
                }
            running = connector is not None and connector["healthy"]
            connected = running and any(Status[m["status"].upper()] in CONNECTED_MARKET_STATES for m in markets.values())
            in_sync = running and any(m["status"] == "in_sync" and m["included"] and m["current"]
                                      for m in markets.values())
            ring = rings.get(name, {})
            report[name] = {
                "id": exchange_id,
                "connector": connector,
                "connected": connected,
                "in_sync": in_sync,
                "healthy": in_sync,
                "ring": {
                    "fill_ratio": ring.get("fill_ratio"),
                    "overflows": ring.get("dropped_batches"),
                    "dropped_records": ring.get("dropped_records"),
                },
                "markets": markets,
            }
        return report

    # ---- /health ----------------------------------------------------------------------

    def health(self, now: float) -> tuple[bool, dict[str, Any]]:
        """Healthy = the supervisor answers, the aggregator runs and beats, and at least one
        exchange has a book in sync and included; the body says what is not."""
        supervisor = self.supervisor_report(now)
        aggregator = self.actor("aggregator") or {"healthy": False, "state": "absent"}
        book_states = self.book_states()
        exchanges = self.exchanges(book_states)
        problems = []
        if not supervisor["healthy"]:
            problems.append(f"supervisor: {supervisor['problem']}")
        if not aggregator["healthy"]:
            problems.append(
                f"aggregator: {aggregator['state']}"
                + (f" (heartbeat {aggregator['heartbeat_age_s']}s old)" if aggregator.get("heartbeat_age_s") else "")
            )
        healthy_exchanges = [name for name, report in exchanges.items() if report["healthy"]]
        if not healthy_exchanges:
            problems.append("exchanges: none has a book in sync")
        now_ns = time.time_ns()
        body = {
            "healthy": not problems,
            "problems": problems,
            "supervisor": supervisor,
            "aggregator": aggregator,
            "exchanges": {
                name: {
                    "healthy": report["healthy"],
                    "connected": report["connected"],
                    "connector": report["connector"]["state"] if report["connector"] else "absent",
                    "markets": {symbol: market["status"] for symbol, market in report["markets"].items()},
                }
                for name, report in exchanges.items()
            },
            "books": {
                name: {"generation": state.generation,
                       "age_s": round((now_ns - state.publish_ts) / 1e9, 3) if state.publish_ts else None}
                for name, state in book_states.items()
            },
        }
        return not problems, body

    # ---- /metrics ---------------------------------------------------------------------

    def prometheus(self, now: float, api: dict[str, float]) -> str:
        """Prometheus text exposition format 0.0.4."""
        metrics = _Exposition()
        healthy, _ = self.health(now)
        metrics.add("coby_healthy", "gauge", "1 when /health answers 200", [({}, int(healthy))])
        supervisor = self.supervisor_report(now)
        metrics.add("coby_supervisor_up", "gauge", "1 when the supervisor answers its control socket",
                    [({}, int(supervisor["healthy"]))])
        status = self.supervisor.reply or {}
        if "uptime_s" in status:
            metrics.add("coby_uptime_seconds", "gauge", "seconds since the supervisor started",
                        [({}, status["uptime_s"])])
        actors = [self.actor(name) for name in self.directory["actors"]]
        for metric, kind, text, key in (
            ("coby_actor_up", "gauge", "1 when the actor runs and its heartbeat is fresh", "healthy"),
            ("coby_actor_restarts_total", "counter", "restarts of the actor since the supervisor started", "restarts"),
            ("coby_actor_cpu_percent", "gauge", "CPU use of the actor's process (100 = one core)", "cpu_percent"),
            ("coby_actor_rss_bytes", "gauge", "resident memory of the actor's process", "rss_bytes"),
        ):
            metrics.add(metric, kind, text, [({"actor": a["name"]}, float(a[key])) for a in actors if a])
        metrics.add("coby_actor_heartbeat_age_seconds", "gauge", "time since the actor's last heartbeat",
                    [({"actor": a["name"]}, a["heartbeat_age_s"]) for a in actors if a and a["heartbeat_age_s"] is not None])
        rings = dict(status.get("rings", {}))
        if "storage_feed" in status:
            rings["storage_feed"] = status["storage_feed"]
        for metric, kind, text, key in (
            ("coby_ring_fill_ratio", "gauge", "records waiting in the ring / its capacity", "fill_ratio"),
            ("coby_ring_fill_records", "gauge", "records waiting in the ring", "fill"),
            ("coby_ring_capacity_records", "gauge", "capacity of the ring in records", "capacity"),
            ("coby_ring_overflows_total", "counter", "batches refused because the ring was full", "dropped_batches"),
            ("coby_ring_dropped_records_total", "counter", "records refused because the ring was full",
             "dropped_records"),
            ("coby_ring_written_records_total", "counter", "records written into the ring", "written_records"),
        ):
            metrics.add(metric, kind, text, [({"ring": name}, stats[key]) for name, stats in rings.items() if key in stats])
        exchanges = self.exchanges()
        series: dict[str, list] = {name: [] for name in _MARKET_SERIES}
        for exchange, report in exchanges.items():
            counters = (self.telemetry.exchanges[exchange].counters or {}).get("symbols", {})
            for symbol, market in report["markets"].items():
                labels = {"exchange": exchange, "symbol": symbol}
                raw = counters.get(symbol, {})
                series["coby_exchange_in_sync"].append((labels, int(market["status"] == "in_sync")))
                series["coby_exchange_included"].append((labels, int(market["included"])))
                series["coby_exchange_messages_per_second"].append((labels, market["messages_per_s"]))
                series["coby_exchange_checksum_failures_total"].append((labels, market["checksum_failures"]))
                if raw:
                    if market["receive_lag_ms"] is not None:
                        series["coby_exchange_receive_lag_seconds"].append((labels, market["receive_lag_ms"] / 1e3))
                    for key in ("frames", "levels_applied", "snapshots", "resyncs", "gaps", "parse_errors", "trades",
                                "crossed"):
                        series[f"coby_exchange_{key}_total"].append((labels, raw.get(key, 0)))
            metrics.add_labels_once("coby_exchange_connected", "gauge", "1 when the connector runs and is connected",
                                    ({"exchange": exchange}, int(report["connected"])))
        for name, (kind, text) in _MARKET_SERIES.items():
            metrics.add(name, kind, text, series[name])
        now_ns = time.time_ns()
        ages, latencies = [], []
        for instrument, state in self.book_states().items():
            if state.publish_ts:
                ages.append(({"instrument": instrument}, (now_ns - state.publish_ts) / 1e9))
                received = [m.receive_ts for m in state.markets.values() if m.included and m.receive_ts]
                if received:
                    latencies.append(({"instrument": instrument}, max(0, state.publish_ts - max(received)) / 1e9))
        metrics.add("coby_book_age_seconds", "gauge", "time since the instrument's book was last published", ages)
        metrics.add("coby_book_publish_latency_seconds", "gauge",
                    "from the newest record received for the instrument to the publish of its book", latencies)
        for name, (kind, text) in _API_SERIES.items():
            metrics.add(name, kind, text, [({}, api.get(name, 0))])
        return metrics.text()


_MARKET_SERIES = {
    "coby_exchange_in_sync": ("gauge", "1 when the exchange's book of the market is in sync"),
    "coby_exchange_included": ("gauge", "1 when the exchange's book is in the consolidated book"),
    "coby_exchange_messages_per_second": ("gauge", "book frames per second over the last counters interval"),
    "coby_exchange_receive_lag_seconds": ("gauge", "receive time minus the exchange's timestamp, last frame"),
    "coby_exchange_frames_total": ("counter", "book frames received"),
    "coby_exchange_levels_applied_total": ("counter", "price levels applied"),
    "coby_exchange_snapshots_total": ("counter", "book snapshots taken"),
    "coby_exchange_resyncs_total": ("counter", "book resyncs (gap, checksum, crossed or stale stream)"),
    "coby_exchange_gaps_total": ("counter", "sequence gaps detected"),
    "coby_exchange_checksum_failures_total": ("counter", "checksum failures (status changes with reason checksum "
                                                         "seen since the api actor started)"),
    "coby_exchange_parse_errors_total": ("counter", "frames that could not be parsed"),
    "coby_exchange_trades_total": ("counter", "trades received"),
    "coby_exchange_crossed_total": ("counter", "books found crossed within the exchange"),
}

_API_SERIES = {
    "coby_api_dashboards": ("gauge", "dashboard WebSocket connections open"),
    "coby_api_ws_bytes_sent_total": ("counter", "bytes sent to dashboards"),
    "coby_api_ws_frames_sent_total": ("counter", "frames sent to dashboards"),
    "coby_api_ws_columns_skipped_total": ("counter", "heatmap columns skipped for dashboards that fell behind"),
    "coby_api_requests_total": ("counter", "HTTP requests answered"),
}


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._pending: dict[str, tuple[str, str, list]] = {}

    def add(self, name: str, kind: str, text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        self.lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def add_labels_once(self, name: str, kind: str, text: str, sample: tuple[dict[str, str], float]) -> None:
        self._pending.setdefault(name, (kind, text, []))[2].append(sample)

    def text(self) -> str:
        for name, (kind, text, samples) in self._pending.items():
            self.add(name, kind, text, samples)
        self._pending = {}
        return "\n".join(self.lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(str(value))}"' for key, value in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    value = float(value)
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
