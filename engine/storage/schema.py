"""The stored tables, declared once for SQLite and PostgreSQL, and the migrations that create them.

Every timestamp is int64 nanoseconds since the Unix epoch. Each table has one *time column*
(``receive_ts`` for exchange traffic, ``open_ts`` for bars, ``ts`` otherwise) which is what
retention, PostgreSQL's day partitions and every read range are about.

Keys. The primary key of every table starts with its time column, then the columns that
identify a row (for exchange traffic: ``run_id, position``, the event's place in its run's
event stream). PostgreSQL requires the partition column in every unique key of a partitioned
table, and leading with it gives one index that serves both de-duplication and the
time-ordered reads of replay. A replayed event has the same ``receive_ts`` as the first time,
so ``(receive_ts, run_id, position)`` de-duplicates it exactly like ``(run_id, position)``
would; SQLite uses the same keys so that both backends behave alike.

``sequence`` and ``aux`` are the exchange's uint64 values stored as int64 (no exchange's
sequence reaches 2**63 in practice); a larger value keeps its bit pattern, stored negative,
so ``column.view(np.uint64)`` reads it back exactly. ``flags`` (uint16 bits) is a smallint the
same way.

Migrations: :data:`SQLITE_MIGRATIONS` and :data:`POSTGRES_MIGRATIONS` are ordered steps, the
version after step ``i`` being ``i + 1``. Step 1 builds the tables from :data:`TABLES` as they
are declared now; a later change to a table is a new step for each backend (and step 1 then
keeps creating the original shape: paste the SQL it generated into it). ``migrate`` applies the
missing steps in one transaction and refuses a database newer than this code.
"""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

DAY_NS = 86_400 * 1_000_000_000
EPOCH = datetime.date(1970, 1, 1)
COMPRESS_AFTER_NS = 7 * DAY_NS  # TimescaleDB compresses chunks older than a week
MIGRATION_LOCK = 0x636F6279  # pg_advisory_xact_lock key ("coby"): concurrent migrations run one after the other


class SchemaVersionError(Exception):
    """The database's schema version does not match what this code reads and writes."""


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A column type in every representation it has: numpy in memory, SQL per backend, binary COPY."""

    name: str
    numpy: np.dtype
    sqlite: str
    postgres: str
    wire: np.dtype | None  # PostgreSQL binary COPY encoding; None for variable-width values


INT16 = ColumnType("int16", np.dtype("<i2"), "INTEGER", "smallint", np.dtype(">i2"))
INT32 = ColumnType("int32", np.dtype("<i4"), "INTEGER", "integer", np.dtype(">i4"))
INT64 = ColumnType("int64", np.dtype("<i8"), "INTEGER", "bigint", np.dtype(">i8"))
FLOAT64 = ColumnType("float64", np.dtype("<f8"), "REAL", "double precision", np.dtype(">f8"))
TEXT = ColumnType("text", np.dtype(object), "TEXT", "text", None)
BYTES = ColumnType("bytes", np.dtype(object), "BLOB", "bytea", None)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType


@dataclass(frozen=True, slots=True)
class Table:
    """One table: its columns in order, its primary key (time column first) and how writes treat a known key."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    replace_on_conflict: bool = False  # True: a row with a known key replaces the stored one (bars fill up)
    exported: bool = True  # False: an internal table that `coby export` leaves out unless named

    def __post_init__(self) -> None:
        names = self.names
        if len(set(names)) != len(names) or not set(self.key) <= set(names):
            raise ValueError(f"table {self.name}: duplicate column names or a key column that is not a column")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def time_column(self) -> str:
        return self.key[0]

    @property
    def dtype(self) -> np.dtype:
        """The structured dtype of rows read back (text and bytes are Python objects)."""
        return np.dtype([(column.name, column.type.numpy) for column in self.columns])

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"table {self.name} has no column {name!r}; its columns: {', '.join(self.names)}")

    def has(self, name: str) -> bool:
        return name in self.names


def _columns(*pairs: tuple[str, ColumnType]) -> tuple[Column, ...]:
    return tuple(Column(name, column_type) for name, column_type in pairs)


BOOK_EVENTS = Table(
    "book_events",
    _columns(
        ("run_id", INT64), ("position", INT64), ("exchange", TEXT), ("symbol", TEXT), ("kind", INT16),
        ("side", INT16), ("price", FLOAT64), ("size", FLOAT64), ("order_count", INT32), ("sequence", INT64),
        ("exchange_ts", INT64), ("receive_ts", INT64), ("flags", INT16), ("reason", INT16), ("aux", INT64),
    ),
    key=("receive_ts", "run_id", "position"),
)
TRADES = Table(
    "trades",
    _columns(
        ("run_id", INT64), ("position", INT64), ("exchange", TEXT), ("symbol", TEXT), ("price", FLOAT64),
        ("size", FLOAT64), ("side", INT16), ("trade_id", INT64), ("exchange_ts", INT64), ("receive_ts", INT64),
    ),
    key=("receive_ts", "run_id", "position"),
)
STATUS_EVENTS = Table(
    "status_events",
    _columns(
        ("run_id", INT64), ("position", INT64), ("exchange", TEXT), ("symbol", TEXT), ("status", INT16),
        ("reason", INT16), ("ts", INT64),
    ),
    key=("ts", "run_id", "position"),
)
OHLCV = Table(
    "ohlcv",
    _columns(
        ("interval_s", INT32), ("exchange", TEXT), ("symbol", TEXT), ("open_ts", INT64), ("open", FLOAT64),
        ("high", FLOAT64), ("low", FLOAT64), ("close", FLOAT64), ("volume", FLOAT64), ("notional", FLOAT64),
        ("trades", INT64),
    ),
    key=("open_ts", "interval_s", "exchange", "symbol"),
    replace_on_conflict=True,
)
CONSOLIDATED_SNAPSHOTS = Table(
    "consolidated_snapshots",
    _columns(
        ("run_id", INT64), ("position", INT64), ("symbol", TEXT), ("ts", INT64), ("generation", INT64),
        ("payload", BYTES),
    ),
    key=("ts", "run_id", "position", "symbol"),
)
FEATURES = Table(
    "features",
    _columns(
        ("symbol", TEXT), ("kind", TEXT), ("sequence", INT64), ("ts", INT64), ("layout_version", INT32),
        ("values", BYTES),
    ),
    key=("ts", "symbol", "kind", "sequence"),
)
SIGNALS = Table(
    "signals",
    _columns(
        ("symbol", TEXT), ("kind", TEXT), ("signal_id", INT64), ("state", TEXT), ("ts", INT64), ("payload", TEXT),
    ),
    key=("ts", "signal_id", "state"),
)

RECORD_BLOCKS = Table(
    "record_blocks",
    _columns(
        ("first_ts", INT64), ("run_id", INT64), ("first_position", INT64), ("last_ts", INT64), ("records", INT32),
        ("exchanges", TEXT), ("symbols", TEXT), ("positions", BYTES), ("payload", BYTES),
    ),
    key=("first_ts", "run_id", "first_position"),
    exported=False,
)

V1_TABLES = (BOOK_EVENTS, TRADES, STATUS_EVENTS, OHLCV, CONSOLIDATED_SNAPSHOTS, FEATURES, SIGNALS)
TABLES: dict[str, Table] = {table.name: table for table in (*V1_TABLES, RECORD_BLOCKS)}
BLOCK_WINDOW_NS = 60 * 1_000_000_000  # no record block spans more receive time than this


def table_named(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; the tables are: {', '.join(TABLES)}") from None


def quoted(name: str) -> str:
    """A column or table name as an SQL identifier (``values`` is a keyword in both dialects)."""
    return f'"{name}"'


def column_list(table: Table, names: Sequence[str] | None = None) -> str:
    return ", ".join(quoted(name) for name in (names or table.names))


def partition_name(table: Table, day: int) -> str:
    """The PostgreSQL partition holding one UTC day (days since the epoch) of ``table``."""
    return f"{table.name}_{(EPOCH + datetime.timedelta(days=day)):%Y%m%d}"


def partition_day(table: Table, name: str) -> int | None:
    """The day a partition named by :func:`partition_name` holds, or None for any other name."""
    suffix = name.removeprefix(f"{table.name}_")
    if suffix == name or len(suffix) != 8 or not suffix.isdigit():
        return None
    try:
        return (datetime.datetime.strptime(suffix, "%Y%m%d").date() - EPOCH).days
    except ValueError:
        return None


def _create_table(table: Table, dialect: str) -> str:
    definitions = [
        f"{quoted(column.name)} {getattr(column.type, dialect)} NOT NULL" for column in table.columns
    ]
    definitions.append(f"PRIMARY KEY ({column_list(table, table.key)})")
    return f"CREATE TABLE {quoted(table.name)} ({', '.join(definitions)})"


def _sqlite_v1(connection: sqlite3.Connection) -> None:
    # WITHOUT ROWID: the table is its key's B-tree, already in the order time ranges are read in.
    connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT")
    for table in V1_TABLES:
        connection.execute(_create_table(table, "sqlite") + " STRICT, WITHOUT ROWID")


def _sqlite_v2(connection: sqlite3.Connection) -> None:
    # A rowid table: SQLite's docs advise against WITHOUT ROWID for rows this large (a block is ~100 kB).
    connection.execute(_create_table(RECORD_BLOCKS, "sqlite") + " STRICT")
    _backfill_record_blocks(connection, "?", None)


def _backfill_record_blocks(
    connection: Any, marker: str, before_insert: Callable[[np.ndarray], None] | None
) -> None:
    # engine.storage.blocks is built on this module's tables, so it is imported when the step runs.
    from engine.storage.blocks import backfill

    backfill(connection, marker, before_insert)


def _install_timescaledb(connection: psycopg.Connection) -> bool:
    """Install TimescaleDB where the server has it (packaged, preloaded, allowed to us); say whether it is in."""
    available = connection.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')"
    ).fetchone()[0]
    if not available:
        return False
    try:
        with connection.transaction():  # a savepoint: a refusal leaves the migration going
            connection.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.DatabaseError:
        return False  # not in shared_preload_libraries, or not ours to create: day partitions instead
    return True


def timescaledb_schema(connection: psycopg.Connection) -> str | None:
    """The schema (as SQL) holding TimescaleDB's functions, or None when it is not installed."""
    row = connection.execute(
        "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'timescaledb'"
    ).fetchone()
    return None if row is None else row[0]


def _postgres_v1(connection: psycopg.Connection) -> None:
    connection.execute("CREATE TABLE schema_version (version integer NOT NULL)")
    timescaledb = timescaledb_schema(connection) if _install_timescaledb(connection) else None
    if timescaledb:
        connection.execute(
            "CREATE FUNCTION coby_now_ns() RETURNS bigint LANGUAGE sql STABLE"
            " AS $$ SELECT (extract(epoch FROM now()) * 1e9)::bigint $$"
        )
    for table in V1_TABLES:
        _create_postgres_table(connection, table, timescaledb)


def _postgres_v2(connection: psycopg.Connection) -> None:
    hypertables = connection.execute(
        "SELECT relkind <> 'p' FROM pg_class WHERE oid = to_regclass('book_events')"
    ).fetchone()[0]
    _create_postgres_table(connection, RECORD_BLOCKS, timescaledb_schema(connection) if hypertables else None)

    def add_partitions(first_ts: np.ndarray) -> None:
        for day in np.unique(first_ts // DAY_NS).tolist():
            create_day_partition(connection, RECORD_BLOCKS, day)

    _backfill_record_blocks(connection, "%s", None if hypertables else add_partitions)


def create_day_partition(connection: psycopg.Connection, table: Table, day: int) -> None:
    """The partition of ``table`` holding one UTC day (days since the epoch), unless it exists."""
    connection.execute(
        f"CREATE TABLE IF NOT EXISTS {quoted(partition_name(table, day))} PARTITION OF {quoted(table.name)}"
        f" FOR VALUES FROM ({day * DAY_NS:d}) TO ({(day + 1) * DAY_NS:d})"
    )


def _create_postgres_table(connection: psycopg.Connection, table: Table, timescaledb: str | None) -> None:
    """One table: day-partitioned, or a hypertable with compression when ``timescaledb`` is its schema."""
    if timescaledb is None:
        connection.execute(f"{_create_table(table, 'postgres')} PARTITION BY RANGE ({quoted(table.time_column)})")
        return
    connection.execute(_create_table(table, "postgres"))
    connection.execute(
        f"SELECT {timescaledb}.create_hypertable(%s, %s, chunk_time_interval => %s)",
        (table.name, table.time_column, DAY_NS),
    )
    connection.execute(f"SELECT {timescaledb}.set_integer_now_func(%s, 'coby_now_ns')", (table.name,))
    # Every key column must be a segmenting or an ordering column of a compressed hypertable.
    segment_by = [name for name in ("exchange", "symbol") if table.has(name)]
    order_by = [name for name in table.key if name not in segment_by]
    connection.execute(
        f"ALTER TABLE {quoted(table.name)} SET (timescaledb.compress,"
        f" timescaledb.compress_segmentby = '{', '.join(segment_by)}',"
        f" timescaledb.compress_orderby = '{', '.join(order_by)}')"
    )
    connection.execute(
        f"SELECT {timescaledb}.add_compression_policy(%s, compress_after => %s::bigint)",
        (table.name, COMPRESS_AFTER_NS),
    )


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Any], None]


SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create every table", _sqlite_v1),
    Migration(2, "record_blocks, filled from the stored book events and trades", _sqlite_v2),
)
POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create every table: day-partitioned, or hypertables where TimescaleDB is usable", _postgres_v1),
    Migration(2, "record_blocks, filled from the stored book events and trades", _postgres_v2),
)
CURRENT_VERSION = len(SQLITE_MIGRATIONS)
assert [step.version for step in SQLITE_MIGRATIONS] == [step.version for step in POSTGRES_MIGRATIONS] == list(
    range(1, CURRENT_VERSION + 1)
), "both backends have the same ordered migration steps, numbered from 1"


def schema_version(connection: sqlite3.Connection | psycopg.Connection) -> int:
    """The version of the schema in the database; 0 for a database this code never migrated."""
    if isinstance(connection, sqlite3.Connection):
        exists = connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()[0]
    else:
        exists = connection.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
    if not exists:
        return 0
    rows = connection.execute("SELECT version FROM schema_version").fetchall()
    if len(rows) != 1:
        raise SchemaVersionError(
            f"schema_version holds {len(rows)} rows instead of one: the database was changed by hand; restore it "
            "from a backup or point storage at another database"
        )
    return int(rows[0][0])


def _newer_than_code(found: int) -> SchemaVersionError:
    return SchemaVersionError(
        f"the database schema is version {found} but this coby only knows versions up to {CURRENT_VERSION}: "
        "run a coby at least as new as the one that wrote it, or point storage at another database"
    )


def check_version(found: int) -> None:
    """Refuse a database whose schema this code does not know (older: migrate; newer: upgrade the code)."""
    if found > CURRENT_VERSION:
        raise _newer_than_code(found)
    if found < CURRENT_VERSION:
        raise SchemaVersionError(
            f"the database schema is version {found} and this coby needs version {CURRENT_VERSION}: "
            "call migrate() first (it upgrades the schema in place)"
        )


def migrate(connection: sqlite3.Connection | psycopg.Connection) -> int:
    """Bring the schema to :data:`CURRENT_VERSION` in one transaction; returns the version found before.

    ``connection`` is an ``sqlite3`` connection in autocommit mode (``isolation_level=None``) or a
    psycopg connection with ``autocommit=True``: the transaction is this function's own.
    """
    if isinstance(connection, sqlite3.Connection):
        connection.execute("BEGIN IMMEDIATE")
        try:
            found = _apply(connection, SQLITE_MIGRATIONS)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:  # SQLite has already rolled back after some errors
                connection.execute("ROLLBACK")
            raise
        return found
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        return _apply(connection, POSTGRES_MIGRATIONS)


def _apply(connection: Any, steps: Sequence[Migration]) -> int:
    found = schema_version(connection)
    if found > CURRENT_VERSION:
        raise _newer_than_code(found)
    for step in steps[found:]:
        step.apply(connection)
    if found < CURRENT_VERSION:
        connection.execute("DELETE FROM schema_version")
        connection.execute(f"INSERT INTO schema_version (version) VALUES ({CURRENT_VERSION:d})")
    return found
