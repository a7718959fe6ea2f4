"""Stored traffic read back for replay: one stream in the order it was received, from each
book's last snapshot before the range, flagged as replayed, whatever the chunking."""

from __future__ import annotations

import numpy as np
import pytest

from engine.storage import EventBatch, StorageBackend
from engine.storage.replay import ReplaySource
from shm.records import ALL_SYMBOLS, Flag, Kind, Side, Status, empty_records

EXCHANGES = ["binance", "okx"]
SYMBOLS = ["BTC/USDT", "ETH/USDT"]
T0 = 1_796_000_000_000_000_000
SECOND = 1_000_000_000
RUN = 42


def feed() -> np.ndarray:
    """A run's storage feed: snapshots, deltas, trades and an exchange-wide status, 100 ms apart."""
    rows = []

    def add(kind, exchange, symbol, side=Side.NONE, price=0.0, size=0.0, aux=0, status_reason=0):
        rows.append((kind, exchange, symbol, side, price, size, aux, status_reason))

    for exchange in (0, 1):
        add(Kind.SNAPSHOT_BEGIN, exchange, 0)
        add(Kind.LEVEL, exchange, 0, Side.BID, 100.0 - exchange, 1.0)
        add(Kind.LEVEL, exchange, 0, Side.ASK, 101.0 + exchange, 2.0)
        add(Kind.SNAPSHOT_END, exchange, 0)
    for step in range(60):
        exchange = step % 2
        add(Kind.LEVEL, exchange, 0, Side.BID, 99.0 - step * 0.01, 0.5 + step)
        if step % 5 == 0:
            add(Kind.TRADE, exchange, 0, Side.BID, 101.0, 0.1, aux=1000 + step)
        if step == 30:  # binance resyncs: a new snapshot halfway
            add(Kind.SNAPSHOT_BEGIN, 0, 0)
            add(Kind.LEVEL, 0, 0, Side.BID, 98.0, 3.0)
            add(Kind.SNAPSHOT_END, 0, 0)
        if step == 40:
            add(Kind.STATUS, 1, ALL_SYMBOLS, aux=int(Status.DISCONNECTED), status_reason=7)
    records = empty_records(len(rows))
    for index, (kind, exchange, symbol, side, price, size, aux, reason) in enumerate(rows):
        record = records[index]
        record["kind"], record["exchange_id"], record["symbol_id"], record["side"] = kind, exchange, symbol, side
        record["price"], record["size"], record["aux"], record["reason"] = price, size, aux, reason
        record["receive_ts"] = T0 + index * SECOND // 10
        record["exchange_ts"] = record["receive_ts"] - 1000
    return records


@pytest.fixture
def stored(make_backend) -> tuple[StorageBackend, np.ndarray]:
    """The feed stored in a fresh SQLite file and in a fresh PostgreSQL schema (``make_backend``)."""
    records = feed()
    backend = make_backend()
    backend.open()
    backend.migrate()
    backend.write(EventBatch.from_records(records, run_id=RUN, positions=0, exchanges=EXCHANGES, symbols=SYMBOLS))
    return backend, records


def replayed(source: ReplaySource) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    chunks = list(source)
    return (np.concatenate([chunk.records for chunk in chunks]), np.concatenate([chunk.position for chunk in chunks]),
            np.concatenate([chunk.catch_up for chunk in chunks]))


@pytest.mark.parametrize("chunk_blocks", [1, 2, 32])
def test_replay_starts_at_each_books_last_snapshot_and_keeps_the_received_order(stored, chunk_blocks) -> None:
    backend, records = stored
    start = T0 + 8 * SECOND  # after binance's second snapshot (step 30), okx's only one is at the beginning
    source = ReplaySource(backend, start, T0 + 100 * SECOND, EXCHANGES, SYMBOLS, chunk_blocks=chunk_blocks)
    begins = np.flatnonzero(records["kind"] == Kind.SNAPSHOT_BEGIN)
    assert source.book_starts == {("binance", "BTC/USDT"): int(records["receive_ts"][begins[2]]),
                                  ("okx", "BTC/USDT"): int(records["receive_ts"][begins[1]])}
    assert source.first_ns == int(records["receive_ts"][begins[1]])

    got, positions, catch_up = replayed(source)
    expected = records[begins[1]:]
    assert positions.tolist() == list(range(begins[1], len(records))), "the feed's order, nothing missing"
    assert np.all(got["flags"] & Flag.REPLAYED)
    assert catch_up.tolist() == (expected["receive_ts"] < start).tolist()
    for name in ("kind", "exchange_id", "symbol_id", "side", "price", "size", "aux", "exchange_ts", "receive_ts"):
        assert np.array_equal(got[name], expected[name]), name
    books = expected["kind"] != Kind.TRADE
    assert np.array_equal(got["reason"][books], expected["reason"][books])


def test_a_range_before_any_snapshot_starts_at_its_start_and_bad_ranges_are_refused(stored) -> None:
    backend, records = stored
    start = int(records["receive_ts"][0]) - SECOND
    source = ReplaySource(backend, start, start + 2 * SECOND, EXCHANGES, SYMBOLS)
    assert source.book_starts == {} and source.first_ns == start
    got, _, catch_up = replayed(source)
    assert len(got) == np.count_nonzero(records["receive_ts"] < start + 2 * SECOND) and not catch_up.any()
    with pytest.raises(ValueError, match="must end after it starts"):
        ReplaySource(backend, start, start, EXCHANGES, SYMBOLS)


def test_only_the_sessions_exchanges_and_symbols_are_replayed(stored) -> None:
    backend, records = stored
    source = ReplaySource(backend, T0, T0 + 100 * SECOND, ["okx"], ["BTC/USDT"])
    got, _, _ = replayed(source)
    from_okx = records[records["exchange_id"] == 1]
    assert len(got) == len(from_okx) and np.all(got["exchange_id"] == 0), "okx is exchange 0 of this session"
    assert np.array_equal(got["price"], from_okx["price"])


def test_a_session_can_replay_some_of_its_exchanges_and_symbols_keeping_their_ids(stored) -> None:
    backend, records = stored
    source = ReplaySource(backend, T0, T0 + 100 * SECOND, EXCHANGES, SYMBOLS, only_exchanges=["okx"],
                          only_symbols=["BTC/USDT"])
    got, _, _ = replayed(source)
    from_okx = records[records["exchange_id"] == 1]
    assert len(got) == len(from_okx) and np.all(got["exchange_id"] == 1), "okx keeps its session id"
    assert np.array_equal(got["price"], from_okx["price"])
    assert np.count_nonzero(got["symbol_id"] == ALL_SYMBOLS) == 1, "okx's exchange-wide status comes along"
    none_of_eth = ReplaySource(backend, T0, T0 + 100 * SECOND, EXCHANGES, SYMBOLS, only_symbols=["ETH/USDT"])
    assert len(replayed(none_of_eth)[0]) == 1, "only the exchange-wide status applies to ETH/USDT here"
    for bad in (["kraken"], []):
        with pytest.raises(ValueError, match="choose among the session's exchanges: binance, okx"):
            ReplaySource(backend, T0, T0 + SECOND, EXCHANGES, SYMBOLS, only_exchanges=bad)
