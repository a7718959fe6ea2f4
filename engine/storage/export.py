"""A time range of the stored tables as CSV files, one per table, for pandas, polars or a spreadsheet.

Only the standard ``csv`` module and numpy: the engine must not depend on a dataframe library.
Rows are streamed through :meth:`StorageBackend.read` one chunk at a time, so memory holds one
chunk whatever the range. Each file is written aside and renamed into place when complete: an
export that fails leaves the previous ``<table>.csv`` (if any) untouched and no partial file.

Conventions of every file (UTF-8, a header row, ``\\n`` line ends, rows in the table's key order):

- Timestamps (``ts`` and ``*_ts``) stay int64 nanoseconds since the epoch, exact, and each is
  followed by its ISO-8601 UTC twin with nanoseconds: ``receive_ts`` → ``receive_time``, ``ts`` →
  ``time`` (``2026-12-06T21:00:00.123456789Z``). A timestamp of 0 (the exchange stamped nothing)
  has an empty twin.
- Floats are written as ``repr``: ``float(text)`` gives back the stored value bit for bit.
- ``kind``, ``side``, ``status`` and ``reason`` of the exchange traffic tables are the names of
  :mod:`shm.records` enums (``LEVEL``, ``BID``, ``IN_SYNC``, ``SEQUENCE_GAP``); a number no member
  has stays a number.
- The exchange's uint64 values the schema keeps as signed bit patterns (``book_events.sequence``,
  ``aux`` and ``flags``, ``trades.trade_id``) are written unsigned, as the exchange gave them.
- ``features.values`` (float32 bytes) becomes one column ``values`` of the row's floats separated
  by single spaces, in the order of ``engine.features.feature_names(kind)`` (220 columns of their
  own would swamp every other one); each float as the ``repr`` of its float64 value, exact.
  ``np.array(text.split(), dtype=np.float32)`` or pandas ``.str.split(" ", expand=True)`` unpacks it.
- ``consolidated_snapshots.payload`` becomes the top of book it holds: ``publish_ts`` (and
  ``publish_time``), ``best_bid``, ``best_bid_size``, ``best_ask``, ``best_ask_size`` (empty for an
  empty side), and ``bid_levels`` / ``ask_levels``, the levels stored per side (at most
  ``storage.snapshot_depth``). The payload's generation is the row's ``generation`` column.
- ``signals.payload`` is the signal's JSON text as stored.

Filters. ``symbols`` keeps rows of those symbols; book and status events stamped for every symbol
of an exchange (symbol ``''``: connection state) are kept too, since they apply to the symbols
asked for. ``exchanges`` keeps rows of those exchanges, where ``*`` names the data consolidated
across exchanges: the ``ohlcv`` bars of exchange ``*``, and the tables with no exchange column
(consolidated snapshots, features, signals), which are exported only when ``*`` is asked for
(their file then has just its header): they are not any one exchange's data.
"""

from __future__ import annotations

import csv
import datetime
import os
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from engine.storage.base import DEFAULT_CHUNK_ROWS, StorageBackend
from engine.storage.schema import FLOAT64, INT64, TABLES, Column, Table, table_named
from engine.storage.snapshots import ALL_EXCHANGES, SNAPSHOT_FORMAT
from shm.book import PRICE, SIZE
from shm.records import Kind, Reason, Side, Status

EVERY_SYMBOL = ""  # the symbol of events that apply to every symbol of an exchange
EXPORTED = [name for name, table in TABLES.items() if table.exported]
ENUM_COLUMNS: dict[tuple[str, str], type[IntEnum]] = {
    ("book_events", "kind"): Kind,
    ("book_events", "side"): Side,
    ("book_events", "reason"): Reason,
    ("trades", "side"): Side,
    ("status_events", "status"): Status,
    ("status_events", "reason"): Reason,
}
UNSIGNED_COLUMNS: dict[tuple[str, str], np.dtype] = {
    ("book_events", "sequence"): np.dtype(np.uint64),
    ("book_events", "aux"): np.dtype(np.uint64),
    ("book_events", "flags"): np.dtype(np.uint16),
    ("trades", "trade_id"): np.dtype(np.uint64),
}
SNAPSHOT_SUMMARY = (
    "publish_ts", "publish_time", "best_bid", "best_bid_size", "best_ask", "best_ask_size", "bid_levels", "ask_levels",
)
_FRACTION = re.compile(r"(?<=:\d\d)[.,](\d+)")


@dataclass(frozen=True, slots=True)
class OutputColumns:
    """What one stored column becomes in the CSV: its header(s) and how a chunk turns into their values."""

    headers: tuple[str, ...]
    values: Callable[[np.ndarray], list[list[Any]]]  # one list per header, for one chunk of rows


def csv_path(out_dir: Path, table: str) -> Path:
    """The file :func:`export` writes ``table`` to."""
    return Path(out_dir) / f"{table}.csv"


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch from integer nanoseconds or ISO-8601 (no zone: UTC).

    ``2026-12-06``, ``2026-12-06T21:00:00Z``, ``2026-12-06T21:00:00.123456789+02:00``: fractions
    down to the nanosecond are kept (``datetime`` alone stops at the microsecond), so the
    ``*_time`` columns of an export parse back to their ``*_ts``.
    """
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    fraction = _FRACTION.search(text)
    digits = fraction.group(1) if fraction else ""
    if len(digits) > 9:
        raise ValueError(f"time {text!r} is finer than a nanosecond")
    try:
        moment = datetime.datetime.fromisoformat(_FRACTION.sub("", text, count=1))
    except ValueError:
        raise ValueError(
            f"time {text!r} is neither ISO-8601 (2026-12-06T21:00:00Z, 2026-12-06) nor integer nanoseconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    since_epoch = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    seconds = since_epoch.days * 86_400 + since_epoch.seconds
    return seconds * 1_000_000_000 + int(digits.ljust(9, "0"))


def iso_times(stamps: np.ndarray) -> list[str]:
    """ISO-8601 UTC with nanoseconds for int64 ns stamps; '' for 0, which means "not stamped"."""
    texts = np.datetime_as_string(stamps.astype("datetime64[ns]"), unit="ns").tolist()
    return [f"{text}Z" if stamp else "" for text, stamp in zip(texts, stamps.tolist())]


def _time_header(name: str) -> str:
    return "time" if name == "ts" else f"{name.removesuffix('_ts')}_time"


def _is_timestamp(column: Column) -> bool:
    return column.type is INT64 and (column.name == "ts" or column.name.endswith("_ts"))


def _floats(values: np.ndarray) -> list[str]:
    return list(map(repr, values.tolist()))


def _enum_names(enum: type[IntEnum], values: np.ndarray) -> list[str]:
    names = {member.value: member.name for member in enum}
    return [names.get(value, str(value)) for value in values.tolist()]


def _float32_values(blob: bytes) -> str:
    return " ".join(map(repr, np.frombuffer(blob, dtype="<f4").astype(np.float64).tolist()))


def _best(levels: np.ndarray) -> tuple[str, str]:
    if not len(levels):
        return "", ""
    return repr(float(levels[0, PRICE])), repr(float(levels[0, SIZE]))


def _top_of_book(payload: bytes) -> list[Any]:
    """The :data:`SNAPSHOT_SUMMARY` values of one stored consolidated book (``engine.storage.snapshots.snapshot_payload``)."""
    message = msgpack.unpackb(zlib.decompress(payload), raw=False)
    if message.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(
            f"a consolidated snapshot payload has format {message.get('format')!r}; this coby reads "
            f"format {SNAPSHOT_FORMAT}: export it with the coby that stored it"
        )
    width = int(message["columns"])
    bids = np.frombuffer(message["bids"], dtype="<f8").reshape(-1, width)
    asks = np.frombuffer(message["asks"], dtype="<f8").reshape(-1, width)
    publish_ts = int(message["publish_ts"])
    return [publish_ts, *iso_times(np.array([publish_ts])), *_best(bids), *_best(asks), len(bids), len(asks)]


def _snapshot_summaries(payloads: np.ndarray) -> list[list[Any]]:
    rows = [_top_of_book(payload) for payload in payloads.tolist()]
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in SNAPSHOT_SUMMARY]


def _output_columns(table: Table, column: Column) -> OutputColumns:
    name, where = column.name, (table.name, column.name)
    if _is_timestamp(column):
        return OutputColumns((name, _time_header(name)), lambda rows: [rows[name].tolist(), iso_times(rows[name])])
    if where in ENUM_COLUMNS:
        enum = ENUM_COLUMNS[where]
        return OutputColumns((name,), lambda rows: [_enum_names(enum, rows[name])])
    if where in UNSIGNED_COLUMNS:
        unsigned = UNSIGNED_COLUMNS[where]
        return OutputColumns((name,), lambda rows: [rows[name].view(unsigned).tolist()])
    if where == ("features", "values"):
        return OutputColumns((name,), lambda rows: [[_float32_values(blob) for blob in rows[name].tolist()]])
    if where == ("consolidated_snapshots", "payload"):
        return OutputColumns(SNAPSHOT_SUMMARY, lambda rows: _snapshot_summaries(rows[name]))
    if column.type is FLOAT64:
        return OutputColumns((name,), lambda rows: [_floats(rows[name])])
    return OutputColumns((name,), lambda rows: [rows[name].tolist()])


def _filters(
    table: Table, exchanges: Sequence[str] | None, symbols: Sequence[str] | None
) -> dict[str, list[str] | None] | None:
    """The ``exchanges`` / ``symbols`` arguments of ``backend.read`` for this table; None: no row can match."""
    if exchanges is not None and not table.has("exchange"):
        if ALL_EXCHANGES not in exchanges:
            return None
        exchanges = None
    if symbols is not None and table.name in ("book_events", "status_events"):
        symbols = [*symbols, EVERY_SYMBOL]
    return {
        "exchanges": None if exchanges is None else list(exchanges),
        "symbols": None if symbols is None else list(symbols),
    }


def _check_names(what: str, names: Sequence[str] | None) -> None:
    if isinstance(names, str):
        raise ValueError(f"{what} must be a list of names, not the string {names!r}")


def _write_table(
    backend: StorageBackend,
    path: Path,
    table: Table,
    start_ns: int,
    end_ns: int,
    filters: dict[str, list[str] | None] | None,
    chunk_rows: int,
) -> int:
    outputs = [_output_columns(table, column) for column in table.columns]
    chunks: Iterator[np.ndarray] = iter(())
    if filters is not None:
        chunks = backend.read(table.name, start_ns, end_ns, chunk_rows=chunk_rows, **filters)
    partial = path.with_name(f".{path.name}.partial")
    written = 0
    try:
        with partial.open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow([header for output in outputs for header in output.headers])
            for rows in chunks:
                columns = [values for output in outputs for values in output.values(rows)]
                writer.writerows(zip(*columns))
                written += len(rows)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return written


def export(
    backend: StorageBackend,
    out_dir: Path,
    start_ns: int,
    end_ns: int,
    tables: Sequence[str] | None = None,
    exchanges: Sequence[str] | None = None,
    symbols: Sequence[str] | None = None,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> dict[str, int]:
    """Write the rows of each table with the time column in [start_ns, end_ns) to ``out_dir/<table>.csv``.

    ``tables`` defaults to every table but the internal ``record_blocks`` (replay's packed copy of
    book events and trades); ``exchanges`` and ``symbols`` filter as the module
    docstring says. ``out_dir`` is created when missing; files already there are replaced.
    Returns the rows written per table, in the order written. ValueError for an unknown table,
    an empty range or an ``out_dir`` that is not a directory, before anything is read or written.
    """
    chosen = [table_named(name) for name in dict.fromkeys(EXPORTED if tables is None else tables)]
    if not chosen:
        raise ValueError("no tables to export: name at least one, or give None for every table")
    if start_ns >= end_ns:
        raise ValueError(f"the time range is empty: start {start_ns} is not before end {end_ns}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    _check_names("exchanges", exchanges)
    _check_names("symbols", symbols)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"the output {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        table.name: _write_table(
            backend, csv_path(out_dir, table.name), table, int(start_ns), int(end_ns),
            _filters(table, exchanges, symbols), chunk_rows,
        )
        for table in chosen
    }
