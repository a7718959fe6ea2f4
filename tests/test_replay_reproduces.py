"""What storage keeps is enough to rebuild the consolidated book exactly.

The engine runs on the simulator with storage on (SQLite); then the stored traffic is read
back (engine.storage.replay.ReplaySource) into the rings of a fresh aggregator, and at each
stored consolidated snapshot's sequence point the fresh aggregator's book must equal the stored
one bit for bit. A snapshot's sequence point is in the snapshot itself: for every exchange in
the book, the receive time of the last record its book had applied
(``exchange_receive_ts``), so replaying each exchange's records up to that time, and no
further, must give the same book.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import replace
from pathlib import Path

import msgpack
import numpy as np
import pytest

from engine.client import attach
from engine.config import Config
from engine.storage import configured_backend
from engine.storage.replay import ReplaySource
from engine.supervisor import Supervisor, default_actor_specs
from shm.ring import Ring
from tests.engine_support import running, wait_for
from tests.storage_support import EVERYTHING, run_engine

SNAPSHOTS_CHECKED = 12
SYMBOL = "BTC/USDT"  # on binance and okx; one instrument, so each exchange's sequence point only moves on


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_replaying_stored_traffic_rebuilds_the_stored_consolidated_books_bit_for_bit(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    storage = {"backend": "sqlite"}
    if backend == "postgres":  # a server of its own: every row in it is this run's
        storage = {"backend": "postgres", "postgres_dsn": request.getfixturevalue("own_postgres").url()}
    config, feed, run_id = run_engine(tmp_path, storage, lambda supervisor: time.sleep(4.0))
    exchanges, symbols = list(config.exchange_ids()), list(config.symbols)
    backend = configured_backend(config.storage)
    backend.open()
    stored = np.concatenate(list(backend.read("consolidated_snapshots", *EVERYTHING)))
    books = []
    mine = stored[(stored["run_id"] == run_id) & (stored["symbol"] == SYMBOL)]
    for row in mine[np.argsort(mine["ts"], kind="stable")]:  # each exchange's sequence point only moves on
        message = msgpack.unpackb(zlib.decompress(row["payload"]), raw=False)
        included = np.frombuffer(message["exchange_included"], np.uint8)
        members = [exchanges.index(name) for name in config.exchange_ids() if row["symbol"] in
                   config.exchanges[name].symbols]
        if all(included[member] for member in members):  # a book whole on every exchange that lists it
            books.append((str(row["symbol"]), members, message))
    assert len(books) >= SNAPSHOTS_CHECKED, f"only {len(books)} stored books had every exchange in"
    books = books[:: max(len(books) // SNAPSHOTS_CHECKED, 1)][:SNAPSHOTS_CHECKED]

    source = ReplaySource(backend, run_id, 2**62, exchanges, symbols)
    records = np.concatenate([chunk.records for chunk in source])
    backend.close()
    assert len(records) == feed["written_records"]

    specs = [spec for spec in default_actor_specs(config) if spec.kind == "aggregator"]
    with running(Supervisor(_fresh_instance(config), specs)) as supervisor:
        client = attach(supervisor.instance)
        rings = [Ring.attach(client.directory["segments"]["rings"][name]) for name in exchanges]
        for ring in rings:
            ring.become_producer()
        # records queued before the aggregator is set up are skipped by it (a consumer restart): wait for its
        # first publish
        wait_for(lambda: client.book(SYMBOL).generation > 0, what="aggregator publishing")
        checked = 0
        written = np.zeros(len(exchanges), dtype=np.int64)  # per exchange: records written so far
        per_exchange = [records[records["exchange_id"] == index] for index in range(len(exchanges))]
        for symbol, members, message in books:
            reached = np.frombuffer(message["exchange_receive_ts"], np.int64)
            for member in members:
                upto = int(np.searchsorted(per_exchange[member]["receive_ts"], reached[member], side="right"))
                for start in range(int(written[member]), upto, 4096):
                    batch = per_exchange[member][start : min(start + 4096, upto)]
                    wait_for(lambda: rings[member].free() >= len(batch), what="room in the ring")
                    assert rings[member].write(batch)
                written[member] = max(written[member], upto)
            expected_bids = np.frombuffer(message["bids"]).reshape(-1, message["columns"])
            expected_asks = np.frombuffer(message["asks"]).reshape(-1, message["columns"])
            assert len(expected_bids) and len(expected_asks)

            def rebuilt():
                book = client.book(symbol).snapshot()
                slot = book.slot
                applied = slot["exchange_receive_ts"]
                if not all(applied[member] == reached[member] for member in members):
                    return None
                return slot

            slot = wait_for(rebuilt, timeout_s=20, what=f"{symbol} replayed to its stored sequence point")
            assert np.array_equal(slot["bids"][: len(expected_bids)], expected_bids), symbol
            assert np.array_equal(slot["asks"][: len(expected_asks)], expected_asks), symbol
            assert int(slot["bid_levels"]) >= len(expected_bids) and int(slot["ask_levels"]) >= len(expected_asks)
            checked += 1
        for ring in rings:
            ring.close()
        client.close()
    assert checked == len(books)


def _fresh_instance(config: Config) -> Config:
    """The same exchanges and symbols (so the same ids), under another instance name."""
    return replace(config, engine=replace(config.engine, instance=f"{config.engine.instance[:14]}rp", runtime_dir=""))
