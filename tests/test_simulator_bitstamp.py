"""The Bitstamp connector against its simulator side over real sockets on 127.0.0.1.

A dropped diff is invisible on Bitstamp (no sequence), so the injected fault here is
the one Bitstamp announces: ``bts:request_reconnect``, after which the books are rebuilt."""

from __future__ import annotations

from actors.connectors.bitstamp import BitstampConnector, BitstampSimulatedVenue
from sim.market import default_market
from tests.venue_harness import run, running, wait_until

VENUE = "bitstamp"
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT": 2, "NKN/USDT": 3}


def test_books_equal_the_truth_and_rebuild_after_request_reconnect(
    sink_factory,
) -> None:
    async def scenario() -> None:
        market = default_market((VENUE,), seed=6)
        sink = sink_factory()

        def connector(server) -> BitstampConnector:
            return BitstampConnector(sink, 1, SYMBOL_IDS, rest_base_url=server.http_url, ws_url=server.ws_url)

        async with running(market, BitstampSimulatedVenue(market, VENUE), connector, sink, SYMBOL_IDS) as h:
            await wait_until(h.all_live)
            steps = market.step_number
            await wait_until(lambda: market.step_number >= steps + 20)
            h.server.faults.send_malformed('{"event":"bts:request_reconnect","channel":"","data":""}')
            await wait_until(lambda: h.server.connections_accepted == 2)
            await wait_until(lambda: all(h.connector.counters(s).snapshots == 2 for s in SYMBOL_IDS))
            steps = market.step_number
            await wait_until(lambda: market.step_number >= steps + 10)
            h.simulator.pause()
            await wait_until(  # the last step's frames arrive
                lambda: all(
                    h.connector.book(symbol).bid_levels() == market.truth(VENUE, symbol)[0] for symbol in SYMBOL_IDS
                )
            )
            h.assert_books_equal_truth()
            counters = [h.connector.counters(symbol) for symbol in SYMBOL_IDS]
            assert sum(c.frames_applied for c in counters) > 20 and sum(c.trades for c in counters) > 0
            assert sum(c.gaps + c.crossed + c.parse_errors for c in counters) == 0
            assert h.connector.connection_counters[0].server_shutdowns == 1

    run(scenario(), 20)
