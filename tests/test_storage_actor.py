"""The storage actor in a running engine: everything stored, exactly once, through faults.

The engine runs on the simulator (binance and okx, three books); a fault is injected while
records flow; then the sources are stopped, storage catches up with its feed and stops, and
the database must hold every record the aggregator fed it exactly once (positions 0..N-1),
bars that add up to the stored trades, consolidated snapshots and feature rows.
"""

from __future__ import annotations

import os
import signal
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest

from actors.storage import StorageActor
from engine.config import Config
from engine.storage import configured_backend
from engine.storage.schema import TABLES
from engine.supervisor import Supervisor
from shm.features import FeatureReader, FeatureWriter
from shm.segment import SegmentKind, segment_name
from tests.engine_support import wait_for
from tests.storage_support import EVERYTHING, actor, run_engine


def assert_stored_exactly_once(config: Config, feed: dict, run_id: int) -> None:
    backend = configured_backend(config.storage)
    try:
        tables = {name: np.concatenate([*backend.read(name, *EVERYTHING), np.empty(0, TABLES[name].dtype)])
                  for name in ("book_events", "trades", "ohlcv", "consolidated_snapshots", "features")}
    finally:
        backend.close()
    book_events, trades = tables["book_events"], tables["trades"]
    mine = np.sort(np.concatenate([book_events["position"][book_events["run_id"] == run_id],
                                   trades["position"][trades["run_id"] == run_id]]))
    written = feed["written_records"]
    assert feed["dropped_records"] == 0
    assert len(mine) == written, f"{len(mine)} stored events for {written} records fed"
    assert np.array_equal(mine, np.arange(written)), "every position once, none missing"

    kinds = np.bincount(book_events["kind"], minlength=8)
    assert kinds[1] > 1000 and kinds[2] >= 3 and kinds[3] >= 3, kinds  # levels, snapshot begin/end of each book
    assert len(trades) > 0
    bars = tables["ohlcv"]
    for interval in (1, 60):
        of_interval = bars[bars["interval_s"] == interval]
        for exchange in [*np.unique(trades["exchange"]), "*"]:
            for symbol in np.unique(trades["symbol"]):
                traded = trades[(trades["symbol"] == symbol) & ((trades["exchange"] == exchange) | (exchange == "*"))]
                barred = of_interval[(of_interval["exchange"] == exchange) & (of_interval["symbol"] == symbol)]
                assert barred["trades"].sum() == len(traded), (interval, exchange, symbol)
                assert barred["volume"].sum() == pytest.approx(traded["size"].sum(), rel=1e-9)

    snapshots = tables["consolidated_snapshots"]
    assert set(snapshots["symbol"]) == {"BTC/USDT", "ETH/USDT"}
    messages = [msgpack.unpackb(zlib.decompress(payload), raw=False) for payload in snapshots["payload"]]
    assert [message["generation"] for message in messages] == snapshots["generation"].tolist()
    books = [np.frombuffer(message["bids"]).reshape(-1, message["columns"]) for message in messages]
    assert sum(len(levels) > 0 for levels in books) > len(books) / 2, "most snapshots hold a book (it ends excluded)"

    features = tables["features"]
    for symbol in np.unique(features["symbol"]):
        for kind in ("cnn", "rl"):
            sequences = features["sequence"][(features["symbol"] == symbol) & (features["kind"] == kind)]
            assert len(sequences) > 10 and len(np.unique(sequences)) == len(sequences)
            assert sequences.max() - sequences.min() + 1 == len(sequences), (symbol, kind)


def test_a_kill_9_of_storage_mid_batch_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    def kill_storage(supervisor: Supervisor) -> None:
        time.sleep(1.0)
        os.kill(actor(supervisor, "storage")["pid"], signal.SIGKILL)  # mid-batch: it writes every 100 ms
        wait_for(lambda: actor(supervisor, "storage")["state"] == "running" and actor(supervisor, "storage")[
            "restarts"] == 1, timeout_s=20, what="storage restarted")
        time.sleep(2.0)

    assert_stored_exactly_once(*run_engine(tmp_path, {"backend": "sqlite"}, kill_storage))


def test_postgres_stopped_mid_run_then_back_stores_every_event_once(tmp_path: Path, own_postgres) -> None:
    spool = tmp_path / "spool"

    def database_outage(supervisor: Supervisor) -> None:
        time.sleep(1.0)
        own_postgres.stop()
        wait_for(lambda: any(spool.glob("*.seg")), timeout_s=10, what="storage spooling")
        time.sleep(2.0)
        assert actor(supervisor, "storage")["restarts"] == 0, "an outage is not a crash"
        own_postgres.start()
        wait_for(lambda: not any(spool.glob("*.seg")), timeout_s=30, what="the spool drained")
        time.sleep(1.0)

    storage = {"backend": "postgres", "postgres_dsn": own_postgres.url(), "spool_dir": str(spool)}
    assert_stored_exactly_once(*run_engine(tmp_path, storage, database_outage))


class _ReaderSeenLate:
    """A feature reader whose row count was read just before the writer appended one more row."""

    def __init__(self, reader: FeatureReader) -> None:
        self.reader, self.rows = reader, reader.rows

    @property
    def rows_written(self) -> int:
        return self.reader.rows_written - 1

    def latest(self, count: int):
        return self.reader.latest(count)


def test_feature_rows_appended_while_storage_reads_are_not_skipped(instance: str) -> None:
    writer = FeatureWriter.create(segment_name(instance, SegmentKind.FEATURES, "BTC-USDT.cnn"), 64, 4, 1)
    for number in range(1, 11):
        writer.append(np.full(4, number, dtype=np.float32), number * 1000)
    reader = FeatureReader.attach(writer.name)
    storage = SimpleNamespace(feature_readers={("BTC/USDT", "cnn"): _ReaderSeenLate(reader)},
                              feature_sequences={("BTC/USDT", "cnn"): 8}, feature_layout=1, log=None)
    columns, reached = StorageActor.new_feature_rows(storage)
    assert columns["sequence"] == [9, 10] and reached == {("BTC/USDT", "cnn"): 10}
    assert [np.frombuffer(values, np.float32)[0] for values in columns["values"]] == [9.0, 10.0]
    reader.close()
    writer.close()
