"""The Bybit module against its own simulator over real sockets on 127.0.0.1: three
category connections (spot, linear, inverse) on one server, books equal the venue's truth
level by level at the subscribed depth, pings are answered, and an injected ``u`` gap or a
disconnect clears the book and converges to the truth again."""

from __future__ import annotations

from actors.connectors.bybit import BybitConnector, BybitSimulatedVenue
from shm.records import Kind, Reason
from sim.market import Market, SymbolSpec, VenueSpec
from tests.venue_harness import run, running, wait_until

VENUE = "bybit"
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT": 2, "BTC/USDT:PERP": 3, "BTC/USD:PERP": 4}
SYMBOLS = (
    SymbolSpec("BTC/USDT", price="30000.00", tick_size="0.50", lot_size="0.00001", order_size="0.05"),
    SymbolSpec("ETH/USDT", price="2000.00", tick_size="0.05", lot_size="0.0001", order_size="0.5"),
    SymbolSpec("BTC/USDT:PERP", price="30010.0", tick_size="0.10", lot_size="0.001", order_size="0.05"),
    SymbolSpec("BTC/USD:PERP", price="30020.0", tick_size="0.50", lot_size="1", order_size="500"),
)


def harness(sink_factory, depth: int = 50, seed: int = 5):
    market = Market(SYMBOLS, [VenueSpec(VENUE)], seed=seed)
    sink = sink_factory()

    def connector(server) -> BybitConnector:
        connector = BybitConnector(
            sink, 5, SYMBOL_IDS, ws_base_url=f"{server.ws_url}/v5/public", rest_base_url=server.http_url,
            snapshot_limit=depth,
        )
        connector.application_ping_interval_s = 0.05  # Bybit wants 20 s; a test cannot wait that long
        return connector

    return running(market, BybitSimulatedVenue(market, VENUE), connector, sink, SYMBOL_IDS, depth=depth)


def test_books_equal_the_simulators_truth_level_by_level(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, depth=50) as h:
            assert [spec.url.rsplit("/", 1)[1] for spec in h.connector.connection_plan()] == [
                "spot", "linear", "inverse"]
            await wait_until(h.all_live)
            steps = h.simulator.market.step_number
            await wait_until(lambda: h.simulator.market.step_number >= steps + 40)
            await h.settled()
            h.assert_records_equal_truth()
            counters = [h.connector.counters(symbol) for symbol in SYMBOL_IDS]
            assert all(c.frames_applied >= 10 for c in counters)
            assert sum(c.trades for c in counters) > 0
            assert sum(c.gaps + c.resyncs + c.parse_errors + c.crossed for c in counters) == 0
            assert all(len(h.connector.book(symbol).bids) == 50 for symbol in SYMBOL_IDS)  # truncated: venue has 60
            connections = h.connector.connection_counters
            assert all(c.subscribe_acks >= 1 and c.ignored_frames >= 1 for c in connections)  # acks and pongs
            assert sum(c.malformed_frames + c.unknown_symbol_frames + c.subscribe_errors for c in connections) == 0

    run(scenario())


def test_injected_gap_resubscribes_that_symbol_and_converges(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, depth=50) as h:
            await wait_until(h.all_live)
            h.server.faults.drop_updates("BTC/USDT:PERP")
            await wait_until(lambda: h.connector.counters("BTC/USDT:PERP").gaps >= 1)
            await wait_until(lambda: h.connector.counters("BTC/USDT:PERP").snapshots >= 2)
            await h.settled()
            h.assert_records_equal_truth()
            clears = h.sink.of_kind(Kind.CLEAR)
            assert set(clears[clears["symbol_id"] == 3]["reason"].tolist()) == {Reason.SEQUENCE_GAP}
            assert h.connector.counters("BTC/USDT:PERP").resubscribes >= 1
            assert all(h.connector.counters(symbol).resyncs == 0 for symbol in SYMBOL_IDS if symbol != "BTC/USDT:PERP")
            assert h.server.connections_accepted == 3  # resubscribed in place, no reconnect

    run(scenario())


def test_disconnect_clears_every_book_and_resyncs_to_truth(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, depth=200) as h:
            await wait_until(h.all_live)
            await h.server.disconnect()
            await wait_until(lambda: h.server.connections_accepted == 6)
            await wait_until(lambda: all(h.connector.counters(symbol).snapshots >= 2 for symbol in SYMBOL_IDS))
            await h.settled()
            h.assert_records_equal_truth()
            clears = h.sink.of_kind(Kind.CLEAR)
            assert set(clears["symbol_id"].tolist()) == set(SYMBOL_IDS.values())
            assert set(clears["reason"].tolist()) == {Reason.DISCONNECTED}

    run(scenario())
