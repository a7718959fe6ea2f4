"""The Kraken module against its own simulator over real sockets on 127.0.0.1 (WebSocket v2):
books equal the venue's truth level by level at the subscribed depth, and an injected gap
or bad checksum clears, resubscribes and converges to the truth again."""

from __future__ import annotations

from actors.connectors.kraken import KrakenConnector, KrakenSimulatedVenue
from shm.records import Kind, Reason
from sim.market import default_market
from tests.venue_harness import run, running, wait_until

VENUE = "kraken"
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT": 2, "NKN/USDT": 3}


def harness(sink_factory, depth: int = 10, seed: int = 5):
    market = default_market((VENUE,), seed=seed)
    sink = sink_factory()

    def connector(server) -> KrakenConnector:
        return KrakenConnector(
            sink, 2, SYMBOL_IDS, ws_base_url=f"{server.ws_url}/v2", rest_base_url=server.http_url, snapshot_limit=depth
        )

    return running(market, KrakenSimulatedVenue(market, VENUE), connector, sink, SYMBOL_IDS, depth=depth)


def test_books_equal_the_simulators_truth_level_by_level(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, depth=25) as h:
            await wait_until(h.all_live)
            steps = h.simulator.market.step_number
            await wait_until(lambda: h.simulator.market.step_number >= steps + 40)
            await h.settled()
            h.assert_records_equal_truth()
            counters = [h.connector.counters(symbol) for symbol in SYMBOL_IDS]
            assert sum(c.checksums_ok for c in counters) >= 40
            assert sum(c.trades for c in counters) > 0
            assert sum(c.checksums_failed + c.resyncs + c.parse_errors + c.crossed for c in counters) == 0
            assert all(len(h.connector.book(symbol).bids) == 25 for symbol in SYMBOL_IDS)  # truncated: venue has 60

    run(scenario())


def test_injected_gap_is_caught_by_the_checksum_and_resyncs_to_truth(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, depth=10) as h:
            await wait_until(h.all_live)
            h.server.faults.drop_updates("BTC/USDT")
            await wait_until(lambda: h.connector.counters("BTC/USDT").checksums_failed >= 1)
            await wait_until(lambda: h.connector.counters("BTC/USDT").snapshots >= 2)
            await h.settled()
            h.assert_records_equal_truth()
            clears = h.sink.of_kind(Kind.CLEAR)
            assert set(clears[clears["symbol_id"] == 1]["reason"].tolist()) == {Reason.CHECKSUM}
            assert h.connector.counters("BTC/USDT").resubscribes >= 1
            assert h.connector.counters("ETH/USDT").resyncs == 0

    run(scenario())


def test_bad_checksum_resubscribes_that_symbol_and_converges(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, depth=10) as h:
            await wait_until(h.all_live)
            h.venue.corrupt_checksums("ETH/USDT")
            await wait_until(lambda: h.connector.counters("ETH/USDT").checksums_failed == 1)
            await wait_until(lambda: h.connector.counters("ETH/USDT").snapshots == 2)
            await h.settled()
            h.assert_records_equal_truth()
            assert h.connector.counters("ETH/USDT").resubscribes == 1
            assert h.server.connections_accepted == 1  # resubscribed in place, no reconnect

    run(scenario())
