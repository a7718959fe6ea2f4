"""The Gate.io module against its own simulator side, over real sockets on 127.0.0.1:
books equal the simulator's truth level by level, a gap resyncs to it again, and a
``"full": true`` push replaces a book without a REST request."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from actors.connectors.gateio import GateioConnector, GateioSimulatedVenue
from shm.records import Kind, Reason
from sim.market import Market, SymbolSpec, VenueSpec
from tests.venue_harness import reasons_of_clears, run, running, wait_until

VENUE = "gateio"
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT": 2, "NKN/USDT": 3}
SPECS = [
    SymbolSpec("BTC/USDT", price="30000.00", tick_size="0.50", lot_size="0.00001", order_size="0.05"),
    SymbolSpec("ETH/USDT", price="2000.00", tick_size="0.05", lot_size="0.0001", order_size="0.5", volatility=0.0002),
    SymbolSpec("NKN/USDT", price="0.3521", tick_size="0.0001", lot_size="1", order_size="2000", volatility=0.0005),
]
BOOK_DEPTH = 40  # the simulator keeps at most twice this a side: inside Gate's 100-level window


def order_book_requests(h) -> int:
    return sum(path.startswith("/api/v4/spot/order_book") for _, path in h.server.http_requests)


def harness(sink_factory, seed: int = 6, start_runtime: bool = True):
    market = Market(SPECS, [VenueSpec(VENUE, depth=BOOK_DEPTH)], seed=seed)
    sink = sink_factory()

    def connector(server) -> GateioConnector:
        connector = GateioConnector(sink, 11, SYMBOL_IDS, rest_base_url=server.http_url, ws_base_url=server.ws_url)
        connector.snapshot_retry_initial_s = 0.05
        return connector

    return running(market, GateioSimulatedVenue(market), connector, sink, SYMBOL_IDS, start_runtime=start_runtime)

def test_books_equal_the_simulators_truth(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(h.all_live)
            steps = h.market.step_number
            await wait_until(lambda: h.market.step_number >= steps + 30)
            await h.paused_and_caught_up()
            h.assert_books_equal_truth()
            counters = [h.connector.counters(symbol) for symbol in SYMBOL_IDS]
            assert sum(c.frames_applied for c in counters) >= 30 and sum(c.trades for c in counters) > 0
            assert sum(c.gaps + c.parse_errors + c.crossed + c.resyncs for c in counters) == 0
            connection = h.connector.connection_counters[0]
            assert (connection.subscribe_acks, connection.subscribe_errors) == (len(SYMBOL_IDS) + 1, 0)

    run(scenario())


def test_injected_gap_clears_resyncs_and_converges_again(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(h.all_live)
            h.server.faults.drop_updates("BTC/USDT")
            await wait_until(lambda: h.connector.counters("BTC/USDT").gaps == 1)
            assert reasons_of_clears(h.sink, 1) == [Reason.SEQUENCE_GAP]
            await wait_until(lambda: h.connector.counters("BTC/USDT").snapshots == 2)
            await h.paused_and_caught_up()
            h.assert_books_equal_truth()
            assert h.connector.counters("ETH/USDT").resyncs == 0

    run(scenario())


def test_full_book_push_replaces_the_book_without_a_rest_request(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(h.all_live)
            requests = order_book_requests(h)
            snapshot_batches = len(h.sink.of_kind(Kind.SNAPSHOT_END))
            h.venue.push_full_book("ETH/USDT")
            await wait_until(lambda: h.connector.counters("ETH/USDT").snapshots == 2)
            await h.paused_and_caught_up()
            h.assert_books_equal_truth()
            assert order_book_requests(h) == requests
            assert len(h.sink.of_kind(Kind.SNAPSHOT_END)) == snapshot_batches + 1
            assert h.connector.counters("ETH/USDT").resyncs == 0

    run(scenario())


def test_rest_answers_in_gate_format(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, start_runtime=False) as h, aiohttp.ClientSession() as http:
            base = h.server.http_url
            async with http.get(f"{base}/api/v4/spot/currency_pairs") as response:
                instruments = {i.canonical: i for i in h.connector.parse_instruments(await response.read())}
            assert (instruments["NKN/USDT"].native, instruments["NKN/USDT"].tick_size) == ("NKN_USDT", 0.0001)
            path = "/api/v4/spot/order_book?currency_pair=BTC_USDT&limit=5"
            async with http.get(f"{base}{path}&with_id=true") as response:
                body = orjson.loads(await response.read())
            book = h.market.book(VENUE, "BTC/USDT")
            tick = max(book.bids)
            assert body["id"] == book.last_update_id and len(body["asks"]) == 5
            assert body["bids"][0][0] == f"{tick * 0.5:g}"  # no trailing zeros: "30000.5", "29999"
            async with http.get(f"{base}{path}") as response:
                assert "id" not in orjson.loads(await response.read())  # only with with_id=true
            refused = [("/api/v4/spot/order_book?currency_pair=NOPE_USDT", 400), ("/api/v3/depth", 404)]
            for refused_path, status in refused:
                async with http.get(base + refused_path) as response:
                    assert response.status == status, refused_path

    run(scenario())


def test_websocket_subscribe_ping_and_updates(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, start_runtime=False) as h:
            h.simulator.pause()
            async with connect(f"{h.server.ws_url}/ws/v4/", proxy=None) as websocket:
                subscribe = {"time": 1, "id": 7, "channel": "spot.order_book_update", "event": "subscribe"}
                await websocket.send(orjson.dumps(subscribe | {"payload": ["NKN_USDT", "100ms"]}).decode())
                ack = orjson.loads(await websocket.recv())
                assert (ack["id"], ack["channel"], ack["event"], ack["result"]) == (
                    7,
                    "spot.order_book_update",
                    "subscribe",
                    {"status": "success"},
                )
                await websocket.send(orjson.dumps(subscribe | {"id": 8, "payload": ["NOPE_USDT", "100ms"]}).decode())
                error = orjson.loads(await websocket.recv())
                assert (error["id"], error["error"]["code"], error["result"]) == (8, 2, None)
                await websocket.send('{"time":1,"channel":"spot.ping"}')
                pong = orjson.loads(await websocket.recv())
                assert (pong["channel"], pong["event"], pong["result"]) == ("spot.pong", "", None)
                await wait_until(lambda: h.server.session_count == 1)
                changes = []
                while not changes:  # a quiet step may leave NKN/USDT untouched
                    changes = [c for c in (await h.simulator.step()).book_changes if c.symbol == "NKN/USDT"]
                (change,) = changes
                update = orjson.loads(await websocket.recv())
                assert (update["channel"], update["event"]) == ("spot.order_book_update", "update")
                result = update["result"]
                assert (result["s"], result["U"], result["u"]) == (
                    "NKN_USDT",
                    change.first_update_id,
                    change.last_update_id,
                )
            with pytest.raises(InvalidStatus):
                async with connect(f"{h.server.ws_url}/ws/v3/", proxy=None):
                    pass

    run(scenario())
