"""Recorded Binance spot traffic through the connector, against the reference results
in ../shared/recorded/README.md ("Binance spot sync")."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from actors.connectors.base import Instrument
from actors.connectors.binance import BinanceSpotConnector, parse_exchange_info
from sim.recorded import LineKind, read_recorded

SYMBOL_IDS = {"NKN/USDT": 1, "BLZ/ETH": 2, "LRC/BTC": 3, "RUNE/EUR": 4}

# symbol: (events, dropped, applied) from the README.
REFERENCE_SYNC = {
    "NKN/USDT": (150, 1, 149),
    "BLZ/ETH": (10, 1, 9),
    "LRC/BTC": (15, 2, 13),
    "RUNE/EUR": (2, 1, 1),
}


def exchange_info_body(recorded: Path) -> str:
    (response,) = [line for line in read_recorded(recorded / "BINANCE.0") if line.kind == LineKind.HTTP_RESPONSE]
    return response.payload


@pytest.fixture(scope="module")
def replayed(recorded: Path, sink_factory) -> tuple[BinanceSpotConnector, object]:
    """The three Binance files through the connector in receive order, each REST snapshot
    handed over at the point in the stream where the recording received it."""
    sink = sink_factory()
    connector = BinanceSpotConnector(sink, 1, SYMBOL_IDS)
    connector.load_instruments(exchange_info_body(recorded))
    snapshots = {
        parse_qs(urlsplit(line.url).query)["symbol"][0]: line for line in read_recorded(recorded / "BINANCE.http.0.0")
    }
    stream = list(read_recorded(recorded / "BINANCE.ws.1.0"))
    (opened,) = [line for line in stream if line.kind == LineKind.WS_OPEN]
    assert connector.on_open(0, opened.timestamp_ns) == []
    pending = {request.native_symbol: request for request in connector.snapshot_requests(opened.timestamp_ns)}
    assert set(pending) == set(snapshots)
    assert all(request.url == snapshots[symbol].url for symbol, request in pending.items())
    for line in stream:
        if line.kind != LineKind.RECEIVED:
            continue
        for symbol in [symbol for symbol in pending if snapshots[symbol].timestamp_ns <= line.timestamp_ns]:
            connector.on_snapshot(symbol, snapshots[symbol].payload, snapshots[symbol].timestamp_ns)
            del pending[symbol]
        connector.on_message(0, line.payload, line.timestamp_ns)
    assert not pending
    return connector, sink


def test_instruments_from_recorded_exchange_info(recorded: Path) -> None:
    instruments = {instrument.canonical: instrument for instrument in parse_exchange_info(exchange_info_body(recorded))}
    assert instruments["NKN/USDT"] == Instrument("NKN/USDT", "NKNUSDT", "NKN", "USDT", tick_size=0.0001, lot_size=1.0)
    assert instruments["BLZ/ETH"] == Instrument("BLZ/ETH", "BLZETH", "BLZ", "ETH", tick_size=1e-8, lot_size=1.0)
    assert instruments["LRC/BTC"] == Instrument("LRC/BTC", "LRCBTC", "LRC", "BTC", tick_size=1e-8, lot_size=1.0)
    assert instruments["RUNE/EUR"] == Instrument("RUNE/EUR", "RUNEEUR", "RUNE", "EUR", tick_size=0.001, lot_size=0.1)


@pytest.mark.parametrize("symbol", sorted(REFERENCE_SYNC))
def test_sync_matches_the_reference(replayed, symbol: str) -> None:
    connector, _ = replayed
    counters = connector.counters(symbol)
    assert (counters.frames, counters.frames_dropped, counters.frames_applied) == REFERENCE_SYNC[symbol]
    assert (counters.gaps, counters.resyncs, counters.stale_snapshots, counters.crossed) == (0, 0, 0, 0)
    assert (counters.snapshots, counters.parse_errors) == (1, 0)


def test_book_ticker_cross_check_matches_26_of_26(replayed) -> None:
    connector, _ = replayed
    checks = [connector.counters(symbol).cross_checks for symbol in SYMBOL_IDS]
    mismatches = [connector.counters(symbol).cross_check_mismatches for symbol in SYMBOL_IDS]
    assert (sum(checks), sum(mismatches)) == (26, 0)


def test_records_rebuild_the_connectors_books(replayed) -> None:
    connector, sink = replayed
    books = sink.books()
    for symbol, symbol_id in SYMBOL_IDS.items():
        book = connector.book(symbol)
        assert books[symbol_id] == (book.bids, book.asks)
        assert not book.is_crossed() and book.bids and book.asks
    assert connector.connection_counters[0].malformed_frames == 0
    assert connector.connection_counters[0].ignored_frames == 2  # the two kline frames
    assert sum(connector.counters(symbol).trades for symbol in SYMBOL_IDS) == 2
