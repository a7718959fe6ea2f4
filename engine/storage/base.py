"""What every storage backend offers the storage and replay actors, and the batch they exchange.

An :class:`EventBatch` is one unit of work: for each table, its rows as columns (1-D numpy
arrays, one per column of :mod:`engine.storage.schema`). Columns keep the hot path vectorized:
ring records become a batch with a handful of numpy operations (:meth:`EventBatch.from_records`),
and each backend turns columns into its bulk format without looking at rows one by one where
the format allows it.

A write is one transaction, all or nothing, and idempotent: a row whose key is already stored
is skipped (bars replace theirs), so a batch written again after a crash or out of the spool
never duplicates anything and never fails for that reason.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import msgpack
import numpy as np

from engine.storage.blocks import block_columns, blocks_from_rows, to_records
from engine.storage.schema import (
    BYTES,
    RECORD_BLOCKS,
    DAY_NS,
    TABLES,
    TEXT,
    Column,
    Table,
    column_list,
    quoted,
    table_named,
)
from shm.records import ALL_SYMBOLS, RECORD_DTYPE, Kind

BATCH_FORMAT = 2  # version of EventBatch.to_bytes; from_bytes also reads 1 (no record blocks) and refuses others
READABLE_BATCH_FORMATS = (1, 2)
DEFAULT_CHUNK_ROWS = 65_536
Columns = dict[str, np.ndarray]


class DatabaseUnavailable(Exception):
    """The database cannot take this call now (down, unreachable, locked, disk full).

    Nothing of the call was committed. Spool the batch and retry later: the backend reconnects
    by itself on its next call.
    """


def _object_array(values: Any) -> np.ndarray:
    """A 1-D object array of ``values`` as given (numpy would turn bytes into a NUL-stripping ``S`` array)."""
    if isinstance(values, np.ndarray) and values.dtype == object:
        return values
    if isinstance(values, np.ndarray) and values.dtype.kind == "U":
        return values.astype(object)
    items = list(values)
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _coerce(table: Table, column: Column, values: Any) -> np.ndarray:
    where = f"{table.name}.{column.name}"
    if column.type in (TEXT, BYTES):
        array = _object_array(values)
        expected = str if column.type is TEXT else bytes
        if array.ndim != 1 or not all(type(value) is expected for value in array):
            raise TypeError(f"{where} must be a 1-D sequence of {expected.__name__} values")
        return array
    array = np.asarray(values)
    target = column.type.numpy
    if array.ndim != 1:
        raise ValueError(f"{where} must be one-dimensional, got shape {array.shape}")
    if array.dtype.kind not in ("iub" if target.kind == "i" else "iubf"):
        raise TypeError(f"{where} must hold {column.type.name} values, got dtype {array.dtype}")
    if target.kind == "i" and array.size and not np.can_cast(array.dtype, target):
        limits = np.iinfo(target)
        if array.min() < limits.min or array.max() > limits.max:
            hint = " (keep a uint64's bit pattern with .view(np.int64))" if array.dtype == np.uint64 else ""
            raise ValueError(f"{where} has values outside the {column.type.name} range{hint}")
    converted = array.astype(target, copy=False)
    if target.kind == "f":
        if np.isnan(converted).any():
            raise ValueError(f"{where} holds NaN, which SQLite cannot store: drop those rows or give a number")
        converted = converted + 0.0  # -0.0 becomes 0.0 everywhere, as SQLite would store it
    return converted


def _normalize(table: Table, given: Mapping[str, Any] | None) -> Columns:
    if not given:
        return {column.name: np.empty(0, column.type.numpy) for column in table.columns}
    missing = [name for name in table.names if name not in given]
    unknown = sorted(set(given) - set(table.names))
    if missing or unknown:
        raise ValueError(
            f"{table.name}: missing columns {missing}, unknown columns {unknown}; "
            f"its columns are: {', '.join(table.names)}"
        )
    columns: Columns = {}
    for column in table.columns:
        columns[column.name] = _coerce(table, column, given[column.name])
        rows, first = len(columns[column.name]), len(columns[table.names[0]])
        if rows != first:
            raise ValueError(f"{table.name}.{column.name} has {rows} rows but {table.names[0]} has {first}")
    return columns


def _names(ids: np.ndarray, names: np.ndarray, what: str) -> np.ndarray:
    if ids.size and ids.max() >= len(names):
        raise ValueError(f"a record has {what} {int(ids.max())} but only {len(names)} names were given")
    return names[ids]


@dataclass(frozen=True, eq=False)
class EventBatch:
    """Rows for each table, as ``{column name: 1-D array}``; a table left out (None) has no rows.

    Construction checks every column (names, lengths, types, ranges, no NaN) and converts it to
    the schema's dtype: text and bytes become object arrays of ``str`` / ``bytes``. Negative
    zero becomes zero (SQLite cannot keep it); every other float is stored bit for bit.
    """

    book_events: Mapping[str, Any] | None = None
    trades: Mapping[str, Any] | None = None
    status_events: Mapping[str, Any] | None = None
    ohlcv: Mapping[str, Any] | None = None
    consolidated_snapshots: Mapping[str, Any] | None = None
    features: Mapping[str, Any] | None = None
    signals: Mapping[str, Any] | None = None
    record_blocks: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        for table in TABLES.values():
            object.__setattr__(self, table.name, _normalize(table, getattr(self, table.name)))

    def columns(self, table: str) -> Columns:
        return getattr(self, table_named(table).name)

    def rows(self, table: str) -> int:
        return len(self.columns(table)[table_named(table).names[0]])

    def __len__(self) -> int:
        return sum(self.rows(name) for name in TABLES)

    def tables(self) -> Iterator[tuple[Table, Columns]]:
        """The tables that have rows, with their columns."""
        for table in TABLES.values():
            if self.rows(table.name):
                yield table, self.columns(table.name)

    def to_bytes(self) -> bytes:
        """msgpack of the columns (numbers as their raw little-endian buffers), e.g. for the spool."""
        tables = {
            table.name: {
                name: array.tolist() if array.dtype == object else array.tobytes() for name, array in columns.items()
            }
            for table, columns in self.tables()
        }
        return msgpack.packb({"event_batch": BATCH_FORMAT, "tables": tables}, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> EventBatch:
        """The batch :meth:`to_bytes` wrote; ValueError for anything else."""
        try:
            message = msgpack.unpackb(data, raw=False)
            if not isinstance(message, dict) or message.get("event_batch") not in READABLE_BATCH_FORMATS:
                raise ValueError("no event_batch format marker")
            tables: dict[str, Columns] = {}
            for name, stored in message["tables"].items():
                table = table_named(name)
                tables[name] = {
                    column.name: stored[column.name]
                    if column.type.wire is None
                    else np.frombuffer(stored[column.name], dtype=column.type.numpy)
                    for column in table.columns
                }
            if message["event_batch"] == 1:
                batch = cls(**tables)
                tables[RECORD_BLOCKS.name] = blocks_from_rows(batch.book_events, batch.trades)
            return cls(**tables)
        except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as error:
            raise ValueError(f"not an EventBatch (format {BATCH_FORMAT}) payload: {error}") from error

    @classmethod
    def from_records(
        cls,
        records: np.ndarray,
        *,
        run_id: int,
        positions: int | np.ndarray,
        exchanges: Sequence[str],
        symbols: Sequence[str],
    ) -> EventBatch:
        """Ring records (``shm.records``) as book events, trades and status events.

        ``positions`` are the records' positions in the run's event stream (an int: the first of
        consecutive ones); ``exchanges`` and ``symbols`` are the names of the ids the records carry
        (``Config.exchange_ids()`` and ``Config.symbols`` order). TRADE records become trades and
        everything else a book event; STATUS records are also status events (``symbol`` '' when
        they apply to every symbol). uint64 ``sequence`` and ``aux`` and the ``flags`` bits keep
        their bit patterns in the signed columns.
        """
        if records.dtype != RECORD_DTYPE:
            raise TypeError(f"records must have shm.records.RECORD_DTYPE, got {records.dtype}")
        count = len(records)
        if isinstance(positions, (int, np.integer)):
            position = np.arange(positions, positions + count, dtype=np.int64)
        else:
            position = np.asarray(positions, dtype=np.int64)
            if position.shape != (count,):
                raise ValueError(f"positions has shape {position.shape} for {count} records")
        kind = records["kind"]
        unknown = ~np.isin(kind, [member.value for member in Kind])
        if unknown.any():
            raise ValueError(f"records hold kinds {sorted(set(kind[unknown].tolist()))} that shm.records.Kind lacks")
        exchange = _names(records["exchange_id"], np.array(list(exchanges), dtype=object), "exchange_id")
        symbol_ids = records["symbol_id"].astype(np.int64)
        symbol_ids[symbol_ids == ALL_SYMBOLS] = len(symbols)
        symbol = _names(symbol_ids, np.array([*symbols, ""], dtype=object), "symbol_id")
        run = np.full(count, run_id, dtype=np.int64)

        def identity(mask: np.ndarray) -> dict[str, np.ndarray]:
            return {"run_id": run[mask], "position": position[mask], "exchange": exchange[mask], "symbol": symbol[mask]}

        blocks = block_columns(records, run_id, position, exchanges, symbols)
        is_trade, is_status = kind == Kind.TRADE, kind == Kind.STATUS
        book, trade, status = records[~is_trade], records[is_trade], records[is_status]
        return cls(
            book_events={
                **identity(~is_trade),
                **{name: book[name] for name in ("kind", "side", "price", "size", "order_count", "reason")},
                "sequence": book["sequence"].view(np.int64),
                "exchange_ts": book["exchange_ts"],
                "receive_ts": book["receive_ts"],
                "flags": book["flags"].view(np.int16),
                "aux": book["aux"].view(np.int64),
            },
            trades={
                **identity(is_trade),
                **{name: trade[name] for name in ("price", "size", "side", "exchange_ts", "receive_ts")},
                "trade_id": trade["aux"].view(np.int64),
            },
            status_events={
                **identity(is_status),
                "status": status["aux"],
                "reason": status["reason"],
                "ts": status["receive_ts"],
            },
            record_blocks=blocks,
        )


def _retention_days(retention: Mapping[str, float] | None) -> dict[str, float]:
    days: dict[str, float] = {}
    for name, value in (retention or {}).items():
        table_named(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
            raise ValueError(f"retention of {name} must be a number of days, 0 to keep forever; got {value!r}")
        days[name] = float(value)
    return days


class StorageBackend(ABC):
    """A database the storage actor writes into and the replay actor reads from.

    ``retention`` maps a table name to the days its rows are kept (0 or absent: forever);
    :meth:`apply_retention` enforces it when the caller decides. Use as a context manager, or
    call :meth:`open` and :meth:`close`.
    """

    placeholder = "?"  # the DB-API parameter marker of the driver

    def __init__(self, retention: Mapping[str, float] | None = None) -> None:
        self.retention = _retention_days(retention)
        if "book_events" in self.retention:  # replay needs the books: its blocks go with them
            self.retention[RECORD_BLOCKS.name] = self.retention["book_events"]

    @abstractmethod
    def open(self) -> None:
        """Connect; SchemaVersionError if the database is newer than this code."""

    @abstractmethod
    def migrate(self) -> int:
        """Bring the schema up to date (see ``schema.migrate``); returns the version found before."""

    @abstractmethod
    def write(self, batch: EventBatch) -> int:
        """Store a batch in one transaction; returns the rows added (bars: added or replaced)."""

    @abstractmethod
    def apply_retention(self, now_ns: int) -> None:
        """Delete what each table keeps no longer, as of ``now_ns``."""

    @abstractmethod
    def close(self) -> None:
        """Disconnect; open() or any call connects again."""

    @abstractmethod
    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        """All rows of one query, under the backend's error handling."""

    def __enter__(self) -> StorageBackend:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def cutoffs(self, now_ns: int) -> dict[Table, int]:
        """Per table with a retention: the time before which its rows are no longer kept."""
        return {TABLES[name]: now_ns - round(days * DAY_NS) for name, days in self.retention.items() if days > 0}

    def upsert_bars(self, bars: Mapping[str, Any]) -> int:
        """Store bars (the ``ohlcv`` columns), each replacing the stored bar of the same key."""
        return self.write(EventBatch(ohlcv=bars))

    def count(self, table: str, start_ns: int | None = None, end_ns: int | None = None) -> int:
        """Rows of ``table`` whose time column is in [start_ns, end_ns) (an open side when None)."""
        definition = table_named(table)
        conditions, params = ["1 = 1"], []
        time = quoted(definition.time_column)
        if start_ns is not None:
            conditions.append(f"{time} >= {self.placeholder}")
            params.append(int(start_ns))
        if end_ns is not None:
            conditions.append(f"{time} < {self.placeholder}")
            params.append(int(end_ns))
        return int(self._fetch(f"SELECT count(*) FROM {quoted(table)} WHERE {' AND '.join(conditions)}", params)[0][0])

    def _maximum(self, table: Table, column: str, equal: Mapping[str, Any], since_ns: int | None) -> int | None:
        conditions = [f"{quoted(name)} = {self.placeholder}" for name in equal]
        params = list(equal.values())
        if since_ns is not None:
            conditions.append(f"{quoted(table.time_column)} >= {self.placeholder}")
            params.append(int(since_ns))
        query = f"SELECT max({quoted(column)}) FROM {quoted(table.name)} WHERE {' AND '.join(conditions)}"
        value = self._fetch(query, params)[0][0]
        return None if value is None else int(value)

    def snapshot_starts(self, before_ns: int, since_ns: int) -> dict[tuple[str, str], int]:
        """Per (exchange, symbol): the receive time of its last snapshot begun in [since_ns, before_ns].

        Where replay must start reading for a book to be whole at ``before_ns``.
        """
        marker = self.placeholder
        rows = self._fetch(
            f"SELECT {quoted('exchange')}, {quoted('symbol')}, max({quoted('receive_ts')}) FROM "
            f"{quoted('book_events')} WHERE {quoted('kind')} = {marker} AND {quoted('receive_ts')} >= {marker} AND "
            f"{quoted('receive_ts')} <= {marker} GROUP BY {quoted('exchange')}, {quoted('symbol')}",
            [int(Kind.SNAPSHOT_BEGIN), int(since_ns), int(before_ns)],
        )
        return {(str(exchange), str(symbol)): int(ts) for exchange, symbol, ts in rows}

    def last_position(self, run_id: int, since_ns: int | None = None) -> int:
        """The highest position of ``run_id`` stored in book_events or trades; -1 when there is none.

        Where a restarted storage actor resumes. Give ``since_ns`` (the run's start: no event of the run
        was received before it) so that only those rows are searched rather than every stored one.
        """
        found = [self._maximum(TABLES[table], "position", {"run_id": int(run_id)}, since_ns)
                 for table in ("book_events", "trades")]
        return max((value for value in found if value is not None), default=-1)

    def last_feature_sequence(self, symbol: str, kind: str, since_ns: int | None = None) -> int:
        """The highest stored feature row sequence of (symbol, kind); 0 when there is none.

        ``since_ns`` bounds the search to rows stamped since then, as in :meth:`last_position`.
        """
        found = self._maximum(TABLES["features"], "sequence", {"symbol": symbol, "kind": kind}, since_ns)
        return 0 if found is None else found

    def read(
        self,
        table: str,
        start_ns: int,
        end_ns: int,
        *,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> Iterator[np.ndarray]:
        """Rows with the time column in [start_ns, end_ns), in key order, as structured arrays of ≤ chunk_rows.

        Each chunk is its own short query resuming after the previous chunk's last key, so no
        transaction stays open between chunks and memory holds one chunk.
        """
        definition = table_named(table)
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        marker = self.placeholder
        time = quoted(definition.time_column)
        conditions, params = [f"{time} >= {marker}", f"{time} < {marker}"], [int(start_ns), int(end_ns)]
        for column, wanted in (("exchange", exchanges), ("symbol", symbols)):
            if wanted is None:
                continue
            if isinstance(wanted, str):
                raise TypeError(f"{column}s must be a list of names, not the string {wanted!r}")
            if not definition.has(column):
                raise ValueError(f"table {table} has no {column} column to filter on")
            wanted = list(wanted)
            if not wanted:
                return iter(())
            conditions.append(f"{quoted(column)} IN ({', '.join([marker] * len(wanted))})")
            params.extend(wanted)
        return self._chunks(definition, " AND ".join(conditions), params, chunk_rows)

    def _chunks(self, table: Table, condition: str, params: list[Any], chunk_rows: int) -> Iterator[np.ndarray]:
        key = column_list(table, table.key)
        key_at = [table.names.index(name) for name in table.key]
        select = f"SELECT {column_list(table)} FROM {quoted(table.name)} WHERE {condition}"
        after: list[Any] = []
        while True:
            resume = f" AND ({key}) > ({', '.join([self.placeholder] * len(key_at))})" if after else ""
            rows = self._fetch(f"{select}{resume} ORDER BY {key} LIMIT {int(chunk_rows)}", params + after)
            if rows:
                yield np.array(rows, dtype=table.dtype)
            if len(rows) < chunk_rows:
                return
            after = [rows[-1][index] for index in key_at]


__all__ = ["DEFAULT_CHUNK_ROWS", "DatabaseUnavailable", "EventBatch", "StorageBackend", "to_records"]

assert {field.name for field in fields(EventBatch)} == set(TABLES), "EventBatch has one field per table"
