"""Recorded OKX v5 traffic (OKX.ws.1.0, May 2022) against ../shared/recorded/README.md
("OKX v5 checksum"): 290 of 290 checksums match over the three recorded books, and
dropping one update produces 82 mismatches.

The connector skips the dated future BTC-USD-220527 (no canonical form for an expiry), so
``coby verify`` checks the other two books: 191 of 191 (BTC-USDT 98 frames, UNI-USD-SWAP
93). The reference replay below covers all three with the same checksum function."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from actors.connectors.base import SyncState
from actors.connectors.checksum import interleaved_checksum
from actors.connectors.okx import OkxStreamSeededConnector
from engine.verify import failed, recordings, verify_recording
from shm.records import Kind, Reason
from sim.recorded import LineKind, read_recorded

SYMBOL_IDS = {"BTC/USDT": 1, "UNI/USD:PERP": 2}
BOOK_FRAMES = {"BTC-USD-220527": 99, "BTC-USDT": 98, "UNI-USD-SWAP": 93}  # each: 1 snapshot, the rest updates
DROPPED_UPDATE = 46  # a BTC-USDT update (book frame index): README's negative control, 82 mismatches


def received(recorded: Path) -> list[tuple[str, int]]:
    return [
        (line.payload, line.timestamp_ns)
        for line in read_recorded(recorded / "OKX.ws.1.0")
        if line.kind == LineKind.RECEIVED
    ]


def book_frames(recorded: Path) -> list[str]:
    return [payload for payload, _ in received(recorded) if '"action"' in payload]


def reference_replay(frames: list[str]) -> tuple[int, int]:
    """(matches, mismatches): an independent book (price → original strings) per instId."""
    books: dict[str, tuple[dict[float, tuple[str, str]], dict[float, tuple[str, str]]]] = {}
    matches = mismatches = 0
    for frame in frames:
        message = orjson.loads(frame)
        entry = message["data"][0]
        if message["action"] == "snapshot":
            books[message["arg"]["instId"]] = ({}, {})
        bids, asks = books[message["arg"]["instId"]]
        for side, key in ((bids, "bids"), (asks, "asks")):
            for price, size, *_ in entry[key]:
                if float(size):
                    side[float(price)] = (price, size)
                else:
                    side.pop(float(price), None)
        best_bids = [bids[price] for price in sorted(bids, reverse=True)]
        best_asks = [asks[price] for price in sorted(asks)]
        if interleaved_checksum(best_bids, best_asks) == entry["checksum"]:
            matches += 1
        else:
            mismatches += 1
    return matches, mismatches


def first_spot_instruments(recorded: Path) -> str:
    return next(line.payload for line in read_recorded(recorded / "OKX.0") if line.kind == LineKind.HTTP_RESPONSE)


def replay(recorded: Path, sink, frames: list[tuple[str, int]]) -> OkxStreamSeededConnector:
    """The recorded generation's connector (snapshot in the stream, checksums), as ``coby verify`` uses."""
    connector = OkxStreamSeededConnector(sink, 9, SYMBOL_IDS)
    connector.load_instruments(first_spot_instruments(recorded))
    connector.on_open(0, frames[0][1])
    for payload, receive_ts in frames:
        connector.on_message(0, payload, receive_ts)
    return connector


def test_290_of_290_recorded_checksums_match_the_reference(recorded: Path) -> None:
    frames = book_frames(recorded)
    assert {instrument: sum(f'"{instrument}"' in frame for frame in frames) for instrument in BOOK_FRAMES} == BOOK_FRAMES
    assert reference_replay(frames) == (290, 0)


def test_coby_verify_reports_191_of_191_for_the_spot_and_swap_books(recorded: Path) -> None:
    (prefix, files), = recordings(sorted(recorded.glob("OKX.*"))).items()
    report = verify_recording(prefix, files)
    assert not failed(report)
    assert (report["checksums_ok"], report["checksums_failed"], report["gaps"], report["parse_errors"]) == (191, 0, 0, 0)
    assert (report["snapshots"], report["book_updates"], report["resyncs"]) == (2, 189, 0)
    assert report["missing_symbols"] == []
    assert report["skipped_symbols"] == ["BTC-USD-22K27"]  # the dated future BTC-USD-220527: no canonical name
    assert report["symbols"] == 2


def test_each_kept_book_checks_every_frame_and_matches_its_records(recorded: Path, sink_factory) -> None:
    sink = sink_factory()
    connector = replay(recorded, sink, received(recorded))
    books = sink.books()
    for symbol, native in (("BTC/USDT", "BTC-USDT"), ("UNI/USD:PERP", "UNI-USD-SWAP")):
        counters = connector.counters(symbol)
        updates = BOOK_FRAMES[native] - 1
        assert (counters.snapshots, counters.frames_applied, counters.checksums_ok) == (1, updates, updates + 1)
        assert (counters.checksums_failed, counters.resyncs, counters.parse_errors, counters.frames_dropped) == (0,) * 4
        book = connector.book(symbol)
        assert not book.is_crossed() and books[SYMBOL_IDS[symbol]] == (book.bids, book.asks)
    assert connector.counters("BTC/USDT").trades + connector.counters("UNI/USD:PERP").trades == len(
        sink.of_kind(Kind.TRADE)) > 0
    counters = connector.connection_counters[0]
    assert (counters.malformed_frames, counters.subscribe_acks, counters.subscribe_errors) == (0, 18, 0)
    assert counters.unknown_symbol_frames == BOOK_FRAMES["BTC-USD-220527"] + 4  # its books and trades


@pytest.mark.parametrize("replayer", ["reference", "connector"])
def test_dropping_one_update_produces_mismatches(recorded: Path, sink_factory, replayer: str) -> None:
    frames = book_frames(recorded)
    dropped = frames[DROPPED_UPDATE]
    assert '"BTC-USDT"' in dropped and '"update"' in dropped
    if replayer == "reference":
        assert reference_replay(frames[:DROPPED_UPDATE] + frames[DROPPED_UPDATE + 1 :]) == (290 - 1 - 82, 82)
        return
    sink = sink_factory()
    connector = replay(recorded, sink, [(payload, ts) for payload, ts in received(recorded) if payload != dropped])
    counters = connector.counters("BTC/USDT")
    assert (counters.checksums_failed, counters.resyncs) == (1, 1)
    assert counters.frames_dropped == 82  # the failing frame, then the rest wait for a new snapshot
    assert connector.feeds["BTC-USDT"].state == SyncState.SUBSCRIBING
    assert sink.of_kind(Kind.CLEAR)["reason"].tolist() == [Reason.CHECKSUM]
    assert [orjson.loads(message.text) for message in connector.outgoing_messages(0)] == [
        {"op": "unsubscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]},
        {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]},
    ]
    assert connector.counters("UNI/USD:PERP").checksums_ok == BOOK_FRAMES["UNI-USD-SWAP"]
