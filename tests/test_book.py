"""The exact L2 book, level parsing, and the record batches built from them."""

from __future__ import annotations

import random

import numpy as np
import pytest

from actors.connectors.base import (
    L2Book,
    RecordOutput,
    SymbolRecords,
    apply_frame,
    canonical_symbol,
    parse_levels,
)
from shm.records import RECORD_DTYPE, Kind, Side, Status


def make_book(bids: dict[float, float], asks: dict[float, float]) -> L2Book:
    book = L2Book()
    book.load(bids.items(), asks.items())
    return book


def test_insert_keeps_sides_sorted_and_tracks_best() -> None:
    book = L2Book()
    book.apply([(100.0, 1.0), (101.0, 2.0), (99.5, 3.0)], [(103.0, 4.0), (102.0, 5.0)])
    assert book.bid_prices == [99.5, 100.0, 101.0]
    assert book.ask_prices == [102.0, 103.0]
    assert book.best_bid() == (101.0, 2.0)
    assert book.best_ask() == (102.0, 5.0)
    assert len(book) == 5


def test_update_changes_size_without_adding_a_level() -> None:
    book = make_book({100.0: 1.0}, {101.0: 1.0})
    book.apply([(100.0, 7.5)], [])
    assert book.bids == {100.0: 7.5}
    assert book.bid_prices == [100.0]


def test_zero_size_deletes_and_best_moves_to_next_level() -> None:
    book = make_book({100.0: 1.0, 99.0: 2.0}, {101.0: 1.0, 102.0: 2.0})
    book.apply([(100.0, 0.0)], [(101.0, 0.0)])
    assert book.best_bid() == (99.0, 2.0)
    assert book.best_ask() == (102.0, 2.0)
    assert book.bid_prices == [99.0] and book.ask_prices == [102.0]


def test_delete_of_unknown_level_is_ignored() -> None:
    book = make_book({100.0: 1.0}, {101.0: 1.0})
    book.apply([(98.0, 0.0)], [(105.0, 0.0)])
    assert book.bids == {100.0: 1.0} and book.asks == {101.0: 1.0}
    assert book.bid_prices == [100.0] and book.ask_prices == [101.0]


def test_empty_sides_have_no_best_and_are_not_crossed() -> None:
    book = L2Book()
    assert book.best_bid() is None and book.best_ask() is None
    assert not book.is_crossed()
    book.set_level(Side.BID, 100.0, 1.0)
    assert not book.is_crossed()


@pytest.mark.parametrize(("bid", "ask", "crossed"), [(100.0, 101.0, False), (101.0, 101.0, True), (102.0, 101.0, True)])
def test_crossed_detection(bid: float, ask: float, crossed: bool) -> None:
    assert make_book({bid: 1.0}, {ask: 1.0}).is_crossed() is crossed


def test_sorted_levels_best_first_with_depth() -> None:
    book = make_book({99.0: 1.0, 100.0: 2.0, 98.0: 3.0}, {101.0: 4.0, 103.0: 5.0, 102.0: 6.0})
    assert book.bid_levels() == [(100.0, 2.0), (99.0, 1.0), (98.0, 3.0)]
    assert book.ask_levels() == [(101.0, 4.0), (102.0, 6.0), (103.0, 5.0)]
    assert book.bid_levels(2) == [(100.0, 2.0), (99.0, 1.0)]
    assert book.ask_levels(1) == [(101.0, 4.0)]
    assert book.bid_levels(0) == []


def test_truncation_keeps_the_best_levels_and_reports_the_rest() -> None:
    book = make_book({float(price): 1.0 for price in range(90, 100)}, {float(price): 1.0 for price in range(101, 111)})
    removed_bids, removed_asks = book.truncate(3)
    assert removed_bids == [float(price) for price in range(90, 97)]
    assert removed_asks == [float(price) for price in range(104, 111)]
    assert book.bid_prices == [97.0, 98.0, 99.0] and sorted(book.bids) == book.bid_prices
    assert book.ask_prices == [101.0, 102.0, 103.0] and sorted(book.asks) == book.ask_prices
    assert book.truncate(3) == ([], [])


def test_load_replaces_the_book_and_skips_zero_sizes() -> None:
    book = make_book({1.0: 1.0}, {2.0: 1.0})
    book.load([(10.0, 1.0), (9.0, 0.0)], [(11.0, 2.0)])
    assert book.bids == {10.0: 1.0} and book.bid_prices == [10.0]
    assert book.asks == {11.0: 2.0}


def test_random_operations_match_a_plain_dict_model() -> None:
    rng = random.Random(7)
    book = L2Book()
    model: dict[Side, dict[float, float]] = {Side.BID: {}, Side.ASK: {}}
    for _ in range(5000):
        side = rng.choice((Side.BID, Side.ASK))
        price = rng.randrange(1, 60) / 4
        size = rng.choice((0.0, 0.0, 1.0, 2.5, 10.0))
        book.set_level(side, price, size)
        if size:
            model[side][price] = size
        else:
            model[side].pop(price, None)
        assert book.bid_prices == sorted(model[Side.BID]) and book.ask_prices == sorted(model[Side.ASK])
    assert book.bids == model[Side.BID] and book.asks == model[Side.ASK]
    assert book.best_bid() == (max(model[Side.BID]), model[Side.BID][max(model[Side.BID])])


def test_parse_levels_reads_decimal_texts_exactly() -> None:
    assert parse_levels([["0.35210000", "672.00000000"], ["1e-8", "0"]]) == [(0.3521, 672.0), (1e-08, 0.0)]
    assert parse_levels([]) == []


@pytest.mark.parametrize(
    "raw",
    [
        [["nan", "1"]],
        [["1", "nan"]],
        [["-1", "1"]],
        [["0", "1"]],
        [["1", "-0.5"]],
        [["inf", "1"]],
        [["1", "Infinity"]],
        [["abc", "1"]],
        [["1"]],
        [["1", "2", "3"]],
        [[None, "1"]],
    ],
)
def test_parse_levels_rejects_bad_levels(raw: list[list[object]]) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_levels(raw)


class ListSink:
    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def write(self, batch: np.ndarray) -> bool:
        self.batches.append(batch.copy())
        return True

    def free(self) -> int:
        return 1 << 20


def test_apply_frame_updates_the_book_and_packs_one_batch() -> None:
    sink = ListSink()
    records = SymbolRecords(RecordOutput(sink), exchange_id=3, symbol_id=42, capacity=1)
    book = make_book({100.0: 1.0}, {101.0: 1.0})
    count = apply_frame(book, records, [["100.0", "0"], ["99.5", "2"]], [["101.5", "3"]], 777, 11, 22)
    assert count == 3
    assert book.bids == {99.5: 2.0} and book.asks == {101.0: 1.0, 101.5: 3.0}
    assert records.write_levels(count)
    (batch,) = sink.batches
    assert batch.dtype == RECORD_DTYPE
    assert batch["kind"].tolist() == [Kind.LEVEL] * 3
    assert batch["side"].tolist() == [Side.BID, Side.BID, Side.ASK]
    assert batch["price"].tolist() == [100.0, 99.5, 101.5]
    assert batch["size"].tolist() == [0.0, 2.0, 3.0]
    assert set(batch["sequence"].tolist()) == {777}
    assert set(batch["exchange_ts"].tolist()) == {11} and set(batch["receive_ts"].tolist()) == {22}
    assert set(batch["exchange_id"].tolist()) == {3} and set(batch["symbol_id"].tolist()) == {42}
    assert not batch["aux"].any() and not batch["flags"].any() and not batch["reason"].any()


def test_apply_frame_raises_on_a_bad_level() -> None:
    records = SymbolRecords(RecordOutput(ListSink()), 1, 1)
    with pytest.raises(ValueError):
        apply_frame(L2Book(), records, [["1.0", "1"], ["NaN", "1"]], [], 1, 0, 0)


def test_appended_levels_follow_the_packed_ones_across_a_scratch_growth() -> None:
    sink = ListSink()
    records = SymbolRecords(RecordOutput(sink), 1, 1, capacity=2)
    count = apply_frame(L2Book(), records, [["1.0", "1"], ["2.0", "1"]], [], 5, 0, 0)
    count = records.append_levels(count, [(0.5, 0.0)], [(9.0, 0.0), (10.0, 0.0)], 5, 0, 0)
    assert records.write_levels(count)
    assert sink.batches[0]["price"].tolist() == [1.0, 2.0, 0.5, 9.0, 10.0]
    assert sink.batches[0]["side"].tolist() == [Side.BID] * 3 + [Side.ASK] * 2


def test_snapshot_batch_is_begin_levels_best_first_end_status() -> None:
    records = SymbolRecords(RecordOutput(ListSink()), 2, 9)
    batch = records.snapshot_batch(make_book({99.0: 1.0, 100.0: 2.0}, {101.0: 3.0}), 55, 66, 77)
    assert batch["kind"].tolist() == [Kind.SNAPSHOT_BEGIN] + [Kind.LEVEL] * 3 + [Kind.SNAPSHOT_END, Kind.STATUS]
    assert batch["price"][1:4].tolist() == [100.0, 99.0, 101.0]
    assert batch["size"][1:4].tolist() == [2.0, 1.0, 3.0]
    assert batch["side"][1:4].tolist() == [Side.BID, Side.BID, Side.ASK]
    assert batch["aux"][-1] == Status.IN_SYNC
    assert set(batch["sequence"].tolist()) == {55} and set(batch["symbol_id"].tolist()) == {9}


def test_trade_record() -> None:
    sink = ListSink()
    SymbolRecords(RecordOutput(sink), 4, 8).trade(0.3528, 58.0, Side.BID, 15683430, 1, 2)
    (trade,) = sink.batches[0]
    assert (trade["kind"], trade["side"], trade["aux"]) == (Kind.TRADE, Side.BID, 15683430)
    assert (trade["price"], trade["size"], trade["exchange_id"], trade["symbol_id"]) == (0.3528, 58.0, 4, 8)


def test_refused_write_is_counted_and_flags_overflow() -> None:
    class FullSink:
        def write(self, batch: np.ndarray) -> bool:
            return False

        def free(self) -> int:
            return 0

    output = RecordOutput(FullSink())
    records = SymbolRecords(output, 1, 1)
    count = apply_frame(L2Book(), records, [["1.0", "1"]], [["2.0", "1"]], 1, 0, 0)
    assert not records.write_levels(count)
    assert output.overflowed and output.batches_lost == 1 and output.records_lost == 2


def test_canonical_symbol() -> None:
    assert canonical_symbol("btc", "usdt") == "BTC/USDT"
    assert canonical_symbol("BTC", "USDT", perpetual=True) == "BTC/USDT:PERP"
