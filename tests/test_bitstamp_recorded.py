"""Recorded Bitstamp traffic through the connector, against the reference results in
../shared/recorded/README.md ("Bitstamp")."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.connectors.base import Instrument
from actors.connectors.bitstamp import BitstampConnector, parse_pairs
from sim.recorded import LineKind, read_recorded

SYMBOL_IDS = {
    symbol: index
    for index, symbol in enumerate(
        [
            "SGB/EUR",
            "ETH/USD",
            "XRP/EUR",
            "BAT/EUR",
            "USDT/EUR",
            "USDT/USD",
            "XLM/GBP",
            "ADA/EUR",
            "BAT/BTC",
            "GALA/EUR",
        ],
        1,
    )
}


def pairs_body(recorded: Path) -> str:
    (response,) = [
        line
        for line in read_recorded(recorded / "BITSTAMP.0")
        if line.kind == LineKind.HTTP_RESPONSE
    ]
    return response.payload


@pytest.fixture(scope="module")
def replayed(recorded: Path, sink_factory) -> tuple[BitstampConnector, object]:
    """The three Bitstamp files in receive order; each snapshot is handed over as soon as
    its diff subscription is live and the recording has received it (the recording
    fetched snapshots while frames queued up, see the README)."""
    sink = sink_factory()
    connector = BitstampConnector(sink, 1, SYMBOL_IDS)
    connector.load_instruments(pairs_body(recorded))
    snapshots = {
        line.url.rstrip("/").rpartition("/")[2]: line
        for line in read_recorded(recorded / "BITSTAMP.http.0.0")
    }
    stream = list(read_recorded(recorded / "BITSTAMP.ws.1.0"))
    (opened,) = [line for line in stream if line.kind == LineKind.WS_OPEN]
    sent = [line.payload for line in stream if line.kind == LineKind.SENT]
    assert sorted(connector.on_open(0, opened.timestamp_ns)) == sorted(sent)
    for line in stream:
        if line.kind != LineKind.RECEIVED:
            continue
        connector.on_message(0, line.payload, line.timestamp_ns)
        for request in connector.snapshot_requests(line.timestamp_ns):
            snapshot = snapshots[request.native_symbol]
            assert request.url == snapshot.url + "/"
            connector.on_snapshot(
                request.native_symbol, snapshot.payload, snapshot.timestamp_ns
            )
    return connector, sink


def test_instruments_from_recorded_pairs(recorded: Path) -> None:
    instruments = {
        instrument.native: instrument
        for instrument in parse_pairs(pairs_body(recorded))
    }
    assert instruments["btcusd"] == Instrument(
        "BTC/USD", "btcusd", "BTC", "USD", 0.01, 1e-8
    )
    assert instruments["usdtusd"] == Instrument(
        "USDT/USD", "usdtusd", "USDT", "USD", 1e-5, 1e-5
    )


def test_sync_matches_the_reference(replayed) -> None:
    connector, _ = replayed
    counters = [connector.counters(symbol) for symbol in SYMBOL_IDS]
    assert sum(c.frames_dropped for c in counters) == 102
    assert sum(c.frames_applied for c in counters) == 615
    assert sum(c.frames for c in counters) == 717
    assert sum(c.gaps + c.resyncs + c.crossed + c.parse_errors for c in counters) == 0
    assert [c.snapshots for c in counters] == [1] * len(SYMBOL_IDS)


def test_books_never_crossed_and_records_rebuild_them(replayed) -> None:
    connector, sink = replayed
    books = sink.books()
    for symbol, symbol_id in SYMBOL_IDS.items():
        book = connector.book(symbol)
        assert books[symbol_id] == (book.bids, book.asks)
        assert not book.is_crossed() and book.bids and book.asks
    counters = connector.connection_counters[0]
    assert (
        counters.subscribe_acks,
        counters.malformed_frames,
        counters.unknown_symbol_frames,
    ) == (20, 0, 0)
    assert sum(connector.counters(symbol).trades for symbol in SYMBOL_IDS) == 10
