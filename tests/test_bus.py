"""Topic matching of bus subscriptions: ZeroMQ's raw prefixes, trimmed at symbol boundaries."""

from __future__ import annotations

import zmq

from engine.bus import Subscriber


def test_a_symbol_does_not_match_a_longer_symbol_but_dotted_and_open_prefixes_do() -> None:
    context = zmq.Context()
    subscriber = Subscriber(context, "inproc://coby-bus-test", ["book.BTC/USDT", "signal.ETH/USDT", "trade.", "book.SOL/"])
    try:
        assert subscriber.matches("book.BTC/USDT")
        assert not subscriber.matches("book.BTC/USDT:PERP")
        assert not subscriber.matches("book.BTC/USDTX")
        assert subscriber.matches("signal.ETH/USDT.imbalance")
        assert subscriber.matches("trade.BTC/USDT:PERP")
        assert subscriber.matches("book.SOL/USDT") and subscriber.matches("book.SOL/USDC")
        assert not subscriber.matches("status.binance")
        everything = Subscriber(context, "inproc://coby-bus-test")
        assert everything.matches("status.binance")
        everything.close()
    finally:
        subscriber.close()
        context.term()
