"""Recorded Gate.io v4 spot traffic through the connector, against the reference results
in ../shared/recorded/README.md ("Gate.io sync"): 8 pairs synced with 0 gaps, and for
INK_USDT and BTC_USDC every update preceded the snapshot, so nothing was left to apply."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from actors.connectors.base import Instrument, SyncState
from actors.connectors.gateio import GateioConnector, parse_currency_pairs
from sim.recorded import LineKind, read_recorded

SYMBOL_IDS = {
    symbol: number
    for number, symbol in enumerate(
        [
            "INK/USDT",
            "NEO/BTC",
            "OMG/USDT",
            "QTUM3S/USDT",
            "HAI/ETH",
            "DIS/USDT",
            "FAST/USDT",
            "BTC/USDC",
            "NANO/USDT",
            "ZKS/ETH",
        ],
        1,
    )
}
NOTHING_TO_APPLY = {"INK/USDT", "BTC/USDC"}

# symbol: (updates, dropped, applied) under the README's rule (its totals: 172 updates, 0 gaps).
SYNC = {
    "INK/USDT": (1, 1, 0),
    "NEO/BTC": (39, 3, 36),
    "OMG/USDT": (51, 1, 50),
    "QTUM3S/USDT": (18, 2, 16),
    "HAI/ETH": (6, 1, 5),
    "DIS/USDT": (17, 0, 17),
    "FAST/USDT": (21, 1, 20),
    "BTC/USDC": (2, 2, 0),
    "NANO/USDT": (5, 1, 4),
    "ZKS/ETH": (12, 1, 11),
}


def currency_pairs_body(recorded: Path) -> str:
    (response,) = [line for line in read_recorded(recorded / "GATEIO.0") if line.kind == LineKind.HTTP_RESPONSE]
    return response.payload


@pytest.fixture(scope="module")
def replayed(recorded: Path, sink_factory) -> tuple[GateioConnector, object, list[str]]:
    """The three Gate files through the connector in receive order: snapshots are asked for
    once the book subscriptions are acknowledged, and handed over where the recording
    received them."""
    sink = sink_factory()
    connector = GateioConnector(sink, 11, SYMBOL_IDS)
    connector.load_instruments(currency_pairs_body(recorded))
    snapshots = {
        parse_qs(urlsplit(line.url).query)["currency_pair"][0]: line
        for line in read_recorded(recorded / "GATEIO.http.0.0")
    }
    stream = list(read_recorded(recorded / "GATEIO.ws.1.0"))
    (opened,) = [line for line in stream if line.kind == LineKind.WS_OPEN]
    sent = connector.on_open(0, opened.timestamp_ns)
    requested: dict[str, str] = {}
    delivered = set()
    for line in stream:
        if line.kind != LineKind.RECEIVED:
            continue
        for pair in [pair for pair in requested if pair not in delivered]:
            if snapshots[pair].timestamp_ns <= line.timestamp_ns:
                connector.on_snapshot(pair, snapshots[pair].payload, snapshots[pair].timestamp_ns)
                delivered.add(pair)
        connector.on_message(0, line.payload, line.timestamp_ns)
        for request in connector.snapshot_requests(line.timestamp_ns):
            requested[request.native_symbol] = request.url
    assert delivered == set(snapshots)
    assert all(url == snapshots[pair].url for pair, url in requested.items())
    return connector, sink, sent


def test_instruments_from_recorded_currency_pairs(recorded: Path) -> None:
    instruments = {
        instrument.canonical: instrument for instrument in parse_currency_pairs(currency_pairs_body(recorded))
    }
    assert instruments["BTC/USDC"] == Instrument("BTC/USDC", "BTC_USDC", "BTC", "USDC", tick_size=0.01, lot_size=0.0001)
    assert instruments["QTUM3S/USDT"].native == "QTUM3S_USDT"
    assert len(instruments) == 1414  # 1458 pairs less the 44 untradable ones


def book_subscriptions(messages: list[dict]) -> list[tuple[str, ...]]:
    return sorted(tuple(message["payload"]) for message in messages if message["channel"] == "spot.order_book_update")


def test_subscriptions_are_the_recorded_ones(recorded: Path, replayed) -> None:
    _connector, _sink, sent = replayed
    recorded_sent = [
        orjson.loads(line.payload) for line in read_recorded(recorded / "GATEIO.ws.1.0") if line.kind == LineKind.SENT
    ]
    ours = [orjson.loads(message) for message in sent]
    assert book_subscriptions(ours) == book_subscriptions(recorded_sent)
    (our_trades,) = [message for message in ours if message["channel"] == "spot.trades"]
    (their_trades,) = [message for message in recorded_sent if message["channel"] == "spot.trades"]
    assert sorted(our_trades["payload"]) == sorted(their_trades["payload"])
    assert all(message["event"] == "subscribe" and message["time"] == 1619093531 for message in ours)


@pytest.mark.parametrize("symbol", sorted(SYMBOL_IDS))
def test_every_pair_syncs_without_a_gap(replayed, symbol: str) -> None:
    connector, _, _ = replayed
    counters = connector.counters(symbol)
    assert (counters.frames, counters.frames_dropped, counters.frames_applied) == SYNC[symbol]
    assert (counters.gaps, counters.resyncs, counters.stale_snapshots, counters.crossed) == (0, 0, 0, 0)
    assert (counters.snapshots, counters.parse_errors) == (1, 0)
    assert connector.feeds_by_canonical[symbol].state == SyncState.LIVE


def test_eight_pairs_applied_updates_and_two_had_nothing_left(replayed) -> None:
    connector, _, _ = replayed
    applied = {symbol for symbol in SYMBOL_IDS if connector.counters(symbol).frames_applied}
    assert len(applied) == 8 and set(SYMBOL_IDS) - applied == NOTHING_TO_APPLY
    assert sum(connector.counters(symbol).frames for symbol in SYMBOL_IDS) == 172


def test_records_rebuild_the_connectors_books(replayed) -> None:
    connector, sink, _ = replayed
    books = sink.books()
    for symbol, symbol_id in SYMBOL_IDS.items():
        book = connector.book(symbol)
        assert books[symbol_id] == (book.bids, book.asks)
        assert not book.is_crossed() and book.bids and book.asks
    counters = connector.connection_counters[0]
    assert (counters.malformed_frames, counters.unknown_symbol_frames, counters.subscribe_errors) == (0, 0, 0)
    assert counters.subscribe_acks == 22  # 10 books, trades, and the recording's candlesticks and tickers
    assert counters.ignored_frames == 36  # 22 tickers + 14 candlesticks
    assert sum(connector.counters(symbol).trades for symbol in SYMBOL_IDS) == 9
