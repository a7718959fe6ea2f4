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
        "Absolute bucket width in quote currency per symbol; every symbol must be listed under an exchange.",
        POSITIVE, keys=CANONICAL_SYMBOL_RULE, entry="symbol",
    )
    refresh_ms: int = setting(100, "Milliseconds between two bucket recomputations.", between(1, 60000))


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
        }),
        "Simulated symbols and their market.", keys=CANONICAL_SYMBOL_RULE, entry="symbol",
    )



@dataclass(frozen=True, slots=True)
class Config(Section):
    """The whole engine configuration; build it with load_config() so it is validated.

    engine.runtime_dir and storage.sqlite_path are filled in from their documented defaults when empty,
    at construction: after dataclasses.replace() on engine.instance or engine.data_dir, clear them again.
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
            "binance": ExchangeConfig(
                symbols=("BTC/USDT", "ETH/USDT", "SOL/USDT"),
                ws_url="wss://stream.binance.com:9443",
                rest_url="https://api.binance.com",
            ),
        }),
        "Exchanges to connect to, in the order that gives them their ids.",
        keys=one_of(KNOWN_EXCHANGES), entry="exchange",
    )
    buckets: BucketsConfig = setting(BucketsConfig(), "Price buckets of the consolidated book.")
    storage: StorageConfig = setting(StorageConfig(), "Storage backend.")
    simulator: SimulatorConfig = setting(SimulatorConfig(), "The built-in exchange simulator.")

    def __post_init__(self) -> None:
        if not self.engine.runtime_dir:
            object.__setattr__(self, "engine", replace(self.engine, runtime_dir=f"/tmp/coby-{self.engine.instance}"))
        if not self.storage.sqlite_path:
            sqlite_path = os.path.join(self.engine.data_dir, "coby.sqlite")
            object.__setattr__(self, "storage", replace(self.storage, sqlite_path=sqlite_path))

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
        for symbol in self.buckets.absolute:
            if symbol not in listed:
                raise ConfigError(
                    f"unknown key 'buckets.absolute.{symbol}': bucket units are only for symbols listed under "
                    f"exchanges: {', '.join(sorted(listed)) or 'none'}",
                    key=f"buckets.absolute.{symbol}",
                )
        for name, exchange in self.exchanges.items():
            needed = 2 * exchange.snapshot_depth + 3
            if exchange.enabled and needed > self.shm.ring_records:
                raise _value_error(
                    f"exchanges.{name}.snapshot_depth",
                    exchange.snapshot_depth,
                    f"at most {(self.shm.ring_records - 3) // 2}: a full snapshot ({needed} records) must fit in "
                    f"shm.ring_records ({self.shm.ring_records}); raise shm.ring_records or lower the depth",
                )


# ---------------------------------------------------------------------------------------------- loading


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
   mapping the file writes (`exchanges`, `actors`, `buckets.absolute`, `simulator.symbols`) replaces the
   default mapping as a whole.
3. **Environment variables** `COBY_<SECTION>__<KEY>` (below).
4. **Overrides**: the nested mapping passed as `load_config(overrides=…)` (used by `coby demo` and tests).

Environment variables and overrides merge key by key: they change or add single keys and mapping
entries and keep the rest.

`engine.runtime_dir` and `storage.sqlite_path` are filled in when left empty (`/tmp/coby-<instance>`
and `<engine.data_dir>/coby.sqlite`), so code always sees a real path.

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
