"""The aggregator in its own process, fed through real rings by the test acting as connectors."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

from actors.aggregator import consolidate
from engine.client import attach
from engine.supervisor import Supervisor, default_actor_specs
from shm.records import ALL_SYMBOLS, Kind, Reason, Status, empty_records
from shm.ring import Ring
from tests.engine_support import engine_config, level_batch, running, unique_instance, wait_for

BINANCE, KRAKEN = 0, 1
BTC = 0


def test_consolidate_merges_equal_prices_and_keeps_different_ones_apart() -> None:
    first = {100.0: 1.0, 99.5: 2.0, 99.0: 3.0}
    second = {100.0: 0.5, 99.25: 4.0}
    prices, sizes, breakdown = consolidate([(0, first), (1, second)], depth=3, exchanges=2, descending=True)
    assert prices.tolist() == [100.0, 99.5, 99.25]
    assert sizes.tolist() == [1.5, 2.0, 4.0]
    assert breakdown.tolist() == [[1.0, 0.5], [2.0, 0.0], [0.0, 4.0]]
    prices, sizes, _ = consolidate([(0, {101.0: 1.0, 100.5: 2.0})], depth=10, exchanges=2, descending=False)
    assert prices.tolist() == [100.5, 101.0]
    assert consolidate([], depth=5, exchanges=2, descending=True)[0].size == 0


@pytest.fixture
def engine():
    instance = unique_instance("agg")
    config = engine_config(
        instance,
        {
            "exchanges": {
                "binance": {"symbols": ["BTC/USDT", "ETH/USDT"], "snapshot_depth": 100},
                "kraken": {
                    "symbols": ["BTC/USDT"],
                    "ws_url": "wss://ws.kraken.com",
                    "rest_url": "https://api.kraken.com",
                    "snapshot_depth": 100,
                },
            },
            "shm": {"ring_records": 1024, "book_depth": 50},
            "aggregator": {"publish_interval_ms": 0, "stale_after_s": 2.0},
        },
    )
    specs = [spec for spec in default_actor_specs(config) if spec.kind == "aggregator"]
    with running(Supervisor(config, specs)) as supervisor:
        client = attach(instance)
        rings = {name: Ring.attach(segment) for name, segment in client.directory["segments"]["rings"].items()}
        for ring in rings.values():
            ring.become_producer()
        wait_for(lambda: supervisor.status()["actors"][0]["state"] == "running", what="aggregator running")
        yield supervisor, client, rings
        client.close()
        for ring in rings.values():
            ring.close()


def book_of(client, symbol: str = "BTC/USDT"):
    return client.book(symbol).snapshot()


def test_snapshots_and_deltas_consolidate_with_attribution(engine) -> None:
    supervisor, client, rings = engine
    assert rings["binance"].write(level_batch(BINANCE, BTC, [(100.0, 1.0), (99.0, 2.0)], [(101.0, 1.5)], snapshot=True))
    assert rings["kraken"].write(level_batch(KRAKEN, BTC, [(100.0, 0.25), (99.5, 3.0)], [(100.5, 2.0)], snapshot=True))
    book = wait_for(
        lambda: (b := book_of(client)).exchange("kraken").status == Status.IN_SYNC
        and b.exchange("binance").status == Status.IN_SYNC
        and b,
        what="both exchanges in sync",
    )
    assert book.bid_price.tolist() == [100.0, 99.5, 99.0]
    assert book.bid_size.tolist() == [1.25, 3.0, 2.0]
    assert book.bid_exchange_size[0].tolist() == [1.0, 0.25]
    assert book.ask_price.tolist() == [100.5, 101.0]
    assert book.exchange("binance").best_ask == 101.0

    rings["binance"].write(level_batch(BINANCE, BTC, [(100.0, 0.0), (99.75, 5.0)], [(100.75, 1.0)], sequence=7))
    book = wait_for(
        lambda: (b := book_of(client)).bid_price.tolist() == [100.0, 99.75, 99.5, 99.0] and b, what="delta applied"
    )
    assert book.bid_exchange_size[:2].tolist() == [[0.0, 0.25], [5.0, 0.0]]
    assert book.ask_price.tolist() == [100.5, 100.75, 101.0]
    assert book.slot["exchange_sequence"][BINANCE] == 7


def test_cleared_exchange_leaves_the_consolidated_book_until_its_next_snapshot(engine) -> None:
    supervisor, client, rings = engine
    rings["binance"].write(level_batch(BINANCE, BTC, [(100.0, 1.0)], [(101.0, 1.0)], snapshot=True))
    rings["kraken"].write(level_batch(KRAKEN, BTC, [(99.0, 1.0)], [(102.0, 1.0)], snapshot=True))
    wait_for(lambda: book_of(client).bid_price.tolist() == [100.0, 99.0], what="both books")

    clear = empty_records(1)
    clear["kind"], clear["exchange_id"], clear["symbol_id"], clear["reason"] = Kind.CLEAR, BINANCE, BTC, Reason.SEQUENCE_GAP
    rings["binance"].write(clear)
    book = wait_for(lambda: (b := book_of(client)).bid_price.tolist() == [99.0] and b, what="binance excluded")
    state = book.exchange("binance")
    assert state.status == Status.RESYNCING and book.slot["exchange_reason"][BINANCE] == Reason.SEQUENCE_GAP
    assert state.since_ns > 0

    # deltas for an untrusted book are ignored; only a snapshot brings it back
    rings["binance"].write(level_batch(BINANCE, BTC, [(100.5, 1.0)], []))
    time.sleep(0.2)
    assert book_of(client).bid_price.tolist() == [99.0]
    rings["binance"].write(level_batch(BINANCE, BTC, [(100.25, 2.0)], [(101.0, 1.0)], snapshot=True))
    wait_for(lambda: book_of(client).bid_price.tolist() == [100.25, 99.0], what="binance back after snapshot")


def test_a_snapshot_split_over_two_writes_is_never_shown_half_done(engine) -> None:
    supervisor, client, rings = engine
    rings["binance"].write(level_batch(BINANCE, BTC, [(100.0, 1.0), (99.0, 1.0)], [(101.0, 1.0)], snapshot=True))
    wait_for(lambda: book_of(client).exchange("binance").status == Status.IN_SYNC, what="first snapshot")

    new = level_batch(BINANCE, BTC, [(98.0, 1.0), (97.0, 1.0)], [(102.0, 1.0), (103.0, 1.0)], snapshot=True)
    rings["binance"].write(new[:3])  # begin + two bids
    rings["kraken"].write(level_batch(KRAKEN, BTC, [(90.0, 1.0)], [(110.0, 1.0)], snapshot=True))  # forces publishes
    generation = book_of(client).generation
    wait_for(lambda: book_of(client).generation > generation + 1 or book_of(client).generation > generation, what="publish")
    book = book_of(client)
    assert book.bid_price.tolist() == [100.0, 99.0, 90.0], "the old binance book stays until the snapshot ends"
    rings["binance"].write(new[3:])
    wait_for(lambda: book_of(client).bid_price.tolist() == [98.0, 97.0, 90.0], what="new snapshot swapped in")
    assert book_of(client).ask_price.tolist() == [102.0, 103.0, 110.0]


def test_ring_overflow_drops_the_exchange_until_resnapshot(engine) -> None:
    supervisor, client, rings = engine
    rings["binance"].write(level_batch(BINANCE, BTC, [(100.0, 1.0)], [(101.0, 1.0)], snapshot=True))
    wait_for(lambda: book_of(client).exchange("binance").status == Status.IN_SYNC, what="in sync")
    aggregator_pid = supervisor.status()["actors"][0]["pid"]
    os.kill(aggregator_pid, signal.SIGSTOP)
    try:
        delta = level_batch(BINANCE, BTC, [(100.0, 2.0)], [])
        refused = sum(not rings["binance"].write(delta) for _ in range(1100))
    finally:
        os.kill(aggregator_pid, signal.SIGCONT)
    assert refused > 0
    book = wait_for(lambda: (b := book_of(client)).exchange("binance").status == Status.RESYNCING and b, what="dropped")
    assert book.slot["exchange_reason"][BINANCE] == Reason.RING_OVERFLOW
    assert book.bid_price.size == 0
    rings["binance"].write(level_batch(BINANCE, BTC, [(100.0, 2.0)], [(101.0, 1.0)], snapshot=True))
    wait_for(lambda: book_of(client).exchange("binance").status == Status.IN_SYNC, what="back after snapshot")


def _produce_then_die(ring_name: str) -> None:
    ring = Ring.attach(ring_name)
    ring.become_producer()
    ring.write(level_batch(BINANCE, BTC, [(100.0, 1.0)], [(101.0, 1.0)], snapshot=True))
    os._exit(0)


def test_dead_producer_and_silent_exchange_are_excluded(engine) -> None:
    supervisor, client, rings = engine
    ring_name = client.directory["segments"]["rings"]["binance"]
    process = multiprocessing.get_context("spawn").Process(target=_produce_then_die, args=(ring_name,))
    process.start()
    process.join(30)
    book = wait_for(
        lambda: (b := book_of(client)).exchange("binance").status == Status.DISCONNECTED and b, what="disconnected"
    )
    assert book.slot["exchange_reason"][BINANCE] == Reason.PRODUCER_DIED
    assert book.bid_price.size == 0

    rings["kraken"].write(level_batch(KRAKEN, BTC, [(99.0, 1.0)], [(102.0, 1.0)], snapshot=True))
    wait_for(lambda: book_of(client).exchange("kraken").status == Status.IN_SYNC, what="kraken in sync")
    wait_for(lambda: book_of(client).exchange("kraken").status == Status.STALE, timeout_s=8, what="kraken stale")
    assert book_of(client).bid_price.size == 0
    heartbeat = empty_records(1)
    heartbeat["kind"], heartbeat["exchange_id"], heartbeat["symbol_id"] = Kind.HEARTBEAT, KRAKEN, BTC
    rings["kraken"].write(heartbeat)
    wait_for(lambda: book_of(client).bid_price.tolist() == [99.0], what="kraken back once records flow")


def test_status_for_all_symbols_drops_every_book_of_that_exchange(engine) -> None:
    supervisor, client, rings = engine
    rings["binance"].write(level_batch(BINANCE, BTC, [(100.0, 1.0)], [(101.0, 1.0)], snapshot=True))
    rings["binance"].write(level_batch(BINANCE, 1, [(10.0, 1.0)], [(11.0, 1.0)], snapshot=True))
    wait_for(lambda: book_of(client, "ETH/USDT").best_bid == 10.0, what="eth book")
    status = empty_records(1)
    status["kind"], status["exchange_id"], status["symbol_id"] = Kind.STATUS, BINANCE, ALL_SYMBOLS
    status["aux"], status["reason"] = Status.DISCONNECTED, Reason.DISCONNECTED
    rings["binance"].write(status)
    wait_for(lambda: book_of(client, "ETH/USDT").best_bid is None, what="eth dropped")
    assert book_of(client).exchange("binance").status == Status.DISCONNECTED
    np.testing.assert_array_equal(book_of(client).bid_price, np.empty(0))
