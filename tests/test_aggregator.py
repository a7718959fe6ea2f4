"""The aggregator in its own process, fed through real rings by the test acting as connectors."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
import zmq

from engine import bus
from engine.client import attach
from engine.supervisor import Supervisor, default_actor_specs
from shm.records import ALL_SYMBOLS, Kind, Reason, Status, empty_records
from shm.ring import Ring
from tests.engine_support import engine_config, level_batch, running, unique_instance, wait_for

BINANCE, KRAKEN = 0, 1
BTC = 0


@pytest.fixture
def engine(request, monkeypatch):
    """The aggregator with its C analytics kernel, or (param "numpy") with the numpy fallback."""
    if getattr(request, "param", "kernel") == "numpy":
        monkeypatch.setenv("COBY_ANALYTICS_KERNEL", "off")
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


@pytest.mark.parametrize("engine", ["kernel", "numpy"], indirect=True)
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


def test_a_book_crossed_within_one_exchange_is_that_exchanges_error(engine) -> None:
    supervisor, client, rings = engine
    rings["binance"].write(level_batch(BINANCE, BTC, [(100.0, 1.0)], [(101.0, 1.0)], snapshot=True))
    rings["kraken"].write(level_batch(KRAKEN, BTC, [(99.0, 1.0)], [(102.0, 1.0)], snapshot=True))
    wait_for(lambda: book_of(client).bid_price.tolist() == [100.0, 99.0], what="both books")
    rings["binance"].take_resnapshot_request()  # the one every aggregator start asks for
    assert not rings["binance"].take_resnapshot_request()
    rings["binance"].write(level_batch(BINANCE, BTC, [(101.5, 1.0)], []))  # binance's bid above its own ask
    book = wait_for(lambda: (b := book_of(client)).exchange("binance").status == Status.ERROR and b, what="error")
    assert book.slot["exchange_reason"][BINANCE] == Reason.CROSSED and not book.slot["exchange_included"][BINANCE]
    assert book.bid_price.tolist() == [99.0] and book.exchange("kraken").status == Status.IN_SYNC
    wait_for(rings["binance"].take_resnapshot_request, what="the connector asked to re-send its snapshots")
    rings["binance"].write(level_batch(BINANCE, BTC, [(100.0, 1.0)], [(101.0, 1.0)], snapshot=True))
    wait_for(lambda: book_of(client).bid_price.tolist() == [100.0, 99.0], what="binance back after its snapshot")


@pytest.mark.parametrize("engine", ["kernel", "numpy"], indirect=True)
def test_books_crossed_across_exchanges_are_shown_as_they_are(engine) -> None:
    supervisor, client, rings = engine
    rings["binance"].write(level_batch(BINANCE, BTC, [(100.0, 1.0)], [(101.0, 2.0)], snapshot=True))
    rings["kraken"].write(level_batch(KRAKEN, BTC, [(101.5, 3.0)], [(102.0, 1.0)], snapshot=True))
    book = wait_for(lambda: (b := book_of(client)).bid_price.tolist() == [101.5, 100.0] and b, what="both books")
    assert book.ask_price.tolist() == [101.0, 102.0]
    assert book.slot["exchange_included"][[BINANCE, KRAKEN]].tolist() == [1, 1]
    metrics = book.metrics
    assert metrics["cross_spread"] == pytest.approx(101.0 - 101.5)  # binance's ask under kraken's bid
    subscriber = bus.Subscriber(zmq.Context.instance(), client.endpoints["bus_subscribe"], ["book.BTC/USDT"])
    time.sleep(0.3)  # subscribed before the publish
    rings["binance"].write(level_batch(BINANCE, BTC, [(99.0, 1.0)], []))  # one more publish, for a message
    topic, message = subscriber.receive(5000)
    subscriber.close()
    book = wait_for(lambda: (b := book_of(client)).generation >= message["generation"] and b, what="the book")
    if book.generation == message["generation"]:  # the message says what the slot of its generation holds
        metrics = book.metrics
        assert message["mid"] == metrics["mid"] and message["vw_mid"] == metrics["vw_mid"]
        assert message["imbalance"] == list(metrics["imbalance"]) and message["exchanges"] == ["binance", "kraken"]
        assert (message["best_bid"], message["best_ask"], message["publish_ts"]) == (
            book.bid_price[0], book.ask_price[0], book.slot["publish_ts"])
        assert message["cross_spread_bps"] == metrics["cross_spread_bps"]
    assert (metrics["cross_bid_exchange"], metrics["cross_ask_exchange"]) == (KRAKEN, BINANCE)
    assert metrics["spread"] == pytest.approx(-0.5) and metrics["generation"] == book.generation


@pytest.fixture(params=["kernel", "numpy"])
def converted(request, monkeypatch):
    """BTC-USD* = kraken BTC/USD + binance BTC/USDT converted at kraken's USDT/USD mid, on a 0.5 grid
    (a synthetic instrument: its member columns are summed per exchange), with the C analytics
    kernel and with the numpy fallback."""
    if request.param == "numpy":
        monkeypatch.setenv("COBY_ANALYTICS_KERNEL", "off")
    instance = unique_instance("conv")
    config = engine_config(
        instance,
        {
            "exchanges": {
                "binance": {"symbols": ["BTC/USDT", "ETH/USDT"], "snapshot_depth": 100},
                "kraken": {"symbols": ["BTC/USD", "USDT/USD"], "ws_url": "wss://ws.kraken.com/v2",
                           "rest_url": "https://api.kraken.com", "snapshot_depth": 100},
            },
            "instruments": {"BTC-USD*": {"markets": ["BTC/USD", "BTC/USDT"], "quote": "USD",
                                         "convert": {"USDT": "kraken:USDT/USD"}, "tick": 0.5}},
            "shm": {"ring_records": 1024, "book_depth": 50},
            "aggregator": {"publish_interval_ms": 0, "stale_after_s": 30.0},
        },
    )
    specs = [spec for spec in default_actor_specs(config) if spec.kind == "aggregator"]
    with running(Supervisor(config, specs)) as supervisor:
        client = attach(instance)
        rings = {name: Ring.attach(segment) for name, segment in client.directory["segments"]["rings"].items()}
        for ring in rings.values():
            ring.become_producer()
        wait_for(lambda: supervisor.status()["actors"][0]["state"] == "running", what="aggregator running")
        yield client, rings, {symbol: index for index, symbol in enumerate(client.symbols)}
        client.close()
        for ring in rings.values():
            ring.close()


def test_a_member_converted_at_a_live_rate_follows_its_rate_book(converted) -> None:
    client, rings, ids = converted
    rings["kraken"].write(level_batch(KRAKEN, ids["BTC/USD"], [(59960.0, 1.0)], [(60100.0, 1.0)],
                                      snapshot=True))
    rings["binance"].write(level_batch(BINANCE, ids["BTC/USDT"], [(60000.0, 2.0), (59990.3, 1.0)],
                                       [(60050.2, 1.0)], snapshot=True))
    time.sleep(0.3)
    book = client.snapshot("BTC-USD*")
    assert book.bid_price.tolist() == [59960.0]  # no rate yet: the USDT market stays out
    assert not book.slot["exchange_included"][BINANCE]

    rings["kraken"].write(level_batch(KRAKEN, ids["USDT/USD"], [(0.998, 1e6)], [(1.0, 1e6)], snapshot=True))
    # rate 0.999: 60000 → 59940.0, 59990.3 → 59930.309.. → 59930.0 (bids down), 60050.2 → 59990.1.. → 59990.5 (asks up)
    book = wait_for(lambda: (b := client.snapshot("BTC-USD*")).bid_price.tolist() == [59960.0, 59940.0, 59930.0]
                    and b, what="binance converted in")
    assert book.bid_exchange_size.tolist()[1:] == [[2.0, 0.0], [1.0, 0.0]]
    assert book.ask_price.tolist() == [59990.5, 60100.0]

    rings["kraken"].write(level_batch(KRAKEN, ids["USDT/USD"], [(0.9995, 1e6)], [(1.0005, 1e6)], snapshot=True))
    wait_for(lambda: client.snapshot("BTC-USD*").bid_price.tolist() == [60000.0, 59990.0, 59960.0],
             what="binance re-placed at rate 1.0")

    clear = empty_records(1)
    clear["kind"], clear["exchange_id"], clear["symbol_id"], clear["reason"] = (
        Kind.CLEAR, KRAKEN, ids["USDT/USD"], Reason.SEQUENCE_GAP)
    rings["kraken"].write(clear)
    book = wait_for(lambda: (b := client.snapshot("BTC-USD*")).bid_price.tolist() == [59960.0] and b,
                    what="no rate: the converted market leaves")
    assert book.exchange("binance").status == Status.IN_SYNC  # its own book is fine; only its rate is unknown


def test_a_saturated_aggregator_keeps_beating_and_publishing() -> None:
    """Rings that never run dry must not starve the aggregator's event loop: its heartbeat
    (run by that loop) has to keep moving, or the supervisor kills it as hung."""
    instance = unique_instance("aggsat")
    config = engine_config(
        instance,
        {
            "exchanges": {"binance": {"symbols": ["BTC/USDT"], "snapshot_depth": 100}},
            "shm": {"ring_records": 4096, "book_depth": 50},
            "aggregator": {"publish_interval_ms": 0},
            "supervisor": {"heartbeat_interval_s": 0.1, "heartbeat_timeout_s": 1.0},
        },
    )
    specs = [spec for spec in default_actor_specs(config) if spec.kind == "aggregator"]
    with running(Supervisor(config, specs)) as supervisor:
        client = attach(instance)
        ring = Ring.attach(client.directory["segments"]["rings"]["binance"])
        ring.become_producer()
        wait_for(lambda: supervisor.status()["actors"][0]["state"] == "running", what="aggregator running")
        ring.write(level_batch(BINANCE, BTC, [(100.0, 1.0)], [(101.0, 1.0)], snapshot=True))
        wait_for(lambda: book_of(client).exchange("binance").status == Status.IN_SYNC, what="in sync")
        deltas = np.concatenate([level_batch(BINANCE, BTC, [(99.0 - i * 0.01, 1.0 + i)], []) for i in range(256)])
        started_generation = client.book("BTC/USDT").generation
        written = 0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            if ring.free() >= len(deltas) and ring.write(deltas):
                written += len(deltas)
        actor = supervisor.status()["actors"][0]
        generation = client.book("BTC/USDT").generation
        client.close()
        ring.close()
    assert written > 100_000, f"the producer wrote only {written} records: the ring was not kept full"
    assert actor["restarts"] == 0 and actor["state"] == "running", actor
    assert generation > started_generation + 10, "the saturated aggregator kept publishing"


def test_the_kernel_and_the_numpy_aggregator_publish_the_same_book(monkeypatch) -> None:
    """Two aggregators, one on the C kernel and one on the numpy fallback, fed the same records
    (snapshots deeper than the published depth, then deltas that insert, change and delete levels
    and cross the two venues now and then): their newest books are the same bytes, levels,
    metrics and per-exchange fields (all but the publish times and generation numbers)."""
    import contextlib
    import random

    rng = random.Random(17)
    grids = {BINANCE: (0.1, 100.3, 100.4), KRAKEN: (0.25, 100.5, 100.75)}  # tick, best bid, best ask: kraken's
    # bids reach over binance's asks (venues cross), neither venue crosses itself

    def side(exchange: int, is_bid: bool, count: int) -> list[tuple[float, float]]:
        tick, best_bid, best_ask = grids[exchange]
        start = best_bid if is_bid else best_ask
        return [(round(start - i * tick if is_bid else start + i * tick, 2), round(rng.uniform(0.01, 9.0), 3))
                for i in range(count)]

    batches = [level_batch(exchange, BTC, side(exchange, True, 60), side(exchange, False, 60), snapshot=True,
                           sequence=1) for exchange in (BINANCE, KRAKEN)]
    for sequence in range(2, 400):
        exchange = rng.choice((BINANCE, KRAKEN))
        tick, best_bid, best_ask = grids[exchange]
        levels = {True: [], False: []}
        for _ in range(rng.randint(1, 4)):
            is_bid = rng.random() < 0.5
            rank = min(int(rng.expovariate(1 / 8)), 70)
            price = round(best_bid - rank * tick if is_bid else best_ask + rank * tick, 2)
            levels[is_bid].append((price, 0.0 if rng.random() < 0.3 else round(rng.uniform(0.01, 9.0), 3)))
        batches.append(level_batch(exchange, BTC, levels[True], levels[False], sequence=sequence))
    final = {BINANCE: max(int(b["sequence"][0]) for b in batches if b["exchange_id"][0] == BINANCE),
             KRAKEN: max(int(b["sequence"][0]) for b in batches if b["exchange_id"][0] == KRAKEN)}

    books = {}
    with contextlib.ExitStack() as stack:
        for path in ("kernel", "numpy"):
            monkeypatch.setenv("COBY_ANALYTICS_KERNEL", "on" if path == "kernel" else "off")
            instance = unique_instance(f"same{path[0]}")
            config = engine_config(instance, {
                "exchanges": {"binance": {"symbols": ["BTC/USDT"], "snapshot_depth": 100},
                              "kraken": {"symbols": ["BTC/USDT"], "ws_url": "wss://ws.kraken.com",
                                         "rest_url": "https://api.kraken.com", "snapshot_depth": 100}},
                "shm": {"ring_records": 8192, "book_depth": 50},
                "aggregator": {"publish_interval_ms": 0, "stale_after_s": 60.0},
            })
            specs = [spec for spec in default_actor_specs(config) if spec.kind == "aggregator"]
            supervisor = stack.enter_context(running(Supervisor(config, specs)))
            client = attach(instance)
            stack.callback(client.close)
            wait_for(lambda: supervisor.status()["actors"][0]["state"] == "running", what="aggregator running")
            rings = {name: Ring.attach(segment) for name, segment in client.directory["segments"]["rings"].items()}
            for ring in rings.values():
                ring.become_producer()
                stack.callback(ring.close)
            for batch in batches:
                ring = rings["binance" if batch["exchange_id"][0] == BINANCE else "kraken"]
                assert ring.write(batch)  # ~1,300 records a ring: never refused (a refusal drops the books)
            books[path] = wait_for(
                lambda: (b := book_of(client)).slot["exchange_sequence"][[BINANCE, KRAKEN]].tolist()
                == [final[BINANCE], final[KRAKEN]] and b,
                what="every record applied",
            ).slot
    kernel, numpy_ = books["kernel"], books["numpy"]
    assert kernel["bids"].any() and kernel["asks"].any()
    for name in kernel.dtype.names:
        if name in ("seq", "generation", "publish_ts", "buckets"):
            continue
        if name == "metrics":
            for field in kernel["metrics"].dtype.names:
                if field != "generation":
                    assert kernel["metrics"][field].tobytes() == numpy_["metrics"][field].tobytes(), field
            continue
        assert kernel[name].tobytes() == numpy_[name].tobytes(), name
