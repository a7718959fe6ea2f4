"""The HTX module against its own simulator over real sockets on 127.0.0.1 (MBP on
``/feed``, gzip binary frames): books equal the venue's truth level by level, pings are
answered, and an injected gap breaks ``prevSeqNum``, clears, re-requests the snapshot on
the same connection and converges to the truth again."""

from __future__ import annotations

import gzip

import orjson

from actors.connectors.htx import HtxConnector, HtxSimulatedVenue
from shm.records import Kind, Reason
from sim.market import default_market
from tests.venue_harness import run, running, wait_until

VENUE = "htx"
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT": 2, "NKN/USDT": 3}
DEPTH = 20  # the simulated venue keeps 60 levels a side: the window matters


def harness(sink_factory, seed: int = 5):
    market = default_market((VENUE,), seed=seed)
    sink = sink_factory()

    def connector(server) -> HtxConnector:
        return HtxConnector(
            sink, 2, SYMBOL_IDS, ws_base_url=f"{server.ws_url}/feed", rest_base_url=server.http_url, snapshot_limit=DEPTH
        )

    return running(market, HtxSimulatedVenue(market, VENUE), connector, sink, SYMBOL_IDS, depth=DEPTH)


def test_venue_frames_are_gzip_with_linked_sequence_numbers() -> None:
    market = default_market((VENUE,), seed=3)
    venue = HtxSimulatedVenue(market, VENUE)
    session = venue.open_session("/feed")
    topic = "market.btcusdt.mbp.20"
    (ack,) = session.on_client_message(orjson.dumps({"sub": topic, "id": "a"}).decode())
    (reply,) = session.on_client_message(orjson.dumps({"req": topic, "id": "b"}).decode())
    assert orjson.loads(gzip.decompress(ack))["subbed"] == topic
    snapshot = orjson.loads(gzip.decompress(reply))
    assert snapshot["rep"] == topic and len(snapshot["data"]["bids"]) == DEPTH
    last = snapshot["data"]["seqNum"]
    pushes = []
    for number in range(1, 60):
        frames = session.frames(venue.encode_step(market.step(0.1, number * 100_000_000)))
        pushes.extend(orjson.loads(gzip.decompress(data)) for data in frames)
    books = [push for push in pushes if push.get("ch") == topic]
    assert books and all(isinstance(data, bytes) for data in frames)
    for push in books:
        assert push["tick"]["prevSeqNum"] == last and push["tick"]["seqNum"] > last
        last = push["tick"]["seqNum"]
    assert any("ping" in push for push in pushes)
    (error,) = session.on_client_message('{"sub":"market.nosuch.mbp.20","id":"c"}')
    assert orjson.loads(gzip.decompress(error))["status"] == "error"


def test_books_equal_the_simulators_truth_level_by_level(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(h.all_live)
            steps = h.simulator.market.step_number
            await wait_until(lambda: h.simulator.market.step_number >= steps + 60)
            await h.settled()
            h.assert_records_equal_truth()
            counters = [h.connector.counters(symbol) for symbol in SYMBOL_IDS]
            assert sum(c.frames_applied for c in counters) >= 40
            assert sum(c.trades for c in counters) > 0
            assert sum(c.gaps + c.resyncs + c.parse_errors + c.crossed for c in counters) == 0
            await wait_until(lambda: h.venue.pongs_received >= 1)

    run(scenario())


def test_injected_gap_breaks_prev_seq_num_and_resyncs_to_truth(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await wait_until(h.all_live)
            h.server.faults.drop_updates("BTC/USDT")
            await wait_until(lambda: h.connector.counters("BTC/USDT").gaps >= 1)
            await wait_until(lambda: h.connector.counters("BTC/USDT").snapshots >= 2)
            await h.settled()
            h.assert_records_equal_truth()
            clears = h.sink.of_kind(Kind.CLEAR)
            assert set(clears[clears["symbol_id"] == 1]["reason"].tolist()) == {Reason.SEQUENCE_GAP}
            assert h.connector.counters("BTC/USDT").resubscribes >= 1
            assert h.connector.counters("ETH/USDT").resyncs == 0
            assert h.server.connections_accepted == 1  # re-requested in place, no reconnect

    run(scenario())
