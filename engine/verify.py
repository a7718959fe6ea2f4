"""``coby verify``: recorded exchange traffic through the real connector code path.

A recording (``../shared/recorded/README.md`` format, or what ``coby record`` writes) is
one exchange's files: ``EXCHANGE.0`` (REST metadata and the ``configuration:`` line),
``EXCHANGE.http.N.0`` (REST snapshots) and ``EXCHANGE.ws.N.0`` (one websocket connection
each). Replaying it drives the exchange module exactly as the connector actor does —
instruments, open, every frame in receive order, snapshot requests — with no network:

- websocket file ``k`` (in ``N`` order) is the module's connection ``k`` modulo the number
  of connections the module plans (Kraken's recording has three connections, one per
  channel; ours carries them on one);
- a REST snapshot request is answered with the recorded response for the same symbol
  (not the same URL: recordings come from other hosts and API versions), at the moment
  the recording received it, so frames that arrived before it are buffered as live;
- an exchange module whose live protocol differs from the recorded generation names the
  constructor arguments that select the recorded one in ``RECORDED_OPTIONS`` (``None``: the
  module does not read that generation, e.g. Bybit's retired v2), and where another class
  reads it, that class in ``RECORDED_CONNECTOR`` (OKX: stream-seeded 2022, REST-seeded today).

Each recording yields one JSON object; the run fails (exit 1) if any checksum failed, a
gap was found, a frame could not be parsed or the venue's own top of book (Binance
``bookTicker``) disagreed with the rebuilt book.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from actors.connectors import UnknownExchangeError, load_exchange_module
from actors.connectors.base import ConnectionAction, RecordSink
from engine.config import ExchangeConfig
from shm.records import Kind
from sim.recorded import LIVE_GENERATION, LineKind, RecordedLine, read_recorded

# Recording file prefixes (the names the recordings keep) → coby exchange names.
RECORDED_NAMES = {
    "BINANCE": "binance",
    "BINANCE_FUTURES": "binance_futures",
    "COINBASE": "coinbase",
    "KRAKEN": "kraken",
    "HUOBI": "htx",
    "HTX": "htx",
    "BITFINEX": "bitfinex",
    "OKX": "okx",
    "BYBIT": "bybit",
    "KUCOIN": "kucoin",
    "BITSTAMP": "bitstamp",
    "GATEIO": "gateio",
}
_FILE_NAME = re.compile(r"^(?P<prefix>[A-Z_]+)\.(?:(?P<kind>http|ws)\.(?P<number>\d+)\.)?0$")


class UnreadableRecording(LookupError):
    """A recording of an exchange (or protocol generation) coby has no reader for."""


class CountingSink:
    """The ring's producer contract, keeping only counts of what the connector wrote."""

    def __init__(self) -> None:
        self.kinds: Counter[int] = Counter()

    def write(self, batch: np.ndarray) -> bool:
        kinds, counts = np.unique(batch["kind"], return_counts=True)
        self.kinds.update(dict(zip(kinds.tolist(), counts.tolist())))
        return True

    def free(self) -> int:
        return 1 << 30


def recordings(paths: Iterable[str | Path]) -> dict[str, list[Path]]:
    """The recorded files under ``paths``, grouped by recording prefix."""
    grouped: dict[str, list[Path]] = defaultdict(list)
    for path in map(Path, paths):
        candidates = sorted(path.iterdir()) if path.is_dir() else [path]
        for candidate in candidates:
            match = _FILE_NAME.match(candidate.name)
            if match:
                grouped[match["prefix"]].append(candidate)
    return dict(grouped)


def _canonical(configured: str) -> str | None:
    """``NKN-USDT`` → ``NKN/USDT``; ``SUSHI-USDT-PERP`` → ``SUSHI/USDT:PERP``; a dated future
    (``BTC-USD-22K27``) has no canonical symbol yet → None (recording config names)."""
    parts = configured.split("-")
    if len(parts) == 2:
        return f"{parts[0]}/{parts[1]}"
    if len(parts) == 3 and parts[2] == "PERP":
        return f"{parts[0]}/{parts[1]}:PERP"
    return None


def _files(files: list[Path]) -> tuple[Path | None, list[Path], list[Path]]:
    metadata, http, ws = None, [], []
    for path in files:
        kind = _FILE_NAME.match(path.name)["kind"]
        if kind is None:
            metadata = path
        elif kind == "http":
            http.append(path)
        else:
            ws.append(path)
    number = lambda path: int(_FILE_NAME.match(path.name)["number"])  # noqa: E731 - a sort key
    return metadata, sorted(http, key=number), sorted(ws, key=number)


Frame = tuple[int, RecordedLine]
"""One replayed line: the module's connection index and the recorded open or received frame."""


def verify_recording(
    prefix: str,
    files: list[Path],
    timed: bool = False,
    sink: RecordSink | None = None,
    transform: Callable[[list[Frame]], Iterable[Frame]] | None = None,
) -> dict[str, Any]:
    """Replay one exchange's recording and report what the connector saw. ``timed`` adds
    ``handler_ns``, the time spent in the connector's ``on_message``, and ``sink`` replaces
    the counting sink (bench/connectors.py times the path into a real ring). ``transform``
    rewrites the merged stream before the replay, to inject a fault (tests/test_recorded_faults.py);
    its result is consumed one frame at a time, as the replay goes."""
    name = RECORDED_NAMES.get(prefix, prefix.lower())
    module = load_exchange_module(name)
    metadata, http_files, ws_files = _files(files)
    metadata_lines = list(read_recorded(metadata)) if metadata else []
    configuration = next((line for line in metadata_lines if line.kind == LineKind.CONFIGURATION), None)
    configured = json.loads(configuration.payload) if configuration else {}
    canonical = {symbol: _canonical(symbol) for symbol in configured.get("l2_book", [])}
    symbols = [symbol for symbol in canonical.values() if symbol is not None]
    without_canonical = [symbol for symbol, name in canonical.items() if name is None]
    sink = CountingSink() if sink is None else sink
    symbol_ids = {symbol: index for index, symbol in enumerate(symbols)}
    if configured.get("generation") == LIVE_GENERATION:  # written by coby record: today's protocol
        defaults = ExchangeConfig()
        settings = SimpleNamespace(
            ws_url="", rest_url="",
            **{key: configured.get("settings", {}).get(key, getattr(defaults, key))
               for key in ("snapshot_depth", "stale_after_s", "max_streams_per_connection")},
        )
        connector = module.CONNECTOR.from_settings(sink, 0, symbol_ids, settings)
    else:
        options = getattr(module, "RECORDED_OPTIONS", {})
        if options is None:
            raise UnreadableRecording(f"{name}: coby's connector does not read this recorded generation")
        connector_class = getattr(module, "RECORDED_CONNECTOR", module.CONNECTOR)
        connector = connector_class(sink, 0, symbol_ids, **options)
    responses = [line for line in metadata_lines if line.kind == LineKind.HTTP_RESPONSE]
    if responses:
        for url in connector.instruments_urls:
            connector.load_instruments(_instrument_response(url, responses).payload)
    snapshots = [line for path in http_files for line in read_recorded(path) if line.kind == LineKind.HTTP_RESPONSE]
    planned = max(len(connector.connection_plan()), 1)
    frames: Iterable[Frame] = _merged_stream(ws_files, planned)
    if transform is not None:
        frames = transform(frames)
    pending: dict[str, RecordedLine] = {}
    opened: set[int] = set()
    received = handler_ns = reconnects = 0
    clock = time.perf_counter_ns
    for connection, line in frames:
        for symbol in [s for s, answer in pending.items() if answer.timestamp_ns <= line.timestamp_ns]:
            answer = pending.pop(symbol)
            connector.on_snapshot(symbol, answer.payload, answer.timestamp_ns)
        if line.kind == LineKind.WS_OPEN:
            if connection not in opened:  # several recorded connections may share one of ours
                opened.add(connection)
                connector.on_open(connection, line.timestamp_ns)
        elif line.kind == LineKind.RECEIVED:
            received += 1
            if timed:
                started = clock()
                action = connector.on_message(connection, line.payload, line.timestamp_ns)
                handler_ns += clock() - started
            else:
                action = connector.on_message(connection, line.payload, line.timestamp_ns)
            reconnects += action == ConnectionAction.RECONNECT
        for request in connector.snapshot_requests(line.timestamp_ns):
            answer = _snapshot_for(request.native_symbol, snapshots)
            if answer is not None:
                pending[request.native_symbol] = answer
    for symbol, answer in pending.items():
        connector.on_snapshot(symbol, answer.payload, answer.timestamp_ns)
    report = _report(prefix, name, connector, symbols, received, sink)
    report["symbol_ids"] = symbol_ids  # as written in the records
    report["skipped_symbols"] = without_canonical
    report["reconnects"] = reconnects
    if timed:
        report["handler_ns"] = handler_ns
    return report


def _instrument_response(url: str, responses: list[RecordedLine]) -> RecordedLine:
    """The recorded metadata response for one of the module's instruments URLs: same path
    and query (any host), else same path, else the recording's first."""
    path, query = _path_and_query(url)
    same_path = [line for line in responses if _path_and_query(line.url)[0] == path]
    exact = [line for line in same_path if _path_and_query(line.url)[1] == query]
    return (exact or same_path or responses)[0]


def _path_and_query(url: str) -> tuple[str, frozenset[str]]:
    path, _, query = re.sub(r"^[a-z]+://[^/]+", "", url).partition("?")
    return path.rstrip("/"), frozenset(part for part in query.split("&") if part)


def _snapshot_for(native_symbol: str, snapshots: list[RecordedLine]) -> RecordedLine | None:
    """The first unused recorded snapshot of that symbol: one whose URL has the symbol as a
    whole path segment or query value (any host), so ``ETH-USDT`` never takes the answer
    recorded for ``ETH-USDT-SWAP``."""
    wanted = native_symbol.lower()
    for index, line in enumerate(snapshots):
        if wanted in _url_names(line.url):
            return snapshots.pop(index)
    return None


def _url_names(url: str) -> set[str]:
    path, query = _path_and_query(url)
    return {segment.lower() for segment in path.split("/") if segment} | {
        part.partition("=")[2].lower() for part in query
    }


def _merged_stream(ws_files: list[Path], planned: int) -> list[Frame]:
    """Every connection's opens and frames, in receive order (one clock for all files);
    recorded connection ``k`` is the module's connection ``k % planned``."""
    merged = [
        (line.timestamp_ns, index % planned, order, line)
        for index, path in enumerate(ws_files)
        for order, line in enumerate(read_recorded(path))
        if line.kind in (LineKind.WS_OPEN, LineKind.RECEIVED)
    ]
    merged.sort(key=lambda item: item[:3])
    return [(connection, line) for _, connection, _, line in merged]


def _report(
    prefix: str, name: str, connector: Any, symbols: list[str], received: int, sink: RecordSink
) -> dict[str, Any]:
    listed = [symbol for symbol in symbols if symbol not in connector.missing_symbols]
    totals: Counter[str] = Counter()
    best = {}
    for symbol in listed:
        counters = connector.counters(symbol)
        for field in fields(counters):
            value = getattr(counters, field.name)
            if isinstance(value, int) and not field.name.startswith(("last_", "receive_")):
                totals[field.name] += value
        book = connector.book(symbol)
        bid, ask = book.best_bid(), book.best_ask()
        best[symbol] = {"bid": list(bid) if bid else None, "ask": list(ask) if ask else None}
    malformed = sum(counters.malformed_frames for counters in connector.connection_counters)
    return {
        "exchange": name,
        "recording": prefix,
        "frames": received,
        "book_updates": totals["frames_applied"],
        "levels": totals["levels_applied"],
        "snapshots": totals["snapshots"],
        "checksums_ok": totals["checksums_ok"],
        "checksums_failed": totals["checksums_failed"],
        "gaps": totals["gaps"],
        "resyncs": totals["resyncs"],
        "parse_errors": totals["parse_errors"] + malformed,
        "crossed": totals["crossed"],
        "cross_checks": totals["cross_checks"],
        "cross_check_mismatches": totals["cross_check_mismatches"],
        "trades": totals["trades"],
        "symbols": len(listed),
        "missing_symbols": list(connector.missing_symbols),
        "records_written": {Kind(kind).name.lower(): count for kind, count in sorted(getattr(sink, "kinds", {}).items())},
        "best": best,
    }


def failed(report: dict[str, Any]) -> bool:
    """Any checksum failure, gap, unparsable frame or disagreement with the venue's own top of book."""
    return bool(
        report["checksums_failed"] or report["gaps"] or report["parse_errors"] or report["cross_check_mismatches"]
    )


def main(paths: list[str]) -> int:
    grouped = recordings(paths)
    if not grouped:
        print(f"coby verify: no recording files under {', '.join(paths)}", file=sys.stderr)
        return 2
    code = 0
    for prefix, files in sorted(grouped.items()):
        try:
            report = verify_recording(prefix, files)
        except (UnknownExchangeError, UnreadableRecording) as error:
            report = {"recording": prefix, "error": str(error)}
            code = 1
        except Exception as error:  # a connector bug: reported for this recording, the others still run
            report = {"recording": prefix, "error": f"{type(error).__name__}: {error}"}
            code = 1
        else:
            code |= failed(report)
        print(json.dumps(report), flush=True)
    return code
