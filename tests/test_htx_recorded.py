"""Recorded HTX (Huobi) ``depth.step0`` traffic through the connector, against
../shared/recorded/README.md: 292 full-book pushes over 10 symbols, ``tick.version``
strictly increasing per symbol, never crossed. The negative controls (a duplicated or
swapped push is a version that does not increase) are in tests/test_recorded_faults.py."""

from __future__ import annotations

import zlib
from pathlib import Path

import orjson
import pytest

from actors.connectors.htx import RECORDED_OPTIONS, HtxConnector
from engine.verify import verify_recording
from sim.recorded import LineKind, read_recorded

SYMBOL_IDS = {
    symbol: index
    for index, symbol in enumerate(
        ("PROPY/ETH", "ZEN/ETH", "TRIO/ETH", "XVG/ETH", "YFI/HUSD", "OMG/BTC", "NEST/ETH", "BOR/USDT", "FIL3S/USDT",
         "DOGE/ETH"),
        1,
    )
}


def symbols_body(recorded: Path) -> str:
    (response,) = [line for line in read_recorded(recorded / "HUOBI.0") if line.kind == LineKind.HTTP_RESPONSE]
    return response.payload


def received(recorded: Path) -> list[tuple[bytes, int]]:
    return [
        (line.payload, line.timestamp_ns)
        for line in read_recorded(recorded / "HUOBI.ws.44.0")
        if line.kind == LineKind.RECEIVED
    ]


def replay(recorded: Path, sink, frames: list[tuple[bytes, int]]) -> HtxConnector:
    connector = HtxConnector(sink, 5, SYMBOL_IDS, **RECORDED_OPTIONS)
    connector.load_instruments(symbols_body(recorded))
    connector.on_open(0, frames[0][1])
    for payload, receive_ts in frames:
        connector.on_message(0, payload, receive_ts)
    return connector


def channel(payload: bytes) -> str:
    return orjson.loads(zlib.decompress(payload, 16 + zlib.MAX_WBITS)).get("ch", "")


def test_verify_reports_292_snapshots_no_gaps_no_parse_errors(recorded: Path) -> None:
    files = sorted(recorded.glob("HUOBI.*"))
    report = verify_recording("HUOBI", files)
    assert (report["exchange"], report["frames"], report["symbols"], report["missing_symbols"]) == ("htx", 362, 10, [])
    assert (report["snapshots"], report["book_updates"]) == (292, 0)  # every push is a whole book
    assert (report["gaps"], report["parse_errors"], report["crossed"], report["resyncs"]) == (0, 0, 0, 0)
    assert report["trades"] == 73  # in 44 trade.detail pushes


def test_every_symbol_is_live_with_at_most_150_levels(recorded: Path, sink_factory) -> None:
    sink = sink_factory()
    frames = received(recorded)
    connector = replay(recorded, sink, frames)
    pushes = {symbol: 0 for symbol in SYMBOL_IDS}
    for payload, _ in frames:
        if channel(payload).endswith(".depth.step0"):
            native = channel(payload).split(".")[1]
            pushes[connector.feeds[native].instrument.canonical] += 1
    for symbol, count in pushes.items():
        counters = connector.counters(symbol)
        assert (counters.snapshots, counters.gaps) == (count, 0), symbol
        book = connector.book(symbol)
        assert 0 < len(book.bids) <= 150 and 0 < len(book.asks) <= 150 and not book.is_crossed(), symbol
    assert sum(pushes.values()) == 292
    assert connector.connection_counters[0].subscribe_acks == 20
    assert connector.connection_counters[0].malformed_frames == 0
    assert connector.book("BOR/USDT").bids[710.01] == 2.260165  # JSON numbers read as the nearest double


def test_pings_get_pongs_with_the_recorded_numbers(recorded: Path, sink_factory) -> None:
    connector = replay(recorded, sink_factory(), received(recorded))
    pongs = [message.text for message in connector.outgoing_messages(0)]
    sent = [line.payload for line in read_recorded(recorded / "HUOBI.ws.44.0") if line.kind == LineKind.SENT]
    sent = [text for text in sent if "pong" in text]
    assert pongs == sent and len(pongs) == 6


@pytest.mark.parametrize("corruption", [b"\x00", b"not gzip"])
def test_a_corrupted_frame_is_counted_not_raised(recorded: Path, sink_factory, corruption: bytes) -> None:
    frames = received(recorded)
    frames[5] = (frames[5][0][:40] + corruption, frames[5][1])
    connector = replay(recorded, sink_factory(), frames)
    assert connector.connection_counters[0].malformed_frames == 1
