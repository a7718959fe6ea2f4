"""Recorded KuCoin spot traffic through the connector, against the reference results in
../shared/recorded/README.md ("KuCoin sync")."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from actors.connectors.base import ConnectionAction, Instrument
from actors.connectors.kucoin import KucoinConnector, parse_symbols
from shm.records import Kind, Side
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
    """The connector's live cross-check compares the 798 tickers that arrive before the book
    has moved past their sequence (21 arrive later and are skipped by ``expect_top``); none
    disagrees. The next test checks all 819 from the records."""
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


def test_books_rebuilt_from_records_agree_with_every_ticker_at_its_sequence(recorded: Path, replayed) -> None:
    """The second source of truth, checked from what a consumer receives: each LEVEL record
    carries its change's own sequence, so the book rebuilt from the records can be read at
    any ticker's sequence, including the 21 that fall inside an already applied delta and
    that the connector's frame-wise cross-check has to skip. Every ticker at or after its
    symbol's snapshot agrees: 819 of 819 (the README's independent replay counts 812)."""
    _, sink = replayed
    records = sink.records()
    tickers: dict[str, list[tuple[int, float, float]]] = {symbol: [] for symbol in SYNCED}
    natives = {"BCHSV-USDT": "BSV/USDT"}
    for line in read_recorded(recorded / "KUCOIN.ws.1.0"):
        if line.kind == LineKind.RECEIVED and '"/market/ticker:' in line.payload:
            message = json.loads(line.payload)
            native = message["topic"].split(":")[1]
            data = message["data"]
            symbol = natives.get(native, native.replace("-", "/"))
            tickers[symbol].append((int(data["sequence"]), float(data["bestBid"]), float(data["bestAsk"])))
    compared = agreed = 0
    for symbol in SYNCED:
        mine = records[records["symbol_id"] == SYMBOL_IDS[symbol]]
        (snapshot_end,) = np.flatnonzero(mine["kind"] == Kind.SNAPSHOT_END)
        snapshot = mine[:snapshot_end]
        snapshot_sequence = int(snapshot["sequence"][-1])
        bids = {float(r["price"]): float(r["size"]) for r in snapshot if r["kind"] == Kind.LEVEL and r["side"] == Side.BID}
        asks = {float(r["price"]): float(r["size"]) for r in snapshot if r["kind"] == Kind.LEVEL and r["side"] == Side.ASK}
        after = mine[snapshot_end + 1 :]
        assert Kind.CLEAR not in after["kind"] and Kind.SNAPSHOT_BEGIN not in after["kind"]  # never resynced
        changes = after[after["kind"] == Kind.LEVEL]
        changes = changes[np.argsort(changes["sequence"], kind="stable")]
        position = 0
        for sequence, best_bid, best_ask in sorted(t for t in tickers[symbol] if t[0] >= snapshot_sequence):
            while position < len(changes) and changes["sequence"][position] <= sequence:
                change = changes[position]
                side = bids if change["side"] == Side.BID else asks
                if change["size"]:
                    side[float(change["price"])] = float(change["size"])
                else:
                    side.pop(float(change["price"]), None)
                position += 1
            compared += 1
            agreed += (max(bids), min(asks)) == (best_bid, best_ask)
    assert (compared, agreed) == (819, 819)
