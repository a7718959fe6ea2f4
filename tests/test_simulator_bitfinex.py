"""The Bitfinex module against its own simulator over real sockets on 127.0.0.1: books equal
the venue's truth level by level at the subscribed len, an injected bad checksum
resubscribes that symbol in place, and an injected SEQ_ALL gap reconnects and converges."""

from __future__ import annotations

from actors.connectors.bitfinex import BitfinexConnector, BitfinexSimulatedVenue
from shm.records import Kind, Reason
from sim.market import default_market
from tests.venue_harness import run, running, wait_until

VENUE = "bitfinex"
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT": 2, "NKN/USDT": 3}


def harness(sink_factory, depth: int = 25, seed: int = 7):
    market = default_market((VENUE,), seed=seed)
    sink = sink_factory()

    def connector(server) -> BitfinexConnector:
        return BitfinexConnector(
            sink, 3, SYMBOL_IDS, ws_base_url=f"{server.ws_url}/ws/2", rest_base_url=server.http_url,
            snapshot_limit=depth,
        )

    return running(market, BitfinexSimulatedVenue(market, VENUE), connector, sink, SYMBOL_IDS, depth=depth)


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
            assert sum(c.checksums_failed + c.resyncs + c.parse_errors + c.crossed + c.gaps for c in counters) == 0
            assert all(len(h.connector.book(symbol).bids) == 25 for symbol in SYMBOL_IDS)  # venue has 60
            connection = h.connector.connection_counters[0]
            assert connection.sequence_gaps == connection.malformed_frames == connection.unknown_symbol_frames == 0

    run(scenario())


def test_bad_checksum_resubscribes_that_symbol_and_converges(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(h.all_live)
            h.venue.corrupt_checksums("ETH/USDT")
            await wait_until(lambda: h.connector.counters("ETH/USDT").checksums_failed == 1)
            await wait_until(lambda: h.connector.counters("ETH/USDT").snapshots == 2)
            await h.settled()
            h.assert_records_equal_truth()
            assert h.connector.counters("ETH/USDT").resubscribes == 1
            assert h.connector.counters("BTC/USDT").resyncs == 0
            assert h.server.connections_accepted == 1  # resubscribed in place, no reconnect
            clears = h.sink.of_kind(Kind.CLEAR)
            assert clears["reason"].tolist() == [Reason.CHECKSUM] and clears["symbol_id"].tolist() == [2]

    run(scenario())


def test_dropped_update_is_caught_by_the_checksum_and_resyncs_to_truth(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(h.all_live)
            # Changes outside the subscribed window cannot be missed (a level entering it is sent
            # whole), so withhold enough of them that one falls inside it.
            h.server.faults.drop_updates("BTC/USDT", 20)
            await wait_until(lambda: h.connector.counters("BTC/USDT").checksums_failed >= 1)
            await wait_until(lambda: h.connector.counters("BTC/USDT").snapshots >= 2)
            await h.settled()
            h.assert_records_equal_truth()
            assert h.connector.counters("ETH/USDT").resyncs == 0

    run(scenario())


def test_sequence_gap_reconnects_and_resyncs_every_book_to_truth(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(h.all_live)
            h.venue.skip_sequence()
            await wait_until(lambda: h.connector.connection_counters[0].sequence_gaps == 1)
            await wait_until(lambda: h.server.connections_accepted == 2)
            await wait_until(lambda: all(h.connector.counters(symbol).snapshots == 2 for symbol in SYMBOL_IDS))
            await h.settled()
            h.assert_records_equal_truth()
            clears = h.sink.of_kind(Kind.CLEAR)
            assert Reason.SEQUENCE_GAP in clears["reason"].tolist()
            assert all(h.connector.counters(symbol).gaps == 1 for symbol in SYMBOL_IDS)
            assert h.connector.connection_counters[0].sequence_gaps == 1  # the new connection's numbering is whole

    run(scenario())
