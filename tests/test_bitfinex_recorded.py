"""Recorded Bitfinex v2 traffic through the connector, against the reference results in
../shared/recorded/README.md ("Bitfinex"): 7 snapshots, SEQ_ALL 1…1670 contiguous, no book
side beyond 100 levels, never crossed, every delete hits an existing level. Negative
controls: a dropped or duplicated frame is a sequence gap; an altered level is caught by
the book's state (the recording has no checksums)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.connectors.base import ConnectionAction, SyncState
from actors.connectors.bitfinex import (
    RECORDED_OPTIONS,
    BitfinexConnector,
    parse_book,
    parse_pair_list,
)
from engine.verify import verify_recording
from shm.records import Kind, Reason
from sim.recorded import LineKind, read_recorded

SYMBOL_IDS = {
    symbol: index
    for index, symbol in enumerate(
        ("BFT/USD", "IOT/ETH", "DOG/USD", "MNA/BTC", "ODE/USD", "TESTBTC/TESTUSD", "SNG/USD"), 1
    )
}
# Book update frames per symbol in BITFINEX.ws.11.0 (1593 in all).
UPDATES_PER_SYMBOL = {
    "BFT/USD": 0,
    "IOT/ETH": 783,
    "DOG/USD": 384,
    "MNA/BTC": 321,
    "ODE/USD": 17,
    "TESTBTC/TESTUSD": 79,
    "SNG/USD": 9,
}
Frames = list[tuple[str, int]]


def pair_list_body(recorded: Path) -> str:
    responses = [line for line in read_recorded(recorded / "BITFINEX.0") if line.kind == LineKind.HTTP_RESPONSE]
    return next(line.payload for line in responses if line.url.endswith("pub:list:pair:exchange"))


def received(recorded: Path) -> Frames:
    return [
        (line.payload, line.timestamp_ns)
        for line in read_recorded(recorded / "BITFINEX.ws.11.0")
        if line.kind == LineKind.RECEIVED
    ]


def replay(recorded: Path, sink, frames: Frames) -> tuple[BitfinexConnector, list[ConnectionAction]]:
    connector = BitfinexConnector(sink, 5, SYMBOL_IDS, **RECORDED_OPTIONS)
    connector.load_instruments(pair_list_body(recorded))
    connector.on_open(0, frames[0][1])
    actions = [connector.on_message(0, payload, receive_ts) for payload, receive_ts in frames]
    return connector, actions


def book_channels(frames: Frames) -> dict[int, str]:
    """Book channel id → canonical symbol, from the recorded ``subscribed`` events."""
    channels = {}
    for payload, _ in frames:
        message = json.loads(payload)
        if isinstance(message, dict) and message.get("event") == "subscribed" and message["channel"] == "book":
            native = message["symbol"][1:]
            base, quote = native.split(":") if ":" in native else (native[:3], native[3:])
            channels[message["chanId"]] = f"{base}/{quote}"
    return channels


def index_of_update(frames: Frames, channel_id: int, price: str, occurrence: int = 0) -> int:
    prefix = f"[{channel_id},[{price},"
    return [index for index, (payload, _) in enumerate(frames) if payload.startswith(prefix)][occurrence]


@pytest.fixture(scope="module")
def replayed(recorded: Path, sink_factory):
    sink = sink_factory()
    connector, actions = replay(recorded, sink, received(recorded))
    return connector, actions, sink


def test_instruments_from_the_recorded_pair_list(recorded: Path) -> None:
    instruments = {instrument.canonical: instrument for instrument in parse_pair_list(pair_list_body(recorded))}
    assert set(SYMBOL_IDS) <= set(instruments)
    assert instruments["TESTBTC/TESTUSD"].native == "tTESTBTC:TESTUSD"
    assert instruments["BTC/USDT"].native == "tBTCUST"
    assert instruments["AAVE/USDT"].native == "tAAVE:UST"
    assert instruments["BCH/USD"].native == "tBCHN:USD"


def test_seven_snapshots_and_1593_updates_without_gaps_or_errors(replayed) -> None:
    connector, actions, _ = replayed
    assert not connector.missing_symbols
    for symbol, updates in UPDATES_PER_SYMBOL.items():
        counters = connector.counters(symbol)
        assert (counters.snapshots, counters.frames, counters.frames_applied) == (1, updates, updates), symbol
        assert (counters.gaps, counters.resyncs, counters.crossed, counters.parse_errors) == (0, 0, 0, 0), symbol
        assert connector.feeds_by_canonical[symbol].state == SyncState.LIVE
    connection = connector.connection_counters[0]
    assert (connection.sequence_gaps, connection.malformed_frames, connection.unknown_symbol_frames) == (0, 0, 0)
    assert connection.subscribe_acks == 21  # ticker, book and trades for 7 symbols
    assert set(actions) == {ConnectionAction.CONTINUE}
    assert connector.outgoing_messages(0) == []


def test_sequence_runs_1_to_1670_on_every_channel_frame(recorded: Path) -> None:
    sequences = [
        json.loads(payload)[-1] for payload, _ in received(recorded) if payload.startswith("[")
    ]
    assert sequences == list(range(1, 1671))


def test_every_delete_hits_an_existing_level_and_no_side_exceeds_100(recorded: Path, sink_factory) -> None:
    frames = received(recorded)
    channels = book_channels(frames)
    connector = BitfinexConnector(sink_factory(), 5, SYMBOL_IDS, **RECORDED_OPTIONS)
    connector.load_instruments(pair_list_body(recorded))
    connector.on_open(0, frames[0][1])
    deletes = 0
    for payload, receive_ts in frames:
        message = json.loads(payload, parse_float=str, parse_int=str)
        symbol = channels.get(int(message[0])) if isinstance(message, list) else None
        if symbol is not None and isinstance(message[1], list):
            is_snapshot, bids, asks = parse_book(message[1])
            book = connector.book(symbol)
            for side, levels in ((book.bids, bids), (book.asks, asks)):
                for price, size in levels:
                    if not is_snapshot and size == "0":
                        deletes += 1
                        assert float(price) in side, (symbol, price)
        connector.on_message(0, payload, receive_ts)
        if symbol is not None:
            book = connector.book(symbol)
            assert len(book.bids) <= 100 and len(book.asks) <= 100 and not book.is_crossed()
    assert deletes > 500


def test_books_rebuilt_from_records_equal_the_connectors(replayed) -> None:
    connector, _, sink = replayed
    books = sink.books()
    for symbol, symbol_id in SYMBOL_IDS.items():
        book = connector.book(symbol)
        assert book.bids and book.asks
        assert books[symbol_id] == (book.bids, book.asks), symbol
    assert len(sink.of_kind(Kind.SNAPSHOT_END)) == 7 and len(sink.of_kind(Kind.CLEAR)) == 0
    level = sink.of_kind(Kind.LEVEL)
    assert level["sequence"].max() == 1670  # records carry the SEQ_ALL number of their frame


def test_coby_verify_reports_the_reference_figures(recorded: Path) -> None:
    files = sorted(recorded.glob("BITFINEX.*"))
    report = verify_recording("BITFINEX", files)
    assert (report["snapshots"], report["book_updates"], report["gaps"], report["parse_errors"]) == (7, 1593, 0, 0)
    assert (report["crossed"], report["resyncs"], report["symbols"]) == (0, 0, 7)


@pytest.mark.parametrize("fault", ["drop", "duplicate"])
def test_a_dropped_or_duplicated_frame_is_a_gap_that_reconnects(recorded: Path, sink_factory, fault: str) -> None:
    frames = received(recorded)
    index = index_of_update(frames, 225206, "279380")  # a DOG/USD update, sequence 19
    broken = frames[:index] + frames[index + 1 :] if fault == "drop" else frames[: index + 1] + frames[index:]
    sink = sink_factory()
    connector, actions = replay(recorded, sink, broken)
    assert actions.count(ConnectionAction.RECONNECT) == 1
    revealing = json.loads(broken[actions.index(ConnectionAction.RECONNECT)][0])
    assert revealing[-1] == (20 if fault == "drop" else 19)  # the first channel frame after the fault
    assert connector.connection_counters[0].sequence_gaps == 1
    assert all(connector.counters(symbol).gaps == 1 for symbol in SYMBOL_IDS)  # one numbering for all
    assert all(feed.state == SyncState.SUBSCRIBING for feed in connector.feeds.values())
    assert connector.outgoing_messages(0) == []  # the reconnect resubscribes, not the symbols one by one
    clears = sink.of_kind(Kind.CLEAR)
    assert set(clears["reason"].tolist()) == {Reason.SEQUENCE_GAP}
    live_before = ("DOG/USD", "ODE/USD", "TESTBTC/TESTUSD")  # snapshots at sequence 15, 16, 17
    assert sorted(clears["symbol_id"].tolist()) == sorted(SYMBOL_IDS[symbol] for symbol in live_before)
    ignored_before = connector.connection_counters[0].ignored_frames
    connector.on_message(0, frames[-1][0], frames[-1][1])
    assert connector.connection_counters[0].ignored_frames == ignored_before + 1  # nothing trusted until reconnected


def test_an_altered_level_that_crosses_the_book_resyncs_that_symbol(recorded: Path, sink_factory) -> None:
    frames = received(recorded)
    index = index_of_update(frames, 225206, "279380")  # DOG/USD: [279380,1,0.0089], a bid
    payload, receive_ts = frames[index]
    frames[index] = (payload.replace("[279380,1,0.0089]", "[999990,1,0.0089]"), receive_ts)
    sink = sink_factory()
    connector, _ = replay(recorded, sink, frames)
    assert connector.counters("DOG/USD").crossed == 1 and connector.counters("DOG/USD").resyncs == 1
    clears = sink.of_kind(Kind.CLEAR)
    assert clears["reason"].tolist() == [Reason.CROSSED] and clears["symbol_id"].tolist() == [SYMBOL_IDS["DOG/USD"]]
    assert sum(connector.counters(symbol).resyncs for symbol in SYMBOL_IDS) == 1
    messages = [message.text for message in connector.outgoing_messages(0)]
    assert messages == [
        '{"event":"unsubscribe","chanId":225206}',
        '{"event":"subscribe","channel":"book","symbol":"tDOGUSD","prec":"P0","freq":"F0","len":"100"}',
    ]


def test_an_altered_level_price_makes_its_later_delete_miss(recorded: Path, sink_factory) -> None:
    """The reference check "every delete hits an existing level" catches an altered price."""
    frames = received(recorded)
    index = index_of_update(frames, 225206, "279380")
    payload, receive_ts = frames[index]
    frames[index] = (payload.replace("[279380,1,", "[279370,1,"), receive_ts)
    connector = BitfinexConnector(sink_factory(), 5, SYMBOL_IDS, **RECORDED_OPTIONS)
    connector.load_instruments(pair_list_body(recorded))
    connector.on_open(0, frames[0][1])
    delete_index = index_of_update(frames, 225206, "279380")  # [279380,0,1] follows
    for payload, receive_ts in frames[:delete_index]:
        connector.on_message(0, payload, receive_ts)
    assert 279380.0 not in connector.book("DOG/USD").bids
