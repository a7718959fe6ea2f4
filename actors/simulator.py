"""The simulator actor: the synthetic market of ``sim/`` served on loopback, as an actor.

Used by ``coby demo`` and the end-to-end tests. Every enabled exchange is served over its
own wire protocol at the loopback ports named by that exchange's configured ``ws_url``
and ``rest_url``, so connectors run unchanged against it.
"""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlsplit

from actors.connectors import load_exchange_module
from engine.actor import Actor
from engine.config import Config
from sim.market import Market, SymbolSpec, VenueSpec
from sim.server import Simulator


def _port(url: str) -> int:
    port = urlsplit(url).port
    if port is None:
        raise ValueError(f"simulated exchange URL {url!r} needs an explicit loopback port")
    return port


def _decimal_text(value: float) -> str:
    """Plain decimal text of a config number (``1e-05`` → ``0.00001``), as venues write it."""
    return format(Decimal(repr(value)), "f")


def build_market(config: Config) -> Market:
    """The simulator's market for every enabled exchange and configured symbol."""
    specs = [
        SymbolSpec(
            symbol,
            price=_decimal_text(settings.mid),
            tick_size=_decimal_text(settings.tick),
            lot_size=_decimal_text(settings.lot),
            volatility=settings.volatility,
            order_size=_decimal_text(settings.order_size),
        )
        for symbol, settings in config.simulator.symbols.items()
    ]
    venues = [VenueSpec(name) for name in config.exchange_ids()]
    return Market(specs, venues, seed=config.simulator.seed)


class SimulatorActor(Actor):
    async def setup(self) -> None:
        config = self.config
        missing = set(config.symbols) - set(config.simulator.symbols)
        if missing:
            raise ValueError(
                f"the simulator has no market for {sorted(missing)}: add them under simulator.symbols in config.yaml"
            )
        market = build_market(config)
        self.simulator = Simulator(market, cadence_s=config.simulator.update_interval_ms / 1000)
        for name in config.exchange_ids():
            exchange = config.exchanges[name]
            venue = load_exchange_module(name).SIMULATED_VENUE(market)
            self.simulator.add_venue(venue, _port(exchange.ws_url), _port(exchange.rest_url), config.simulator.host)
        await self.simulator.start()
        for server in self.simulator.venue_servers:
            self.log.info("simulating", venue=server.venue.venue, ws=server.ws_url, rest=server.http_url)

    async def teardown(self) -> None:
        if (simulator := getattr(self, "simulator", None)) is not None:
            await simulator.stop()
