"""Recorded KuCoin spot traffic through the connector, against the reference results in
../shared/recorded/README.md ("KuCoin sync")."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from actors.connectors.base import ConnectionAction, Instrument
from actors.connectors.kucoin import KucoinConnector, parse_symbols
from sim.recorded import LineKind, read_recorded

SYMBOL_IDS = {
    "EQZ/BTC": 1,
    "ANKR/BTC": 2,
    "SNX/BTC": 3,
    "FET/BTC": 4,
    "BSV/USDT": 5,  # native BCHSV-USDT
    "NRG/BTC": 6,
    "CAPP/BTC": 7,
    "DAPPT/BTC": 8,
    "COV/BTC": 9,
    "LTX/USDT": 10,  # subscribed, never snapshotted in the recording
}
SYNCED = [symbol for symbol in SYMBOL_IDS if symbol != "LTX/USDT"]


def symbols_body(recorded: Path) -> str:
    (response,) = [
        line
        for line in read_recorded(recorded / "KUCOIN.0")
        if line.kind == LineKind.HTTP_RESPONSE
    ]
    return response.payload


@pytest.fixture(scope="module")
def replayed(recorded: Path, sink_factory) -> tuple[KucoinConnector, object]:
    """The three KuCoin files through the connector in receive order, each REST snapshot
    handed over where the recording received it; v3 full-depth snapshots, as recorded."""
    sink = sink_factory()
    connector = KucoinConnector(
        sink, 1, SYMBOL_IDS, full_depth_snapshots=True, ticker_cross_check=True
    )
    connector.load_instruments(symbols_body(recorded))
    snapshots = {
        parse_qs(urlsplit(line.url).query)["symbol"][0]: line
        for line in read_recorded(recorded / "KUCOIN.http.0.0")
    }
    stream = [
        line
        for line in read_recorded(recorded / "KUCOIN.ws.1.0")
        if line.kind == LineKind.RECEIVED
    ]
    opened = stream[0].timestamp_ns
    assert connector.on_open(0, opened) == []  # subscriptions wait for the welcome
    pending: dict[str, object] = {}
    for line in stream:
        for symbol in [
            symbol
            for symbol in pending
            if snapshots[symbol].timestamp_ns <= line.timestamp_ns
        ]:
            connector.on_snapshot(
                symbol, snapshots[symbol].payload, snapshots[symbol].timestamp_ns
            )
            del pending[symbol]
        action = connector.on_message(0, line.payload, line.timestamp_ns)
        if action == ConnectionAction.SEND:
            subscriptions = [m for m in connector.outgoing_messages(line.timestamp_ns) if '"subscribe"' in m.text]
            assert len(subscriptions) == 3  # level2, match, ticker topics
        requests = connector.snapshot_requests(line.timestamp_ns)
        for request in requests:
            if request.native_symbol in snapshots:
                assert request.url == snapshots[request.native_symbol].url
                pending[request.native_symbol] = request
    assert not pending
    return connector, sink


def test_instruments_from_recorded_symbols(recorded: Path) -> None:
    instruments = {
        instrument.native: instrument
        for instrument in parse_symbols(symbols_body(recorded))
    }
    assert instruments["BCHSV-USDT"] == Instrument(
        "BSV/USDT", "BCHSV-USDT", "BSV", "USDT", 0.001, 1e-8
    )
    assert instruments["LTX-USDT"] == Instrument(
        "LTX/USDT", "LTX-USDT", "LTX", "USDT", 0.0001, 0.0001
    )
    assert all(
        i.canonical == f"{i.base}/{i.quote}".upper() for i in instruments.values()
    )


@pytest.mark.parametrize("symbol", SYNCED)
def test_every_symbol_with_a_snapshot_syncs_with_no_gap(replayed, symbol: str) -> None:
    connector, _ = replayed
    counters = connector.counters(symbol)
    assert (
        counters.snapshots,
        counters.gaps,
        counters.resyncs,
        counters.stale_snapshots,
    ) == (1, 0, 0, 0)
    assert (
        counters.crossed,
        counters.parse_errors,
        counters.cross_check_mismatches,
    ) == (0, 0, 0)
    assert counters.frames == counters.frames_dropped + counters.frames_applied
    assert (
        counters.frames_dropped > 0 and counters.frames_applied > 0
    )  # the snapshot is straddled


def test_ltx_usdt_has_no_snapshot_and_stays_unsynced(replayed) -> None:
    connector, sink = replayed
    counters = connector.counters("LTX/USDT")
    assert (counters.frames, counters.snapshots) == (0, 0)
    assert SYMBOL_IDS["LTX/USDT"] not in sink.books()


def test_ticker_cross_check(replayed) -> None:
    """The README counts 812 of 812; an independent rebuild here finds 819 tickers at or
    after the snapshot sequence, all matching. The connector compares the 798 that arrive
    before the book has moved past their sequence (21 arrive later and are skipped by
    ``expect_top``); none disagrees."""
    connector, _ = replayed
    checks = sum(connector.counters(symbol).cross_checks for symbol in SYNCED)
    mismatches = sum(
        connector.counters(symbol).cross_check_mismatches for symbol in SYNCED
    )
    assert (checks, mismatches) == (798, 0)


def test_records_rebuild_the_connectors_books(replayed) -> None:
    connector, sink = replayed
    books = sink.books()
    for symbol in SYNCED:
        book = connector.book(symbol)
        assert books[SYMBOL_IDS[symbol]] == (book.bids, book.asks)
        assert not book.is_crossed() and book.bids and book.asks
    counters = connector.connection_counters[0]
    assert (
        counters.malformed_frames,
        counters.unknown_symbol_frames,
        counters.subscribe_acks,
    ) == (0, 0, 13)
    assert counters.ignored_frames == 6  # candles
    assert sum(connector.counters(symbol).trades for symbol in SYMBOL_IDS) == 18
