"""Crafted consolidated books published into a real book segment the way the aggregator
publishes them (its metrics code, per-exchange tops), for feature and signal tests."""

from __future__ import annotations

import os

import numpy as np

from engine.microstructure import AnalyticsSettings, SideArrays, fill_buckets, fill_metrics
from shm.book import FIRST_EXCHANGE, BookLayout, BookReader, BookWriter
from shm.segment import SegmentKind, segment_name

Levels = list[tuple[float, dict[int, float]]]  # (price, {exchange id: size}), best first

ANALYTICS = AnalyticsSettings((10.0, 50.0, 100.0), (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0), 10.0, 10.0, 1.0, 0.0)


class CraftedBooks:
    """One instrument's book segment; :meth:`publish` writes the next book."""

    def __init__(self, instance: str, exchanges: int, depth: int = 64) -> None:
        name = segment_name(instance, SegmentKind.BOOK, "TEST/USDT")
        self.exchanges = exchanges
        self.writer = BookWriter.create(name, BookLayout(depth, exchanges, 3), os.getpid())
        self.reader = BookReader.attach(name)

    def publish(self, bids: Levels, asks: Levels, excluded: tuple[int, ...] = ()) -> int:
        slot = self.writer.begin()
        sides = {}
        best = {}
        for key, levels in (("bids", bids), ("asks", asks)):
            matrix = slot[key]
            matrix[:] = 0.0
            for row, (price, sizes) in enumerate(levels):
                matrix[row, 0] = price
                for exchange, size in sizes.items():
                    matrix[row, FIRST_EXCHANGE + exchange] = size
                matrix[row, 1] = sum(sizes.values())
            slot[f"{key[:3]}_levels"] = len(levels)
            used = matrix[: len(levels)]
            sides[key] = SideArrays(used[:, 0], used[:, 1], used[:, 2], used[:, FIRST_EXCHANGE:])
            tops = np.zeros(self.exchanges)
            for exchange in range(self.exchanges):
                quoted = [price for price, sizes in levels if sizes.get(exchange, 0.0) > 0.0]
                tops[exchange] = quoted[0] if quoted else 0.0
            best[key] = tops
        slot["exchange_included"][:] = [0 if exchange in excluded else 1 for exchange in range(self.exchanges)]
        slot["exchange_best_bid"][:] = best["bids"]
        slot["exchange_best_ask"][:] = best["asks"]
        fill_metrics(slot["metrics"], sides["bids"], sides["asks"], best["bids"], best["asks"], ANALYTICS)
        fill_buckets(slot["buckets"], sides["bids"], sides["asks"], ANALYTICS)
        generation = int(self.writer.generation) + 1
        slot["metrics"]["generation"] = generation
        slot["buckets"]["generation"] = generation
        return self.writer.end()

    def close(self) -> None:
        self.reader.close()
        self.writer.close()
