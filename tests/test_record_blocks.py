"""Record blocks, which replay reads: blocks split at receive-time windows, batches whose records
interleave in time, a schema-1 database migrated (its rows packed into blocks) and a schema-1
spool batch all replay the same stream as the rows say."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from engine.storage import EventBatch
from engine.storage.blocks import BlockReader
from engine.storage.replay import ReplaySource
from engine.storage.schema import BLOCK_WINDOW_NS, CURRENT_VERSION
from shm.records import ALL_SYMBOLS, Flag, Kind
from tests.test_replay_source import EXCHANGES, RUN, SECOND, SYMBOLS, feed, replayed
from tests.test_storage_backends import side_connection

WINDOW_EDGE = (1_796_000_000_000_000_000 // BLOCK_WINDOW_NS + 1) * BLOCK_WINDOW_NS
OKX_LAG_NS = 350_000_000  # okx's frames reach the aggregator this much after binance's of the same time


def lagging_feed() -> tuple[np.ndarray, np.ndarray]:
    """The test feed across a block window edge, in the order an aggregator fed it (okx lagging),
    with the feed position of each record: the stream order is by receive_ts, not position."""
    records = feed()
    records["receive_ts"] += WINDOW_EDGE - 3 * SECOND - records["receive_ts"][0]
    records["exchange_ts"] = records["receive_ts"] - 1000
    fed_at = records["receive_ts"] + np.where(records["exchange_id"] == 1, OKX_LAG_NS, 0)
    in_feed_order = records[np.argsort(fed_at, kind="stable")]
    return in_feed_order, np.arange(len(in_feed_order))


def store_in_batches(backend, records: np.ndarray, size: int) -> None:
    for start in range(0, len(records), size):
        backend.write(EventBatch.from_records(records[start:start + size], run_id=RUN, positions=start,
                                              exchanges=EXCHANGES, symbols=SYMBOLS))


def stream_order(records: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return np.lexsort((positions, records["receive_ts"]))


def test_a_batch_across_a_window_edge_becomes_two_blocks_each_within_its_window() -> None:
    records, _ = lagging_feed()
    blocks = EventBatch.from_records(records, run_id=RUN, positions=100, exchanges=EXCHANGES,
                                     symbols=SYMBOLS).columns("record_blocks")
    assert len(blocks["first_ts"]) == 2
    assert blocks["records"].sum() == len(records)
    for first, last in zip(blocks["first_ts"], blocks["last_ts"], strict=True):
        assert first // BLOCK_WINDOW_NS == last // BLOCK_WINDOW_NS
    assert sorted(blocks["first_position"].tolist())[0] == 100


def test_blocks_map_ids_onto_the_session_and_keep_exchange_wide_records() -> None:
    records, _ = lagging_feed()
    blocks = EventBatch.from_records(records, run_id=RUN, positions=0, exchanges=EXCHANGES,
                                     symbols=SYMBOLS).columns("record_blocks")
    rows = np.empty(len(blocks["first_ts"]), dtype=[(name, column.dtype) for name, column in blocks.items()])
    for name, column in blocks.items():
        rows[name] = column
    got, run_id, positions = BlockReader(["kraken", "okx"], ["ETH/USDT", "BTC/USDT"]).unpack(rows)
    from_okx = records[records["exchange_id"] == 1]
    assert len(got) == len(from_okx) and np.all(got["exchange_id"] == 1) and np.all(run_id == RUN)
    assert np.array_equal(np.sort(positions), np.flatnonzero(records["exchange_id"] == 1))
    wide = got["symbol_id"] == ALL_SYMBOLS
    assert wide.sum() == np.count_nonzero(from_okx["symbol_id"] == ALL_SYMBOLS) == 1
    assert np.all(got["symbol_id"][~wide] == 1), "BTC/USDT is symbol 1 of this session"


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_interleaved_batches_replay_in_received_order(make_backend, batch_size: int) -> None:
    records, positions = lagging_feed()
    backend = make_backend()
    backend.open()
    backend.migrate()
    store_in_batches(backend, records, batch_size)
    first = int(records["receive_ts"].min())
    got, got_positions, _ = replayed(ReplaySource(backend, first, first + 100 * SECOND, EXCHANGES, SYMBOLS,
                                                  chunk_blocks=2))
    order = stream_order(records, positions)
    assert got_positions.tolist() == positions[order].tolist()
    assert np.all(got["flags"] & Flag.REPLAYED)
    expected = records[order]
    got["flags"] &= ~np.uint16(Flag.REPLAYED)
    assert got.tobytes() == expected.tobytes(), "the records as fed, bit for bit"
    backend.close()


def test_a_schema_1_database_is_migrated_with_its_rows_packed_into_blocks(make_backend) -> None:
    records, positions = lagging_feed()
    backend = make_backend()
    backend.open()
    backend.migrate()
    store_in_batches(backend, records, 9)
    first = int(records["receive_ts"].min())
    native, native_positions, _ = replayed(ReplaySource(backend, first, first + 100 * SECOND, EXCHANGES, SYMBOLS))
    with side_connection(backend) as connection:  # what a schema-1 database holds
        connection.execute("DROP TABLE record_blocks")
        connection.execute("UPDATE schema_version SET version = 1")
    backend.close()
    migrated = make_backend()
    migrated.open()
    assert migrated.migrate() == 1 and CURRENT_VERSION == 2
    assert migrated.count("record_blocks") >= 2
    got, got_positions, _ = replayed(ReplaySource(migrated, first, first + 100 * SECOND, EXCHANGES, SYMBOLS))
    assert got_positions.tolist() == native_positions.tolist()
    trades = native["kind"] == Kind.TRADE
    for name in ("sequence", "order_count", "reason"):  # the trades table does not keep these, nor flags
        native[name][trades] = 0
    native["flags"][trades] = Flag.REPLAYED
    assert got.tobytes() == native.tobytes()
    migrated.close()


def test_a_schema_1_spool_batch_gets_its_blocks_from_its_rows() -> None:
    records, _ = lagging_feed()
    batch = EventBatch.from_records(records, run_id=RUN, positions=0, exchanges=EXCHANGES, symbols=SYMBOLS)
    message = msgpack.unpackb(batch.to_bytes(), raw=False)
    del message["tables"]["record_blocks"]
    message["event_batch"] = 1
    old = EventBatch.from_bytes(msgpack.packb(message, use_bin_type=True))
    blocks = old.columns("record_blocks")
    assert blocks["records"].sum() == len(records)
    assert sorted(np.concatenate([np.frombuffer(value, "<i8") for value in blocks["positions"]]).tolist()) == list(
        range(len(records)))
    with pytest.raises(ValueError, match="not an EventBatch"):
        message["event_batch"] = 3
        EventBatch.from_bytes(msgpack.packb(message, use_bin_type=True))
