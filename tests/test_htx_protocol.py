"""HTX protocol on crafted gzip frames: ping → pong, MBP snapshot via ``req`` with
buffered increments, deltas, ``prevSeqNum`` gap → CLEAR + re-``req``, full ``depth.step0``
pushes, instrument mapping, and bad input counted and dropped."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson
import pytest

from actors.connectors import load_exchange_module
from actors.connectors.base import ConnectionAction, Instrument, SyncState
from actors.connectors.htx import (
    DEPTH,
    MBP,
    WS_DEPTH_URL,
    WS_MBP_URL,
    HtxConnector,
    HtxSimulatedVenue,
    book_channel_of,
    decode_frame,
    parse_symbols,
)
from shm.records import Kind, Reason, Side
from sim.recorded import LineKind, read_recorded

SECOND = 1_000_000_000
NOW = 1_700_000_000 * SECOND
MONOTONIC = 5 * SECOND
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/BTC": 2}
SYMBOLS = orjson.dumps(
    {
        "status": "ok",
        "data": [
            {"base-currency": "btc", "quote-currency": "usdt", "price-precision": 2, "amount-precision": 6,
             "symbol": "btcusdt", "state": "online"},
            {"base-currency": "eth", "quote-currency": "btc", "price-precision": 6, "amount-precision": 4,
             "symbol": "ethbtc", "state": "online"},
        ],
    }
)
TOPIC = "market.btcusdt.mbp.150"


def frame(value: Any) -> bytes:
    """A server frame as HTX sends it: gzip-compressed JSON in a binary frame."""
    return gzip.compress(orjson.dumps(value))


def snapshot(sequence: int, bids: list, asks: list, topic: str = TOPIC) -> bytes:
    data = {"seqNum": sequence, "bids": bids, "asks": asks}
    return frame({"id": topic, "rep": topic, "status": "ok", "ts": 1_700_000_000_000, "data": data})


def increment(sequence: int, previous: int, bids: list = (), asks: list = (), topic: str = TOPIC) -> bytes:
    tick = {"seqNum": sequence, "prevSeqNum": previous, "bids": list(bids), "asks": list(asks)}
    return frame({"ch": topic, "ts": 1_700_000_000_001, "tick": tick})


def mbp_connector(sink) -> HtxConnector:
    connector = HtxConnector(sink, 7, SYMBOL_IDS)
    connector.load_instruments(SYMBOLS)
    connector.on_open(0, NOW)
    return connector


def levels(connector: HtxConnector, symbol: str = "BTC/USDT") -> tuple[list, list]:
    book = connector.book(symbol)
    return book.bid_levels(), book.ask_levels()


def test_symbols_map_to_canonical_instruments() -> None:
    assert parse_symbols(SYMBOLS) == [
        Instrument("BTC/USDT", "btcusdt", "BTC", "USDT", tick_size=0.01, lot_size=1e-6),
        Instrument("ETH/BTC", "ethbtc", "ETH", "BTC", tick_size=1e-6, lot_size=1e-4),
    ]
    assert load_exchange_module("htx").CONNECTOR is HtxConnector
    assert load_exchange_module("htx").SIMULATED_VENUE is HtxSimulatedVenue


def test_url_picks_the_channel_and_depth_is_checked() -> None:
    assert (book_channel_of(WS_MBP_URL), book_channel_of(WS_DEPTH_URL)) == (MBP, DEPTH)
    assert HtxConnector(None, 1, {}, ws_base_url=WS_DEPTH_URL).depth == 150
    with pytest.raises(ValueError, match="one of"):
        HtxConnector(None, 1, {}, snapshot_limit=100)
    with pytest.raises(ValueError, match="below the subscribed depth"):
        HtxConnector(None, 1, {}, snapshot_limit=150, depth_limit=20)


def test_frames_are_gunzipped() -> None:
    assert decode_frame(frame({"ping": 1})) == {"ping": 1}
    assert decode_frame('{"ping":2}') == {"ping": 2}


def test_mbp_subscribes_then_requests_the_snapshot(memory_sink) -> None:
    connector = HtxConnector(memory_sink, 7, SYMBOL_IDS)
    connector.load_instruments(SYMBOLS)
    assert [orjson.loads(text) for text in connector.on_open(0, NOW)] == [
        {"sub": TOPIC, "id": TOPIC},
        {"sub": "market.ethbtc.mbp.150", "id": "market.ethbtc.mbp.150"},
        {"sub": "market.btcusdt.trade.detail", "id": "market.btcusdt.trade.detail"},
        {"sub": "market.ethbtc.trade.detail", "id": "market.ethbtc.trade.detail"},
        {"req": TOPIC, "id": TOPIC},
        {"req": "market.ethbtc.mbp.150", "id": "market.ethbtc.mbp.150"},
    ]
    assert connector.connection_plan()[0].url == WS_MBP_URL


def test_ping_is_answered_with_the_same_number_as_text(memory_sink) -> None:
    connector = mbp_connector(memory_sink)
    assert connector.on_message(0, frame({"ping": 1492420473027}), NOW) is ConnectionAction.SEND
    pongs = [message for message in connector.outgoing_messages(MONOTONIC) if "pong" in message.text]
    assert [(message.connection, orjson.loads(message.text)) for message in pongs] == [(0, {"pong": 1492420473027})]
    assert not [message for message in connector.outgoing_messages(MONOTONIC) if "pong" in message.text]


def test_snapshot_drops_contained_increments_and_applies_the_rest(memory_sink) -> None:
    connector = mbp_connector(memory_sink)
    connector.on_message(0, increment(100, 90, bids=[[99.0, 9.0]]), NOW)  # in the snapshot
    connector.on_message(0, increment(110, 100, asks=[[101.0, 0]]), NOW)  # after it: buffered
    assert connector.feeds["btcusdt"].state is SyncState.SUBSCRIBING
    connector.on_message(0, snapshot(100, [[100.0, 1.0], [99.0, 9.0]], [[101.0, 2.0], [102.0, 3.0]]), NOW)
    assert levels(connector) == ([(100.0, 1.0), (99.0, 9.0)], [(102.0, 3.0)])
    connector.on_message(0, increment(105, 100, bids=[[98.0, 1.0]]), NOW)  # stale once a push bridged: a gap
    counters = connector.counters("BTC/USDT")
    assert (counters.snapshots, counters.frames_applied, counters.frames_dropped, counters.gaps) == (1, 1, 2, 1)


def test_increments_apply_deltas_and_deletes(memory_sink) -> None:
    connector = mbp_connector(memory_sink)
    connector.on_message(0, snapshot(100, [[100.0, 1.0]], [[101.0, 2.0]]), NOW)
    connector.on_message(0, increment(99, 98, bids=[[100.0, 5.0]]), NOW)  # older than the snapshot: dropped
    connector.on_message(0, increment(104, 100, bids=[[100.5, 0.25], [100.0, 0]], asks=[[101.0, 1.5]]), NOW)
    connector.on_message(0, frame({"ch": TOPIC, "ts": 1, "tick": {"seqNum": 109, "prevSeqNum": 104}}), NOW)
    assert levels(connector) == ([(100.5, 0.25)], [(101.0, 1.5)])
    counters = connector.counters("BTC/USDT")
    assert (counters.frames_applied, counters.frames_dropped, counters.gaps) == (2, 1, 0)
    assert memory_sink.books()[1] == ({100.5: 0.25}, {101.0: 1.5})


def test_prev_seq_num_gap_clears_and_requests_again(memory_sink) -> None:
    connector = mbp_connector(memory_sink)
    connector.on_message(0, snapshot(100, [[100.0, 1.0]], [[101.0, 2.0]]), NOW)
    connector.outgoing_messages(MONOTONIC)  # anchors the schedules
    connector.on_message(0, increment(104, 100, bids=[[100.0, 2.0]]), NOW)
    connector.on_message(0, increment(120, 110, bids=[[100.0, 3.0]]), NOW)  # 104 → 110 missing
    feed = connector.feeds["btcusdt"]
    assert feed.state is SyncState.SUBSCRIBING and connector.counters("BTC/USDT").gaps == 1
    clears = memory_sink.of_kind(Kind.CLEAR)
    assert clears["symbol_id"].tolist() == [1] and clears["reason"].tolist() == [Reason.SEQUENCE_GAP]
    connector.on_message(0, increment(125, 120, asks=[[101.0, 4.0]]), NOW)  # buffered for the next snapshot
    assert [orjson.loads(m.text) for m in connector.outgoing_messages(MONOTONIC + 1)] == [{"req": TOPIC, "id": TOPIC}]
    connector.on_message(0, snapshot(120, [[100.0, 3.0]], [[101.0, 2.0]]), NOW)
    assert feed.state is SyncState.LIVE
    assert levels(connector) == ([(100.0, 3.0)], [(101.0, 4.0)])
    assert memory_sink.books()[1] == ({100.0: 3.0}, {101.0: 4.0})


def test_a_req_error_retries_that_symbol_only(memory_sink) -> None:
    connector = mbp_connector(memory_sink)
    error = {"status": "error", "err-code": "bad-request", "err-msg": "invalid mbp.150.symbol btcusdt", "id": TOPIC}
    connector.on_message(0, frame(error), NOW)
    assert connector.counters("BTC/USDT").subscribe_errors == 1
    assert connector.connection_counters[0].last_error == "bad-request: invalid mbp.150.symbol btcusdt"
    connector.on_message(0, frame({**error, "id": "market.btcusdt.trade.detail"}), NOW)
    connector.on_message(0, frame({**error, "id": 5}), NOW)
    assert connector.counters("BTC/USDT").subscribe_errors == 1
    assert connector.connection_counters[0].subscribe_errors == 3


def test_trades_use_trade_id_and_direction(memory_sink) -> None:
    connector = mbp_connector(memory_sink)
    text = (  # the recorded shape: "id" is beyond 64 bits and must not break the frame
        b'{"ch":"market.btcusdt.trade.detail","ts":1618678027942,"tick":{"id":1,"ts":1618678027940,"data":['
        b'{"id":100182534526255757567432481,"ts":1618678027940,"tradeId":100045088885,"amount":0.5,'
        b'"price":100.25,"direction":"buy"},'
        b'{"id":100182534526255757567432482,"ts":1618678027941,"tradeId":100045088886,"amount":1.5,'
        b'"price":100.0,"direction":"sell"}]}}'
    )
    connector.on_message(0, gzip.compress(text), NOW)
    trades = memory_sink.of_kind(Kind.TRADE)
    assert trades["aux"].tolist() == [100045088885, 100045088886]
    assert trades["side"].tolist() == [Side.BID, Side.ASK]
    assert trades["price"].tolist() == [100.25, 100.0] and trades["size"].tolist() == [0.5, 1.5]
    assert trades["exchange_ts"][0] == 1618678027940 * 1_000_000


def test_depth_pushes_replace_the_book_and_versions_must_increase(memory_sink) -> None:
    connector = HtxConnector(memory_sink, 7, SYMBOL_IDS, **load_exchange_module("htx").RECORDED_OPTIONS)
    connector.load_instruments(SYMBOLS)
    assert orjson.loads(connector.on_open(0, NOW)[0]) == {"sub": "market.btcusdt.depth.step0",
                                                          "id": "market.btcusdt.depth.step0"}

    def push(version: int, bids: list, asks: list) -> bytes:
        return frame({"ch": "market.btcusdt.depth.step0", "ts": 1,
                      "tick": {"bids": bids, "asks": asks, "version": version, "ts": 1}})

    connector.on_message(0, push(10, [[100.0, 1.0], [99.0, 2.0]], [[101.0, 1.0]]), NOW)
    connector.on_message(0, push(11, [[100.0, 3.0]], [[101.5, 1.0]]), NOW)
    assert levels(connector) == ([(100.0, 3.0)], [(101.5, 1.0)])
    connector.on_message(0, push(11, [[100.0, 4.0]], [[101.5, 1.0]]), NOW)  # version not increased
    counters = connector.counters("BTC/USDT")
    assert (counters.snapshots, counters.gaps, counters.frames_applied) == (2, 1, 0)
    assert connector.book("BTC/USDT").best_bid() is None
    connector.on_message(0, push(12, [[100.0, 5.0]], [[101.5, 1.0]]), NOW)  # the next push reseeds
    assert levels(connector) == ([(100.0, 5.0)], [(101.5, 1.0)]) and counters.snapshots == 3


@pytest.mark.parametrize(
    "data",
    [
        b"\x1f\x8b\x08\x00garbage",  # broken gzip
        gzip.compress(b'{"ch": "market.btc'),  # truncated JSON
        gzip.compress(b"[1, 2]"),  # not an object
        frame({"ping": "soon"}),
        frame({"ch": 5, "tick": {}}),
        frame({"ch": "market.xrpusdt.mbp.150", "tick": {}}),  # not subscribed
        frame({"something": "else"}),
    ],
)
def test_bad_frames_are_counted_and_dropped(memory_sink, data: bytes) -> None:
    connector = mbp_connector(memory_sink)
    connector.on_message(0, snapshot(100, [[100.0, 1.0]], [[101.0, 2.0]]), NOW)
    assert connector.on_message(0, data, NOW) is ConnectionAction.CONTINUE
    counters = connector.connection_counters[0]
    assert counters.malformed_frames + counters.unknown_symbol_frames + counters.ignored_frames == 1
    assert levels(connector) == ([(100.0, 1.0)], [(101.0, 2.0)])


@pytest.mark.parametrize(
    "tick",
    [
        {"seqNum": 104, "prevSeqNum": 100, "bids": [[100.0, -1.0]]},
        {"seqNum": 104, "prevSeqNum": 100, "bids": [["x", 1.0]]},
        {"seqNum": 104, "prevSeqNum": 100, "asks": {"101": 1}},
        {"prevSeqNum": 100, "bids": [[100.0, 2.0]]},
        {"seqNum": 104, "prevSeqNum": 100, "bids": [[100.0, 2.0]], "asks": [[99.0, 1.0]]},  # crossed
    ],
)
def test_a_bad_book_push_never_leaves_a_wrong_book(memory_sink, tick: dict) -> None:
    connector = mbp_connector(memory_sink)
    connector.on_message(0, snapshot(100, [[100.0, 1.0]], [[101.0, 2.0]]), NOW)
    connector.on_message(0, frame({"ch": TOPIC, "ts": 1, "tick": tick}), NOW)
    assert connector.feeds["btcusdt"].state is SyncState.SUBSCRIBING
    assert connector.book("BTC/USDT").best_bid() is None
    assert 1 not in memory_sink.books()  # the consumer saw the CLEAR


DEPTH_TOPIC = "market.btcusdt.depth.step0"
DEPTH_TICKS = [  # (ts, tick) of depth.step0 pushes: the typed path's cases and the generic path's
    (1, {"bids": [[100.0, 1.0], [99.0, 2.0]], "asks": [[101.0, 1.0]], "version": 10, "ts": 1}),
    (2, {"bids": [[100.5, 3], [99, "2.5"]], "asks": [[101, 0.0], [102.0, 1e-8]], "version": 11}),  # kinds, a zero size
    (3, {"asks": [[101.0, 1.0]], "version": 12}),  # a side absent
    (4, {"bids": None, "asks": [], "version": 13}),  # null, empty
    (5, {"bids": [[100.0, 1.0, 7]], "asks": [[101.0, 1.0]], "version": 14}),  # a third element: generic's
    (6, {"bids": [[100.0, 1.0]], "asks": [[101.0, 1.0]], "version": 14}),  # version not increased: gap
    (7, {"bids": [[100.0, 1.0]], "asks": [[101.0, 1.0]], "version": 15}),  # reseeds
    (8, {"bids": [[0.0, 1.0]], "asks": [[101.0, 1.0]], "version": 16}),  # refused levels
    (9, {"bids": [[100.0, -1.0]], "asks": [[101.0, 1.0]], "version": 17}),
    (10, {"bids": [[1e13, 1.0]], "asks": [[101.0, 1.0]], "version": 18}),
    (11, {"bids": [[100.0, 1e16]], "asks": [[101.0, 1.0]], "version": 19}),
    (12, {"bids": [["x", 1.0]], "asks": [[101.0, 1.0]], "version": 20}),
    (13, {"bids": [[100.0, 1.0]], "asks": [[101.0, 1.0]], "version": 21}),
    (14, {"bids": [[102.0, 1.0]], "asks": [[101.0, 1.0]], "version": 22}),  # crossed
    (15.5, {"bids": [[100.0, 1.0]], "asks": [[101.0, 1.0]], "version": 23}),  # odd kinds: generic's
    ("16", {"bids": [[100.0, 1.0]], "asks": [[101.0, 1.0]], "version": 24}),
    (17, {"bids": [[100.0, 1.0]], "asks": [[101.0, 1.0]], "version": "25"}),
    (18, {"bids": [[100.0, 1.0]], "asks": [[101.0, 1.0]]}),  # no version
    (19, {"bids": {"100": 1}, "asks": [[101.0, 1.0]], "version": 26}),
    (20, {"bids": [[100.0, 2.0], [100.0, 0.0]], "asks": [[101.0, 1.0]], "version": 27}),  # a price twice
]


def test_typed_depth_pushes_have_the_generic_paths_outcome(sink_factory) -> None:
    """Each push as HTX sends it (gzip binary: the typed path) and as a text frame (the generic
    path): the same records, counters, books and rejections, push by push."""
    options = load_exchange_module("htx").RECORDED_OPTIONS
    typed, generic = (HtxConnector(sink_factory(), 7, SYMBOL_IDS, **options) for _ in range(2))
    for connector in (typed, generic):
        connector.load_instruments(SYMBOLS)
        connector.on_open(0, NOW)
    pushes = [{"ch": DEPTH_TOPIC, "ts": ts, "tick": tick} for ts, tick in DEPTH_TICKS]
    pushes += [{"ch": "market.xrpusdt.depth.step0", "ts": 1, "tick": {"version": 1}},  # not ours
               {"ch": "market.ethbtc.trade.detail", "ts": 1, "tick": {"version": 1, "data": []}}]
    for number, push in enumerate(pushes):
        typed.frame_rejected = generic.frame_rejected = False
        assert typed.on_message(0, frame(push), NOW + number) == generic.on_message(0, orjson.dumps(push).decode(),
                                                                                     NOW + number)
        assert typed.output.sink.records().tobytes() == generic.output.sink.records().tobytes(), push
        assert typed.connection_counters == generic.connection_counters
        assert typed.counters("BTC/USDT") == generic.counters("BTC/USDT"), push
        assert levels(typed) == levels(generic) and typed.frame_rejected == generic.frame_rejected
    counters = typed.counters("BTC/USDT")
    assert (counters.gaps, counters.crossed, counters.parse_errors) == (1, 1, 7)


def test_typed_depth_pushes_have_the_generic_paths_outcome_on_the_recording(recorded, sink_factory) -> None:
    """HUOBI.ws.44.0 as recorded (gzip: the typed path) and as text frames (the generic path)."""
    metadata = next(line.payload for line in read_recorded(recorded / "HUOBI.0") if line.kind == LineKind.HTTP_RESPONSE)
    frames = [(line.payload, line.timestamp_ns) for line in read_recorded(recorded / "HUOBI.ws.44.0")
              if line.kind == LineKind.RECEIVED]
    symbol_ids = {"PROPY/ETH": 1, "ZEN/ETH": 2, "TRIO/ETH": 3, "XVG/ETH": 4, "YFI/HUSD": 5, "OMG/BTC": 6,
                  "NEST/ETH": 7, "BOR/USDT": 8, "FIL3S/USDT": 9, "DOGE/ETH": 10}
    outcomes = []
    for as_text in (False, True):
        sink = sink_factory()
        connector = HtxConnector(sink, 5, symbol_ids, **load_exchange_module("htx").RECORDED_OPTIONS)
        connector.load_instruments(metadata)
        connector.on_open(0, frames[0][1])
        for payload, receive_ts in frames:
            connector.on_message(0, zlib.decompress(payload, 31).decode() if as_text else payload, receive_ts)
        outcomes.append((sink.records().tobytes(), [connector.counters(symbol) for symbol in symbol_ids]))
    assert outcomes[0] == outcomes[1]
    assert sum(counters.snapshots for counters in outcomes[0][1]) == 292
