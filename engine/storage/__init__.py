"""The storage layer: the tables (schema), the backends (SQLite, PostgreSQL) and the disk spool.

The storage actor hands :class:`EventBatch` es to a :class:`StorageBackend`; while the database
is unavailable it appends them to a :class:`Spool` and drains it later. The replay actor reads
through the same backends.
"""

from engine.config import StorageConfig
from engine.storage.base import DatabaseUnavailable, EventBatch, StorageBackend, to_records
from engine.storage.postgres import PostgresBackend
from engine.storage.schema import CURRENT_VERSION, TABLES, SchemaVersionError
from engine.storage.snapshots import ALL_EXCHANGES, SNAPSHOT_FORMAT, snapshot_payload
from engine.storage.sqlite import SqliteBackend


def configured_backend(settings: StorageConfig) -> StorageBackend:
    """The configured backend, not yet connected."""
    if settings.backend == "postgres":
        return PostgresBackend(settings.postgres_dsn, dict(settings.retention_days))
    return SqliteBackend(settings.sqlite_path, dict(settings.retention_days))


__all__ = [
    "ALL_EXCHANGES", "CURRENT_VERSION", "SNAPSHOT_FORMAT", "TABLES", "DatabaseUnavailable", "EventBatch",
    "PostgresBackend", "SchemaVersionError", "SqliteBackend", "StorageBackend", "configured_backend",
    "snapshot_payload", "to_records",
]
