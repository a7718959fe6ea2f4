"""Which markets feed which consolidated instrument, resolved from the config once.

Every configured symbol is an instrument of its own across the exchanges that list it
(``BTC/USDT:PERP`` groups the USDT perpetuals of Binance futures, OKX and Bybit); the
``instruments`` section adds synthetic ones. Instrument ids follow this order: the
symbols in config order, then the synthetic instruments in config order. The supervisor
sizes one book segment per instrument from it and the aggregator builds its books from
it, so both agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import Config
from shm.book import BookLayout


@dataclass(frozen=True, slots=True)
class Member:
    """One market feeding an instrument; ``rate_book`` (exchange id, symbol id) is the book
    whose mid converts its prices, None when they are taken as they are (same quote or 1:1)."""

    exchange: int
    symbol: int
    rate_book: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class InstrumentPlan:
    name: str
    members: tuple[Member, ...]
    tick: float  # grid of converted levels (unused when no member is converted)
    absolute_unit: float  # width of the absolute buckets; 0 = none


def instrument_plans(config: Config) -> list[InstrumentPlan]:
    exchange_ids = config.exchange_ids()
    symbol_ids = config.symbol_ids()
    enabled = {name: config.exchanges[name] for name in exchange_ids}
    plans = [
        InstrumentPlan(
            symbol,
            tuple(Member(exchange_ids[name], symbol_ids[symbol]) for name, ex in enabled.items() if symbol in ex.symbols),
            0.0,
            config.buckets.absolute.get(symbol, 0.0),
        )
        for symbol in config.symbols
    ]
    for name, instrument in config.instruments.items():
        members = []
        for market in instrument.markets:
            quote = market.split("/")[1].split(":")[0]
            rule = "1:1" if quote == instrument.quote else instrument.convert[quote]
            rate_book = None
            if rule != "1:1":
                rate_exchange, book = rule.split(":", 1)
                rate_book = (exchange_ids[rate_exchange], symbol_ids[book])
            for exchange, settings in enabled.items():
                if market in settings.symbols and (not instrument.exchanges or exchange in instrument.exchanges):
                    members.append(Member(exchange_ids[exchange], symbol_ids[market], rate_book))
        plans.append(InstrumentPlan(name, tuple(members), instrument.tick, config.buckets.absolute.get(name, 0.0)))
    return plans


def book_layout(config: Config) -> BookLayout:
    return BookLayout(
        depth=config.shm.book_depth,
        exchanges=max(len(config.exchange_ids()), 1),
        slots=config.shm.book_slots,
        bps_buckets=config.buckets.bps_count,
        absolute_buckets=config.buckets.absolute_count,
        imbalance_depths=len(config.metrics.imbalance_bps),
        depth_steps=len(config.metrics.depth_steps_bps),
    )
