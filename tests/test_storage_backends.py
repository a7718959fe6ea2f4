"""The storage backends against real databases: SQLite in tmp_path, PostgreSQL on 127.0.0.1:5432.

Each PostgreSQL test works in a schema of its own, dropped afterwards. Without a server on
5432 (or $COBY_TEST_POSTGRES_DSN), a throwaway one is started from the local PostgreSQL
binaries; without those the PostgreSQL cases skip, saying why.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from engine.storage.base import DatabaseUnavailable, EventBatch, StorageBackend, to_records
from engine.storage.postgres import PostgresBackend
from engine.storage.schema import CURRENT_VERSION, DAY_NS, TABLES, SchemaVersionError, partition_day
from engine.storage.sqlite import SqliteBackend
from shm.records import ALL_SYMBOLS, Kind, Status, empty_records
from tests.postgres_support import free_port

EXCHANGES = ["binance", "binance_futures", "coinbase", "kraken", "okx"]
SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT:PERP", "ÉTH/€"]
TODAY = 20_000  # a day number (2024-10-04): tests place rows in days around it
START_NS = TODAY * DAY_NS


@pytest.fixture
def backend(make_backend) -> StorageBackend:
    """An open backend on a freshly migrated database."""
    opened = make_backend()
    opened.open()
    opened.migrate()
    return opened


@contextlib.contextmanager
def side_connection(backend: StorageBackend) -> Iterator[sqlite3.Connection | psycopg.Connection]:
    """Another connection to the backend's database, in autocommit mode."""
    if isinstance(backend, SqliteBackend):
        connection = sqlite3.connect(backend.path, isolation_level=None)
        try:
            yield connection
        finally:
            connection.close()
        return
    with psycopg.connect(backend.dsn, autocommit=True) as connection:
        connection.execute(f"SET search_path TO {backend.schema}")
        yield connection


def extreme_floats(rng: np.random.Generator, count: int) -> np.ndarray:
    values = rng.random(count) * 10.0 ** rng.integers(-300, 300, count)
    specials = [5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, np.inf, -np.inf, 0.1, -123.456, 0.0]
    values[: len(specials)] = specials[:count]
    return values


def full_batch(count: int = 60, seed: int = 0, first_position: int = 0) -> EventBatch:
    """Rows for every table, with the edges of each type (int extremes, subnormals, infinities, non-ASCII)."""
    rng = np.random.default_rng(seed)
    position = np.arange(first_position, first_position + count, dtype=np.int64)
    ts = START_NS + position * 1_000_003 + rng.integers(0, 1000, count)
    int64 = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, count, dtype=np.int64, endpoint=True)
    int64[:2] = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    exchange = rng.choice(EXCHANGES, count)
    symbol = rng.choice(SYMBOLS, count)
    return EventBatch(
        book_events={
            "run_id": np.full(count, 3), "position": position, "exchange": exchange, "symbol": symbol,
            "kind": rng.choice([1, 2, 3, 4, 6, 7], count), "side": rng.integers(0, 3, count),
            "price": extreme_floats(rng, count), "size": extreme_floats(rng, count)[::-1].copy(),
            "order_count": np.r_[np.iinfo(np.int32).max, rng.integers(0, 1000, count - 1)],
            "sequence": int64, "exchange_ts": ts - 77, "receive_ts": ts,
            "flags": np.r_[-1, np.iinfo(np.int16).max, rng.integers(0, 2, count - 2)],
            "reason": rng.integers(0, 13, count), "aux": int64[::-1].copy(),
        },
        trades={
            "run_id": np.full(count, 3), "position": position + 1_000_000, "exchange": exchange, "symbol": symbol,
            "price": extreme_floats(rng, count), "size": rng.random(count), "side": rng.integers(1, 3, count),
            "trade_id": int64, "exchange_ts": ts, "receive_ts": ts + 5,
        },
        status_events={
            "run_id": np.full(count, 3), "position": position + 2_000_000, "exchange": exchange,
            "symbol": np.where(rng.random(count) < 0.5, symbol, ""), "status": rng.integers(0, 8, count),
            "reason": rng.integers(0, 13, count), "ts": ts + 9,
        },
        ohlcv={
            "interval_s": np.where(position % 2 == 0, 1, 60), "exchange": np.where(position % 3 == 0, "*", exchange),
            "symbol": symbol, "open_ts": START_NS + position * 60 * 10**9, "open": extreme_floats(rng, count),
            "high": rng.random(count), "low": rng.random(count), "close": rng.random(count),
            "volume": rng.random(count), "notional": rng.random(count), "trades": int64,
        },
        consolidated_snapshots={
            "run_id": np.full(count, 3), "position": position, "symbol": symbol, "ts": ts + 11,
            "generation": int64, "payload": [rng.bytes(int(size)) for size in rng.integers(0, 3000, count)],
        },
        features={
            "symbol": symbol, "kind": rng.choice(["cnn", "rl"], count), "sequence": position, "ts": ts + 13,
            "layout_version": np.full(count, 1),
            "values": [rng.random(220, dtype=np.float32).tobytes() for _ in range(count)],
        },
        signals={
            "symbol": symbol, "kind": rng.choice(["imbalance", "dislocation"], count), "signal_id": position,
            "state": rng.choice(["open", "update", "closed"], count), "ts": ts + 17,
            "payload": [f'{{"score": {value!r}, "note": "ünïcode ✓"}}' for value in rng.random(count)],
        },
        record_blocks={
            "first_ts": ts + 19, "run_id": np.full(count, 3), "first_position": position, "last_ts": ts + 10**9,
            "records": rng.integers(0, 2000, count), "exchanges": ['["binance", "ökx"]'] * count,
            "symbols": ['["ÉTH/€"]'] * count, "positions": [rng.bytes(8 * int(size)) for size in rng.integers(0, 50, count)],
            "payload": [rng.bytes(64 * int(size)) for size in rng.integers(0, 2000, count)],
        },
    )


def sliced(batch: EventBatch, start: int, stop: int, tables=tuple(TABLES)) -> EventBatch:
    """Rows start..stop of the given tables of a batch (the same keys as in any other slice of it)."""
    return EventBatch(**{
        table: {name: column[start:stop] for name, column in batch.columns(table).items()} for table in tables
    })


def comparable(table: str, columns: dict[str, np.ndarray]) -> list[tuple]:
    """Rows as sorted tuples, floats as their bit patterns: equal only if stored bit for bit."""
    names = TABLES[table].names
    values = [
        columns[name].view(np.int64).tolist() if columns[name].dtype.kind == "f" else columns[name].tolist()
        for name in names
    ]
    return sorted(zip(*values, strict=True))


def read_all(backend: StorageBackend, table: str, chunk_rows: int = 1000) -> np.ndarray:
    chunks = list(backend.read(table, -(2**62), 2**62, chunk_rows=chunk_rows))
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=TABLES[table].dtype)


def as_columns(rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: rows[name] for name in rows.dtype.names}


def test_migrating_an_empty_database_creates_every_table(make_backend):
    backend = make_backend()
    backend.open()
    assert backend.migrate() == 0
    with side_connection(backend) as connection:
        for table in TABLES.values():
            if isinstance(connection, sqlite3.Connection):
                stored = [row[1] for row in connection.execute(f"PRAGMA table_info({table.name})")]
            else:
                stored = [row[0] for row in connection.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
                    " AND table_name = %s ORDER BY ordinal_position", (table.name,))]
            assert stored == list(table.names)
            assert backend.count(table.name) == 0


def test_migrating_again_changes_nothing(backend, make_backend):
    backend.write(full_batch())
    assert backend.migrate() == CURRENT_VERSION
    other = make_backend()
    other.open()
    assert other.migrate() == CURRENT_VERSION
    assert other.count("book_events") == 60


def test_a_database_newer_than_the_code_is_refused(backend, make_backend):
    with side_connection(backend) as connection:
        connection.execute(f"UPDATE schema_version SET version = {CURRENT_VERSION + 1}")
    backend.close()
    newer = make_backend()
    for attempt in (newer.open, newer.migrate):
        with pytest.raises(SchemaVersionError, match=rf"version {CURRENT_VERSION + 1}.*up to {CURRENT_VERSION}"):
            attempt()


def test_a_writer_opened_before_a_newer_migration_is_refused_rather_than_writing_the_old_shape(backend):
    """An older engine still running while a newer one migrates the database must not add rows the
    new schema's invariants lack (schema 2: record blocks beside every book event)."""
    backend.write(sliced(full_batch(), 0, 10))
    with side_connection(backend) as connection:
        connection.execute(f"UPDATE schema_version SET version = {CURRENT_VERSION + 1}")
    with pytest.raises(SchemaVersionError, match=rf"version {CURRENT_VERSION + 1}.*up to {CURRENT_VERSION}"):
        backend.write(sliced(full_batch(), 10, 20))
    assert backend.count("book_events") == 10


def test_an_unmigrated_database_asks_for_migrate(make_backend):
    backend = make_backend()
    backend.open()
    with pytest.raises(SchemaVersionError, match=r"version 0.*call migrate\(\)"):
        backend.write(full_batch())


def test_every_column_reads_back_bit_for_bit(backend):
    batch = full_batch()
    assert backend.write(batch) == len(batch)
    for table in TABLES:
        rows = read_all(backend, table, chunk_rows=7)
        assert rows.dtype == TABLES[table].dtype
        assert comparable(table, as_columns(rows)) == comparable(table, batch.columns(table)), table


def test_a_batch_written_twice_is_stored_once(backend):
    rows = full_batch(count=90)
    first, overlapping = sliced(rows, 0, 60), sliced(rows, 30, 90)
    assert backend.write(first) == len(first)
    assert backend.write(first) == first.rows("ohlcv")  # bars are replaced (by themselves), nothing else is added
    added = backend.write(overlapping)
    assert added == 30 * (len(TABLES) - 1) + 60  # the 30 new rows of each table, and every bar replaced or added
    for table in TABLES:
        keys = read_all(backend, table)[list(TABLES[table].key)].tolist()
        assert len(keys) == len(set(keys)) == 90, table
    assert comparable("book_events", as_columns(read_all(backend, "book_events"))) == comparable(
        "book_events", rows.book_events
    )
    twice = {name: np.concatenate([column, column]) for name, column in rows.book_events.items()}
    twice["run_id"] = np.full(180, 99)  # a new run, each of its events twice in one batch
    assert backend.write(EventBatch(book_events=twice)) == 90
    assert backend.count("book_events") == 180


def test_a_bar_is_replaced_by_the_last_one_written_with_its_key(backend):
    def bars(close: list[float], volume: list[float], open_minutes: list[int]) -> dict:
        count = len(close)
        return {
            "interval_s": [60] * count, "exchange": ["*"] * count, "symbol": ["BTC/USDT"] * count,
            "open_ts": [START_NS + minute * 60 * 10**9 for minute in open_minutes], "open": [100.0] * count,
            "high": [110.0] * count, "low": [90.0] * count, "close": close, "volume": volume,
            "notional": [v * 100 for v in volume], "trades": list(range(1, count + 1)),
        }

    assert backend.upsert_bars(bars([101.0], [1.0], [0])) == 1
    backend.upsert_bars(bars([102.0, 103.0, 104.0], [2.0, 3.0, 4.0], [0, 1, 0]))  # the same bar twice: the last wins
    rows = read_all(backend, "ohlcv")
    assert rows["open_ts"].tolist() == [START_NS, START_NS + 60 * 10**9]
    assert rows["close"].tolist() == [104.0, 103.0]
    assert rows["volume"].tolist() == [4.0, 3.0]
    assert rows["trades"].tolist() == [3, 2]


def stored_partition_days(backend: PostgresBackend, table: str) -> list[int]:
    with side_connection(backend) as connection:
        names = connection.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %s::regclass", (table,)
        ).fetchall()
    return sorted(partition_day(TABLES[table], name) for (name,) in names)


def test_retention_removes_old_days_and_keeps_the_rest(make_backend):
    backend = make_backend({"book_events": 2, "trades": 0.5, "ohlcv": 0})
    backend.open()
    backend.migrate()
    hours = np.array([1, 20]) * 3_600 * 10**9
    ts = np.concatenate([(TODAY - back) * DAY_NS + hours for back in (4, 3, 2, 1, 0)])
    template = full_batch(count=len(ts))
    columns = {table: dict(template.columns(table)) for table in ("book_events", "trades", "ohlcv")}
    columns["book_events"]["receive_ts"] = columns["trades"]["receive_ts"] = columns["ohlcv"]["open_ts"] = ts
    backend.write(EventBatch(**columns))
    if isinstance(backend, PostgresBackend):
        assert set(range(TODAY - 4, TODAY + 2)) <= set(stored_partition_days(backend, "book_events"))

    now = TODAY * DAY_NS + 12 * 3_600 * 10**9
    backend.apply_retention(now)
    kept = read_all(backend, "book_events")["receive_ts"]
    if isinstance(backend, PostgresBackend):  # whole days past the cutoff (now - 2 days) are dropped
        assert kept.tolist() == ts[ts >= (TODAY - 2) * DAY_NS].tolist()
        assert min(stored_partition_days(backend, "book_events")) == TODAY - 2
    else:
        assert kept.tolist() == ts[ts >= now - 2 * DAY_NS].tolist()
    trades = read_all(backend, "trades")["receive_ts"]
    assert trades.min() >= (TODAY - 1) * DAY_NS and trades.max() == ts.max()
    assert backend.count("ohlcv") == len(ts)  # 0: kept forever


def test_book_events_are_read_in_time_then_key_order_with_filters(backend):
    rng = np.random.default_rng(5)
    count = 500
    batch = full_batch(count=count)
    events = dict(batch.book_events)
    events["receive_ts"] = START_NS + rng.integers(0, 50, count)  # many ties: run_id, position decide
    events["run_id"] = rng.integers(1, 3, count)
    shuffled = rng.permutation(count)
    backend.write(EventBatch(book_events={name: column[shuffled] for name, column in events.items()}))

    order = np.lexsort((events["position"], events["run_id"], events["receive_ts"]))
    chunks = list(backend.read("book_events", START_NS, START_NS + 50, chunk_rows=37))
    assert all(len(chunk) <= 37 for chunk in chunks)
    assert np.concatenate(chunks)["position"].tolist() == events["position"][order].tolist()

    start, end = START_NS + 10, START_NS + 20
    wanted = (events["receive_ts"] >= start) & (events["receive_ts"] < end)
    wanted &= np.isin(events["exchange"], ["kraken", "okx"]) & (events["symbol"] == "ÉTH/€")
    rows = np.concatenate(list(backend.read("book_events", start, end, exchanges=["kraken", "okx"], symbols=["ÉTH/€"], chunk_rows=3)))
    assert rows["position"].tolist() == events["position"][order][wanted[order]].tolist()
    assert list(backend.read("book_events", start, end, exchanges=[])) == []
    with pytest.raises(TypeError, match="list of names"):
        backend.read("book_events", start, end, exchanges="kraken")
    with pytest.raises(ValueError, match="no exchange column"):
        backend.read("features", start, end, exchanges=["kraken"])


def test_the_last_stored_position_and_feature_sequence_are_found(backend):
    assert backend.last_position(3) == -1 and backend.last_feature_sequence("BTC/USDT", "cnn") == 0
    batch = full_batch(count=60)  # run 3: book events at 0..59, trades at 1,000,000..1,000,059
    backend.write(batch)
    assert backend.last_position(3) == 1_000_059
    assert backend.last_position(3, since_ns=START_NS) == 1_000_059
    assert backend.last_position(3, since_ns=START_NS + 10**12) == -1
    assert backend.last_position(4) == -1
    features = batch.features
    for symbol in SYMBOLS:
        for kind in ("cnn", "rl"):
            mine = (features["symbol"] == symbol) & (features["kind"] == kind)
            expected = int(features["sequence"][mine].max()) if mine.any() else 0
            assert backend.last_feature_sequence(symbol, kind, since_ns=START_NS) == expected


def test_ring_records_come_back_as_the_same_records(backend):
    rng = np.random.default_rng(9)
    records = empty_records(400)
    records["kind"] = rng.choice([member.value for member in Kind], len(records))
    records["exchange_id"] = rng.integers(0, len(EXCHANGES), len(records))
    records["symbol_id"] = np.where(rng.random(len(records)) < 0.1, ALL_SYMBOLS, rng.integers(0, len(SYMBOLS), 400))
    records["receive_ts"] = START_NS + np.arange(len(records)) * 1000
    records["exchange_ts"] = records["receive_ts"] - 3
    records["price"], records["size"] = extreme_floats(rng, 400), rng.random(400)
    records["sequence"] = rng.integers(0, 2**64 - 1, 400, dtype=np.uint64, endpoint=True)
    records["aux"] = records["sequence"][::-1]
    records["aux"][records["kind"] == Kind.STATUS] = Status.IN_SYNC
    records["flags"], records["reason"] = rng.integers(0, 2**16, 400), rng.integers(0, 13, 400)
    records["side"], records["order_count"] = rng.integers(0, 3, 400), rng.integers(0, 2**31, 400)

    batch = EventBatch.from_records(records, run_id=4, positions=1000, exchanges=EXCHANGES, symbols=SYMBOLS)
    is_trade = records["kind"] == Kind.TRADE
    assert (batch.rows("book_events"), batch.rows("trades")) == ((~is_trade).sum(), is_trade.sum())
    assert batch.rows("status_events") == (records["kind"] == Kind.STATUS).sum()
    backend.write(batch)

    book = np.concatenate(list(backend.read("book_events", START_NS, START_NS + 10**9)))
    assert book["position"].tolist() == (1000 + np.flatnonzero(~is_trade)).tolist()
    assert to_records(book, exchanges=EXCHANGES, symbols=SYMBOLS).tobytes() == records[~is_trade].tobytes()
    trades = to_records(np.concatenate(list(backend.read("trades", START_NS, START_NS + 10**9))),
                        exchanges=EXCHANGES, symbols=SYMBOLS)
    for name in ("exchange_id", "symbol_id", "price", "size", "side", "aux", "receive_ts", "exchange_ts", "kind"):
        assert trades[name].tobytes() == records[is_trade][name].tobytes(), name


def test_postgres_reports_a_killed_connection_and_reconnects(postgres_dsn):
    schema, name = f"coby_test_{uuid.uuid4().hex[:12]}", f"coby_test_{uuid.uuid4().hex[:8]}"
    backend = PostgresBackend(f"{postgres_dsn}?application_name={name}", schema=schema)
    try:
        backend.open()
        backend.migrate()
        events = full_batch(count=20)
        backend.write(sliced(events, 0, 10, ["book_events"]))
        with psycopg.connect(postgres_dsn, autocommit=True) as killer:
            killed = killer.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchall()
        assert killed == [(True,)]
        with pytest.raises(DatabaseUnavailable, match="spool and retry"):
            backend.write(sliced(events, 0, 20, ["book_events"]))
        assert backend.write(sliced(events, 0, 20, ["book_events"])) == 10
        assert backend.count("book_events") == 20
    finally:
        backend.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_postgres_on_a_closed_port_is_unavailable():
    backend = PostgresBackend(f"postgresql://postgres@127.0.0.1:{free_port()}/test", connect_timeout_s=2)
    for attempt in (backend.open, lambda: backend.write(full_batch(count=5)), lambda: backend.count("trades")):
        with pytest.raises(DatabaseUnavailable, match=r"127\.0\.0\.1:\d+/test is unavailable"):
            attempt()


def test_sqlite_locked_by_another_writer_is_unavailable_until_released(tmp_path):
    backend = SqliteBackend(tmp_path / "coby.sqlite", busy_timeout_s=0.05)
    with backend:
        backend.migrate()
        with side_connection(backend) as other:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(DatabaseUnavailable, match="spool and retry"):
                backend.write(full_batch(count=5))
            other.execute("ROLLBACK")
        assert backend.write(full_batch(count=5)) == len(full_batch(count=5))


def test_a_batch_survives_to_bytes_and_from_bytes():
    batch = full_batch(count=25)
    copy = EventBatch.from_bytes(batch.to_bytes())
    for table in TABLES:
        assert comparable(table, copy.columns(table)) == comparable(table, batch.columns(table))
    assert len(EventBatch.from_bytes(EventBatch().to_bytes())) == 0
    for garbage in (b"", b"\x93\x01\x02\x03", EventBatch().to_bytes()[:-1], b"\x81\xa1x\x01"):
        with pytest.raises(ValueError, match="not an EventBatch"):
            EventBatch.from_bytes(garbage)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda c: c.pop("aux"), ValueError, r"missing columns \['aux'\]"),
        (lambda c: c.update(colour=c["aux"]), ValueError, r"unknown columns \['colour'\]"),
        (lambda c: c.update(aux=c["aux"][:-1]), ValueError, "book_events.aux has 59 rows"),
        (lambda c: c.update(price=np.full(60, np.nan)), ValueError, "NaN"),
        (lambda c: c.update(kind=np.full(60, 40_000)), ValueError, "outside the int16 range"),
        (lambda c: c.update(sequence=np.full(60, 2**63, dtype=np.uint64)), ValueError, r"view\(np.int64\)"),
        (lambda c: c.update(exchange=np.arange(60)), TypeError, "exchange must be a 1-D sequence of str"),
        (lambda c: c.update(size=np.array(["1"] * 60)), TypeError, "size must hold float64"),
    ],
)
def test_bad_columns_are_refused_with_the_column_named(change, error, message):
    columns = dict(full_batch().book_events)
    change(columns)
    with pytest.raises(error, match=message):
        EventBatch(book_events=columns)


def test_bad_retention_and_records_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown table 'orders'"):
        SqliteBackend(tmp_path / "x.sqlite", {"orders": 1})
    with pytest.raises(ValueError, match="number of days, 0 to keep forever"):
        SqliteBackend(tmp_path / "x.sqlite", {"trades": -1})
    records = empty_records(3)
    records["kind"], records["exchange_id"] = Kind.LEVEL, [0, 1, 7]
    with pytest.raises(ValueError, match="exchange_id 7 but only 5 names"):
        EventBatch.from_records(records, run_id=1, positions=0, exchanges=EXCHANGES, symbols=SYMBOLS)
    records["exchange_id"], records["kind"] = 0, [1, 99, 1]
    with pytest.raises(ValueError, match=r"kinds \[99\]"):
        EventBatch.from_records(records, run_id=1, positions=0, exchanges=EXCHANGES, symbols=SYMBOLS)
