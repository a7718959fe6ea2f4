"""Typed, immutable, validated configuration: config.yaml, then COBY_* environment variables, then overrides.

Every parameter is declared once, in the dataclasses below, with its default, the rule its value must
follow and its documentation (field metadata). docs/config.md is generated from these declarations
(`python -m engine.config --markdown`) and the tests keep config.yaml, the defaults and the docs in step.

A configuration problem stops start-up with one ConfigError whose message is a single line naming the
full dotted key, the value given and what is allowed: nothing starts half-configured.
"""

import argparse
import dataclasses
import difflib
import functools
import ipaddress
import json
import math
import os
import re
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from actors.connectors import EXCHANGE_MODULES

KNOWN_EXCHANGES = tuple(EXCHANGE_MODULES)  # an exchange is known when it has a connector module
KNOWN_ACTORS = ("aggregator", "connector", "simulator", "features", "signals", "storage", "replay", "api")

ENV_PREFIX = "COBY_"
ENV_SEPARATOR = "__"
CONFIG_PATH_VARIABLE = "COBY_CONFIG"
DEFAULT_CONFIG_FILE = "config.yaml"
CANONICAL_SYMBOL = re.compile(r"[A-Z0-9]{1,20}/[A-Z0-9]{1,20}(:PERP)?")
MAX_IPC_PATH_BYTES = 107  # sun_path holds 108 bytes including the terminating NUL


class ConfigError(Exception):
    """A configuration problem; str(error) is the complete one-line message to print before exiting 2."""

    def __init__(self, problem: str, key: str | None = None) -> None:
        self.problem = " ".join(problem.split())
        self.key = key
        super().__init__(f"config error: {self.problem}")


class FrozenMap(Mapping):
    """An immutable, hashable, picklable mapping (MappingProxyType cannot be pickled to spawned actors)."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping | None = None) -> None:
        self._entries = dict(entries or {})

    def __getitem__(self, key: Any) -> Any:
        return self._entries[key]

    def __iter__(self) -> Iterator:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __hash__(self) -> int:
        return hash(tuple(self._entries.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._entries!r})"

    def __reduce__(self) -> tuple:
        return (FrozenMap, (self._entries,))


@dataclass(frozen=True, slots=True)
class Rule:
    """What a value must be; `allowed` completes the sentence "must be …" in errors and docs."""

    allowed: str
    accepts: Callable[[Any], bool]


def between(low: float, high: float) -> Rule:
    return Rule(f"between {low} and {high}", lambda value: low <= value <= high)


def greater_than(low: float) -> Rule:
    return Rule(f"greater than {low}", lambda value: value > low)


def power_of_two_between(low: int, high: int) -> Rule:
    return Rule(
        f"a power of two between {low} and {high}",
        lambda value: low <= value <= high and value & (value - 1) == 0,
    )


def one_of(names: tuple[str, ...]) -> Rule:
    return Rule("one of: " + ", ".join(names), lambda value: value in names)


def _fullmatch(pattern: str, allowed: str) -> Rule:
    compiled = re.compile(pattern)
    return Rule(allowed, lambda value: compiled.fullmatch(value) is not None)


def _split_tcp_endpoint(endpoint: str) -> tuple[str, int] | None:
    """(host, port) of `tcp://host:port` (IPv6 hosts in brackets), or None if it is not one."""
    match = re.fullmatch(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.*_-]+):(\d{1,5})", endpoint)
    if match is None or int(match[2]) > 65535:
        return None
    return match[1].strip("[]"), int(match[2])


def _is_endpoint(endpoint: str) -> bool:
    if endpoint.startswith("ipc://"):
        return 0 < len(endpoint.removeprefix("ipc://").encode()) <= MAX_IPC_PATH_BYTES
    return _split_tcp_endpoint(endpoint) is not None


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


CANONICAL_SYMBOL_RULE = Rule(
    "a canonical symbol BASE/QUOTE or BASE/QUOTE:PERP (upper case letters and digits)",
    lambda value: CANONICAL_SYMBOL.fullmatch(value) is not None,
)
ENDPOINT_RULE = Rule(
    f"tcp://host:port (port 0-65535) or ipc://path (at most {MAX_IPC_PATH_BYTES} bytes)", _is_endpoint
)
LOOPBACK_HOST_RULE = Rule("a loopback host (127.0.0.1, ::1 or localhost)", is_loopback_host)
INSTRUMENT_NAME_RULE = Rule(
    "a canonical symbol or an `instruments` name",
    lambda value: CANONICAL_SYMBOL.fullmatch(value) is not None
    or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9*._-]{0,39}", value) is not None,
)
PORT_RULE = between(0, 65535)
POSITIVE = greater_than(0)


def setting(default: Any, doc: str, rule: Rule | None = None, keys: Rule | None = None, entry: str = "") -> Any:
    """Declare a config field: its default, its documentation and the rule its value (or each item) follows.

    For mappings, `keys` is the rule for the keys and `entry` names an entry in the docs (`<exchange>`).
    """
    return field(default=default, metadata={"doc": doc, "rule": rule, "keys": keys, "entry": entry})


class Section:
    """Base of every config dataclass: conversion back to plain YAML-ready data."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars: dump it as YAML, or feed it back through load_config(overrides=…)."""
        return _to_plain(self)


@dataclass(frozen=True, slots=True)
class EngineConfig(Section):
    """Identity of this engine instance, its logging and where it keeps files."""

    instance: str = setting(
        "main",
        "Name of this engine instance; prefixes every shared-memory segment (`coby_<instance>_…`) so "
        "several engines can share a host. No `_`, so one instance's prefix never matches another's.",
        _fullmatch(r"[a-z0-9]{1,16}", "1 to 16 characters among a-z and 0-9"),
    )
    log_level: Literal["debug", "info", "warning", "error"] = setting("info", "Lowest level of log record emitted.")
    log_format: Literal["console", "json"] = setting(
        "console", "`console` for people, `json` (one object per line) for log collectors."
    )
    data_dir: str = setting(
        "./data", "Directory for persistent data (relative paths are relative to the working directory).",
        Rule("a non-empty path", bool),
    )
    runtime_dir: str = setting(
        "",
        "Directory for ipc sockets and pid files; empty means `/tmp/coby-<instance>` (filled in at load).",
    )


@dataclass(frozen=True, slots=True)
class SupervisorConfig(Section):
    """How the supervisor watches and restarts actors (one-for-one, with an OTP-style intensity limit)."""

    heartbeat_interval_s: float = setting(0.5, "Seconds between two heartbeats of an actor.", POSITIVE)
    heartbeat_timeout_s: float = setting(
        5.0, "An actor whose heartbeat has not moved for this long is killed and restarted; must exceed "
        "`supervisor.heartbeat_interval_s`.", POSITIVE,
    )
    restart_backoff_initial_s: float = setting(0.5, "Delay before the first restart of a crashed actor.", POSITIVE)
    restart_backoff_max_s: float = setting(
        30.0, "Ceiling of the doubling restart delay; at least `supervisor.restart_backoff_initial_s`.", POSITIVE
    )
    restart_intensity: int = setting(
        5, "At most this many restarts within `supervisor.restart_period_s`; one more and the supervisor "
        "stops the engine with an error instead of looping.", between(1, 1000),
    )
    restart_period_s: float = setting(60.0, "Window over which `supervisor.restart_intensity` is counted.", POSITIVE)
    shutdown_timeout_s: float = setting(
        5.0, "Grace given to an actor to stop after it is asked to; then it is killed.", POSITIVE
    )
    status_interval_s: float = setting(1.0, "How often per-actor CPU and RSS are sampled.", POSITIVE)

    def _check(self, key: str) -> None:
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise _value_error(
                f"{key}.heartbeat_timeout_s", self.heartbeat_timeout_s,
                f"greater than {key}.heartbeat_interval_s ({self.heartbeat_interval_s})",
            )
        if self.restart_backoff_max_s < self.restart_backoff_initial_s:
            raise _value_error(
                f"{key}.restart_backoff_max_s", self.restart_backoff_max_s,
                f"at least {key}.restart_backoff_initial_s ({self.restart_backoff_initial_s})",
            )


@dataclass(frozen=True, slots=True)
class EndpointsConfig(Section):
    """ZeroMQ endpoints of the supervisor; port 0 means "pick a free port at start-up" (the supervisor reports it)."""

    control: str = setting("tcp://127.0.0.1:7800", "Control socket (status, restart, replay control).", ENDPOINT_RULE)
    bus_publish: str = setting("tcp://127.0.0.1:7801", "Message bus: publishers connect here.", ENDPOINT_RULE)
    bus_subscribe: str = setting("tcp://127.0.0.1:7802", "Message bus: consumers connect here.", ENDPOINT_RULE)
    allow_public: bool = setting(
        False, "Allow tcp endpoints on non-loopback hosts; refused otherwise so nothing listens on a public "
        "interface by accident.",
    )

    def _check(self, key: str) -> None:
        seen: dict[str, str] = {}
        for name in ("control", "bus_publish", "bus_subscribe"):
            endpoint = getattr(self, name)
            tcp = _split_tcp_endpoint(endpoint)
            if tcp is not None and not self.allow_public and not is_loopback_host(tcp[0]):
                raise _value_error(
                    f"{key}.{name}", endpoint,
                    f"on a loopback host (127.0.0.1, ::1 or localhost) unless {key}.allow_public is true",
                )
            if tcp is not None and tcp[1] == 0:
                continue
            if endpoint in seen:
                raise _value_error(f"{key}.{name}", endpoint, f"different from {key}.{seen[endpoint]}")
            seen[endpoint] = name


@dataclass(frozen=True, slots=True)
class ShmConfig(Section):
    """Sizes of the shared-memory segments (fixed at start-up: they size the arrays)."""

    ring_records: int = setting(
        262144, "Records per connector ring buffer.", power_of_two_between(1024, 16777216)
    )
    book_depth: int = setting(1000, "Consolidated price levels kept per side.", between(10, 100000))
    book_slots: int = setting(
        3, "Publish slots per book, so zero-copy readers get a stable view while the next one is written.",
        between(2, 16),
    )
    feature_rows: int = setting(4096, "Rows (T) of each symbol's rolling feature tensor.", between(16, 1048576))
    feature_width: int = setting(220, "Features per row (F) of each feature tensor.", between(1, 4096))


@dataclass(frozen=True, slots=True)
class AggregatorConfig(Section):
    """Cadence and staleness of the consolidated book."""

    publish_interval_ms: int = setting(
        10, "Minimum milliseconds between two publishes of one symbol's book; 0 publishes after every drained "
        "batch.", between(0, 60000),
    )
    stale_after_s: float = setting(
        10.0, "An exchange with no record and no heartbeat for this long is excluded from the book as stale.",
        POSITIVE,
    )
    doorbell_timeout_ms: int = setting(
        50, "Longest sleep when every ring is empty (the doorbell normally wakes it sooner).", between(1, 10000)
    )


def _available_cpus() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class ActorSettings(Section):
    """Scheduling of one kind of actor on the host."""

    nice: int | None = setting(None, "Niceness the actor runs at; null inherits the supervisor's.", between(-20, 19))
    cpu_affinity: tuple[int, ...] = setting(
        (), "CPU indices the actor may run on; empty allows every CPU. Checked against this host's CPUs.",
        between(0, 1023),
    )

    def _check(self, key: str) -> None:
        available = _available_cpus()
        if not set(self.cpu_affinity) <= available:
            raise _value_error(
                f"{key}.cpu_affinity", list(self.cpu_affinity),
                "CPUs available on this host: " + ", ".join(map(str, sorted(available))),
            )


SPOT = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
PERPETUALS = ("BTC/USDT:PERP", "ETH/USDT:PERP")


@dataclass(frozen=True, slots=True)
class ExchangeConfig(Section):
    """One exchange's connector: what it subscribes to and how it talks to the exchange."""

    enabled: bool = setting(True, "Run this exchange's connector and include it in the books.")
    symbols: tuple[str, ...] = setting(
        (), "Canonical symbols to subscribe to; an enabled exchange needs at least one.", CANONICAL_SYMBOL_RULE
    )
    ws_url: str = setting(
        "", "WebSocket URL; empty uses the connector's built-in URL.",
        _fullmatch(r"(wss?://\S+)?", "empty or a ws:// or wss:// URL"),
    )
    rest_url: str = setting(
        "", "REST base URL (snapshots); empty uses the connector's built-in URL.",
        _fullmatch(r"(https?://\S+)?", "empty or an http:// or https:// URL"),
    )
    snapshot_depth: int = setting(1000, "Price levels requested in a REST snapshot.", between(1, 100000))
    max_streams_per_connection: int = setting(
        200, "Streams subscribed on one WebSocket connection before another is opened.", between(1, 10000)
    )
    stale_after_s: float = setting(
        10.0, "A connection that is up but silent this long is treated as down and reconnected.", POSITIVE
    )
    reconnect_backoff_initial_s: float = setting(0.5, "Delay before the first reconnect attempt.", POSITIVE)
    reconnect_backoff_max_s: float = setting(
        30.0, "Ceiling of the doubling reconnect delay; at least `reconnect_backoff_initial_s`.", POSITIVE
    )
    rest_timeout_s: float = setting(10.0, "Timeout of one REST request.", POSITIVE)

    def _check(self, key: str) -> None:
        duplicates = sorted({symbol for symbol in self.symbols if self.symbols.count(symbol) > 1})
        if duplicates:
            raise _value_error(f"{key}.symbols", list(self.symbols), "without duplicates (repeated: "
                               + ", ".join(duplicates) + ")")
        if self.enabled and not self.symbols:
            raise _value_error(f"{key}.symbols", [], "at least one symbol while the exchange is enabled")
        if self.reconnect_backoff_max_s < self.reconnect_backoff_initial_s:
            raise _value_error(
                f"{key}.reconnect_backoff_max_s", self.reconnect_backoff_max_s,
                f"at least {key}.reconnect_backoff_initial_s ({self.reconnect_backoff_initial_s})",
            )


@dataclass(frozen=True, slots=True)
class BucketsConfig(Section):
    """Price buckets of the consolidated book (relative everywhere, absolute where a unit is given)."""

    bps: float = setting(1.0, "Width of relative buckets in basis points of the mid price.", POSITIVE)
    absolute: FrozenMap[str, float] = setting(
        FrozenMap({"BTC/USDT": 10.0, "ETH/USDT": 1.0}),
        "Absolute bucket width in quote currency per instrument (a symbol listed under an exchange, or an "
        "`instruments` entry); instruments not listed have relative buckets only.",
        POSITIVE, keys=INSTRUMENT_NAME_RULE, entry="instrument",
    )
    refresh_ms: int = setting(
        100, "Milliseconds between two recomputations of the buckets and metrics of a changed book (clients "
        "can also compute both on demand from any snapshot).", between(1, 60000),
    )
    bps_count: int = setting(100, "Relative buckets per side, from the mid outwards.", between(1, 10000))
    absolute_count: int = setting(
        200, "Absolute buckets (fixed price bins) published around the mid, both sides together.", between(2, 10000)
    )


@dataclass(frozen=True, slots=True)
class MetricsConfig(Section):
    """Parameters of the microstructure metrics (docs/metrics.md defines each metric)."""

    imbalance_bps: tuple[float, ...] = setting(
        (10.0, 50.0, 100.0), "Distances from the mid (bp) within which liquidity imbalance is measured.", POSITIVE
    )
    depth_steps_bps: tuple[float, ...] = setting(
        (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0), "Distances from the mid (bp) of the cumulative depth distribution.",
        POSITIVE,
    )
    dominance_bps: float = setting(10.0, "Exchange dominance is each exchange's share of the size within this "
                                         "distance of the mid (bp).", POSITIVE)
    liquidity_decay_bps: float = setting(
        10.0, "A level's liquidity score is its notional times exp(-distance / this), distance in bp from the mid.",
        POSITIVE,
    )

    def _check(self, key: str) -> None:
        for name in ("imbalance_bps", "depth_steps_bps"):
            values = getattr(self, name)
            if not values or list(values) != sorted(set(values)):
                raise _value_error(f"{key}.{name}", list(values), "a non-empty list of increasing distances")


CURRENCY_RULE = _fullmatch(r"[A-Z0-9]{1,20}", "a currency code (upper case letters and digits)")
CONVERSION_RULE = _fullmatch(
    r"1:1|[a-z_]+:[A-Z0-9]{1,20}/[A-Z0-9]{1,20}", "`1:1` or `<exchange>:<BASE/QUOTE>` (a book whose mid is the rate)"
)


@dataclass(frozen=True, slots=True)
class InstrumentConfig(Section):
    """A synthetic instrument: several markets consolidated into one book, like Bookmap's Multibook.

    Every configured symbol is already an instrument of its own across the exchanges that list it
    (`BTC/USDT:PERP` groups the USDT perpetuals); these add combinations such as `BTC-USD*` = BTC/USD +
    BTC/USDT + BTC/USDC spot.
    """

    markets: tuple[str, ...] = setting(
        (), "Canonical symbols that feed it, on every allowed exchange listing them.", CANONICAL_SYMBOL_RULE
    )
    exchanges: tuple[str, ...] = setting((), "Exchanges whose markets feed it; empty allows every exchange.",
                                         one_of(KNOWN_EXCHANGES))
    quote: str = setting("USD", "Currency the instrument's prices are in.", CURRENCY_RULE)
    convert: FrozenMap[str, str] = setting(
        FrozenMap(), "Per other quote currency of its markets: `1:1` (prices taken as they are), or "
        "`<exchange>:<CUR/QUOTE>`, a book under that exchange whose mid converts prices (levels then land on "
        "`tick`, bids rounded down and asks up).", CONVERSION_RULE, keys=CURRENCY_RULE, entry="currency",
    )
    tick: float = setting(0.01, "Price grid of the levels of markets converted at a live rate.", POSITIVE)

    def _check(self, key: str) -> None:
        if not self.markets:
            raise _value_error(f"{key}.markets", [], "at least one market")
        for market in self.markets:
            quote = market.split("/")[1].split(":")[0]
            if quote != self.quote and quote not in self.convert:
                raise _value_error(
                    f"{key}.convert", dict(self.convert),
                    f"an entry for {quote} (market {market} is not quoted in {self.quote})",
                )


@dataclass(frozen=True, slots=True)
class StorageConfig(Section):
    """Where the storage actor writes and the replay actor reads."""

    backend: Literal["sqlite", "postgres"] = setting(
        "sqlite", "`sqlite` (embedded, no server) or `postgres` (PostgreSQL/TimescaleDB through psycopg)."
    )
    sqlite_path: str = setting("", "SQLite database file; empty means `<engine.data_dir>/coby.sqlite` (filled in "
                                   "at load).")
    postgres_dsn: str = setting(
        "postgresql://127.0.0.1:5432/test", "PostgreSQL connection string, used when `backend` is `postgres`.",
        _fullmatch(r"postgres(ql)?://\S*", "a postgresql:// or postgres:// URL"),
    )
    enabled: bool = setting(
        True, "Run the storage actor: every book event, trade, bar, feature row, signal and status change is stored."
    )
    feed_records: int = setting(
        1048576, "Records of the aggregator → storage ring (64 bytes each): how long storage may stall at full "
        "rate before events are lost (it spools to disk while the database is away, so only a stalled storage "
        "process fills it).", power_of_two_between(1024, 16777216),
    )
    flush_ms: int = setting(200, "Storage writes what it has at least this often.", between(10, 60000))
    batch_records: int = setting(
        20000, "Storage writes sooner once this many book events are waiting.", between(100, 10000000)
    )
    snapshot_interval_ms: int = setting(
        1000, "Cadence of the stored consolidated snapshots (top levels and buckets) per instrument; 0: none.",
        between(0, 3600000),
    )
    snapshot_depth: int = setting(50, "Consolidated levels per side in a stored snapshot.", between(1, 100000))
    spool_dir: str = setting(
        "", "Where batches wait while the database is down or slow (one engine instance per directory); empty "
        "means `<engine.data_dir>/spool/<engine.instance>` (filled in at load).",
    )
    spool_fsync: Literal["always", "interval", "never"] = setting(
        "interval", "`always`: fsync every spooled batch (nothing acknowledged is lost on a power cut); "
        "`interval`: at most every `storage.spool_fsync_ms` (a power cut loses at most that much); `never`: "
        "the OS decides (a process crash loses nothing, a power cut may lose minutes).",
    )
    spool_fsync_ms: int = setting(200, "The `interval` fsync cadence.", between(1, 60000))
    spool_max_bytes: int = setting(
        10 * 2**30, "Disk the spool may use; past it storage stops taking events (they wait in the feed, then "
        "are lost and counted) and says so.", between(2**20, 2**50),
    )
    retention_days: FrozenMap[str, float] = setting(
        FrozenMap({}), "Days of data kept per table (book_events, trades, ohlcv, consolidated_snapshots, "
        "features, signals, status_events); a table not named, or 0, keeps everything.",
        between(0, 36500), _fullmatch(r"book_events|trades|ohlcv|consolidated_snapshots|features|signals|"
                                       r"status_events", "a stored table's name"), entry="<table>",
    )


API_TOKEN_RULE = _fullmatch(r"(\S{16,256})?", "empty, or 16 to 256 characters without spaces")


@dataclass(frozen=True, slots=True)
class ApiConfig(Section):
    """The api actor: the heatmap dashboard, the HTTP API, /health and /metrics (docs/api.md)."""

    enabled: bool = setting(True, "Run the api actor.")
    host: str = setting(
        "127.0.0.1", "Interface to listen on. Loopback unless `api.allow_public` is true (then a token is "
        "required).", Rule("a host name or IP address", lambda value: re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", value)
                           is not None),
    )
    port: int = setting(7810, "TCP port of the dashboard and API; 0 picks a free port (logged at start).", PORT_RULE)
    allow_public: bool = setting(
        False, "Allow a non-loopback `api.host`; refused otherwise so the API never listens on a public interface "
        "by accident. Requires `api.token`.",
    )
    token: str = setting(
        "", "Access token. When set, every request needs it (`Authorization: Bearer <token>`, or `?token=` for a "
        "browser); required when `api.allow_public` is true. Prefer COBY_API__TOKEN over writing it in a file.",
        API_TOKEN_RULE,
    )
    update_ms: int = setting(
        100, "Cadence of heatmap columns per instrument (the bucket cadence: 100 ms = 10 updates/s).",
        between(20, 10000),
    )
    heatmap_rows: int = setting(
        256, "Price rows of a heatmap column (the window sent to dashboards, re-centred as the mid moves).",
        between(16, 4096),
    )
    price_steps: FrozenMap[str, float] = setting(
        FrozenMap({}), "Heatmap row height in quote currency per instrument; an instrument not listed gets a round "
        "step chosen from its first two-sided book (its published levels then fill about 3/4 of the rows).",
        POSITIVE, keys=INSTRUMENT_NAME_RULE, entry="instrument",
    )
    history_s: float = setting(
        120.0, "Seconds of heatmap history kept per instrument and sent to a dashboard when it opens one.",
        between(0.0, 3600.0),
    )
    ladder_ms: int = setting(250, "Cadence of the consolidated ladder sent to dashboards.", between(20, 10000))
    max_clients: int = setting(64, "Dashboard WebSocket connections served at once; more are refused (503).",
                               between(1, 10000))
    client_buffer_bytes: int = setting(
        1048576, "Bytes a dashboard may have waiting to be sent; past it its columns are skipped and it gets a "
        "keyframe once it has caught up.", between(16384, 1073741824),
    )

    def _check(self, key: str) -> None:
        if not is_loopback_host(self.host) and not self.allow_public:
            raise _value_error(
                f"{key}.host", self.host, f"a loopback host (127.0.0.1, ::1 or localhost) unless {key}.allow_public "
                "is true (and then with a token)",
            )
        if self.allow_public and not self.token:
            raise _value_error(
                f"{key}.token", "", f"a token of 16 or more characters when {key}.allow_public is true (set "
                "COBY_API__TOKEN)",
            )


@dataclass(frozen=True, slots=True)
class SimulatedSymbol(Section):
    """The synthetic market of one symbol in the simulator."""

    mid: float = setting(1.0, "Starting mid price.", POSITIVE)
    tick: float = setting(0.01, "Price increment.", POSITIVE)
    lot: float = setting(0.001, "Size increment.", POSITIVE)
    order_size: float = setting(1.0, "Typical order size near the mid, in base units.", POSITIVE)
    volatility: float = setting(
        0.0001, "Standard deviation of the latent log mid per square-root second.", between(0.0, 0.1)
    )


@dataclass(frozen=True, slots=True)
class SimulatorConfig(Section):
    """The built-in exchange simulator used by tests and the offline demo.

    Each enabled exchange is simulated at the loopback ports its own ``ws_url`` and
    ``rest_url`` name; ``coby demo`` points exchanges whose URLs are not on loopback at
    free ports of ``host``.
    """

    seed: int = setting(7, "Random seed: the same seed replays the same market.")
    host: str = setting("127.0.0.1", "Interface the simulator's servers listen on.", LOOPBACK_HOST_RULE)
    update_interval_ms: int = setting(100, "Mean milliseconds between two book updates.", between(1, 60000))
    symbols: FrozenMap[str, SimulatedSymbol] = setting(
        FrozenMap({
            "BTC/USDT": SimulatedSymbol(mid=60000.0, tick=0.01, lot=0.00001, order_size=0.05),
            "ETH/USDT": SimulatedSymbol(mid=3000.0, tick=0.01, lot=0.0001, order_size=0.5, volatility=0.0002),
            "SOL/USDT": SimulatedSymbol(mid=150.0, tick=0.01, lot=0.001, order_size=5.0, volatility=0.0003),
            "BTC/USDT:PERP": SimulatedSymbol(mid=60000.0, tick=0.1, lot=0.001, order_size=0.05),
            "ETH/USDT:PERP": SimulatedSymbol(mid=3000.0, tick=0.01, lot=0.01, order_size=0.5, volatility=0.0002),
        }),
        "Simulated symbols and their market.", keys=CANONICAL_SYMBOL_RULE, entry="symbol",
    )



@dataclass(frozen=True, slots=True)
class FeaturesConfig(Section):
    """The features actor: rows of the CNN and RL feature tensors (docs/features.md defines every column)."""

    min_interval_ms: int = setting(
        10, "A symbol gets a row at most this often; a book published sooner waits, and its row then holds the "
        "newest book.", between(0, 60000),
    )
    max_interval_ms: int = setting(
        100, "A symbol gets a row at least this often once it has a book, also without a new one (time-based "
        "values such as the book's age move on); at least `features.min_interval_ms`.", between(1, 60000),
    )
    normalisation_half_life_s: float = setting(
        300.0, "Half-life, in seconds, of the exponentially weighted mean and variance behind every z-score "
        "(computed from earlier rows only).", POSITIVE,
    )
    fast_half_life_s: float = setting(
        5.0, "Half-life of the fast averages of the RL market state (realised volatility, imbalance, update "
        "rate).", POSITIVE,
    )
    slow_half_life_s: float = setting(
        60.0, "Half-life of the slow averages of the RL market state; at least `features.fast_half_life_s`.",
        POSITIVE,
    )
    z_clip: float = setting(5.0, "Every z-score is clipped to ±this.", between(1.0, 100.0))
    warmup_rows: int = setting(
        20, "Rows a statistic needs before its z-scores are used; until then they are 0.", between(1, 1000000)
    )

    def _check(self, key: str) -> None:
        if self.max_interval_ms < self.min_interval_ms:
            raise _value_error(
                f"{key}.max_interval_ms", self.max_interval_ms, f"at least {key}.min_interval_ms ({self.min_interval_ms})"
            )
        if self.slow_half_life_s < self.fast_half_life_s:
            raise _value_error(
                f"{key}.slow_half_life_s", self.slow_half_life_s,
                f"at least {key}.fast_half_life_s ({self.fast_half_life_s})",
            )


TAKER_FEES_BPS = {  # base-tier public taker fees, in basis points
    "binance": 10.0, "binance_futures": 5.0, "coinbase": 60.0, "kraken": 40.0, "htx": 20.0, "bitfinex": 20.0,
    "okx": 10.0, "bybit": 10.0, "kucoin": 10.0, "bitstamp": 40.0, "gateio": 20.0,
}


@dataclass(frozen=True, slots=True)
class SignalsConfig(Section):
    """The signals actor: imbalance, executable cross-exchange arbitrage and liquidity anomalies (docs/signals.md)."""

    min_interval_ms: int = setting(10, "A symbol's book is evaluated at most this often.", between(0, 60000))
    update_ms: int = setting(
        250, "A signal that lasts is published again (state `update`) at most this often.", between(1, 600000)
    )
    recent: int = setting(
        1000, "Signals kept per symbol for `Engine.recent_signals`.", between(1, 1000000)
    )
    taker_fee_bps: FrozenMap[str, float] = setting(
        FrozenMap(TAKER_FEES_BPS), "Taker fee per exchange in basis points (base-tier public schedules; set your "
        "own tier). An arbitrage is executable only when the bid, less the selling venue's fee, exceeds the ask "
        "plus the buying venue's fee.", between(0.0, 1000.0), keys=one_of(KNOWN_EXCHANGES), entry="exchange",
    )
    arbitrage_min_net_bps: float = setting(
        0.0, "An arbitrage must earn more than this, net of both taker fees (bp of the mid).", between(0.0, 1000.0)
    )
    arbitrage_levels: int = setting(
        50, "Consolidated levels per side walked to size an arbitrage.", between(1, 100000)
    )
    arbitrage_grace_ms: int = setting(
        200, "An arbitrage missing from the book stays open this long before it is closed (a touch flickering "
        "between two updates does not end it).", between(0, 600000),
    )
    arbitrage_confirm_ms: int = setting(
        500, "An arbitrage's confidence reaches its edge factor once it has lasted this long.", between(1, 600000)
    )
    arbitrage_full_edge_bps: float = setting(
        5.0, "Net edge (bp) at which an arbitrage's edge factor reaches 1.", POSITIVE
    )
    imbalance_bps: float = setting(
        10.0, "The imbalance watched: the one of `metrics.imbalance_bps` closest to this distance (bp).", POSITIVE
    )
    imbalance_threshold: float = setting(
        0.6, "An imbalance signal opens when |imbalance| stays at or above this.", between(0.01, 0.99)
    )
    imbalance_min_duration_ms: int = setting(
        500, "… for at least this long; it closes when |imbalance| falls below half the threshold.",
        between(0, 600000),
    )
    anomaly_depth_bps: tuple[float, ...] = setting(
        (10.0, 50.0), "Depth watched for anomalies: each side's depth within the step of `metrics.depth_steps_bps` "
        "closest to each of these distances (bp).", POSITIVE,
    )
    anomaly_wall_bps: float = setting(
        20.0, "Bucket liquidity watched for anomalies: each side's largest wall, the most size in two adjacent "
        "relative buckets within this distance (bp).", POSITIVE,
    )
    anomaly_z: float = setting(
        5.0, "An anomaly opens when a watched value's log-space z-score against its baseline stays at ±this or "
        "beyond …",
        between(1.0, 100.0),
    )
    anomaly_exit_z: float = setting(
        2.0, "… and closes when it is back within ±this; at most `signals.anomaly_z`.", between(0.0, 100.0)
    )
    anomaly_min_duration_ms: int = setting(
        300, "An anomaly opens only once its value has stayed beyond `signals.anomaly_z` this long (a market "
        "order that sweeps the touch for one update is not one).", between(0, 600000),
    )
    anomaly_min_log_std: float = setting(
        0.25, "Floor of a baseline's standard deviation in log space: with the defaults (0.25, `anomaly_z` 5) a "
        "value must move by a factor of e^1.25 ≈ 3.5 (fall by 72 %, or grow 3.5-fold) to count.", POSITIVE,
    )
    baseline_half_life_s: float = setting(
        60.0, "Half-life of the rolling baselines (exponentially weighted by time; frozen while an anomaly is "
        "open).", POSITIVE,
    )
    warmup_s: float = setting(
        5.0, "Seconds of baseline a symbol needs before anomalies are reported.", between(0.0, 86400.0)
    )
    anomaly_max_s: float = setting(
        60.0, "An anomaly open this long is closed and its baseline restarts: the book has changed for good.",
        POSITIVE,
    )

    def _check(self, key: str) -> None:
        if self.anomaly_exit_z > self.anomaly_z:
            raise _value_error(f"{key}.anomaly_exit_z", self.anomaly_exit_z, f"at most {key}.anomaly_z ({self.anomaly_z})")


@dataclass(frozen=True, slots=True)
class Config(Section):
    """The whole engine configuration; build it with load_config() so it is validated.

    engine.runtime_dir, storage.sqlite_path and storage.spool_dir are filled in from their documented
    defaults when empty, at construction: after dataclasses.replace() on engine.instance or
    engine.data_dir, clear them again.
    """

    engine: EngineConfig = setting(EngineConfig(), "Identity of this engine instance, its logging and its files.")
    supervisor: SupervisorConfig = setting(
        SupervisorConfig(), "How the supervisor watches and restarts actors: one-for-one, with exponential "
        "backoff and an intensity limit (at most `restart_intensity` restarts in `restart_period_s`, then the "
        "engine stops with an error).",
    )
    endpoints: EndpointsConfig = setting(
        EndpointsConfig(), "ZeroMQ endpoints: `tcp://host:port` or `ipc://path`. Port 0 picks a free port at "
        "start-up (the supervisor reports the chosen one). Non-loopback tcp hosts need `allow_public: true`.",
    )
    shm: ShmConfig = setting(ShmConfig(), "Sizes of the shared-memory segments.")
    aggregator: AggregatorConfig = setting(AggregatorConfig(), "Cadence and staleness of the consolidated book.")
    actors: FrozenMap[str, ActorSettings] = setting(
        FrozenMap(), "Scheduling per kind of actor (`connector` applies to every connector process); actors "
        "not listed run with the supervisor's niceness on every CPU.",
        keys=one_of(KNOWN_ACTORS), entry="actor",
    )
    exchanges: FrozenMap[str, ExchangeConfig] = setting(
        FrozenMap({
            name: ExchangeConfig(symbols=symbols, ws_url=ws_url, rest_url=rest_url, **extra)
            for name, symbols, ws_url, rest_url, extra in (
                ("binance", SPOT, "wss://stream.binance.com:9443", "https://api.binance.com", {}),
                ("binance_futures", PERPETUALS, "wss://fstream.binance.com", "https://fapi.binance.com", {}),
                ("coinbase", SPOT, "wss://ws-feed.exchange.coinbase.com", "https://api.exchange.coinbase.com", {}),
                ("kraken", SPOT, "wss://ws.kraken.com/v2", "https://api.kraken.com", {}),
                ("htx", SPOT, "wss://api.huobi.pro/feed", "https://api.huobi.pro", {}),
                ("bitfinex", SPOT, "wss://api-pub.bitfinex.com/ws/2", "https://api-pub.bitfinex.com", {}),
                ("okx", SPOT + PERPETUALS, "wss://ws.okx.com:8443/ws/v5/public", "https://www.okx.com", {}),
                ("bybit", SPOT + PERPETUALS, "wss://stream.bybit.com/v5/public", "https://api.bybit.com", {}),
                ("kucoin", SPOT, "", "https://api.kucoin.com", {"snapshot_depth": 100}),
                ("bitstamp", SPOT[:2], "wss://ws.bitstamp.net", "https://www.bitstamp.net", {}),
                ("gateio", SPOT, "wss://api.gateio.ws", "https://api.gateio.ws", {}),
            )
        }),
        "Exchanges to connect to, in the order that gives them their ids.",
        keys=one_of(KNOWN_EXCHANGES), entry="exchange",
    )
    instruments: FrozenMap[str, InstrumentConfig] = setting(
        FrozenMap(), "Synthetic instruments, by name (e.g. `BTC-USD*`).",
        keys=_fullmatch(r"[A-Za-z0-9][A-Za-z0-9*._-]{0,39}", "1 to 40 characters among letters, digits and *._-"),
        entry="name",
    )
    buckets: BucketsConfig = setting(BucketsConfig(), "Price buckets of the consolidated book.")
    metrics: MetricsConfig = setting(MetricsConfig(), "Microstructure metrics of the consolidated book.")
    features: FeaturesConfig = setting(
        FeaturesConfig(), "Feature tensors for models: cadence and normalisation (docs/features.md)."
    )
    signals: SignalsConfig = setting(
        SignalsConfig(), "Trading signals: fees, thresholds and baselines (docs/signals.md)."
    )
    storage: StorageConfig = setting(StorageConfig(), "Storage backend.")
    api: ApiConfig = setting(
        ApiConfig(), "The dashboard and HTTP API (docs/api.md): loopback only unless `allow_public`, which then "
        "needs a `token`.",
    )
    simulator: SimulatorConfig = setting(SimulatorConfig(), "The built-in exchange simulator.")

    def __post_init__(self) -> None:
        if not self.engine.runtime_dir:
            object.__setattr__(self, "engine", replace(self.engine, runtime_dir=f"/tmp/coby-{self.engine.instance}"))
        if not self.storage.sqlite_path:
            sqlite_path = os.path.join(self.engine.data_dir, "coby.sqlite")
            object.__setattr__(self, "storage", replace(self.storage, sqlite_path=sqlite_path))
        if not self.storage.spool_dir:
            spool_dir = os.path.join(self.engine.data_dir, "spool", self.engine.instance)
            object.__setattr__(self, "storage", replace(self.storage, spool_dir=spool_dir))

    @property
    def symbols(self) -> tuple[str, ...]:
        """Every symbol of every enabled exchange, in order of first appearance; a symbol's id is its index."""
        ordered: dict[str, None] = {}
        for exchange in self.exchanges.values():
            if exchange.enabled:
                ordered.update(dict.fromkeys(exchange.symbols))
        return tuple(ordered)

    def symbol_ids(self) -> dict[str, int]:
        """Symbol → id written into shared-memory records (deterministic for a given config)."""
        return {symbol: index for index, symbol in enumerate(self.symbols)}

    def exchange_ids(self) -> dict[str, int]:
        """Enabled exchange name → id written into shared-memory records (its order in the config, from 0)."""
        enabled = [name for name, exchange in self.exchanges.items() if exchange.enabled]
        return {name: index for index, name in enumerate(enabled)}

    def _check(self, key: str) -> None:
        listed = {symbol for exchange in self.exchanges.values() for symbol in exchange.symbols}
        for mapping, names, what in (("buckets.absolute", self.buckets.absolute, "bucket units"),
                                     ("api.price_steps", self.api.price_steps, "row heights")):
            for name in names:
                if name not in listed and name not in self.instruments:
                    raise ConfigError(
                        f"unknown key '{mapping}.{name}': {what} are only for instruments: symbols listed under "
                        f"exchanges ({', '.join(sorted(listed)) or 'none'}) or `instruments` entries",
                        key=f"{mapping}.{name}",
                    )
        for name, instrument in self.instruments.items():
            self._check_instrument(f"instruments.{name}", instrument)
        for name, exchange in self.exchanges.items():
            needed = 2 * exchange.snapshot_depth + 3
            if exchange.enabled and needed > self.shm.ring_records:
                raise _value_error(
                    f"exchanges.{name}.snapshot_depth",
                    exchange.snapshot_depth,
                    f"at most {(self.shm.ring_records - 3) // 2}: a full snapshot ({needed} records) must fit in "
                    f"shm.ring_records ({self.shm.ring_records}); raise shm.ring_records or lower the depth",
                )


    def _check_instrument(self, key: str, instrument: InstrumentConfig) -> None:
        enabled = {name: exchange for name, exchange in self.exchanges.items() if exchange.enabled}
        allowed = [name for name in enabled if not instrument.exchanges or name in instrument.exchanges]
        for market in instrument.markets:
            if not any(market in enabled[name].symbols for name in allowed):
                among = f" among {', '.join(instrument.exchanges)}" if instrument.exchanges else ""
                raise _value_error(
                    f"{key}.markets", list(instrument.markets),
                    f"markets listed under an enabled exchange{among} ({market} is not)",
                )
        for currency, rule in instrument.convert.items():
            if rule == "1:1":
                continue
            exchange, book = rule.split(":", 1)
            if exchange not in enabled or book not in enabled[exchange].symbols:
                raise _value_error(f"{key}.convert.{currency}", rule, f"a book listed under the enabled exchange {exchange}")
            if book != f"{currency}/{instrument.quote}":
                raise _value_error(f"{key}.convert.{currency}", rule, f"the book {currency}/{instrument.quote}")


# ---------------------------------------------------------------------------------------------- loading


def only_these_exchanges(exchanges: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """An ``exchanges`` override that enables exactly these exchanges (with their settings):
    overrides merge key by key, so every other known exchange is disabled explicitly."""
    merged: dict[str, dict[str, Any]] = {name: {"enabled": False} for name in KNOWN_EXCHANGES}
    merged.update({name: {"enabled": True, **settings} for name, settings in exchanges.items()})
    return merged


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping | None = None,
) -> Config:
    """Load, merge and validate the configuration, or raise ConfigError.

    path None → $COBY_CONFIG if set, else ./config.yaml if it exists, else pure defaults. Then the
    COBY_<SECTION>__<KEY> variables of `env` (default os.environ) apply, then `overrides` (a nested dict).
    """
    env = os.environ if env is None else env
    source = _config_file(path, env)
    raw = _read_yaml_file(source) if source is not None else {}
    environment_layers, origins = _environment_layers(env)
    for layer in [*environment_layers, overrides or {}]:
        raw = _merge(Config, raw, layer)
    try:
        return _decode(Config, raw, "", None, None)
    except ConfigError as error:
        variable = _variable_that_set(error.key, origins)
        if variable is None:
            raise
        raise ConfigError(f"{error.problem} (set by environment variable {variable})", error.key) from None


def _config_file(path: str | Path | None, env: Mapping[str, str]) -> Path | None:
    if path is None and env.get(CONFIG_PATH_VARIABLE):
        path = env[CONFIG_PATH_VARIABLE]
    if path is None:
        default = Path(DEFAULT_CONFIG_FILE)
        return default if default.is_file() else None
    if not Path(path).is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    return Path(path)


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML silently keeps the last one)."""


def _construct_unique_mapping(loader: _StrictYamlLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool)):
            continue  # construct_mapping reports unhashable keys itself
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {_show(key)}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictYamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictYamlLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        position = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}: invalid YAML{position}: {problem}") from None


def _read_yaml_file(path: Path) -> Mapping:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file '{path}': {error}") from None
    data = _parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not {_show(data)}")
    return data


def _environment_layers(env: Mapping[str, str]) -> tuple[list[dict], dict[str, str]]:
    """One nested layer per COBY_<SECTION>__<KEY> variable (shallow keys first), and key → variable name."""
    found: list[tuple[list[str], str, Any]] = []
    origins: dict[str, str] = {}
    for variable, text in sorted(env.items()):
        name = variable.upper()
        if not name.startswith(ENV_PREFIX) or ENV_SEPARATOR not in name[len(ENV_PREFIX):]:
            continue
        path, hint = _environment_path(variable)
        dotted = ".".join(path)
        if dotted in origins:
            raise ConfigError(f"{dotted} is set by two environment variables: {origins[dotted]} and {variable}", dotted)
        origins[dotted] = variable
        value = text if _takes_text(hint) else _parse_yaml(text, f"environment variable {variable}")
        found.append((path, variable, value))
    layers = []
    for path, _, value in sorted(found, key=lambda item: (len(item[0]), item[1])):
        for segment in reversed(path):
            value = {segment: value}
        layers.append(value)
    return layers, origins


def _environment_path(variable: str) -> tuple[list[str], Any]:
    """The config path a variable names (matched case-insensitively) and the type found there."""
    segments = variable[len(ENV_PREFIX):].split(ENV_SEPARATOR)
    path: list[str] = []
    hint: Any = Config
    keys_rule: Rule | None = None
    for segment in segments:
        section_key = ".".join(path)
        if not segment:
            raise ConfigError(f"environment variable {variable}: empty key between '{ENV_SEPARATOR}' separators")
        if is_dataclass(hint):
            names = [item.name for item in fields(hint)]
            if segment.lower() not in names:
                dotted = ".".join([*path, segment.lower()])
                raise _unknown_key_error(dotted, segment.lower(), names, section_key, variable)
            chosen = next(item for item in fields(hint) if item.name == segment.lower())
            path.append(chosen.name)
            hint, keys_rule = _hints(hint)[chosen.name], chosen.metadata["keys"]
        elif get_origin(hint) is FrozenMap:
            candidates = [segment.lower(), segment.upper()]
            path.append(next((key for key in candidates if keys_rule and keys_rule.accepts(key)), candidates[0]))
            hint, keys_rule = get_args(hint)[1], None
        else:
            dotted = ".".join([*path, segment.lower()])
            raise ConfigError(
                f"unknown key '{dotted}': '{section_key}' is a value, not a section "
                f"(set by environment variable {variable})", dotted,
            )
    return path, hint


def _takes_text(hint: Any) -> bool:
    """Whether an environment value is used as written (string keys), rather than parsed as YAML."""
    return hint is str or (get_origin(hint) is Literal and all(isinstance(arg, str) for arg in get_args(hint)))


def _variable_that_set(key: str | None, origins: Mapping[str, str]) -> str | None:
    """The variable that set `key`, one of its parents (a whole list or entry) or one of its children."""
    if key is None:
        return None
    for dotted, variable in origins.items():
        if key == dotted or key.startswith((dotted + ".", dotted + "[")) or dotted.startswith(key + "."):
            return variable
    return None


def _merge(hint: Any, base: Any, layer: Any) -> Any:
    """`layer` applied on `base`: sections and mapping entries merge key by key, anything else is replaced.

    A mapping the base does not mention starts from its default, so an override adds an exchange to the
    default ones instead of replacing them.
    """
    if not isinstance(base, Mapping) or not isinstance(layer, Mapping):
        return layer
    merged = dict(base)
    if is_dataclass(hint):
        declared = {item.name: item for item in fields(hint)}
        for key, value in layer.items():
            if key not in declared:
                merged[key] = value  # reported as an unknown key by _decode
                continue
            child_hint = _hints(hint)[key]
            if key in base:
                merged[key] = _merge(child_hint, base[key], value)
            elif get_origin(child_hint) is FrozenMap:
                merged[key] = _merge(child_hint, _to_plain(declared[key].default), value)
            else:
                merged[key] = value
    elif get_origin(hint) is FrozenMap:
        value_hint = get_args(hint)[1]
        for key, value in layer.items():
            merged[key] = _merge(value_hint, base[key], value) if key in base else value
    else:
        return layer
    return merged


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _decode(hint: Any, raw: Any, key: str, rule: Rule | None, keys: Rule | None) -> Any:
    """Turn raw YAML data at `key` into the declared type, checking type and rule; raises ConfigError."""
    if is_dataclass(hint):
        return _decode_section(hint, raw, key)
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        if raw is None:
            return None
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        return _decode(inner, raw, key, rule, keys)
    if origin is FrozenMap:
        return _decode_mapping(hint, raw, key, rule, keys)
    if origin is tuple:
        if not isinstance(raw, (list, tuple)):
            raise _value_error(key, raw, _describe_type(hint, rule))
        item_hint = get_args(hint)[0]
        return tuple(_decode(item_hint, item, f"{key}[{index}]", rule, None) for index, item in enumerate(raw))
    value = _decode_scalar(hint, raw, key, rule)
    if rule is not None and not rule.accepts(value):
        raise _value_error(key, raw, rule.allowed)
    return value


def _decode_section(cls: type, raw: Any, key: str) -> Any:
    names = [item.name for item in fields(cls)]
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise _value_error(key, raw, "a mapping with keys: " + ", ".join(names))
    for name in raw:
        if name not in names:
            raise _unknown_key_error(_join(key, str(name)), str(name), names, key)
    values = {
        item.name: _decode(
            _hints(cls)[item.name], raw[item.name], _join(key, item.name), item.metadata["rule"], item.metadata["keys"]
        )
        for item in fields(cls)
        if item.name in raw
    }
    section = cls(**values)
    if hasattr(section, "_check"):
        section._check(key)
    return section


def _decode_mapping(hint: Any, raw: Any, key: str, rule: Rule | None, keys: Rule | None) -> FrozenMap:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise _value_error(key, raw, _describe_type(hint, rule))
    value_hint = get_args(hint)[1]
    entries = {}
    for name, value in raw.items():
        entry_key = f"{key}.{name}"
        if not isinstance(name, str) or (keys is not None and not keys.accepts(name)):
            allowed = keys.allowed if keys is not None else "strings"
            raise ConfigError(f"unknown key '{entry_key}': keys of '{key}' must be {allowed}", entry_key)
        entries[name] = _decode(value_hint, value, entry_key, rule, None)
    return FrozenMap(entries)


def _decode_scalar(hint: Any, raw: Any, key: str, rule: Rule | None) -> Any:
    if get_origin(hint) is Literal:
        if raw not in get_args(hint) or not isinstance(raw, str):
            raise _value_error(key, raw, _describe_type(hint, rule))
        return raw
    accepted = {
        bool: isinstance(raw, bool),
        int: isinstance(raw, int) and not isinstance(raw, bool),
        float: isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw),
        str: isinstance(raw, str),
    }[hint]
    if not accepted:
        raise _value_error(key, raw, _describe_type(hint, rule))
    return float(raw) if hint is float else raw


def _describe_type(hint: Any, rule: Rule | None) -> str:
    """The "must be …" phrase for a value of the wrong type, including its rule."""
    description = _type_name(hint, article=True)
    if rule is None:
        return description
    if get_origin(hint) in (tuple, FrozenMap):
        return f"{description} (each {rule.allowed})"
    return f"{description}, {rule.allowed}"


def _type_name(hint: Any, article: bool = False, key_name: str = "string") -> str:
    if is_dataclass(hint):
        return "a mapping" if article else "mapping"
    origin = get_origin(hint)
    if origin is Literal:
        return "one of: " + ", ".join(get_args(hint))
    if origin in (Union, types.UnionType):
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        return f"{_type_name(inner, article)} or null"
    if origin is tuple:
        return ("a " if article else "") + f"list of {_type_name(get_args(hint)[0])}s"
    if origin is FrozenMap:
        value_hint = get_args(hint)[1]
        value_name = "settings" if is_dataclass(value_hint) else _type_name(value_hint)
        return ("a " if article else "") + f"mapping of {key_name} → {value_name}"
    names = {bool: ("true or false", "boolean"), int: ("an integer", "integer"),
             float: ("a finite number", "number"), str: ("a string", "string")}
    return names[hint][0 if article else 1]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _value_error(key: str, given: Any, allowed: str) -> ConfigError:
    shown = _show(given)
    if len(shown) > 100:
        shown = shown[:97] + "..."
    return ConfigError(f"{key} = {shown}: must be {allowed}", key)


def _unknown_key_error(
    dotted: str, name: str, allowed: list[str], section_key: str, variable: str = ""
) -> ConfigError:
    close = difflib.get_close_matches(name, allowed, n=1)
    suggestion = f" (did you mean '{close[0]}'?)" if close else ""
    where = f"in '{section_key}'" if section_key else "at the top level"
    source = f" (set by environment variable {variable})" if variable else ""
    return ConfigError(f"unknown key '{dotted}'{suggestion}; allowed keys {where}: {', '.join(allowed)}{source}", dotted)


def _show(value: Any) -> str:
    """A value as written in YAML flow style, on one line (for error messages and docs)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if _is_plain_yaml_string(value) else json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_show(key)}: {_show(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return repr(value)


def _is_plain_yaml_string(text: str) -> bool:
    if not re.fullmatch(r"[\w./:@+-]+", text):
        return False
    try:
        return yaml.safe_load(text) == text
    except yaml.YAMLError:
        return False


def _to_plain(value: Any) -> Any:
    if is_dataclass(value):
        return {item.name: _to_plain(getattr(value, item.name)) for item in fields(value)}
    if isinstance(value, Mapping):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_to_plain(item) for item in value]
    return value


# ------------------------------------------------------------------------------------------ reference docs

_MARKDOWN_INTRO = """\
# Configuration reference

<!-- Generated from engine/config.py by `python -m engine.config --markdown > docs/config.md`;
     do not edit by hand (tests/test_config.py fails when this file and the code disagree). -->

coby reads one YAML file into typed, immutable objects (`engine.config.Config`) and checks every
key, type and value before anything starts. `config.yaml` at the repository root is the default
configuration: it lists every key with its default value.

## Where values come from

Later sources override earlier ones:

1. **Defaults** declared in `engine/config.py` (the tables below).
2. **The file**: the path given explicitly (`load_config(path)`), else `$COBY_CONFIG` if set, else
   `./config.yaml` if it exists, else none. A key the file leaves out keeps its default; a
   mapping the file writes (`exchanges`, `actors`, `buckets.absolute`, `signals.taker_fee_bps`,
   `simulator.symbols`) replaces the default mapping as a whole.
3. **Environment variables** `COBY_<SECTION>__<KEY>` (below).
4. **Overrides**: the nested mapping passed as `load_config(overrides=…)` (used by `coby demo` and tests).

Environment variables and overrides merge key by key: they change or add single keys and mapping
entries and keep the rest.

`engine.runtime_dir`, `storage.sqlite_path` and `storage.spool_dir` are filled in when left empty
(`/tmp/coby-<instance>`, `<engine.data_dir>/coby.sqlite` and `<engine.data_dir>/spool/<instance>`), so code always
sees a real path.

## Environment variables

A variable `COBY_<SECTION>__<KEY>` sets one key; `__` (two underscores) separates nesting levels and
names are case-insensitive. The value is parsed as YAML, except for string keys, which take the text
as written:

```sh
COBY_SHM__RING_RECORDS=65536
COBY_ENGINE__LOG_LEVEL=debug
COBY_EXCHANGES__BINANCE__SYMBOLS='[BTC/USDT, ETH/USDT]'
COBY_EXCHANGES__BINANCE__ENABLED=false
COBY_ACTORS__AGGREGATOR__CPU_AFFINITY='[1]'
```

A `COBY_` variable containing `__` that names no key is an error, like an unknown key in the file.
Variables without `__` (`COBY_CONFIG`, `COBY_RECORDED_DIR`, `COBY_PYTHON`, …) are not overrides and
are ignored here.

## Errors

A wrong key, type or value stops start-up with one line that names the full dotted key, what was
given and what is allowed; the command exits with status 2. For example:

```text
config error: shm.ring_records = 1000: must be a power of two between 1024 and 16777216
config error: unknown key 'aggregator.publish_intervl_ms' (did you mean 'publish_interval_ms'?); allowed keys in 'aggregator': publish_interval_ms, stale_after_s, doorbell_timeout_ms
```

Besides the rules in the tables: symbols under an exchange are unique and an enabled exchange lists at
least one; `buckets.absolute` only names symbols listed under some exchange; tcp endpoints are on a
loopback host unless `endpoints.allow_public` is true, and distinct unless their port is 0; CPU indices
in `cpu_affinity` exist on this host; duplicate keys in the YAML file are refused.

## Identifiers

Shared-memory records carry small integer ids, deterministic for a given configuration:
`Config.exchange_ids()` numbers the enabled exchanges from 0 in file order, and `Config.symbols` is
every symbol of the enabled exchanges in order of first appearance; a symbol's id is its index
(`Config.symbol_ids()`).

## Tools

- `python -m engine.config [PATH]` validates the configuration and prints the effective result as YAML.
- `python -m engine.config --markdown` prints this page.
"""

_TABLE_HEADER = ["| Key | Type | Default | Allowed | Description |", "|---|---|---|---|---|"]


def render_markdown() -> str:
    """docs/config.md: the mechanisms, then one table per section generated from the field declarations."""
    lines = [_MARKDOWN_INTRO.rstrip("\n"), "", "# Reference"]
    for section in fields(Config):
        hint = _hints(Config)[section.name]
        lines += ["", f"## `{section.name}`", "", section.metadata["doc"], "", *_TABLE_HEADER]
        if is_dataclass(hint):
            for item in fields(hint):
                lines += _markdown_rows(_hints(hint)[item.name], item, f"{section.name}.{item.name}")
        else:
            lines += _markdown_rows(hint, section, section.name)
    return "\n".join(lines) + "\n"


def _markdown_rows(hint: Any, declared: dataclasses.Field, key: str) -> list[str]:
    """One row for the key; a mapping of sections adds one row per field of an entry (`key.<entry>.field`)."""
    rule, keys = declared.metadata["rule"], declared.metadata["keys"]
    allowed = []
    if keys is not None:
        allowed.append(f"keys: {keys.allowed}")
    if rule is not None:
        allowed.append(f"each {rule.allowed}" if get_origin(hint) in (tuple, FrozenMap) else rule.allowed)
    value_hint = get_args(hint)[1] if get_origin(hint) is FrozenMap else None
    default = declared.default
    shown_default = ", ".join(default) or "none" if is_dataclass(value_hint) else f"`{_show(_to_plain(default))}`"
    type_name = _type_name(hint, key_name=declared.metadata["entry"] or "string")
    rows = [_markdown_row(key, type_name, shown_default, "; ".join(allowed), declared.metadata["doc"])]
    if is_dataclass(value_hint):
        for item in fields(value_hint):
            entry_key = f"{key}.<{declared.metadata['entry']}>.{item.name}"
            rows += _markdown_rows(_hints(value_hint)[item.name], item, entry_key)
    return rows


def _markdown_row(*cells: str) -> str:
    key, *rest = (cell.replace("|", "\\|") for cell in cells)
    return "| " + " | ".join([f"`{key}`", *rest]) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.config", description="Validate the configuration, or print its reference."
    )
    parser.add_argument("path", nargs="?", help="config file (default: $COBY_CONFIG, else ./config.yaml)")
    parser.add_argument("--markdown", action="store_true", help="print docs/config.md generated from the code")
    arguments = parser.parse_args(argv)
    if arguments.markdown:
        sys.stdout.write(render_markdown())
        return 0
    try:
        config = load_config(arguments.path)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
