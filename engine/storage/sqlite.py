"""The embedded default backend: one SQLite file, no server to run.

Durability: the journal is WAL with ``synchronous=NORMAL``. A committed write survives a crash
of the process (the WAL is in the operating system's hands); a power cut or an OS crash can lose
the transactions committed since the WAL was last synced to disk (SQLite syncs it at each
checkpoint, every ~4 MB of WAL by default) but never corrupts the database, which comes back
as of an earlier commit. Readers in other processes (replay) and the writer never block each
other.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.storage.base import DatabaseUnavailable, EventBatch, StorageBackend
from engine.storage.schema import (
    CURRENT_VERSION,
    Table,
    check_version,
    column_list,
    migrate,
    quoted,
    schema_version,
)

# Failures of the environment, not of the statement: the caller spools and retries.
UNAVAILABLE_CODES = frozenset(
    (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN,
     sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_READONLY)
)


@functools.cache
def _insert_statement(table: Table) -> str:
    markers = ", ".join("?" * len(table.columns))
    verb = "INSERT" if table.replace_on_conflict else "INSERT OR IGNORE"
    insert = f"{verb} INTO {quoted(table.name)} ({column_list(table)}) VALUES ({markers})"
    if not table.replace_on_conflict:
        return insert
    updates = ", ".join(f"{quoted(name)} = excluded.{quoted(name)}" for name in table.names if name not in table.key)
    return f"{insert} ON CONFLICT ({column_list(table, table.key)}) DO UPDATE SET {updates}"


class SqliteBackend(StorageBackend):
    """Storage in one SQLite file (created with its directory when missing)."""

    def __init__(
        self, path: str | os.PathLike[str], retention: Mapping[str, float] | None = None, *, busy_timeout_s: float = 5.0
    ) -> None:
        super().__init__(retention)
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._connection: sqlite3.Connection | None = None
        self._version = 0

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            if getattr(error, "sqlite_errorcode", 0) & 0xFF not in UNAVAILABLE_CODES:
                raise
            raise DatabaseUnavailable(
                f"SQLite database {self.path} is unavailable ({error}): spool and retry later"
            ) from error

    def open(self) -> None:
        if self._connection is not None:
            return
        with self._unavailable():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Any thread may make the calls (e.g. an actor's worker thread), one at a time.
            connection = sqlite3.connect(
                self.path, isolation_level=None, timeout=self.busy_timeout_s, check_same_thread=False
            )
            try:
                mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise RuntimeError(
                        f"SQLite database {self.path} cannot use a WAL journal (its mode stays {mode!r}): "
                        "give storage.sqlite_path a file on a local filesystem"
                    )
                connection.execute("PRAGMA synchronous = NORMAL")
                version = schema_version(connection)
                if version > CURRENT_VERSION:
                    check_version(version)
            except BaseException:
                connection.close()
                raise
        self._connection, self._version = connection, version

    def _live(self) -> sqlite3.Connection:
        self.open()
        assert self._connection is not None
        return self._connection

    def migrate(self) -> int:
        connection = self._live()
        with self._unavailable():
            found = migrate(connection)
        self._version = CURRENT_VERSION
        return found

    def write(self, batch: EventBatch) -> int:
        if not len(batch):
            return 0
        connection = self._live()
        check_version(self._version)
        with self._unavailable(), self._transaction(connection):
            check_version(schema_version(connection))  # exact: a migration is a writer too, one at a time
            written = 0
            for table, columns in batch.tables():
                rows = zip(*(columns[name].tolist() for name in table.names), strict=True)
                written += connection.executemany(_insert_statement(table), rows).rowcount
        return written

    @contextmanager
    def _transaction(self, connection: sqlite3.Connection) -> Iterator[None]:
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:  # SQLite has already rolled back after some errors
                connection.execute("ROLLBACK")
            raise

    def apply_retention(self, now_ns: int) -> None:
        """Deletes every row older than its table's retention."""
        cutoffs = self.cutoffs(now_ns)
        if not cutoffs:
            return
        connection = self._live()
        check_version(self._version)
        with self._unavailable(), self._transaction(connection):
            for table, cutoff in cutoffs.items():
                connection.execute(f"DELETE FROM {quoted(table.name)} WHERE {quoted(table.time_column)} < ?", (cutoff,))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        connection = self._live()
        check_version(self._version)
        with self._unavailable():
            return connection.execute(sql, params).fetchall()
