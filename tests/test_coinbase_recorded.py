"""Recorded Coinbase Pro traffic through the connector, against the reference results in
../shared/recorded/README.md ("Coinbase"): 10 snapshots and 9719 l2updates with no gap or
parse error, and after snapshot + updates the ticker's best bid/ask equals the rebuilt book
in 97 of 97 cases (the first ticker per product excluded); an altered update is caught."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from actors.connectors.base import Instrument, SyncState
from actors.connectors.coinbase import (
    PRO,
    RECORDED_OPTIONS,
    CoinbaseConnector,
    parse_products,
)
from engine.verify import verify_recording
from shm.records import Kind, Reason, Side
from sim.recorded import LineKind, read_recorded

PRODUCTS = (
    "SKL-USD", "SKL-BTC", "BAND-GBP", "NMR-EUR", "BAND-BTC", "YFI-BTC", "DASH-BTC", "NU-GBP", "CRV-EUR", "SKL-GBP"
)
SYMBOL_IDS = {product.replace("-", "/"): index for index, product in enumerate(PRODUCTS, 1)}


def products_body(recorded: Path) -> str:
    (response,) = [line for line in read_recorded(recorded / "COINBASE.0") if line.kind == LineKind.HTTP_RESPONSE]
    return response.payload


def received(recorded: Path) -> list[tuple[str, int]]:
    return [
        (line.payload, line.timestamp_ns)
        for line in read_recorded(recorded / "COINBASE.ws.28.0")
        if line.kind == LineKind.RECEIVED
    ]


def replay(recorded: Path, sink, frames: list[tuple[str, int]]) -> CoinbaseConnector:
    connector = CoinbaseConnector(sink, 5, SYMBOL_IDS, **RECORDED_OPTIONS)
    connector.load_instruments(products_body(recorded))
    connector.on_open(0, frames[0][1])
    for payload, receive_ts in frames:
        connector.on_message(0, payload, receive_ts)
    return connector


@pytest.fixture(scope="module")
def replayed(recorded: Path, sink_factory) -> tuple[CoinbaseConnector, object]:
    sink = sink_factory()
    return replay(recorded, sink, received(recorded)), sink


def test_instruments_from_recorded_products(recorded: Path) -> None:
    instruments = {instrument.canonical: instrument for instrument in parse_products(products_body(recorded))}
    assert instruments["BTC/GBP"] == Instrument("BTC/GBP", "BTC-GBP", "BTC", "GBP", tick_size=0.01, lot_size=1e-8)
    assert instruments["SKL/EUR"].tick_size == 0.0001 and instruments["SKL/EUR"].lot_size == 0.1
    assert set(SYMBOL_IDS) <= set(instruments)


def test_recorded_options_select_the_pro_generation_with_the_ticker() -> None:
    assert RECORDED_OPTIONS == {"api": PRO, "ticker_cross_check": True}


def test_snapshots_and_updates_with_no_gap_or_parse_error(replayed) -> None:
    connector, _ = replayed
    assert not connector.missing_symbols
    counters = [connector.counters(symbol) for symbol in SYMBOL_IDS]
    assert sum(c.snapshots for c in counters) == 10 and all(c.snapshots == 1 for c in counters)
    assert sum(c.frames_applied for c in counters) == sum(c.frames for c in counters) == 9719
    assert sum(c.gaps + c.resyncs + c.parse_errors + c.crossed + c.frames_dropped for c in counters) == 0
    assert sum(c.malformed_frames + c.unknown_symbol_frames for c in connector.connection_counters) == 0
    assert connector.connection_counters[0].subscribe_acks == 3
    assert connector.outgoing_messages(0) == []  # nothing to resubscribe


def test_ticker_top_equals_the_rebuilt_book_in_97_of_97(replayed) -> None:
    connector, _ = replayed
    counters = [connector.counters(symbol) for symbol in SYMBOL_IDS]
    assert sum(c.cross_checks for c in counters) == 97  # 107 tickers minus the first of each product
    assert sum(c.cross_check_mismatches for c in counters) == 0


def test_books_are_live_uncrossed_and_rebuilt_from_records(replayed) -> None:
    connector, sink = replayed
    books = sink.books()
    for symbol, symbol_id in SYMBOL_IDS.items():
        book = connector.book(symbol)
        assert connector.feeds_by_canonical[symbol].state == SyncState.LIVE
        assert book.bids and book.asks and not book.is_crossed()
        assert books[symbol_id] == (book.bids, book.asks), symbol
    assert len(sink.of_kind(Kind.SNAPSHOT_END)) == 10 and len(sink.of_kind(Kind.CLEAR)) == 0


def test_matches_are_trades_with_the_takers_side(replayed) -> None:
    _, sink = replayed
    trades = sink.of_kind(Kind.TRADE)
    assert len(trades) == 97  # the 10 last_match frames are the trade before we subscribed
    first = trades[0]  # SKL-BTC, maker "sell": the taker bought
    assert (first["price"], first["size"], first["aux"], first["side"]) == (0.00001305, 985.0, 280232, Side.BID)
    assert first["exchange_ts"] == 1618677817089723000


def test_coby_verify_reports_the_reference_figures(recorded: Path) -> None:
    report = verify_recording("COINBASE", sorted(recorded.glob("COINBASE.*")))
    assert (report["snapshots"], report["book_updates"], report["gaps"], report["parse_errors"]) == (10, 9719, 0, 0)
    assert (report["cross_checks"], report["cross_check_mismatches"], report["trades"]) == (97, 0, 97)


def test_an_altered_update_disagrees_with_the_next_ticker_and_resyncs(recorded: Path, sink_factory) -> None:
    """Negative control: the SKL-USD update right before a compared ticker gets a new
    best-bid level just under the ask, so the book no longer matches that ticker."""
    frames = received(recorded)
    seen: set[str] = set()
    ticker_index = None
    for index, (payload, _) in enumerate(frames):
        message = orjson.loads(payload)
        if message["type"] == "ticker" and message["product_id"] == "SKL-USD":
            if "SKL-USD" in seen:
                ticker_index = index
                break
            seen.add("SKL-USD")
    altered = max(
        index for index, (payload, _) in enumerate(frames[:ticker_index])
        if '"l2update","product_id":"SKL-USD"' in payload
    )
    ticker = orjson.loads(frames[ticker_index][0])
    inside = f"{(float(ticker['best_bid']) + float(ticker['best_ask'])) / 2:.5f}"
    message = orjson.loads(frames[altered][0])
    message["changes"].append(["buy", inside, "1"])
    frames[altered] = (orjson.dumps(message).decode(), frames[altered][1])
    sink = sink_factory()
    connector = replay(recorded, sink, frames)
    counters = connector.counters("SKL/USD")
    assert counters.cross_check_mismatches == 1 and counters.resyncs == 1
    assert connector.feeds_by_canonical["SKL/USD"].state == SyncState.SUBSCRIBING
    clears = sink.of_kind(Kind.CLEAR)
    assert clears["reason"].tolist() == [Reason.CROSS_CHECK] and clears["symbol_id"].tolist() == [SYMBOL_IDS["SKL/USD"]]
    assert [orjson.loads(message.text) for message in connector.outgoing_messages(0)] == [
        {"type": "unsubscribe", "product_ids": ["SKL-USD"], "channels": ["level2"]},
        {"type": "subscribe", "product_ids": ["SKL-USD"], "channels": ["level2"]},
    ]
    others = [connector.counters(symbol) for symbol in SYMBOL_IDS if symbol != "SKL/USD"]
    assert sum(c.cross_check_mismatches + c.resyncs for c in others) == 0


def test_an_update_that_crosses_the_book_is_caught(recorded: Path, sink_factory) -> None:
    """Negative control: a bid above the best ask crosses the book, which resyncs it."""
    frames = received(recorded)
    altered = next(index for index, (payload, _) in enumerate(frames) if '"l2update","product_id":"YFI-BTC"' in payload)
    message = orjson.loads(frames[altered][0])
    message["changes"] = [["buy", "5.0", "1"]]
    frames[altered] = (orjson.dumps(message).decode(), frames[altered][1])
    connector = replay(recorded, sink_factory(), frames)
    counters = connector.counters("YFI/BTC")
    assert counters.crossed == 1 and counters.resyncs == 1
    assert connector.feeds_by_canonical["YFI/BTC"].state == SyncState.SUBSCRIBING
