"""Real recorded traffic of two exchanges consolidated by the real aggregator process.

No two recordings in ../shared/recorded book the same symbol, so the instrument is a
synthetic one, as a user would configure it: ``OMG-USD*`` = Kraken's OMG/USD and Gate.io's
OMG/USDT, USDT taken 1:1. Each recording is replayed through its connector (``coby
verify``'s path) into a record sink; those records, renumbered to the engine's exchange
and symbol ids, go through real rings into the aggregator. The consolidated book must
hold, column by column, exactly each exchange's own book (the one its records rebuild,
which the per-exchange recorded tests prove equal to the connector's), and its totals
the sum of both; each plain instrument equals its one exchange's book.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.client import attach
from engine.supervisor import Supervisor, default_actor_specs
from engine.verify import recordings, verify_recording
from shm.records import Kind
from shm.ring import Ring
from tests.engine_support import engine_config, running, unique_instance, wait_for

MARKETS = {"kraken": ("KRAKEN", "OMG/USD"), "gateio": ("GATEIO", "OMG/USDT")}
DEPTH = 2000


def replayed_records(recorded: Path, prefix: str, symbol: str, sink_factory) -> tuple[np.ndarray, dict]:
    sink = sink_factory(capacity=1 << 24)
    report = verify_recording(prefix, recordings([recorded])[prefix], sink=sink)
    assert report["gaps"] == report["checksums_failed"] == report["parse_errors"] == 0
    symbol_id = report["symbol_ids"][symbol]
    records = sink.records()
    mine = records[records["symbol_id"] == symbol_id]
    bids, asks = sink.books()[symbol_id]
    return mine, {"bids": bids, "asks": asks}


@pytest.fixture(scope="module")
def consolidated(recorded: Path, sink_factory):
    own = {}
    streams = {}
    for exchange, (prefix, symbol) in MARKETS.items():
        streams[exchange], own[exchange] = replayed_records(recorded, prefix, symbol, sink_factory)
    instance = unique_instance("cobrec")
    config = engine_config(
        instance,
        {
            "exchanges": {
                exchange: {"symbols": [symbol], "ws_url": "", "rest_url": ""}
                for exchange, (_, symbol) in MARKETS.items()
            },
            "instruments": {"OMG-USD*": {"markets": ["OMG/USD", "OMG/USDT"], "quote": "USD", "convert": {"USDT": "1:1"}}},
            "shm": {"ring_records": 1 << 20, "book_depth": DEPTH},
            "aggregator": {"publish_interval_ms": 0, "stale_after_s": 600.0},
            "buckets": {"absolute": {"OMG-USD*": 0.01}},
        },
    )
    specs = [spec for spec in default_actor_specs(config) if spec.kind == "aggregator"]
    with running(Supervisor(config, specs)) as supervisor:
        wait_for(lambda: supervisor.status()["actors"][0]["state"] == "running", what="aggregator running")
        client = attach(instance)
        exchange_ids, symbol_ids = client.exchanges, {s: i for i, s in enumerate(client.symbols)}
        for exchange, (_, symbol) in MARKETS.items():
            ring = Ring.attach(client.directory["segments"]["rings"][exchange])
            ring.become_producer()
            stream = streams[exchange].copy()
            stream["exchange_id"], stream["symbol_id"] = exchange_ids[exchange], symbol_ids[symbol]
            position = 0
            while position < len(stream):
                room = ring.free()
                if room:
                    chunk = stream[position : position + room]
                    assert ring.write(chunk)
                    position += len(chunk)
            wait_for(lambda r=ring: r.stats()["fill"] == 0, what=f"{exchange} records drained")
            ring.close()
        columns = [exchange_ids[exchange] for exchange in MARKETS]
        applied = [stream["kind"] == kind for stream in streams.values() for kind in (Kind.LEVEL, Kind.SNAPSHOT_END)]
        last = [int(stream["sequence"][np.flatnonzero(applied[2 * i] | applied[2 * i + 1])[-1]])
                for i, stream in enumerate(streams.values())]
        wait_for(
            lambda: (book := client.snapshot("OMG-USD*")).slot["exchange_included"][columns].all()
            and book.slot["exchange_sequence"][columns].tolist() == last
            and all(
                client.snapshot(symbol).slot["exchange_sequence"][exchange_ids[exchange]] == sequence
                for (exchange, (_, symbol)), sequence in zip(MARKETS.items(), last)
            ),
            what="every record of both exchanges in every published book",
        )
        books = {name: client.snapshot(name) for name in client.instruments}
        yield own, books, exchange_ids
        client.close()


def column_levels(prices: np.ndarray, sizes: np.ndarray) -> dict[float, float]:
    return {float(p): float(s) for p, s in zip(prices, sizes) if s}


def test_each_exchange_column_is_that_exchanges_own_book(consolidated) -> None:
    own, books, exchange_ids = consolidated
    book = books["OMG-USD*"]
    for exchange in MARKETS:
        column = exchange_ids[exchange]
        for side, prices, by_exchange in (
            ("bids", book.bid_price, book.bid_exchange_size),
            ("asks", book.ask_price, book.ask_exchange_size),
        ):
            expected = own[exchange][side]
            assert len(prices) == sum(len(own[e][side].keys() | set()) for e in MARKETS) - len(
                own["kraken"][side].keys() & own["gateio"][side].keys()
            )  # every level of both books is in the top (DEPTH covers them), shared prices once
            assert column_levels(prices, by_exchange[:, column]) == expected, (exchange, side)


def test_totals_are_the_sum_of_both_books_and_the_order_is_best_first(consolidated) -> None:
    own, books, _ = consolidated
    book = books["OMG-USD*"]
    for side, prices, sizes, descending in (
        ("bids", book.bid_price, book.bid_size, True),
        ("asks", book.ask_price, book.ask_size, False),
    ):
        merged: dict[float, float] = {}
        for exchange in ("kraken", "gateio"):  # the aggregator sums columns in exchange id order
            for price, size in own[exchange][side].items():
                merged[price] = merged.get(price, 0.0) + size
        assert prices.tolist() == sorted(merged, reverse=descending)
        assert sizes.tolist() == [merged[price] for price in prices.tolist()]
    assert own["kraken"]["bids"] and own["gateio"]["bids"]  # both recordings really feed it


def test_each_plain_instrument_is_its_one_exchange(consolidated) -> None:
    own, books, exchange_ids = consolidated
    for exchange, (_, symbol) in MARKETS.items():
        book = books[symbol]
        assert column_levels(book.bid_price, book.bid_size) == own[exchange]["bids"]
        assert column_levels(book.ask_price, book.ask_size) == own[exchange]["asks"]
        others = [index for name, index in exchange_ids.items() if name != exchange]
        assert not book.bid_exchange_size[:, others].any() and not book.ask_exchange_size[:, others].any()


def test_metrics_and_buckets_agree_with_the_levels(consolidated) -> None:
    _, books, _ = consolidated
    book = books["OMG-USD*"]
    metrics = book.metrics
    assert metrics["generation"] == book.generation
    assert metrics["total_bid_size"] == pytest.approx(float(book.bid_size.sum()))
    assert metrics["mid"] == pytest.approx((book.best_bid + book.best_ask) / 2)
    buckets = book.compute_buckets()
    first, unit = float(buckets["abs_first_price"]), float(buckets["abs_unit"])
    for j, size in enumerate(buckets["bid_abs_size"].tolist()):
        inside = (book.bid_price >= first + j * unit - 1e-9) & (book.bid_price < first + (j + 1) * unit - 1e-9)
        assert size == pytest.approx(float(book.bid_size[inside].sum()))
