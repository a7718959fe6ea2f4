"""Bitstamp protocol on crafted frames: microtimestamp sync, out-of-order diffs,
reconnect requests, bad input, instrument mapping."""

from __future__ import annotations

import orjson
import pytest

from actors.connectors import load_exchange_module
from actors.connectors.base import ConnectionAction, SyncState
from actors.connectors.bitstamp import BitstampConnector, parse_pairs
from shm.records import Kind, Reason

PAIRS = orjson.dumps(
    [
        {
            "name": "BTC/USD",
            "url_symbol": "btcusd",
            "base_decimals": 8,
            "counter_decimals": 2,
            "trading": "Enabled",
        },
        {
            "name": "OLD/USD",
            "url_symbol": "oldusd",
            "base_decimals": 8,
            "counter_decimals": 2,
            "trading": "Disabled",
        },
    ]
)


def book(microtimestamp: int) -> bytes:
    return orjson.dumps(
        {
            "microtimestamp": str(microtimestamp),
            "bids": [["100.00", "1.0"]],
            "asks": [["101.00", "1.0"]],
        }
    )


def diff(microtimestamp: int, bids=(), asks=(), pair: str = "btcusd") -> bytes:
    data = {"microtimestamp": str(microtimestamp), "bids": bids, "asks": asks}
    return orjson.dumps(
        {"data": data, "channel": f"diff_order_book_{pair}", "event": "data"}
    )


def subscribed(memory_sink) -> BitstampConnector:
    connector = BitstampConnector(memory_sink, 1, {"BTC/USD": 1})
    assert [i.native for i in connector.load_instruments(PAIRS)] == ["btcusd"]
    assert connector.on_open(0, 1) == [
        '{"event":"bts:subscribe","data":{"channel":"diff_order_book_btcusd"}}',
        '{"event":"bts:subscribe","data":{"channel":"live_trades_btcusd"}}',
    ]
    ack = b'{"event":"bts:subscription_succeeded","channel":"diff_order_book_btcusd","data":{}}'
    connector.on_message(0, ack, 2)
    assert connector.feeds["btcusd"].state == SyncState.BUFFERING
    (request,) = connector.snapshot_requests(0)
    assert request.url == "https://www.bitstamp.net/api/v2/order_book/btcusd/"
    return connector


def test_instruments_and_registry() -> None:
    (instrument,) = parse_pairs(PAIRS)
    assert (instrument.canonical, instrument.native, instrument.tick_size) == (
        "BTC/USD",
        "btcusd",
        0.01,
    )
    assert load_exchange_module("bitstamp").CONNECTOR is BitstampConnector


def test_diffs_up_to_the_snapshot_microtimestamp_are_dropped(memory_sink) -> None:
    connector = subscribed(memory_sink)
    connector.on_message(0, diff(5, bids=[["99.00", "3"]]), 3)
    connector.on_message(
        0, diff(10, bids=[["98.00", "3"]]), 4
    )  # equal: already in the snapshot
    connector.on_message(0, diff(11, bids=[["99.50", "2"]], asks=[["101.00", "0"]]), 5)
    connector.on_snapshot("btcusd", book(10), 6)
    counters = connector.counters("BTC/USD")
    assert (counters.frames_dropped, counters.frames_applied) == (2, 1)
    connector.on_message(
        0, diff(11, asks=[["102.00", "1"]]), 7
    )  # same microsecond: still in order
    assert connector.book("BTC/USD").bid_levels() == [(100.0, 1.0), (99.5, 2.0)]
    assert connector.book("BTC/USD").ask_levels() == [(102.0, 1.0)]
    assert memory_sink.books()[1] == (
        connector.book("BTC/USD").bids,
        connector.book("BTC/USD").asks,
    )


def test_out_of_order_or_crossing_diff_clears_and_resyncs(memory_sink) -> None:
    connector = subscribed(memory_sink)
    connector.on_snapshot("btcusd", book(10), 3)
    connector.on_message(0, diff(20, bids=[["99.00", "1"]]), 4)
    connector.on_message(0, diff(15, bids=[["98.00", "1"]]), 5)
    assert connector.counters("BTC/USD").gaps == 1
    connector.snapshot_requests(10**12)
    connector.on_snapshot("btcusd", book(30), 6)
    connector.on_message(0, diff(31, bids=[["105.00", "1"]]), 7)
    assert connector.counters("BTC/USD").crossed == 1
    assert memory_sink.of_kind(Kind.CLEAR)["reason"].tolist() == [
        Reason.SEQUENCE_GAP,
        Reason.CROSSED,
    ]


def test_request_reconnect_and_errors_reconnect(memory_sink) -> None:
    connector = subscribed(memory_sink)
    assert connector.on_message(
        0, b'{"event":"bts:request_reconnect","channel":"","data":""}', 3
    ) == (ConnectionAction.RECONNECT)
    error = b'{"event":"bts:error","channel":"","data":{"code":null,"message":"Incorrect JSON format."}}'
    assert connector.on_message(0, error, 4) == ConnectionAction.RECONNECT
    heartbeat = b'{"event":"bts:heartbeat","channel":"","data":{"status":"success"}}'
    assert connector.on_message(0, heartbeat, 5) == ConnectionAction.CONTINUE
    second = 1_000_000_000
    assert connector.outgoing_messages(5 * second) == []  # the schedule starts at the first poll
    (heartbeat,) = connector.outgoing_messages(25 * second)
    assert (heartbeat.connection, heartbeat.text) == (0, '{"event":"bts:heartbeat"}')


@pytest.mark.parametrize(
    "frame",
    [
        b"[not json",
        b'{"event":"data"}',
        diff(11, bids=[["abc", "1"]]),
        diff(11, bids=[["99.00", "-1"]]),
        b'{"event":"data","channel":"diff_order_book_btcusd","data":{"microtimestamp":"x","bids":[],"asks":[]}}',
        b'{"event":"trade","channel":"live_trades_btcusd","data":{"price_str":"1","amount_str":"0","type":0,"id":1}}',
    ],
)
def test_bad_input_is_counted_and_never_corrupts_a_book(
    memory_sink, frame: bytes
) -> None:
    connector = subscribed(memory_sink)
    connector.on_snapshot("btcusd", book(10), 3)
    assert connector.on_message(0, frame, 4) == ConnectionAction.CONTINUE
    bad = (
        connector.counters("BTC/USD").parse_errors
        + connector.connection_counters[0].malformed_frames
    )
    assert bad == 1
    assert memory_sink.books().get(1) in (None, ({100.0: 1.0}, {101.0: 1.0}))


def test_trades(memory_sink) -> None:
    connector = subscribed(memory_sink)
    trade = {
        "id": 216000477,
        "amount_str": "0.0792",
        "price_str": "3805.44",
        "type": 1,
        "microtimestamp": "1641343699596000",
    }
    connector.on_message(
        0,
        orjson.dumps(
            {"data": trade, "channel": "live_trades_btcusd", "event": "trade"}
        ),
        3,
    )
    (record,) = memory_sink.of_kind(Kind.TRADE)
    assert (record["aux"], record["price"], record["exchange_ts"]) == (
        216000477,
        3805.44,
        1641343699596000000,
    )
