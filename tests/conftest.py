"""Shared fixtures: an in-memory record sink, the recorded-traffic directory, unique
shared-memory instances, spawned helper processes that never outlive a test, and storage
backends on SQLite and on PostgreSQL (127.0.0.1:5432, or a throwaway server)."""

from __future__ import annotations

import multiprocessing as mp
import os
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np
import psycopg
import pytest

from engine.storage import PostgresBackend, SqliteBackend, StorageBackend
from shm.records import RECORD_DTYPE, Kind, Side
from shm.registry import list_segments
from shm.segment import unlink_segment
from sim.recorded import recorded_dir
from tests.postgres_support import ThrowawayPostgres, Unavailable


@pytest.fixture
def instance() -> Iterator[str]:
    """A unique instance name; its segments are removed afterwards, even on failure."""
    name = f"t{os.getpid()}{uuid.uuid4().hex[:8]}"
    yield name
    for segment in list_segments(name):
        unlink_segment(segment)


@pytest.fixture
def spawn() -> Iterator[Callable[..., BaseProcess]]:
    """Start functions in fresh ``spawn`` processes; any still running at the end are killed."""
    context = mp.get_context("spawn")
    started: list[BaseProcess] = []

    def start(target: Callable[..., None], *args: object) -> BaseProcess:
        process = context.Process(target=target, args=args, daemon=True)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(timeout=10)


class MemorySink:
    """The ring's producer contract (``write``/``free``) over a list, with a settable capacity.

    ``consume()`` plays the consumer: it frees the room. ``books()`` rebuilds each
    symbol's book from the records the way the aggregator must (snapshots swapped in
    whole, CLEAR drops a book), so a test can check what a consumer would see.
    """

    def __init__(self, capacity: int = 1 << 20) -> None:
        self.capacity = capacity
        self.batches: list[np.ndarray] = []
        self.refused = 0
        self._unconsumed = 0

    def write(self, batch: np.ndarray) -> bool:
        if len(batch) > self.free():
            self.refused += 1
            return False
        self.batches.append(batch.copy())
        self._unconsumed += len(batch)
        return True

    def free(self) -> int:
        return self.capacity - self._unconsumed

    def consume(self) -> None:
        self._unconsumed = 0

    def records(self) -> np.ndarray:
        return np.concatenate(self.batches) if self.batches else np.empty(0, dtype=RECORD_DTYPE)

    def of_kind(self, kind: Kind) -> np.ndarray:
        records = self.records()
        return records[records["kind"] == kind]

    def books(self) -> dict[int, tuple[dict[float, float], dict[float, float]]]:
        """symbol_id → (bids, asks) of every book a consumer would currently show."""
        books: dict[int, tuple[dict[float, float], dict[float, float]]] = {}
        building: dict[int, tuple[dict[float, float], dict[float, float]]] = {}
        for record in self.records():
            symbol = int(record["symbol_id"])
            kind = record["kind"]
            if kind == Kind.SNAPSHOT_BEGIN:
                building[symbol] = ({}, {})
            elif kind == Kind.SNAPSHOT_END:
                books[symbol] = building.pop(symbol)
            elif kind == Kind.CLEAR:
                books.pop(symbol, None)
            elif kind == Kind.LEVEL:
                target = building.get(symbol) or books.get(symbol)
                assert target is not None, f"LEVEL for symbol {symbol} with no book"
                side = target[0] if record["side"] == Side.BID else target[1]
                price = float(record["price"])
                if record["size"]:
                    side[price] = float(record["size"])
                else:
                    side.pop(price, None)
        return books


@pytest.fixture
def memory_sink() -> MemorySink:
    return MemorySink()


@pytest.fixture(scope="session")
def sink_factory() -> type[MemorySink]:
    """``sink_factory(capacity)`` for tests that need a small ring to overflow."""
    return MemorySink


@pytest.fixture(scope="session")
def recorded() -> Path:
    directory = recorded_dir()
    if directory is None:
        pytest.skip("recorded traffic not found: set COBY_RECORDED_DIR or put it at ../shared/recorded")
    return directory


POSTGRES_DSN = os.environ.get("COBY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _reachable(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
        return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The PostgreSQL server the tests use: the usual one, or a throwaway one started here."""
    if _reachable(POSTGRES_DSN):
        yield POSTGRES_DSN
        return
    try:
        server = ThrowawayPostgres()
    except Unavailable as error:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN}, and {error}")
    try:
        yield server.url()
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "postgres"])
def make_backend(request, tmp_path) -> Iterator[Callable[..., StorageBackend]]:
    """``make_backend(retention=None)``: a new backend on this test's one database; all closed afterwards."""
    made: list[StorageBackend] = []
    if request.param == "sqlite":
        def make(retention=None, **options) -> StorageBackend:
            made.append(SqliteBackend(tmp_path / "coby.sqlite", retention, **options))
            return made[-1]
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        schema = f"coby_test_{uuid.uuid4().hex[:12]}"

        def make(retention=None, **options) -> StorageBackend:
            made.append(PostgresBackend(dsn, retention, schema=schema, **options))
            return made[-1]
    yield make
    for backend in made:
        backend.close()
    if request.param == "postgres":
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def own_postgres() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL server of this test's own (a throwaway one), which it may stop and start."""
    try:
        server = ThrowawayPostgres()
    except Unavailable as error:
        pytest.skip(str(error))
    yield server
    server.close()
