"""Recorded Binance USD-M futures traffic through the connector, against the reference
results in ../shared/recorded/README.md ("Binance futures sync")."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from actors.connectors.base import Instrument
from actors.connectors.binance_futures import (
    BinanceFuturesConnector,
    parse_futures_exchange_info,
)
from sim.recorded import LineKind, read_recorded

SYMBOL_IDS = {"SUSHI/USDT:PERP": 1, "AKRO/USDT:PERP": 2, "KEEP/USDT:PERP": 3, "CTK/USDT:PERP": 4}

# symbol: (events, dropped, applied) from the README.
REFERENCE_SYNC = {
    "SUSHI/USDT:PERP": (255, 3, 252),
    "AKRO/USDT:PERP": (189, 1, 188),
    "KEEP/USDT:PERP": (135, 3, 132),
    "CTK/USDT:PERP": (185, 5, 180),
}


def exchange_info_body(recorded: Path) -> str:
    (response,) = [
        line for line in read_recorded(recorded / "BINANCE_FUTURES.0") if line.kind == LineKind.HTTP_RESPONSE
    ]
    return response.payload


@pytest.fixture(scope="module")
def replayed(recorded: Path, sink_factory) -> tuple[BinanceFuturesConnector, object]:
    """The three files through the connector in receive order, each REST snapshot handed
    over where the recording received it. The recording's one unrouted connection carries
    every stream, so all its frames go to connection 0 (frames are routed by content)."""
    sink = sink_factory()
    connector = BinanceFuturesConnector(sink, 2, SYMBOL_IDS)
    connector.load_instruments(exchange_info_body(recorded))
    snapshots = {
        parse_qs(urlsplit(line.url).query)["symbol"][0]: line
        for line in read_recorded(recorded / "BINANCE_FUTURES.http.0.0")
    }
    stream = list(read_recorded(recorded / "BINANCE_FUTURES.ws.1.0"))
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


def test_perpetuals_from_recorded_exchange_info(recorded: Path) -> None:
    instruments = parse_futures_exchange_info(exchange_info_body(recorded))
    by_canonical = {instrument.canonical: instrument for instrument in instruments}
    assert by_canonical["SUSHI/USDT:PERP"] == Instrument(
        "SUSHI/USDT:PERP", "SUSHIUSDT", "SUSHI", "USDT", tick_size=0.001, lot_size=1.0, perpetual=True
    )
    assert by_canonical["BTC/USDT:PERP"].native == "BTCUSDT"
    assert len(instruments) == 119  # every TRADING perpetual; the two quarterlies and one pending are skipped
    assert not any("_" in instrument.native for instrument in instruments)


@pytest.mark.parametrize("symbol", sorted(REFERENCE_SYNC))
def test_sync_matches_the_reference(replayed, symbol: str) -> None:
    connector, _ = replayed
    counters = connector.counters(symbol)
    assert (counters.frames, counters.frames_dropped, counters.frames_applied) == REFERENCE_SYNC[symbol]
    assert (counters.gaps, counters.resyncs, counters.stale_snapshots, counters.crossed) == (0, 0, 0, 0)
    assert (counters.snapshots, counters.parse_errors) == (1, 0)


def test_book_ticker_cross_check_matches_50_of_50(replayed) -> None:
    connector, _ = replayed
    checks = [connector.counters(symbol).cross_checks for symbol in SYMBOL_IDS]
    mismatches = [connector.counters(symbol).cross_check_mismatches for symbol in SYMBOL_IDS]
    assert (sum(checks), sum(mismatches)) == (50, 0)


def test_records_rebuild_the_connectors_books(replayed) -> None:
    connector, sink = replayed
    books = sink.books()
    for symbol, symbol_id in SYMBOL_IDS.items():
        book = connector.book(symbol)
        assert books[symbol_id] == (book.bids, book.asks)
        assert not book.is_crossed() and book.bids and book.asks
    counters = connector.connection_counters[0]
    assert (counters.malformed_frames, counters.unknown_symbol_frames) == (0, 0)
    assert counters.ignored_frames == 67  # the kline_1m frames
    assert sum(connector.counters(symbol).trades for symbol in SYMBOL_IDS) == 91
