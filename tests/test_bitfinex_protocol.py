"""Bitfinex v2 protocol on crafted frames: symbols, channel mapping, snapshot/update/delete,
truncation, ``cs`` checksums (match, mismatch → CLEAR + resubscribe), SEQ_ALL gaps →
reconnect, info codes, trades, and bad input counted and dropped; plus the simulator's
wire format."""

from __future__ import annotations

import orjson
import pytest

from actors.connectors import load_exchange_module
from actors.connectors.base import ConnectionAction, Instrument, SyncState
from actors.connectors.bitfinex import (
    OB_CHECKSUM,
    SEQ_ALL,
    BitfinexConnector,
    BitfinexSimulatedVenue,
    canonical_from_pair,
    js_number_text,
    native_pair,
    parse_book,
    parse_pair_list,
)
from actors.connectors.checksum import interleaved_checksum
from shm.records import Kind, Reason, Side
from sim.market import default_market
from sim.recorded import LineKind, read_recorded

SECOND = 1_000_000_000
NOW = 1_700_000_000 * SECOND
SYMBOL_IDS = {"BTC/USD": 1, "DOGE/USDT": 2}
PAIRS = b'[["BTCUSD","DOGE:UST","BCHN:USD","AAABBB","WEIRD"]]'
CONTINUE = ConnectionAction.CONTINUE
RECONNECT = ConnectionAction.RECONNECT
DOC_CHECKSUM = -1049391339  # docs/exchanges.md §8: bids 7254.7/3.3, 7254.6/1; asks 7254.8/-0.5, 7255/-2


class Stream:
    """A connector on connection 0 with book channel 10 (BTC/USD), 11 (DOGE/USDT) and
    trades channel 20 (BTC/USD) subscribed; ``send`` numbers frames like SEQ_ALL."""

    def __init__(self, sink, depth: int = 25) -> None:
        self.connector = BitfinexConnector(sink, 6, SYMBOL_IDS, snapshot_limit=depth)
        self.connector.load_instruments(PAIRS)
        self.opened = self.connector.on_open(0, NOW)
        self.sequence = 0
        channels = (("book", 10, "tBTCUSD"), ("book", 11, "tDOGE:UST"), ("trades", 20, "tBTCUSD"))
        for channel, channel_id, symbol in channels:
            self.event({"event": "subscribed", "channel": channel, "chanId": channel_id, "symbol": symbol})

    def event(self, message: dict) -> ConnectionAction:
        return self.connector.on_message(0, orjson.dumps(message), NOW)

    def send(self, channel_id: int, body: str) -> ConnectionAction:
        self.sequence += 1
        return self.connector.on_message(0, f"[{channel_id},{body},{self.sequence}]", NOW)


@pytest.fixture
def stream(sink_factory) -> Stream:
    return Stream(sink_factory())


def test_pairs_map_to_canonical_symbols() -> None:
    assert canonical_from_pair("BTCUSD") == ("BTC/USD", "BTC", "USD")
    assert canonical_from_pair("DOGE:USD") == ("DOGE/USD", "DOGE", "USD")
    assert canonical_from_pair("BTCUST") == ("BTC/USDT", "BTC", "USDT")
    assert canonical_from_pair("UDC:USD")[0] == "USDC/USD"
    assert canonical_from_pair("BCHN:USD")[0] == "BCH/USD"
    with pytest.raises(ValueError):
        canonical_from_pair("WEIRD")
    instruments = {instrument.canonical: instrument for instrument in parse_pair_list(PAIRS)}
    assert instruments["DOGE/USDT"] == Instrument("DOGE/USDT", "tDOGE:UST", "DOGE", "USDT", 0.0, 0.0)
    assert set(instruments) == {"BTC/USD", "DOGE/USDT", "BCH/USD", "AAA/BBB"}
    assert native_pair("BTC", "USDT") == "tBTCUST" and native_pair("DOGE", "USD") == "tDOGE:USD"


def test_registry_and_connection_plan(stream: Stream) -> None:
    module = load_exchange_module("bitfinex")
    assert module.CONNECTOR is BitfinexConnector and module.SIMULATED_VENUE is BitfinexSimulatedVenue
    assert stream.connector.instruments_url == "https://api-pub.bitfinex.com/v2/conf/pub:list:pair:exchange"
    (spec,) = stream.connector.connection_plan()
    assert spec.url == "wss://api-pub.bitfinex.com/ws/2" and spec.symbols == ("BTC/USD", "DOGE/USDT")
    assert [orjson.loads(text) for text in stream.opened] == [
        {"event": "conf", "flags": SEQ_ALL + OB_CHECKSUM},
        {"event": "subscribe", "channel": "book", "symbol": "tBTCUSD", "prec": "P0", "freq": "F0", "len": "25"},
        {"event": "subscribe", "channel": "book", "symbol": "tDOGE:UST", "prec": "P0", "freq": "F0", "len": "25"},
        {"event": "subscribe", "channel": "trades", "symbol": "tBTCUSD"},
        {"event": "subscribe", "channel": "trades", "symbol": "tDOGE:UST"},
    ]
    assert stream.connector.symbols_per_connection == 12  # 25 channels, two per symbol
    with pytest.raises(ValueError):
        BitfinexConnector(None, 6, SYMBOL_IDS, snapshot_limit=1000)


def test_parse_book_splits_sides_by_amount_sign() -> None:
    assert parse_book([["7254.7", "3", "3.3"], ["7254.8", "1", "-0.5"]]) == (
        True, [("7254.7", "3.3")], [("7254.8", "0.5")]
    )
    assert parse_book(["7254.7", "0", "1"]) == (False, [("7254.7", "0")], [])
    assert parse_book(["7254.8", "0", "-1"]) == (False, [], [("7254.8", "0")])
    assert parse_book([]) == (True, [], [])
    for bad in (["1", "-1", "1"], ["1", "0", "2"], "x", ["1", "2"], ["1", "1.5", "1"]):
        with pytest.raises((ValueError, TypeError, IndexError)):
            parse_book(bad)


def test_snapshot_updates_deletes_and_checksums(stream: Stream) -> None:
    stream.send(10, "[[7254.7,3,3.3],[7254.6,1,1],[7254.8,1,-0.5],[7255,2,-2]]")
    connector = stream.connector
    assert connector.feeds["tBTCUSD"].state == SyncState.LIVE
    stream.send(10, f'"cs",{DOC_CHECKSUM}')
    stream.send(10, "[7254.5,1,0.25]")
    stream.send(10, "[7254.6,0,1]")
    stream.send(10, "[7255,0,-1]")
    stream.send(10, "[7300,0,-1]")  # a delete of an unknown level: normal, ignored
    book = connector.book("BTC/USD")
    assert book.bid_levels() == [(7254.7, 3.3), (7254.5, 0.25)] and book.ask_levels() == [(7254.8, 0.5)]
    expected = interleaved_checksum([("7254.7", "3.3"), ("7254.5", "0.25")], [("7254.8", "-0.5")])
    stream.send(10, f'"cs",{expected}')
    counters = connector.counters("BTC/USD")
    assert (counters.checksums_ok, counters.checksums_failed, counters.frames_applied) == (2, 0, 4)
    levels = stream.connector.output.sink.of_kind(Kind.LEVEL)
    updates = levels[levels["sequence"] > 1]
    assert updates["sequence"].tolist() == [3, 4, 5, 6]  # the frame's SEQ_ALL number
    assert updates["side"].tolist() == [Side.BID, Side.BID, Side.ASK, Side.ASK]


def test_checksum_mismatch_clears_and_resubscribes_that_book(stream: Stream) -> None:
    stream.send(10, "[[7254.7,3,3.3],[7254.8,1,-0.5]]")
    stream.send(11, "[[0.1,1,100],[0.2,1,-100]]")
    assert stream.send(10, '"cs",12345') == CONTINUE
    counters = stream.connector.counters("BTC/USD")
    assert counters.checksums_failed == 1 and counters.resyncs == 1
    assert stream.connector.feeds["tBTCUSD"].state == SyncState.SUBSCRIBING
    assert stream.connector.feeds["tDOGE:UST"].state == SyncState.LIVE
    clears = stream.connector.output.sink.of_kind(Kind.CLEAR)
    assert clears["reason"].tolist() == [Reason.CHECKSUM] and clears["symbol_id"].tolist() == [1]
    messages = [orjson.loads(message.text) for message in stream.connector.outgoing_messages(0)]
    assert messages == [
        {"event": "unsubscribe", "chanId": 10},
        {"event": "subscribe", "channel": "book", "symbol": "tBTCUSD", "prec": "P0", "freq": "F0", "len": "25"},
    ]
    stream.send(10, "[7254.9,1,1]")  # the old channel's tail: ignored
    stream.event({"event": "unsubscribed", "status": "OK", "chanId": 10})
    stream.event({"event": "subscribed", "channel": "book", "chanId": 30, "symbol": "tBTCUSD"})
    stream.send(30, "[[7254.7,3,3.3],[7254.8,1,-0.5]]")
    assert stream.connector.feeds["tBTCUSD"].state == SyncState.LIVE
    assert counters.snapshots == 2


def test_book_is_truncated_to_the_subscribed_len(sink_factory) -> None:
    stream = Stream(sink_factory(), depth=1)
    stream.send(10, "[[100,1,1],[101,1,-1]]")
    stream.send(10, "[100.5,1,2]")  # better bid: 100 leaves the window without a delete
    assert stream.connector.book("BTC/USD").bid_levels() == [(100.5, 2.0)]


def test_sequence_gap_clears_every_book_and_reconnects(stream: Stream) -> None:
    stream.send(10, "[[100,1,1],[101,1,-1]]")
    stream.send(11, "[[0.1,1,100],[0.2,1,-100]]")
    stream.sequence += 1  # a lost frame
    assert stream.send(10, '"hb"') == RECONNECT
    assert stream.connector.connection_counters[0].sequence_gaps == 1
    assert {feed.state for feed in stream.connector.feeds.values()} == {SyncState.SUBSCRIBING}
    clears = stream.connector.output.sink.of_kind(Kind.CLEAR)
    assert sorted(clears["symbol_id"].tolist()) == [1, 2] and set(clears["reason"].tolist()) == {Reason.SEQUENCE_GAP}
    assert stream.send(10, "[100,1,5]") == CONTINUE  # ignored until the connection is replaced
    assert stream.connector.outgoing_messages(0) == []
    stream.connector.on_close(0, NOW)
    stream.connector.on_open(0, NOW)
    stream.event({"event": "subscribed", "channel": "book", "chanId": 40, "symbol": "tBTCUSD"})
    assert stream.connector.on_message(0, "[40,[[100,1,1],[101,1,-1]],1]", NOW) == CONTINUE  # numbering restarts
    assert stream.connector.feeds["tBTCUSD"].state == SyncState.LIVE


def test_info_codes_reconnect_or_pause(stream: Stream) -> None:
    stream.send(10, "[[100,1,1],[101,1,-1]]")
    assert stream.event({"event": "info", "code": 20051, "msg": "Stopping"}) == RECONNECT
    assert stream.event({"event": "info", "code": 20060, "msg": "Maintenance"}) == CONTINUE
    assert stream.connector.feeds["tBTCUSD"].state == SyncState.SUBSCRIBING
    assert stream.connector.output.sink.of_kind(Kind.CLEAR)["symbol_id"].tolist() == [1]
    assert stream.connector.outgoing_messages(0) == []  # paused: nothing is resubscribed
    assert stream.event({"event": "info", "code": 20061, "msg": "Maintenance over"}) == RECONNECT
    assert stream.event({"event": "info", "version": 2, "platform": {"status": 1}}) == CONTINUE


def test_trades_te_written_once_tu_and_snapshot_ignored(stream: Stream) -> None:
    stream.send(20, "[[1,1700000000000,0.5,100]]")
    stream.send(20, '"te",[401597393,1574694475039,-0.005,7244.9]')
    stream.send(20, '"tu",[401597393,1574694475039,-0.005,7244.9]')
    trades = stream.connector.output.sink.of_kind(Kind.TRADE)
    assert len(trades) == 1
    trade = trades[0]
    assert (trade["price"], trade["size"], trade["side"], trade["aux"]) == (7244.9, 0.005, Side.ASK, 401597393)
    assert trade["exchange_ts"] == 1574694475039 * 1_000_000


def test_bad_input_is_counted_and_dropped(stream: Stream) -> None:
    stream.send(10, "[[100,1,1],[101,1,-1]]")
    connector = stream.connector
    counters = connector.connection_counters[0]
    assert connector.on_message(0, "[10,[100", NOW) == CONTINUE
    assert connector.on_message(0, "42", NOW) == CONTINUE
    assert connector.on_message(0, '[10,"hb"]', NOW) == CONTINUE  # no sequence number
    assert counters.malformed_frames == 3
    stream.send(99, "[1,1,1]")  # a channel never subscribed
    assert counters.unknown_symbol_frames == 1
    stream.send(20, '"te",[1,2,"x",100]')
    assert connector.counters("BTC/USD").parse_errors == 1
    stream.send(10, '[100,"one",1]')  # an unreadable level: this book only is resynced
    assert connector.counters("BTC/USD").parse_errors == 2
    clears = connector.output.sink.of_kind(Kind.CLEAR)
    assert clears["reason"].tolist() == [Reason.MALFORMED]
    stream.event({"event": "error", "msg": "subscribe: dup", "code": 10301, "symbol": "tDOGE:UST"})
    assert counters.subscribe_errors == 1 and connector.counters("DOGE/USDT").subscribe_errors == 1
    assert counters.sequence_gaps == 0


def test_js_number_text_matches_javascript() -> None:
    cases = {
        "30000.50": "30000.5", "7255.0": "7255", "0.00002503": "0.00002503", "0.00000015": "1.5e-7",
        "0.000001": "0.000001", "0.0000001": "1e-7", "100": "100", "-0.5": "-0.5", "0": "0",
        "1e21": "1e+21", "1.5e22": "1.5e+22",
    }
    for text, expected in cases.items():
        assert js_number_text(text) == expected, text


def test_simulated_session_speaks_seq_all_and_checksums() -> None:
    venue = BitfinexSimulatedVenue(default_market(("bitfinex",), seed=3), "bitfinex")
    assert orjson.loads(venue.http("/v2/conf/pub:list:pair:exchange", {}).body) == [["BTCUST", "ETHUST", "NKNUST"]]
    session = venue.open_session("/ws/2")
    assert session.on_client_message('{"event":"conf","flags":196608}') == [
        '{"event":"conf","status":"OK","flags":196608}'
    ]
    ack, snapshot = session.on_client_message(
        '{"event":"subscribe","channel":"book","symbol":"tBTCUST","prec":"P0","freq":"F0","len":"25"}'
    )
    channel_id = orjson.loads(ack)["chanId"]
    message = orjson.loads(snapshot)
    assert message[0] == channel_id and message[-1] == 1 and len(message[1]) == 50
    assert "," in snapshot and ".0," not in snapshot  # JavaScript numbers: no trailing zeros
    venue.skip_sequence()
    (_, frame) = session.on_client_message('{"event":"subscribe","channel":"trades","symbol":"tBTCUST"}')
    assert orjson.loads(frame)[-1] == 3
    (error,) = session.on_client_message('{"event":"subscribe","channel":"book","symbol":"tNOPE"}')
    assert orjson.loads(error)["code"] == 10300


def _connectors_fast_and_generic(sink_factory) -> tuple[BitfinexConnector, BitfinexConnector]:
    """Two checksum-less connectors (the recorded generation): one with its typed fast path,
    one reading every frame the generic way (its ``_on_message_as_text``)."""
    fast = BitfinexConnector(sink_factory(), 6, SYMBOL_IDS, checksums=False)
    generic = BitfinexConnector(sink_factory(), 6, SYMBOL_IDS, checksums=False)
    generic.on_message = generic._on_message_as_text
    return fast, generic


def _same_outcome(fast: BitfinexConnector, generic: BitfinexConnector) -> None:
    assert fast.output.sink.records().tobytes() == generic.output.sink.records().tobytes()
    assert fast.connection_counters == generic.connection_counters
    for symbol in SYMBOL_IDS:
        assert fast.counters(symbol) == generic.counters(symbol)
        fast_book, generic_book = fast.book(symbol), generic.book(symbol)
        assert (fast_book.bids, fast_book.asks) == (generic_book.bids, generic_book.asks)
        assert (fast_book.bid_prices, fast_book.ask_prices) == (generic_book.bid_prices, generic_book.ask_prices)
    assert fast.frame_rejected == generic.frame_rejected


SNAPSHOT_BODY = "[[100,1,1],[101,1,-1],[99,2,3]]"
UPDATE_BODIES = ["[99.5,1,0.25]", "[100.5,1,-2]", "[99,0,1]", "[100.5,0,-1]", "[98,0,1]",  # deletes, unknown delete
                 "[100,1,1e-8]", "[100.25,3,-1.5e2]", "[100.75,1,-1]", "[100.75,1,-3]"]
ODD_BODIES = [
    "[100,1.0,1]", "[100,true,1]", "[100,1,0]", "[100,1,-0]", "[100,1,-0.0]",  # odd kinds: the generic path's
    "[0,1,1]", "[-1,1,1]", "[1e13,1,1]", "[100,1,1e16]", "[100,1,-1e16]", "[1e999,1,1]",  # refused levels
    "[100,-1,1]", "[100,0,2]", "[100,0,1.0]", "[100,0,-1.0]",
    "[100,1,1,4]", "[100,1]", "[]", '"hb"',  # not one level
    "[101,1,1]",  # crosses the book: resync
]


def test_typed_fast_path_has_the_generic_paths_outcome_frame_by_frame(sink_factory) -> None:
    fast, generic = _connectors_fast_and_generic(sink_factory)
    for connector in (fast, generic):
        connector.load_instruments(PAIRS)
        connector.on_open(0, NOW)
        for channel_id, symbol in ((10, "tBTCUSD"), (11, "tDOGE:UST")):
            connector.on_message(0, orjson.dumps({"event": "subscribed", "channel": "book", "chanId": channel_id,
                                                  "symbol": symbol}).decode(), NOW)
    bodies = [SNAPSHOT_BODY, *UPDATE_BODIES]
    for odd in ODD_BODIES:  # each on a live book, then one update after it
        bodies += [SNAPSHOT_BODY, odd, "[99.5,1,0.5]"]
    frames = [f"[10,{body},{number}]" for number, body in enumerate(bodies, 1)]
    frames += [f"[11,[[0.1,1,100],[0.2,1,-100]],{len(frames) + 1}]", f"[11,[0.15,1,5],{len(frames) + 2}]",
               f"[12,[0.15,1,5],{len(frames) + 3}]",  # a channel never subscribed
               f"[11,[0.16,1,5],{len(frames) + 9}]",  # a gap: every book cleared, reconnect
               f"[11,[0.17,1,5],{len(frames) + 10}]"]  # ignored until the connection is replaced
    for number, frame in enumerate(frames):
        assert fast.on_message(0, frame, NOW + number) == generic.on_message(0, frame, NOW + number), frame
        _same_outcome(fast, generic)
    counters = fast.counters("BTC/USD")
    assert (counters.crossed, counters.parse_errors) == (1, 13)
    assert counters.frames_applied > len(UPDATE_BODIES)
    assert fast.connection_counters[0].sequence_gaps == 1


def test_typed_fast_path_has_the_generic_paths_outcome_on_the_recording(recorded, sink_factory) -> None:
    from actors.connectors.bitfinex import RECORDED_OPTIONS

    pairs = next(line.payload for line in read_recorded(recorded / "BITFINEX.0")
                 if line.kind == LineKind.HTTP_RESPONSE and line.url.endswith("pub:list:pair:exchange"))
    frames = [(line.payload, line.timestamp_ns) for line in read_recorded(recorded / "BITFINEX.ws.11.0")
              if line.kind == LineKind.RECEIVED]
    symbol_ids = {"IOT/ETH": 1, "DOG/USD": 2, "MNA/BTC": 3, "ODE/USD": 4, "TESTBTC/TESTUSD": 5, "SNG/USD": 6}
    outcomes = []
    for fast_path in (True, False):
        sink = sink_factory()
        connector = BitfinexConnector(sink, 5, symbol_ids, **RECORDED_OPTIONS)
        if not fast_path:
            connector.on_message = connector._on_message_as_text
        connector.load_instruments(pairs)
        connector.on_open(0, frames[0][1])
        actions = [connector.on_message(0, payload, receive_ts) for payload, receive_ts in frames]
        outcomes.append((sink.records().tobytes(), actions, [connector.counters(symbol) for symbol in symbol_ids]))
    assert outcomes[0] == outcomes[1]
    assert sum(counters.frames_applied for counters in outcomes[0][2]) == 1593
