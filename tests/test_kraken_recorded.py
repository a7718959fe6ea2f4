"""Recorded Kraken v1 traffic through the connector, against the reference results in
../shared/recorded/README.md ("Kraken v1 checksum"): 4269 of 4269 checksums match across
10 pairs, no republish entries, and dropping one update produces mismatches."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from actors.connectors.base import Instrument, SyncState
from actors.connectors.kraken import WS_V1_URL, KrakenConnector, parse_asset_pairs
from shm.records import Kind, Reason
from sim.recorded import LineKind, read_recorded

SYMBOL_IDS = {
    symbol: index
    for index, symbol in enumerate(
        ("KSM/BTC", "XMR/USD", "ETH/CHF", "OMG/USD", "GRT/ETH", "WAVES/EUR", "ADA/BTC", "BTC/CHF", "SC/EUR", "OCEAN/BTC"),
        1,
    )
}
# Book update frames per pair in KRAKEN.ws.50.0; each carries a checksum (4269 in all).
UPDATES_PER_PAIR = {
    "KSM/BTC": 335,
    "XMR/USD": 846,
    "ETH/CHF": 317,
    "OMG/USD": 573,
    "GRT/ETH": 20,
    "WAVES/EUR": 576,
    "ADA/BTC": 347,
    "BTC/CHF": 289,
    "SC/EUR": 818,
    "OCEAN/BTC": 148,
}


def asset_pairs_body(recorded: Path) -> str:
    (response,) = [line for line in read_recorded(recorded / "KRAKEN.0") if line.kind == LineKind.HTTP_RESPONSE]
    return response.payload


def received(recorded: Path, name: str) -> list[tuple[str, int]]:
    return [(line.payload, line.timestamp_ns) for line in read_recorded(recorded / name) if line.kind == LineKind.RECEIVED]


def replay(recorded: Path, sink, frames: list[tuple[str, int]]) -> KrakenConnector:
    connector = KrakenConnector(sink, 3, SYMBOL_IDS, ws_base_url=WS_V1_URL)
    connector.load_instruments(asset_pairs_body(recorded))
    connector.on_open(0, frames[0][1])
    for payload, receive_ts in frames:
        connector.on_message(0, payload, receive_ts)
    return connector


@pytest.fixture(scope="module")
def replayed(recorded: Path, sink_factory) -> tuple[KrakenConnector, object]:
    """The book connection (ws.50) then the trade connection (ws.48) through one connector:
    v1 frames name their channel and pair, so both route on one connection index."""
    sink = sink_factory()
    frames = received(recorded, "KRAKEN.ws.50.0") + received(recorded, "KRAKEN.ws.48.0")
    return replay(recorded, sink, frames), sink


def test_instruments_from_recorded_asset_pairs(recorded: Path) -> None:
    v1 = {instrument.canonical: instrument for instrument in parse_asset_pairs(asset_pairs_body(recorded), 1)}
    v2 = {instrument.canonical: instrument for instrument in parse_asset_pairs(asset_pairs_body(recorded), 2)}
    assert v1["BTC/CHF"] == Instrument("BTC/CHF", "XBT/CHF", "BTC", "CHF", tick_size=0.1, lot_size=1e-8)
    assert v1["ADA/BTC"].native == "ADA/XBT" and v2["ADA/BTC"].native == "ADA/BTC"
    assert v1["XMR/USD"].native == v2["XMR/USD"].native == "XMR/USD"
    assert v1["DOGE/USD"].native == "XDG/USD" and v2["DOGE/USD"].native == "DOGE/USD"
    assert set(SYMBOL_IDS) <= set(v1)


def test_4269_of_4269_checksums_match_across_10_pairs(replayed) -> None:
    connector, _ = replayed
    assert not connector.missing_symbols
    for symbol, updates in UPDATES_PER_PAIR.items():
        counters = connector.counters(symbol)
        assert (counters.snapshots, counters.frames, counters.frames_applied) == (1, updates, updates), symbol
        assert (counters.checksums_ok, counters.checksums_failed) == (updates, 0), symbol
        assert (counters.resyncs, counters.crossed, counters.parse_errors, counters.frames_dropped) == (0, 0, 0, 0)
    assert sum(connector.counters(symbol).checksums_ok for symbol in SYMBOL_IDS) == 4269
    assert connector.outgoing_messages(0) == []  # nothing to resubscribe


def test_no_republish_entries_in_the_recording(recorded: Path) -> None:
    levels = [
        level
        for payload, _ in received(recorded, "KRAKEN.ws.50.0")
        if payload.startswith("[")
        for part in orjson.loads(payload)[1:-2]
        for key in ("a", "b", "as", "bs")
        for level in part.get(key, ())
    ]
    assert len(levels) > 4269
    assert not [level for level in levels if len(level) > 3]


def test_books_are_trimmed_and_rebuilt_from_records(replayed) -> None:
    connector, sink = replayed
    books = sink.books()
    for symbol, symbol_id in SYMBOL_IDS.items():
        book = connector.book(symbol)
        assert connector.feeds_by_canonical[symbol].state == SyncState.LIVE
        assert 0 < len(book.bids) <= 1000 and 0 < len(book.asks) <= 1000
        assert not book.is_crossed()
        assert books[symbol_id] == (book.bids, book.asks), symbol
    assert len(sink.of_kind(Kind.SNAPSHOT_END)) == 10 and len(sink.of_kind(Kind.CLEAR)) == 0


def test_trades_from_the_trade_connection(replayed) -> None:
    connector, sink = replayed
    assert connector.counters("XMR/USD").trades == 4
    assert connector.counters("SC/EUR").trades == 6
    trades = sink.of_kind(Kind.TRADE)
    assert len(trades) == 10
    first = trades[0]
    assert (first["price"], first["size"], first["exchange_ts"]) == (354.11, 0.89594024, 1618678142557535000)
    counters = connector.connection_counters[0]
    assert (counters.malformed_frames, counters.unknown_symbol_frames, counters.subscribe_errors) == (0, 0, 0)
    assert counters.subscribe_acks == 20


def test_dropping_one_update_produces_mismatches_and_a_resubscribe(recorded: Path, sink_factory) -> None:
    """Negative control: without the first XMR/USD update the next checksum cannot match."""
    frames = received(recorded, "KRAKEN.ws.50.0")
    dropped = next(index for index, (payload, _) in enumerate(frames) if payload.startswith('[992,{"b":'))
    sink = sink_factory()
    connector = replay(recorded, sink, frames[:dropped] + frames[dropped + 1 :])
    counters = connector.counters("XMR/USD")
    assert counters.checksums_failed == 1 and counters.resyncs == 1
    assert counters.frames_dropped == 846 - 1  # the failing frame, then the rest wait for a new snapshot
    assert connector.feeds_by_canonical["XMR/USD"].state == SyncState.SUBSCRIBING
    clears = sink.of_kind(Kind.CLEAR)
    assert clears["reason"].tolist() == [Reason.CHECKSUM] and clears["symbol_id"].tolist() == [SYMBOL_IDS["XMR/USD"]]
    messages = connector.outgoing_messages(0)
    assert [orjson.loads(message.text) for message in messages] == [
        {"event": "unsubscribe", "pair": ["XMR/USD"], "subscription": {"name": "book", "depth": 1000}},
        {"event": "subscribe", "pair": ["XMR/USD"], "subscription": {"name": "book", "depth": 1000}},
    ]
    assert {message.connection for message in messages} == {0}
    others = [connector.counters(symbol) for symbol in SYMBOL_IDS if symbol != "XMR/USD"]
    assert sum(c.checksums_failed for c in others) == 0
    assert sum(c.checksums_ok for c in others) == 4269 - 846
