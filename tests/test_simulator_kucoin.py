"""The KuCoin connector against its simulator side over real sockets on 127.0.0.1.

The stand-in runtime does what actors/connector.py must add for KuCoin: the
``pre_connect`` token request and
``resolve_connection`` before every connect; it subscribes on open (``await_welcome=False``)
rather than after the simulator's welcome greeting."""

from __future__ import annotations

import aiohttp
import orjson
from websockets.asyncio.client import connect

from actors.connectors.kucoin import KucoinConnector, KucoinSimulatedVenue
from shm.records import Reason
from sim.market import default_market
from sim.server import Simulator
from tests.venue_harness import reasons_of_clears, run, running, wait_until

VENUE = "kucoin"
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT": 2, "NKN/USDT": 3}


def running_venue(sink):
    market = default_market((VENUE,), seed=4)

    def connector(server) -> KucoinConnector:
        return KucoinConnector(
            sink,
            1,
            SYMBOL_IDS,
            rest_base_url=server.http_url,
            ticker_cross_check=True,
            await_welcome=False,
        )

    return running(market, KucoinSimulatedVenue(market, VENUE), connector, sink, SYMBOL_IDS)


def test_books_equal_the_simulators_truth_and_a_gap_resyncs(sink_factory) -> None:
    async def scenario() -> None:
        sink = sink_factory()
        async with running_venue(sink) as h:
            await wait_until(h.all_live)
            steps = h.market.step_number
            await wait_until(lambda: h.market.step_number >= steps + 20)
            h.server.faults.drop_updates("BTC/USDT")
            await wait_until(lambda: h.connector.counters("BTC/USDT").gaps == 1)
            assert reasons_of_clears(sink, 1) == [Reason.SEQUENCE_GAP]
            await wait_until(lambda: h.connector.counters("BTC/USDT").snapshots == 2)
            await h.paused_and_caught_up()
            h.assert_books_equal_truth()  # the simulator's books are < 100 deep
            counters = [h.connector.counters(symbol) for symbol in SYMBOL_IDS]
            assert sum(c.trades for c in counters) > 0 and sum(c.cross_checks for c in counters) > 0
            assert sum(c.cross_check_mismatches + c.parse_errors + c.crossed for c in counters) == 0
            assert h.connector.counters("ETH/USDT").resyncs == 0

    run(scenario(), 20)


def test_simulator_answers_bullet_ping_and_unknown_topics(sink_factory) -> None:
    async def scenario() -> None:
        market = default_market((VENUE,), seed=1)
        simulator = Simulator(market, cadence_s=None)
        venue = KucoinSimulatedVenue(market, VENUE)
        server = simulator.add_venue(venue)
        async with simulator, aiohttp.ClientSession() as http:
            async with http.get(f"{server.http_url}/api/v1/bullet-public") as response:
                bullet = orjson.loads(await response.read())["data"]
            url = f"{bullet['instanceServers'][0]['endpoint']}?token={bullet['token']}&connectId=x"
            async with connect(url, proxy=None) as websocket:
                assert orjson.loads(await websocket.recv()) == {"id": "x", "type": "welcome"}
                await websocket.send('{"id":"9","type":"ping"}')
                assert orjson.loads(await websocket.recv()) == {
                    "id": "9",
                    "type": "pong",
                }
                await websocket.send(
                    '{"id":"3","type":"subscribe","topic":"/market/level2:NOPE-USDT"}'
                )
                assert orjson.loads(await websocket.recv())["code"] == 404

    run(scenario(), 10)
