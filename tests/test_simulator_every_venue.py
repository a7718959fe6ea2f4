"""Every venue's connector against its own simulator over real WebSockets on 127.0.0.1, in
one scenario: the books equal the simulator's truth level by level after thousands of level
updates, and again after an injected disconnect, a lost update and, where the venue sends
checksums, a bad checksum. Each fault clears exactly the books the venue's rule says, with
the reason it says, and the counters add up to the faults injected.

Each venue runs in the harness of its own ``test_simulator_<venue>.py`` (Bitstamp's is built
inline there, KuCoin's venue is kept shallower, see below), with a longer market step, so a
test sees thousands of level changes in a second or two.

Not every venue can see every fault: Bitstamp and Coinbase's default ``level2_batch`` carry no
sequence, so a lost update is invisible there (Coinbase Advanced Trade runs as a second case
for it); only Kraken and Bitfinex send checksums (OKX sends 0, Bybit v5, HTX and Gate.io none)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import pytest

from actors.connectors import EXCHANGE_MODULES
from actors.connectors.bitstamp import BitstampConnector, BitstampSimulatedVenue
from actors.connectors.coinbase import ADVANCED, EXCHANGE
from actors.connectors.kucoin import KucoinConnector, KucoinSimulatedVenue
from shm.records import Kind, Reason
from sim.market import Market, VenueSpec, default_market
from tests import (
    test_simulator as binance_tests,
    test_simulator_binance_futures as binance_futures_tests,
    test_simulator_bitfinex as bitfinex_tests,
    test_simulator_bybit as bybit_tests,
    test_simulator_coinbase as coinbase_tests,
    test_simulator_gateio as gateio_tests,
    test_simulator_htx as htx_tests,
    test_simulator_kraken as kraken_tests,
    test_simulator_kucoin as kucoin_tests,
    test_simulator_okx as okx_tests,
)
from tests.venue_harness import Harness, run, running, wait_until

MARKET_STEP_S = 0.1  # market seconds per 10 ms step: ~7 level changes a symbol, not the default's ~0.7
WARM_UP_LEVELS = 2_000
LEVELS_AFTER_A_FAULT = 500


# ---- how a lost update is made ---------------------------------------------------------------


async def drop_a_visible_update(h: Harness, symbol: str) -> None:
    """Withhold a change of ``symbol`` that alters the window the connector keeps (a change
    outside a subscribed window is no loss: the venue sends nothing for it). The withheld
    steps are made by hand with the clock paused, so the next sent frame reveals the loss."""
    h.simulator.pause()
    while True:
        window = h.market.truth(h.name, symbol, h.depth)
        h.server.faults.drop_updates(symbol)
        while not any(
            change.venue == h.name and change.symbol == symbol for change in (await h.simulator.step()).book_changes
        ):
            pass  # a step that leaves the symbol alone does not use the fault up
        if h.market.truth(h.name, symbol, h.depth) != window:
            break
    h.simulator.resume()


async def skip_a_sequence_number(h: Harness, symbol: str) -> None:
    """Bitfinex numbers every frame of a connection (SEQ_ALL): the lost frame is the connection's."""
    h.venue.skip_sequence()


@dataclass(frozen=True)
class LostUpdate:
    """How a venue notices an update it never got."""

    symbol: str
    reason: Reason  # SEQUENCE_GAP, or CHECKSUM where only the checksum can show it
    connection_wide: bool = False  # the sequence numbers a connection's frames: all its books resync
    reconnects: bool = False  # the numbering cannot resume: the connection is replaced
    inject: Callable[[Harness, str], Awaitable[None]] = drop_a_visible_update

    @property
    def clears(self) -> list[Reason]:
        """The CLEAR reasons every resynced book gets (a replaced connection clears again)."""
        return [self.reason, Reason.DISCONNECTED] if self.reconnects else [self.reason]


@dataclass(frozen=True)
class VenueCase:
    open: Callable[[type], contextlib.AbstractAsyncContextManager[Harness]]
    lost_update: LostUpdate | None  # None: the venue has no sequence or checksum to show one
    bad_checksum_symbol: str | None = None  # set for the venues whose simulator sends checksums


def bitstamp_harness(sink_factory):
    """Bitstamp's own test builds its harness inline; the same one."""
    market = default_market(("bitstamp",), seed=6)
    sink = sink_factory()
    symbol_ids = {"BTC/USDT": 1, "ETH/USDT": 2, "NKN/USDT": 3}

    def connector(server) -> BitstampConnector:
        return BitstampConnector(sink, 1, symbol_ids, rest_base_url=server.http_url, ws_url=server.ws_url)

    return running(market, BitstampSimulatedVenue(market, "bitstamp"), connector, sink, symbol_ids)


def kucoin_harness(sink_factory):
    """KuCoin's own harness but for the venue's depth: the public REST snapshot holds 100
    levels a side, and a level below a partial snapshot that never changes again cannot be
    known, so the venue keeps at most 80 (the default 60 grows to 120 over a long run)."""
    symbols = default_market(("kucoin",)).symbols.values()
    market = Market(symbols, [VenueSpec("kucoin", depth=40)], seed=4)
    sink = sink_factory()
    symbol_ids = kucoin_tests.SYMBOL_IDS

    def connector(server) -> KucoinConnector:
        return KucoinConnector(
            sink, 1, symbol_ids, rest_base_url=server.http_url, ticker_cross_check=True, await_welcome=False
        )

    return running(market, KucoinSimulatedVenue(market, "kucoin"), connector, sink, symbol_ids)


GAP = Reason.SEQUENCE_GAP
CASES = [  # in EXCHANGE_MODULES order; Coinbase twice: its default feed has no sequence, Advanced Trade has
    pytest.param(VenueCase(binance_tests.harness, LostUpdate("BTC/USDT", GAP)), id="binance"),
    pytest.param(
        VenueCase(binance_futures_tests.harness, LostUpdate("ETH/USDT:PERP", GAP)), id="binance_futures"
    ),
    pytest.param(VenueCase(partial(coinbase_tests.harness, api=EXCHANGE), None), id="coinbase"),
    pytest.param(
        VenueCase(
            partial(coinbase_tests.harness, api=ADVANCED), LostUpdate("ETH/USDT", GAP, connection_wide=True)
        ),
        id="coinbase-advanced",
    ),
    pytest.param(
        VenueCase(kraken_tests.harness, LostUpdate("BTC/USDT", Reason.CHECKSUM), bad_checksum_symbol="ETH/USDT"),
        id="kraken",
    ),
    pytest.param(VenueCase(htx_tests.harness, LostUpdate("BTC/USDT", GAP)), id="htx"),
    pytest.param(
        VenueCase(
            bitfinex_tests.harness,
            LostUpdate("BTC/USDT", GAP, connection_wide=True, reconnects=True, inject=skip_a_sequence_number),
            bad_checksum_symbol="ETH/USDT",
        ),
        id="bitfinex",
    ),
    pytest.param(VenueCase(okx_tests.harness, LostUpdate("ETH/USDT:PERP", GAP)), id="okx"),
    pytest.param(VenueCase(bybit_tests.harness, LostUpdate("BTC/USDT:PERP", GAP)), id="bybit"),
    pytest.param(VenueCase(kucoin_harness, LostUpdate("BTC/USDT", GAP)), id="kucoin"),
    pytest.param(VenueCase(bitstamp_harness, None), id="bitstamp"),  # no sequence: a lost diff cannot be seen
    pytest.param(VenueCase(gateio_tests.harness, LostUpdate("BTC/USDT", GAP)), id="gateio"),
]


# ---- what the scenario reads -----------------------------------------------------------------


def levels_applied(h: Harness) -> int:
    return sum(h.connector.counters(symbol).levels_applied for symbol in h.symbol_ids)


async def run_for_levels(h: Harness, count: int) -> None:
    """Let the market run until the connector has applied ``count`` more level updates."""
    target = levels_applied(h) + count
    h.simulator.resume()
    await wait_until(lambda: levels_applied(h) >= target, timeout=15)


def clears_since(h: Harness, batch_mark: int) -> dict[int, list[int]]:
    """symbol_id → the reasons of the CLEAR records written since ``batch_mark`` batches."""
    clears: dict[int, list[int]] = {}
    for batch in h.sink.batches[batch_mark:]:
        for record in batch[batch["kind"] == Kind.CLEAR]:
            clears.setdefault(int(record["symbol_id"]), []).append(int(record["reason"]))
    return clears


def symbols_on_the_connection_of(h: Harness, symbol: str) -> list[str]:
    (feeds,) = [feeds for feeds in h.connector.connections if any(f.instrument.canonical == symbol for f in feeds)]
    return [feed.instrument.canonical for feed in feeds]


def counter(h: Harness, symbol: str, name: str) -> int:
    return getattr(h.connector.counters(symbol), name, 0)


def counters_of(h: Harness, name: str) -> dict[str, int]:
    return {symbol: counter(h, symbol, name) for symbol in h.symbol_ids}


# ---- the scenario ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One injected fault and what the venue's rules say it does."""

    inject: Callable[[], Awaitable[None]]
    resynced: list[str]  # the symbols whose books it clears
    clears: list[Reason]  # the CLEAR reasons each of them gets, in order
    detected_in: str | None  # the counter each resynced symbol's detection adds one to; None: a disconnect
    reconnects: int = 0  # connections opened anew


async def converges_through(h: Harness, fault: Fault) -> None:
    """Inject ``fault`` into the running market; the books it clears are snapshotted again,
    the market runs on, and every book and the records equal the truth."""
    before = {name: counters_of(h, name) for name in ("snapshots", "resyncs", "gaps", "checksums_failed")}
    accepted = h.server.connections_accepted
    mark = len(h.sink.batches)
    h.simulator.resume()
    await fault.inject()
    await wait_until(lambda: all(counter(h, s, "snapshots") > before["snapshots"][s] for s in fault.resynced))
    await wait_until(h.all_live)
    await run_for_levels(h, LEVELS_AFTER_A_FAULT)
    await h.settled()
    h.assert_books_equal_truth()
    assert clears_since(h, mark) == {h.symbol_ids[symbol]: fault.clears for symbol in fault.resynced}
    assert h.server.connections_accepted == accepted + fault.reconnects
    added = {name: dict.fromkeys(h.symbol_ids, 0) for name in before}
    for symbol in fault.resynced:
        added["snapshots"][symbol] = 1
        if fault.detected_in is not None:
            added["resyncs"][symbol] = added[fault.detected_in][symbol] = 1
    for name, counts in before.items():
        assert counters_of(h, name) == {s: count + added[name][s] for s, count in counts.items()}, name


def disconnect(h: Harness) -> Fault:
    return Fault(
        h.server.disconnect,
        list(h.symbol_ids),
        [Reason.DISCONNECTED],
        detected_in=None,
        reconnects=len(h.connector.connection_plan()),
    )


def lose_an_update(h: Harness, lost: LostUpdate) -> Fault:
    return Fault(
        partial(lost.inject, h, lost.symbol),
        symbols_on_the_connection_of(h, lost.symbol) if lost.connection_wide else [lost.symbol],
        lost.clears,
        detected_in="gaps" if lost.reason == GAP else "checksums_failed",
        reconnects=int(lost.reconnects),
    )


def corrupt_a_checksum(h: Harness, symbol: str) -> Fault:
    async def inject() -> None:
        h.venue.corrupt_checksums(symbol)

    return Fault(inject, [symbol], [Reason.CHECKSUM], detected_in="checksums_failed")  # resubscribed in place


@pytest.mark.parametrize("case", CASES)
def test_books_equal_the_truth_through_thousands_of_updates_and_every_fault(case: VenueCase, sink_factory) -> None:
    async def scenario() -> None:
        async with case.open(sink_factory) as h:
            h.simulator.step_s = MARKET_STEP_S
            await wait_until(h.all_live)
            await run_for_levels(h, WARM_UP_LEVELS)
            await h.settled()
            h.assert_books_equal_truth()
            assert clears_since(h, 0) == {}
            for name in ("snapshots", "resyncs", "gaps", "checksums_failed"):
                assert counters_of(h, name) == dict.fromkeys(h.symbol_ids, int(name == "snapshots")), name

            await converges_through(h, disconnect(h))
            if case.lost_update is not None:
                await converges_through(h, lose_an_update(h, case.lost_update))
            if case.bad_checksum_symbol is not None:
                await converges_through(h, corrupt_a_checksum(h, case.bad_checksum_symbol))

            for name in ("parse_errors", "crossed", "cross_check_mismatches"):
                assert counters_of(h, name) == dict.fromkeys(h.symbol_ids, 0), name
            for symbol in h.symbol_ids:  # every delta frame applied or dropped, none still buffered
                counters = h.connector.counters(symbol)
                assert counters.frames == counters.frames_applied + counters.frames_dropped, symbol
            for connection in h.connector.connection_counters:
                assert (connection.malformed_frames, connection.unknown_symbol_frames) == (0, 0)
            if case.bad_checksum_symbol is not None:
                assert all(count > 0 for count in counters_of(h, "checksums_ok").values())

    run(scenario(), 40)


def test_every_exchange_module_has_a_case() -> None:
    assert [param.id.removesuffix("-advanced") for param in CASES] == [
        name for name in EXCHANGE_MODULES for _ in range(2 if name == "coinbase" else 1)
    ]
