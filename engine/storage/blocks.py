"""Record blocks: the ring records of a stored batch packed into one row, which is what replay reads.

``book_events`` and ``trades`` keep every record as a row that SQL, export and research can use.
Reading rows back costs a driver tuple and a conversion per row (about 3.6 µs in SQLite), which
held replay near 60× real time on a busy hour. A block keeps the same records in their 64-byte
ring layout (``shm.records.RECORD_DTYPE``), so reading one back is a copy. Blocks are written in
the same transaction as the rows and keyed the same way (time column first), so they are exactly
as durable and as idempotent.

A block holds the records of one run that fall in one :data:`BLOCK_WINDOW_NS` window of receive
time (a batch crossing a window boundary becomes two blocks), in the order they were fed;
``first_ts`` and ``last_ts`` are their smallest and largest ``receive_ts``. A reader that wants
receive times in [a, b) therefore takes the blocks with ``first_ts`` in [a − window, b) and
``last_ts`` ≥ a. ``exchange_id`` and ``symbol_id`` are the writing run's ids; ``exchanges`` and
``symbols`` (JSON lists) name them, and :func:`unpack_blocks` maps them onto a replay session's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from engine.storage.schema import BLOCK_WINDOW_NS, BOOK_EVENTS, RECORD_BLOCKS, TRADES, Table, column_list, quoted
from shm.records import ALL_SYMBOLS, RECORD_DTYPE, Kind, empty_records

Columns = dict[str, np.ndarray]
UNKNOWN = -1


def block_columns(
    records: np.ndarray, run_id: int, position: np.ndarray, exchanges: Sequence[str], symbols: Sequence[str]
) -> Columns:
    """The ``record_blocks`` rows of one run's records (any order), one block per receive-time window."""
    window = records["receive_ts"] // BLOCK_WINDOW_NS
    exchange_names, symbol_names = json.dumps(list(exchanges)), json.dumps(list(symbols))
    rows: dict[str, list[Any]] = {name: [] for name in RECORD_BLOCKS.names}
    for value in np.unique(window):
        members = window == value
        block, block_position = records[members], position[members]
        rows["first_ts"].append(int(block["receive_ts"].min()))
        rows["last_ts"].append(int(block["receive_ts"].max()))
        rows["run_id"].append(int(run_id))
        rows["first_position"].append(int(block_position.min()))
        rows["records"].append(len(block))
        rows["exchanges"].append(exchange_names)
        rows["symbols"].append(symbol_names)
        rows["positions"].append(block_position.astype("<i8").tobytes())
        rows["payload"].append(block.tobytes())
    return {name: _column(values, RECORD_BLOCKS.column(name).type.numpy) for name, values in rows.items()}


def _column(values: list[Any], dtype: np.dtype) -> np.ndarray:
    if dtype != object:
        return np.array(values, dtype=dtype)
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def blocks_from_rows(book_events: Mapping[str, np.ndarray], trades: Mapping[str, np.ndarray]) -> Columns:
    """Blocks rebuilt from stored rows as columns (a schema-1 database or spool batch), one run at a time."""
    blocks = []
    for rows in (book_events, trades):
        run_ids = np.asarray(rows["run_id"])
        for run in np.unique(run_ids).tolist():
            members = run_ids == run
            of_run = {name: np.asarray(column)[members] for name, column in rows.items()}
            exchanges = sorted(set(of_run["exchange"].tolist()))
            symbols = sorted(set(of_run["symbol"].tolist()) - {""})
            records = to_records(of_run, exchanges=exchanges, symbols=symbols)
            blocks.append(block_columns(records, run, of_run["position"], exchanges, symbols))
    return {
        name: np.concatenate([block[name] for block in blocks]) if blocks
        else _column([], RECORD_BLOCKS.column(name).type.numpy)
        for name in RECORD_BLOCKS.names
    }


def _ids(values: np.ndarray, names: Sequence[str], what: str) -> np.ndarray:
    values = np.asarray(values)
    lookup = {name: index for index, name in enumerate(names)}
    distinct, inverse = np.unique(values.astype(str), return_inverse=True)
    unknown = [str(name) for name in distinct if name not in lookup]
    if unknown:
        raise ValueError(f"{what} {unknown} not among the {len(names)} {what} names given")
    return np.array([lookup[name] for name in distinct], dtype=np.int64)[inverse.reshape(-1)]


def to_records(
    rows: np.ndarray | Mapping[str, np.ndarray], *, exchanges: Sequence[str], symbols: Sequence[str]
) -> np.ndarray:
    """Ring records from stored book events or trades (rows, or their columns by name).

    The inverse of :meth:`EventBatch.from_records` for book events; a trade comes back with
    ``sequence``, ``order_count``, ``flags`` and ``reason`` 0, which the trades table does not keep.
    """
    names = rows.dtype.names if isinstance(rows, np.ndarray) else tuple(rows)
    records = empty_records(len(rows["price"]))
    records["exchange_id"] = _ids(rows["exchange"], exchanges, "exchange")
    symbol_ids = _ids(rows["symbol"], [*symbols, ""], "symbol")
    symbol_ids[symbol_ids == len(symbols)] = ALL_SYMBOLS
    records["symbol_id"] = symbol_ids
    for name in ("price", "size", "side", "exchange_ts", "receive_ts"):
        records[name] = rows[name]
    if "trade_id" in names:
        records["kind"] = Kind.TRADE
        records["aux"] = np.asarray(rows["trade_id"], dtype=np.int64).view(np.uint64)
        return records
    for name in ("kind", "order_count", "reason"):
        records[name] = rows[name]
    records["sequence"] = np.asarray(rows["sequence"], dtype=np.int64).view(np.uint64)
    records["flags"] = np.asarray(rows["flags"], dtype=np.int16).view(np.uint16)
    records["aux"] = np.asarray(rows["aux"], dtype=np.int64).view(np.uint64)
    return records


class BlockReader:
    """Stored blocks as a replay session's records: a stored run's exchange and symbol ids are
    mapped onto the session's ``exchanges`` and ``symbols``, and records of any other exchange or
    symbol are left out."""

    def __init__(self, exchanges: Sequence[str], symbols: Sequence[str]) -> None:
        self.exchanges = {name: index for index, name in enumerate(exchanges)}
        self.symbols = {name: index for index, name in enumerate(symbols)}
        self.lookups: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def unpack(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Records, run ids and positions of ``blocks`` (rows of ``record_blocks``), block after block."""
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for block in blocks:
            records = np.frombuffer(block["payload"], dtype=RECORD_DTYPE).copy()
            position = np.frombuffer(block["positions"], dtype="<i8").astype(np.int64)
            exchange_ids, symbol_ids = self._lookup(block["exchanges"], block["symbols"])
            exchange = exchange_ids[np.minimum(records["exchange_id"], len(exchange_ids) - 1)]
            every_symbol = records["symbol_id"] == ALL_SYMBOLS
            symbol = symbol_ids[np.minimum(np.where(every_symbol, 0, records["symbol_id"]), len(symbol_ids) - 1)]
            keep = (exchange != UNKNOWN) & (every_symbol | (symbol != UNKNOWN))
            records = records[keep]
            records["exchange_id"] = exchange[keep]
            records["symbol_id"] = np.where(every_symbol[keep], ALL_SYMBOLS, symbol[keep])
            parts.append((records, np.full(len(records), int(block["run_id"]), dtype=np.int64), position[keep]))
        if not parts:
            return empty_records(0), np.empty(0, np.int64), np.empty(0, np.int64)
        records, run_id, position = (np.concatenate([part[index] for part in parts]) for index in range(3))
        return records, run_id, position

    def _lookup(self, exchanges: str, symbols: str) -> tuple[np.ndarray, np.ndarray]:
        """Stored id → session id (UNKNOWN where the session lacks the name), with a trailing UNKNOWN
        for ids past the stored names; computed once per stored name list."""
        found = self.lookups.get((exchanges, symbols))
        if found is None:
            found = self.lookups[(exchanges, symbols)] = (
                np.array([*(self.exchanges.get(name, UNKNOWN) for name in json.loads(exchanges)), UNKNOWN]),
                np.array([*(self.symbols.get(name, UNKNOWN) for name in json.loads(symbols)), UNKNOWN]),
            )
        return found


def backfill(
    connection: Any,
    marker: str,
    before_insert: Callable[[np.ndarray], None] | None = None,
    chunk_rows: int = 65_536,
) -> None:
    """Blocks for every book event and trade already stored (the migration to schema 2).

    Runs on the migration's connection (sqlite3 or psycopg), inside its transaction; ``marker`` is
    the driver's parameter marker and ``before_insert`` gets each chunk's block ``first_ts`` (to
    create PostgreSQL day partitions). Rows are read in key order a chunk at a time, so memory
    holds one chunk whatever the database's size.
    """
    for table in (BOOK_EVENTS, TRADES):
        for chunk in _rows_by_key(connection, marker, table, chunk_rows):
            tables = {BOOK_EVENTS.name: _no_rows(BOOK_EVENTS), TRADES.name: _no_rows(TRADES), table.name: chunk}
            blocks = blocks_from_rows(tables[BOOK_EVENTS.name], tables[TRADES.name])
            if before_insert is not None:
                before_insert(blocks["first_ts"])
            _insert(connection, marker, blocks)


def _no_rows(table: Table) -> Columns:
    return {column.name: np.empty(0, column.type.numpy) for column in table.columns}


def _rows_by_key(connection: Any, marker: str, table: Table, chunk_rows: int) -> Iterator[Columns]:
    key = column_list(table, table.key)
    select = f"SELECT {column_list(table)} FROM {quoted(table.name)}"
    after: list[Any] = []
    while True:
        resume = f" WHERE ({key}) > ({', '.join([marker] * len(table.key))})" if after else ""
        rows = connection.execute(f"{select}{resume} ORDER BY {key} LIMIT {int(chunk_rows)}", after).fetchall()
        if rows:
            yield {name: np.array([row[index] for row in rows], dtype=column.type.numpy)
                   for index, (name, column) in enumerate((column.name, column) for column in table.columns)}
        if len(rows) < chunk_rows:
            return
        after = [rows[-1][table.names.index(name)] for name in table.key]


def _insert(connection: Any, marker: str, blocks: Columns) -> None:
    names = RECORD_BLOCKS.names
    statement = (f"INSERT INTO {quoted(RECORD_BLOCKS.name)} ({column_list(RECORD_BLOCKS)}) "
                 f"VALUES ({', '.join([marker] * len(names))})")
    for row in zip(*(blocks[name].tolist() for name in names), strict=True):
        connection.execute(statement, row)
