"""The Coinbase module against its own simulator over real sockets on 127.0.0.1: on the
Exchange feed (``level2_batch``) books equal the venue's truth level by level and survive
an injected disconnect; on Advanced Trade a dropped message shows as a ``sequence_num``
gap, which resubscribes the books in place and converges to the truth again."""

from __future__ import annotations

from actors.connectors.coinbase import (
    ADVANCED,
    EXCHANGE,
    CoinbaseConnector,
    CoinbaseSimulatedVenue,
)
from shm.records import Kind, Reason
from sim.market import default_market
from tests.venue_harness import run, running, wait_until

VENUE = "coinbase"
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT": 2, "NKN/USDT": 3}


def harness(sink_factory, api: str, seed: int = 7):
    market = default_market((VENUE,), seed=seed)
    sink = sink_factory()

    def connector(server) -> CoinbaseConnector:
        return CoinbaseConnector(sink, 3, SYMBOL_IDS, ws_base_url=server.ws_url, rest_base_url=server.http_url,
                                 api=api)

    return running(market, CoinbaseSimulatedVenue(market, VENUE), connector, sink, SYMBOL_IDS)


def test_exchange_feed_books_equal_the_truth_level_by_level(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, EXCHANGE) as h:
            await wait_until(h.all_live)
            steps = h.simulator.market.step_number
            await wait_until(lambda: h.simulator.market.step_number >= steps + 40)
            await h.settled()
            h.assert_records_equal_truth()
            counters = [h.connector.counters(symbol) for symbol in SYMBOL_IDS]
            assert sum(c.frames_applied for c in counters) >= 40
            assert sum(c.trades for c in counters) > 0
            assert sum(c.resyncs + c.parse_errors + c.crossed + c.frames_dropped for c in counters) == 0
            assert h.connector.connection_counters[0].ignored_frames > 0  # heartbeats arrive
            assert all(len(h.connector.book(symbol).bids) > 25 for symbol in SYMBOL_IDS)  # the whole book

    run(scenario())


def test_exchange_feed_disconnect_clears_and_resnapshots_to_truth(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, EXCHANGE) as h:
            await wait_until(h.all_live)
            await h.server.disconnect()
            await wait_until(lambda: h.server.connections_accepted == 2 and h.server.session_count == 1)
            await wait_until(lambda: all(h.connector.counters(symbol).snapshots == 2 for symbol in SYMBOL_IDS))
            await h.settled()
            h.assert_records_equal_truth()
            clears = h.sink.of_kind(Kind.CLEAR)
            assert sorted(clears["symbol_id"].tolist()) == [1, 2, 3]
            assert set(clears["reason"].tolist()) == {Reason.DISCONNECTED}

    run(scenario())


def test_advanced_trade_gap_resubscribes_in_place_and_converges(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, ADVANCED) as h:
            await wait_until(h.all_live)
            h.server.faults.drop_updates("ETH/USDT")
            await wait_until(lambda: h.connector.counters("ETH/USDT").gaps >= 1)
            await wait_until(lambda: h.connector.counters("ETH/USDT").snapshots >= 2)
            await h.settled()
            h.assert_records_equal_truth()
            clears = h.sink.of_kind(Kind.CLEAR)
            assert Reason.SEQUENCE_GAP in set(clears["reason"].tolist())
            assert set(clears["reason"].tolist()) == {Reason.SEQUENCE_GAP}
            assert h.connector.counters("ETH/USDT").resubscribes >= 1
            assert h.server.connections_accepted == 1  # resubscribed in place, no reconnect

    run(scenario())
