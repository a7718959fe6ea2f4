"""The OKX module against its own simulator over real sockets on 127.0.0.1, today's protocol:
no snapshot in the stream, checksum 0, every book seeded from ``GET /api/v5/market/books``
and kept by the seqId rule. Spot and swap books equal the venue's truth level by level after
thousands of level updates, and again after a disconnect (every book re-seeded from REST) and
a lost update (the one book re-seeded, no resubscription, no reconnect). A snapshot still
sent in the stream is ignored by today's connector and seeds the recorded generation's; the
REST book answers in OKX's shape; a 429's Retry-After is waited out; pings are answered."""

from __future__ import annotations

import aiohttp
import orjson

from actors.connectors.okx import BOOK_DEPTH, BOOKS_PATH, OkxConnector, OkxSimulatedVenue, OkxStreamSeededConnector
from shm.records import Reason
from sim.market import SymbolSpec, default_market
from tests.venue_harness import Harness, reasons_of_clears, run, running, wait_until

VENUE = "okx"
SYMBOL_IDS = {"BTC/USDT": 1, "ETH/USDT:PERP": 2, "NKN/USDT": 3}
SYMBOLS = (
    SymbolSpec("BTC/USDT", price="30000.00", tick_size="0.1", lot_size="0.00000001", order_size="0.05"),
    SymbolSpec("ETH/USDT:PERP", price="2000.00", tick_size="0.01", lot_size="1", order_size="20", volatility=0.0002),
    SymbolSpec("NKN/USDT", price="0.3521", tick_size="0.0001", lot_size="0.01", order_size="2000", volatility=0.0005),
)
MARKET_STEP_S = 0.1  # market seconds per 10 ms step: thousands of level changes in a few seconds
WARM_UP_LEVELS = 3_000
LEVELS_AFTER_A_FAULT = 500


def harness(
    sink_factory,
    seed: int = 5,
    ping_interval_s: float | None = None,
    stream_snapshots: bool = False,
    connector_class: type[OkxConnector] | type[OkxStreamSeededConnector] = OkxConnector,
):
    """Every URL of ``instruments_urls`` is fetched (SPOT and SWAP) by the stand-in runtime."""
    market = default_market((VENUE,), seed=seed, symbols=SYMBOLS)
    sink = sink_factory()

    def connector(server) -> OkxConnector | OkxStreamSeededConnector:
        connector = connector_class(
            sink, 5, SYMBOL_IDS, ws_base_url=f"{server.ws_url}/ws/v5/public", rest_base_url=server.http_url
        )
        if ping_interval_s is not None:
            connector.application_ping_interval_s = ping_interval_s
        return connector

    venue = OkxSimulatedVenue(market, VENUE, stream_snapshots=stream_snapshots)
    return running(market, venue, connector, sink, SYMBOL_IDS, depth=BOOK_DEPTH)


def counters_of(h: Harness, name: str) -> dict[str, int]:
    return {symbol: getattr(h.connector.counters(symbol), name) for symbol in SYMBOL_IDS}


def book_requests(h: Harness) -> dict[str, int]:
    """REST book requests the venue served, by instId."""
    counts: dict[str, int] = {}
    for _, path in h.server.http_requests:
        if path.startswith(BOOKS_PATH):
            native = path.split("instId=")[1].split("&")[0]
            counts[native] = counts.get(native, 0) + 1
    return counts


async def run_for_levels(h: Harness, count: int) -> None:
    target = sum(counters_of(h, "levels_applied").values()) + count
    h.simulator.resume()
    await wait_until(lambda: sum(counters_of(h, "levels_applied").values()) >= target, timeout=15)


async def warmed_up(h: Harness) -> None:
    h.simulator.step_s = MARKET_STEP_S
    await wait_until(h.all_live)
    await run_for_levels(h, WARM_UP_LEVELS)
    await h.settled()
    h.assert_books_equal_truth()


async def converges(h: Harness) -> None:
    await wait_until(h.all_live)
    await run_for_levels(h, LEVELS_AFTER_A_FAULT)
    await h.settled()
    h.assert_books_equal_truth()


def test_spot_and_swap_books_equal_the_truth_through_thousands_of_level_updates(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            assert h.connector.feeds_by_canonical["ETH/USDT:PERP"].instrument.tick_size == 0.01  # from the SWAP list
            await warmed_up(h)
            assert sum(counters_of(h, "levels_applied").values()) >= WARM_UP_LEVELS
            assert counters_of(h, "snapshots") == dict.fromkeys(SYMBOL_IDS, 1)
            assert book_requests(h) == {"BTC-USDT": 1, "ETH-USDT-SWAP": 1, "NKN-USDT": 1}
            assert f"{BOOKS_PATH}?instId=BTC-USDT&sz=400" in [path for _, path in h.server.http_requests]
            for name in ("gaps", "resyncs", "parse_errors", "crossed", "stale_snapshots", "snapshot_failures"):
                assert counters_of(h, name) == dict.fromkeys(SYMBOL_IDS, 0), name
            assert sum(counters_of(h, "trades").values()) > 0
            assert reasons_of_clears(h.sink, 1) == []
            counters = h.connector.connection_counters[0]
            assert (counters.subscribe_acks, counters.subscribe_errors, counters.malformed_frames) == (6, 0, 0)

    run(scenario(), 30)


def test_a_disconnect_clears_every_book_and_reseeds_each_from_rest(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await warmed_up(h)
            h.simulator.resume()
            await h.server.disconnect()
            await wait_until(lambda: h.server.connections_accepted == 2)
            await converges(h)
            for symbol_id in SYMBOL_IDS.values():
                assert reasons_of_clears(h.sink, symbol_id) == [Reason.DISCONNECTED]
            assert counters_of(h, "snapshots") == dict.fromkeys(SYMBOL_IDS, 2)
            assert counters_of(h, "resyncs") == dict.fromkeys(SYMBOL_IDS, 0)

    run(scenario(), 30)


def test_a_lost_update_breaks_the_seq_id_chain_and_reseeds_that_book_only(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            await warmed_up(h)
            h.simulator.resume()
            h.server.faults.drop_updates("ETH/USDT:PERP")
            await wait_until(lambda: h.connector.counters("ETH/USDT:PERP").gaps == 1)
            await converges(h)
            assert reasons_of_clears(h.sink, 2) == [Reason.SEQUENCE_GAP]
            assert reasons_of_clears(h.sink, 1) == reasons_of_clears(h.sink, 3) == []
            assert counters_of(h, "gaps") == counters_of(h, "resyncs") == {"BTC/USDT": 0, "ETH/USDT:PERP": 1,
                                                                           "NKN/USDT": 0}
            assert counters_of(h, "snapshots") == {"BTC/USDT": 1, "ETH/USDT:PERP": 2, "NKN/USDT": 1}
            assert book_requests(h) == {"BTC-USDT": 1, "ETH-USDT-SWAP": 2, "NKN-USDT": 1}
            assert h.server.connections_accepted == 1  # re-seeded from REST: no reconnect
            assert h.connector.connection_counters[0].subscribe_acks == 6  # and no resubscription

    run(scenario(), 30)


def test_a_snapshot_still_sent_in_the_stream_is_ignored_by_todays_connector(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, stream_snapshots=True) as h:
            await wait_until(h.all_live)
            await h.settled()
            h.assert_books_equal_truth()
            assert h.connector.connection_counters[0].ignored_frames == 3  # one snapshot a book
            assert counters_of(h, "snapshots") == dict.fromkeys(SYMBOL_IDS, 1)  # the REST ones
            assert book_requests(h) == {"BTC-USDT": 1, "ETH-USDT-SWAP": 1, "NKN-USDT": 1}

    run(scenario())


def test_the_recorded_generations_connector_syncs_from_the_snapshot_in_the_stream(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, stream_snapshots=True, connector_class=OkxStreamSeededConnector) as h:
            await wait_until(h.all_live)
            await run_for_levels(h, LEVELS_AFTER_A_FAULT)
            await h.settled()
            h.assert_books_equal_truth()
            assert counters_of(h, "snapshots") == dict.fromkeys(SYMBOL_IDS, 1)
            assert counters_of(h, "checksums_ok") == dict.fromkeys(SYMBOL_IDS, 0)  # checksum 0: not sent
            assert book_requests(h) == {}

    run(scenario())


def test_rest_books_answer_in_okx_shape_at_the_current_seq_id(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            h.simulator.pause()
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{h.server.http_url}{BOOKS_PATH}?instId=NKN-USDT&sz=2") as response:
                    assert response.status == 200
                    body = orjson.loads(await response.read())
                async with http.get(f"{h.server.http_url}{BOOKS_PATH}?instId=NKN-USDC&sz=2") as response:
                    assert (response.status, orjson.loads(await response.read())["code"]) == (400, "51001")
                async with http.get(f"{h.server.http_url}{BOOKS_PATH}?instId=NKN-USDT&sz=401") as response:
                    assert (response.status, orjson.loads(await response.read())["code"]) == (400, "51000")
            assert (body["code"], body["msg"], len(body["data"])) == ("0", "", 1)
            (entry,) = body["data"]
            assert sorted(entry) == ["asks", "bids", "seqId", "ts"]
            assert entry["seqId"] == h.market.book(VENUE, "NKN/USDT").last_update_id
            bids, asks = h.market.truth(VENUE, "NKN/USDT", 2)
            assert [[float(price), float(size)] for price, size, _, _ in entry["bids"]] == [list(level) for level in bids]
            assert [[float(price), float(size)] for price, size, _, _ in entry["asks"]] == [list(level) for level in asks]
            assert all(len(level) == 4 and level[2] == "0" and isinstance(level[0], str) for level in entry["asks"])

    run(scenario())


def test_a_rate_limited_snapshot_waits_for_retry_after(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory) as h:
            h.server.faults.rate_limit_snapshots(count=1, retry_after_s=1)
            await wait_until(h.all_live)
            requests = [(time, path) for time, path in h.server.http_requests if path.startswith(BOOKS_PATH)]
            refused_at, refused = requests[0]  # the first request the venue saw got the 429
            retried_at = [time for time, path in requests[1:] if path == refused]
            assert len(requests) == 4 and len(retried_at) == 1
            assert retried_at[0] - refused_at >= 0.99  # Retry-After: 1
            assert sum(counters_of(h, "snapshot_failures").values()) == 1
            await h.settled()
            h.assert_books_equal_truth()

    run(scenario())


def test_text_pings_are_answered_with_pong(sink_factory) -> None:
    async def scenario() -> None:
        async with harness(sink_factory, ping_interval_s=0.05) as h:
            h.simulator.pause()
            await wait_until(lambda: h.connector.connection_counters[0].ignored_frames >= 2)  # two pongs
            assert h.connector.connection_counters[0].malformed_frames == 0

    run(scenario())
