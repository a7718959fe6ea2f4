"""Exchange modules by name.

Each module holds one venue's protocol in both directions and exposes two names:
``CONNECTOR`` (a :class:`actors.connectors.base.Connector` subclass) and
``SIMULATED_VENUE`` (a :class:`sim.venue.SimulatedVenue` subclass).
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXCHANGE_MODULES = {  # in the order the project lists its venues (docs and config errors)
    "binance": "actors.connectors.binance",
    "binance_futures": "actors.connectors.binance_futures",
    "coinbase": "actors.connectors.coinbase",
    "kraken": "actors.connectors.kraken",
    "htx": "actors.connectors.htx",
    "bitfinex": "actors.connectors.bitfinex",
    "okx": "actors.connectors.okx",
    "bybit": "actors.connectors.bybit",
    "kucoin": "actors.connectors.kucoin",
    "bitstamp": "actors.connectors.bitstamp",
    "gateio": "actors.connectors.gateio",
}


class UnknownExchangeError(LookupError):
    pass


def load_exchange_module(name: str) -> ModuleType:
    """The module of exchange ``name``; an unknown name lists the known ones."""
    try:
        module_name = EXCHANGE_MODULES[name]
    except KeyError:
        known = ", ".join(sorted(EXCHANGE_MODULES))
        raise UnknownExchangeError(f"unknown exchange {name!r}; known exchanges: {known}") from None
    return importlib.import_module(module_name)
