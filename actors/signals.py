"""The signals actor: liquidity imbalance, executable cross-exchange arbitrage and liquidity
anomalies, read from the consolidated books and published as ``signal.<symbol>.<kind>``.

Every signal is an episode with an id: ``open`` when it starts, ``update`` at most every
``signals.update_ms`` while it lasts, ``closed`` when it ends (with how long it lasted).
docs/signals.md defines each kind, its fields and what its ``confidence`` means.

The book is read from shared memory (a :class:`engine.features.BookSampler` copy) when
the aggregator's ``book.<symbol>`` message says it changed, at most every
``signals.min_interval_ms``, and at least every ``signals.update_ms`` so lasting episodes
are updated and ended on time. The latest ``signals.recent`` signals of each instrument
are kept in memory, as the msgpack bytes they were published as (a third of the memory of
the dicts: 1,000 signals × every instrument fill over hours), and served on
``endpoints.signals`` (REQ/REP, msgpack:
``{"command": "recent", "symbol": s, "count": n}`` → ``{"ok": true, "signals": [...]}``),
which is what ``engine.client.Engine.recent_signals`` asks.

The detectors are plain classes fed a sampled book and a clock, so tests drive them with
crafted books and no processes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from engine import bus
from engine.actor import Actor
from engine.config import TAKER_FEES_BPS, SignalsConfig
from engine.features import BookSampler
from shm.book import FIRST_EXCHANGE, PRICE, BookReader

_LONGEST_WAIT_S = 0.1
EXCHANGE_FIELDS = ("exchange_best_bid", "exchange_best_bid_size", "exchange_best_ask", "exchange_best_ask_size")
BUCKET_FIELDS = ("generation", "bps_width", "bid_bps_size", "ask_bps_size")
ANOMALY_MIN_SAMPLES = 10
LOG_FLOOR = 1e-3  # a watched value of 0 counts as this fraction of its baseline (ln 0 does not exist)


def nearest_index(values: list[float], wanted: float) -> int:
    """Index of the configured distance closest to ``wanted`` (the first on a tie)."""
    return min(range(len(values)), key=lambda index: (abs(values[index] - wanted), index))


@dataclass
class Episode:
    """One signal from open to closed; what every message of it shares."""

    id: int
    opened_ns: int
    last_emit_ns: int
    peak: float = 0.0  # the kind's headline value at its most extreme (net edge, |imbalance|, |z|)
    last_seen_ns: int = 0  # arbitrage: the last book it was executable in


class EpisodeIds:
    """Episode ids, unique per run of the actor (its detectors share one)."""

    def __init__(self) -> None:
        self.next = 1

    def take(self) -> int:
        self.next += 1
        return self.next - 1


def _base(symbol: str, kind: str, state: str, episode: Episode, book: BookSampler, now_ns: int,
          confidence: float, reason: str) -> dict[str, Any]:
    return {
        "symbol": symbol, "kind": kind, "state": state, "id": episode.id, "ts": now_ns,
        "generation": book.generation, "book_ts": book.publish_ts,
        "duration_ms": (now_ns - episode.opened_ns) / 1e6, "confidence": round(min(max(confidence, 0.0), 1.0), 4),
        "reason": reason,
    }


# ---------------------------------------------------------------------------------- arbitrage


@dataclass(frozen=True)
class Opportunity:
    """Buy on ``buy`` at its ask, sell on ``sell`` at its bid, both as takers."""

    sell: int  # exchange id whose bid we hit
    buy: int  # exchange id whose ask we lift
    bid: float
    ask: float
    gross_bps: float  # (bid − ask) / mid
    net_bps: float  # after both taker fees, at the touch
    size: float  # base units executable with a positive net edge, walking both books
    profit: float  # quote currency, net of fees, over that size
    levels: int  # price levels the size takes from, both venues together


class ArbitrageDetector:
    """Pairs of venues whose books cross by more than both taker fees.

    A pair is executable when ``bid_sell × (1 − fee_sell) − ask_buy × (1 + fee_buy)``
    exceeds ``arbitrage_min_net_bps`` of the mid. Its size walks the two venues' levels
    in the consolidated book (their own size columns, the top ``arbitrage_levels`` rows;
    a venue with no level among those is sized at its touch), matching the best remaining
    bid against the best remaining ask while each matched unit still earns that edge. An
    opportunity missing from a book stays open for ``arbitrage_grace_ms`` (a venue's touch
    flickering between two updates does not end it); its duration runs from the first
    book it was seen in to the last.
    """

    def __init__(self, symbol: str, exchanges: dict[str, int], settings: SignalsConfig, ids: EpisodeIds) -> None:
        self.symbol = symbol
        self.names = {index: name for name, index in exchanges.items()}
        count = max(exchanges.values(), default=-1) + 1
        self.fees = np.zeros(count)
        for name, index in exchanges.items():
            self.fees[index] = settings.taker_fee_bps.get(name, TAKER_FEES_BPS.get(name, 0.0)) / 1e4
        self.settings = settings
        self.ids = ids
        self.open: dict[tuple[int, int], tuple[Episode, Opportunity]] = {}

    def opportunities(self, book: BookSampler) -> list[Opportunity]:
        bids = book.exchange["exchange_best_bid"]
        asks = book.exchange["exchange_best_ask"]
        mid = book.metrics["mid"]
        if mid <= 0.0:
            return []
        fees = self.fees[: len(bids)]
        sell = np.where(bids > 0.0, bids * (1.0 - fees), 0.0)
        buy = np.where(asks > 0.0, asks * (1.0 + fees), np.inf)
        threshold = self.settings.arbitrage_min_net_bps * mid / 1e4
        if sell.max() - buy.min() <= threshold:
            return []
        found = []
        for seller, buyer in np.argwhere(sell[:, None] - buy[None, :] > threshold).tolist():
            if seller != buyer:
                found.append(self._walk(book, seller, buyer, mid, threshold))
        return found

    def _walk(self, book: BookSampler, seller: int, buyer: int, mid: float, threshold: float) -> Opportunity:
        fee_sell, fee_buy = float(self.fees[seller]), float(self.fees[buyer])
        bids, asks = book.levels[0], book.levels[1]
        bid_rows = np.flatnonzero(bids[FIRST_EXCHANGE + seller, : book.counts[0]] > 0.0).tolist()
        ask_rows = np.flatnonzero(asks[FIRST_EXCHANGE + buyer, : book.counts[1]] > 0.0).tolist()
        touch = book.exchange
        if bid_rows:
            bid_price, bid_size = bids[PRICE, bid_rows].tolist(), bids[FIRST_EXCHANGE + seller, bid_rows].tolist()
        else:
            bid_price = [float(touch["exchange_best_bid"][seller])]
            bid_size = [float(touch["exchange_best_bid_size"][seller])]
        if ask_rows:
            ask_price, ask_size = asks[PRICE, ask_rows].tolist(), asks[FIRST_EXCHANGE + buyer, ask_rows].tolist()
        else:
            ask_price = [float(touch["exchange_best_ask"][buyer])]
            ask_size = [float(touch["exchange_best_ask_size"][buyer])]
        i = j = 0
        left_bid = bid_size[0] if bid_size else 0.0
        left_ask = ask_size[0] if ask_size else 0.0
        size = profit = 0.0
        while i < len(bid_price) and j < len(ask_price):
            edge = bid_price[i] * (1.0 - fee_sell) - ask_price[j] * (1.0 + fee_buy)
            if edge <= threshold:
                break
            matched = min(left_bid, left_ask)
            size += matched
            profit += matched * edge
            left_bid -= matched
            left_ask -= matched
            if left_bid <= 0.0:
                i += 1
                left_bid = bid_size[i] if i < len(bid_size) else 0.0
            if left_ask <= 0.0:
                j += 1
                left_ask = ask_size[j] if j < len(ask_size) else 0.0
        bid_touched = i + (i < len(bid_size) and left_bid < bid_size[i])
        ask_touched = j + (j < len(ask_size) and left_ask < ask_size[j])
        bid = float(book.exchange["exchange_best_bid"][seller])
        ask = float(book.exchange["exchange_best_ask"][buyer])
        net = bid * (1.0 - fee_sell) - ask * (1.0 + fee_buy)
        return Opportunity(seller, buyer, bid, ask, (bid - ask) / mid * 1e4, net / mid * 1e4, size, profit,
                           bid_touched + ask_touched)

    def confidence(self, opportunity: Opportunity, age_ms: float) -> float:
        """Edge factor × (½ + ½ age factor): ½·edge for one book, the edge factor once confirmed."""
        settings = self.settings
        edge = min(opportunity.net_bps / settings.arbitrage_full_edge_bps, 1.0)
        return edge * (0.5 + 0.5 * min(age_ms / settings.arbitrage_confirm_ms, 1.0))

    def evaluate(self, book: BookSampler, now_ns: int) -> list[dict[str, Any]]:
        signals = []
        current = {(o.sell, o.buy): o for o in self.opportunities(book)}
        grace_ns = self.settings.arbitrage_grace_ms * 1_000_000
        for key in [key for key in self.open if key not in current]:
            episode, last = self.open[key]
            if now_ns - episode.last_seen_ns >= grace_ns:
                del self.open[key]
                signals.append(self._message("closed", episode, last, book, now_ns))
        update_ns = self.settings.update_ms * 1_000_000
        for key, opportunity in current.items():
            if key not in self.open:
                episode = Episode(self.ids.take(), now_ns, now_ns, opportunity.net_bps, now_ns)
                self.open[key] = (episode, opportunity)
                signals.append(self._message("open", episode, opportunity, book, now_ns))
                continue
            episode = self.open[key][0]
            episode.peak = max(episode.peak, opportunity.net_bps)
            episode.last_seen_ns = now_ns
            self.open[key] = (episode, opportunity)
            if now_ns - episode.last_emit_ns >= update_ns:
                episode.last_emit_ns = now_ns
                signals.append(self._message("update", episode, opportunity, book, now_ns))
        return signals

    def _message(self, state: str, episode: Episode, o: Opportunity, book: BookSampler, now_ns: int) -> dict[str, Any]:
        age_ms = (episode.last_seen_ns - episode.opened_ns) / 1e6
        sell, buy = self.names[o.sell], self.names[o.buy]
        fees = (self.fees[o.sell] + self.fees[o.buy]) * 1e4
        reason = (
            f"buy {o.size:.8g} on {buy} at {o.ask:.10g}, sell on {sell} at {o.bid:.10g}: "
            f"{o.gross_bps:.2f} bp gross, {fees:.1f} bp fees, {o.net_bps:.2f} bp net"
            + (f", ended after {age_ms:.0f} ms" if state == "closed" else f", open {age_ms:.0f} ms")
        )
        message = _base(self.symbol, "arbitrage", state, episode, book, now_ns, self.confidence(o, age_ms), reason)
        message.update(
            buy_exchange=buy, sell_exchange=sell, buy_price=o.ask, sell_price=o.bid,
            gross_edge_bps=round(o.gross_bps, 4), fee_bps=round(float(fees), 4), net_edge_bps=round(o.net_bps, 4),
            peak_net_edge_bps=round(episode.peak, 4), size=o.size, expected_profit=o.profit, levels=o.levels,
            first_seen_ts=episode.opened_ns, last_seen_ts=episode.last_seen_ns,
        )
        message["duration_ms"] = age_ms
        return message


# ---------------------------------------------------------------------------------- imbalance


class ImbalanceDetector:
    """A lasting liquidity imbalance near the mid: ``metrics.imbalance`` at the configured
    distance stays beyond ±``imbalance_threshold`` for ``imbalance_min_duration_ms``."""

    def __init__(self, symbol: str, settings: SignalsConfig, ids: EpisodeIds) -> None:
        self.symbol = symbol
        self.settings = settings
        self.ids = ids
        self.index: int | None = None
        self.candidate: tuple[int, float] | None = None  # (since ns, sign)
        self.episode: Episode | None = None
        self.last = 0.0

    def confidence(self, imbalance: float) -> float:
        """½ at the threshold, 1 when one side has nothing within the distance."""
        threshold = self.settings.imbalance_threshold
        return 0.5 + 0.5 * min(max((abs(imbalance) - threshold) / (1.0 - threshold), 0.0), 1.0)

    def evaluate(self, book: BookSampler, now_ns: int) -> list[dict[str, Any]]:
        metrics = book.metrics
        if self.index is None:
            self.index = nearest_index(metrics["imbalance_bps"].tolist(), self.settings.imbalance_bps)
        imbalance = float(metrics["imbalance"][self.index]) if metrics["mid"] > 0.0 else 0.0
        threshold = self.settings.imbalance_threshold
        sign = math.copysign(1.0, imbalance)
        if self.episode is not None:
            if abs(imbalance) < threshold / 2 or sign != self.candidate[1]:
                episode, self.episode, self.candidate = self.episode, None, None
                return [self._message("closed", episode, self.last, book, now_ns)]
            self.last = imbalance
            self.episode.peak = max(self.episode.peak, abs(imbalance))
            if now_ns - self.episode.last_emit_ns >= self.settings.update_ms * 1_000_000:
                self.episode.last_emit_ns = now_ns
                return [self._message("update", self.episode, imbalance, book, now_ns)]
            return []
        if abs(imbalance) < threshold:
            self.candidate = None
            return []
        if self.candidate is None or self.candidate[1] != sign:
            self.candidate = (now_ns, sign)
        if now_ns - self.candidate[0] >= self.settings.imbalance_min_duration_ms * 1_000_000:
            self.episode = Episode(self.ids.take(), self.candidate[0], now_ns, abs(imbalance))
            self.last = imbalance
            return [self._message("open", self.episode, imbalance, book, now_ns)]
        return []

    def _message(self, state: str, episode: Episode, imbalance: float, book: BookSampler, now_ns: int) -> dict:
        distance = float(book.metrics["imbalance_bps"][self.index])
        heavy = "bid" if imbalance > 0 else "ask"
        reason = f"{heavy} side holds {(1 + abs(imbalance)) / 2:.0%} of the size within {distance:g} bp of the mid"
        message = _base(self.symbol, "imbalance", state, episode, book, now_ns, self.confidence(imbalance), reason)
        message.update(imbalance=round(imbalance, 4), distance_bps=distance, heavy_side=heavy,
                       peak_imbalance=round(episode.peak, 4))
        return message


# ---------------------------------------------------------------------------------- anomalies


@dataclass
class Baseline:
    """Exponentially weighted (by time) mean and variance of ln(value)."""

    moment1: float = 0.0
    moment2: float = 0.0
    samples: int = 0
    since_ns: int = 0
    last_ns: int = 0

    def log(self, value: float) -> float | None:
        if self.samples == 0:
            return math.log(value) if value > 0.0 else None
        return math.log(max(value, math.exp(self.moment1) * LOG_FLOOR))

    def std(self, floor: float) -> float:
        variance = self.moment2 - self.moment1 * self.moment1
        return max(math.sqrt(variance) if variance > 0.0 else 0.0, floor)

    def add(self, log_value: float, now_ns: int, half_life_s: float) -> None:
        if self.samples == 0:
            self.moment1, self.moment2, self.since_ns = log_value, log_value * log_value, now_ns
        else:
            alpha = 1.0 - 0.5 ** (max(now_ns - self.last_ns, 0) / 1e9 / half_life_s)
            self.moment1 += alpha * (log_value - self.moment1)
            self.moment2 += alpha * (log_value * log_value - self.moment2)
        self.samples += 1
        self.last_ns = now_ns


@dataclass
class Watched:
    """One value watched for anomalies, its baseline and its open episode."""

    name: str
    description: str
    directions: tuple[str, ...]  # "low", "high"
    baseline: Baseline = field(default_factory=Baseline)
    episode: Episode | None = None
    direction: str = ""
    pending_since: int = 0  # ns when the value first went beyond the threshold (0: it is not)
    value: float = 0.0
    z: float = 0.0


class AnomalyDetector:
    """Depth, spread and bucket liquidity far outside their rolling baselines.

    Watched per instrument: each side's depth within the configured distances (low: a
    thin book; high: a surge); the spread, as the median of the venues' own spreads, so
    venues crossing each other by noise do not move it (high: wide); and each side's
    wall, the most size in two adjacent relative buckets within ``anomaly_wall_bps`` (two,
    so a level drifting across a bucket boundary does not halve it; low: a wall pulled.
    Liquidity bunching into one band is common enough in a lumpy book that a high wall is
    not reported).

    A value is compared in log space with its baseline: ``z = (ln v − mean) / max(std,
    anomaly_min_log_std)``; an anomaly opens once ``|z| >= anomaly_z`` (same direction) has
    lasted ``anomaly_min_duration_ms``. Nothing is evaluated (nor fed to a baseline) while
    the book is empty or an arbitrage is open on it (venues apart by more than their fees:
    the arbitrage signal covers that state); a baseline is not fed while its value is
    beyond the threshold; and every baseline restarts when an exchange enters or leaves
    the book (a different set of venues is a different baseline).
    """

    def __init__(self, symbol: str, settings: SignalsConfig, ids: EpisodeIds) -> None:
        self.symbol = symbol
        self.settings = settings
        self.ids = ids
        self.watched: list[Watched] | None = None
        self.steps: list[tuple[int, float]] = []
        self.members = b""

    def _setup(self, book: BookSampler) -> None:
        distances = book.metrics["depth_steps_bps"].tolist()
        self.steps = sorted({nearest_index(distances, wanted) for wanted in self.settings.anomaly_depth_bps})
        self.watched = [
            Watched(f"{side}_depth_{distances[step]:g}bp", f"{side} depth within {distances[step]:g} bp",
                    ("low", "high"))
            for step in self.steps for side in ("bid", "ask")
        ]
        self.watched.append(Watched("spread", "the median venue spread (bp)", ("high",)))
        wall = self.settings.anomaly_wall_bps
        self.watched += [Watched(f"{side}_wall", f"the largest {side} wall (2 buckets) within {wall:g} bp", ("low",))
                         for side in ("bid", "ask")]

    def values(self, book: BookSampler) -> list[float | None]:
        """The watched values of this book, in :attr:`watched` order (None: not measurable now)."""
        metrics = book.metrics
        values: list[float | None] = []
        for step in self.steps:
            values += [float(metrics["bid_depth"][step]), float(metrics["ask_depth"][step])]
        spreads = metrics["exchange_spread_bps"]
        quoting = spreads[spreads > 0.0]
        values.append(float(np.median(quoting)) if len(quoting) else None)
        width = float(book.buckets["bps_width"]) if book.buckets else 0.0
        buckets = max(int(self.settings.anomaly_wall_bps / width), 1) if width > 0.0 else 0
        for side in ("bid", "ask"):
            sizes = book.buckets.get(f"{side}_bps_size") if buckets else None
            if sizes is None or not book.buckets["generation"]:
                values.append(None)
                continue
            near = sizes[: buckets + 1]
            values.append(float((near[:-1] + near[1:]).max()) if len(near) > 1 else float(near.sum()))
        return values

    def confidence(self, z: float) -> float:
        """½ at ``anomaly_z``, 1 at twice it."""
        threshold = self.settings.anomaly_z
        return 0.5 + 0.5 * min(max((abs(z) - threshold) / threshold, 0.0), 1.0)

    def evaluate(self, book: BookSampler, now_ns: int, arbitrage_open: bool = False) -> list[dict[str, Any]]:
        if self.watched is None:
            self._setup(book)
        members = book.exchange["exchange_included"].tobytes()
        if members != self.members:
            self.members = members
            return self._restart(book, now_ns, "the set of exchanges in the book changed")
        if book.metrics["mid"] <= 0.0 or arbitrage_open:
            return []
        settings = self.settings
        signals = []
        for watched, value in zip(self.watched, self.values(book)):
            baseline = watched.baseline
            if value is None:
                continue
            log_value = baseline.log(value)
            if log_value is None:
                continue
            warm = baseline.samples >= ANOMALY_MIN_SAMPLES and now_ns - baseline.since_ns >= settings.warmup_s * 1e9
            z = (log_value - baseline.moment1) / baseline.std(settings.anomaly_min_log_std) if warm else 0.0
            direction = "high" if z > 0 else "low"
            watched.value, watched.z = value, z
            if watched.episode is not None:
                episode = watched.episode
                lasted_s = (now_ns - episode.opened_ns) / 1e9
                expired = lasted_s >= settings.anomaly_max_s
                if abs(z) < settings.anomaly_exit_z or direction != watched.direction or expired:
                    signals.append(self._message("closed", watched, book, now_ns))
                    watched.episode = None
                    if expired:
                        watched.baseline = Baseline()
                    continue
                episode.peak = max(episode.peak, abs(z))
                if now_ns - episode.last_emit_ns >= settings.update_ms * 1_000_000:
                    episode.last_emit_ns = now_ns
                    signals.append(self._message("update", watched, book, now_ns))
                continue
            if warm and abs(z) >= settings.anomaly_z and direction in watched.directions:
                if not watched.pending_since or direction != watched.direction:
                    watched.pending_since, watched.direction = now_ns, direction
                if now_ns - watched.pending_since >= settings.anomaly_min_duration_ms * 1_000_000:
                    watched.episode = Episode(self.ids.take(), watched.pending_since, now_ns, abs(z))
                    watched.pending_since = 0
                    signals.append(self._message("open", watched, book, now_ns))
                continue
            watched.pending_since = 0
            baseline.add(log_value, now_ns, settings.baseline_half_life_s)
        return signals

    def _restart(self, book: BookSampler, now_ns: int, why: str) -> list[dict[str, Any]]:
        closed = []
        for watched in self.watched:
            if watched.episode is not None:
                closed.append(self._message("closed", watched, book, now_ns, why))
                watched.episode = None
            watched.baseline = Baseline()
        return closed

    def _message(self, state: str, watched: Watched, book: BookSampler, now_ns: int, why: str = "") -> dict:
        episode = watched.episode
        typical = math.exp(watched.baseline.moment1)
        change = watched.value / typical - 1.0 if typical > 0.0 else 0.0
        labels = {
            ("low", "spread"): "narrow", ("high", "spread"): "wide",
            ("low", "wall"): "wall pulled", ("high", "wall"): "wall placed",
            ("low", "depth"): "thin book", ("high", "depth"): "liquidity surge",
        }
        label = labels[(watched.direction, "spread" if watched.name == "spread" else watched.name.split("_")[1])]
        reason = (
            f"{label}: {watched.description} is {watched.value:.6g}, {change:+.0%} against its baseline "
            f"{typical:.6g} (z {watched.z:+.1f})" + (f"; closed: {why}" if why else "")
        )
        message = _base(self.symbol, "anomaly", state, episode, book, now_ns, self.confidence(episode.peak), reason)
        message.update(metric=watched.name, direction=watched.direction, label=label, value=watched.value,
                       baseline=typical, z=round(watched.z, 3), peak_z=round(episode.peak, 3))
        return message


# ---------------------------------------------------------------------------------- the actor


@dataclass
class _Instrument:
    name: str
    sampler: BookSampler
    detectors: tuple[ArbitrageDetector, ImbalanceDetector, AnomalyDetector]
    recent: deque
    last_evaluation: float = 0.0


class SignalsActor(Actor):
    async def setup(self) -> None:
        directory = self.directory
        settings: SignalsConfig = self.config.signals
        self.min_interval = settings.min_interval_ms / 1000
        self.update_interval = settings.update_ms / 1000
        exchanges = directory["exchanges"]
        self.mode = directory.get("mode", "live")  # "replay" in a replay session: said on every signal
        ids = EpisodeIds()
        self.instruments: dict[str, _Instrument] = {}
        for name, segment in directory["segments"]["books"].items():
            sampler = BookSampler(BookReader.attach(segment), settings.arbitrage_levels, EXCHANGE_FIELDS, BUCKET_FIELDS)
            self.instruments[name] = _Instrument(
                name, sampler,
                (ArbitrageDetector(name, exchanges, settings, ids), ImbalanceDetector(name, settings, ids),
                 AnomalyDetector(name, settings, ids)),
                deque(maxlen=settings.recent),
            )
        self.context = zmq.Context()
        self.books = bus.Subscriber(self.context, directory["endpoints"]["bus_subscribe"], ["book."])
        self.publisher = bus.Publisher(self.context, directory["endpoints"]["bus_publish"])
        self.queries = self.context.socket(zmq.REP)
        self.queries.setsockopt(zmq.LINGER, 0)
        self.queries.bind(directory["endpoints"]["signals"])
        self.poller = zmq.Poller()
        self.poller.register(self.books.socket, zmq.POLLIN)
        self.poller.register(self.queries, zmq.POLLIN)

    async def run(self) -> None:
        while not self.stopping.is_set():
            wait_s = self.evaluate_due(time.monotonic())
            await asyncio.sleep(0)
            ready = dict(self.poller.poll(max(round(min(wait_s, _LONGEST_WAIT_S) * 1000), 0)))
            if self.books.socket in ready:
                while True:
                    try:
                        self.books.socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            if self.queries in ready:
                self.answer()

    def evaluate_due(self, now: float) -> float:
        next_due = _LONGEST_WAIT_S
        for instrument in self.instruments.values():
            sampler = instrument.sampler
            published = sampler.published
            if not published:
                continue
            since = now - instrument.last_evaluation
            fresh = published != sampler.generation
            if (fresh and since >= self.min_interval) or since >= self.update_interval:
                self.evaluate(instrument, now)
                next_due = min(next_due, self.update_interval)
            else:
                next_due = min(next_due, (self.min_interval if fresh else self.update_interval) - since)
        return next_due

    def evaluate(self, instrument: _Instrument, now: float) -> None:
        instrument.last_evaluation = now
        if not instrument.sampler.sample():
            return
        now_ns = time.time_ns()
        arbitrage, imbalance, anomalies = instrument.detectors
        signals = arbitrage.evaluate(instrument.sampler, now_ns) + imbalance.evaluate(instrument.sampler, now_ns)
        signals += anomalies.evaluate(instrument.sampler, now_ns, arbitrage_open=bool(arbitrage.open))
        for signal in signals:
            signal["mode"] = self.mode
            packed = msgpack.packb(signal, use_bin_type=True)
            instrument.recent.append(packed)
            self.publisher.publish_packed(f"signal.{instrument.name}.{signal['kind']}", packed)
            if signal["state"] == "open":
                self.log.info("signal", kind=signal["kind"], symbol=instrument.name, reason=signal["reason"])

    def answer(self) -> None:
        """One ``recent`` request; a malformed one gets an error reply, never an exception. The
        kept signals are already msgpack: the reply is written around them, none is decoded."""
        try:
            request = msgpack.unpackb(self.queries.recv(), raw=False)
            instrument = self.instruments.get(request.get("symbol")) if isinstance(request, dict) else None
            if not isinstance(request, dict) or request.get("command") != "recent":
                reply = {"ok": False, "error": "send {'command': 'recent', 'symbol': ..., 'count': ...}"}
            elif instrument is None:
                reply = {"ok": False, "error": f"no instrument {request.get('symbol')!r}; instruments: "
                                                f"{sorted(self.instruments)}"}
            else:
                count = max(int(request.get("count", 100)), 0)
                kept = list(instrument.recent)[-count:] if count else []
                packer = msgpack.Packer(use_bin_type=True)
                self.queries.send(b"".join([packer.pack_map_header(2), packer.pack("ok"), packer.pack(True),
                                            packer.pack("signals"), packer.pack_array_header(len(kept)), *kept]))
                return
        except (ValueError, TypeError, msgpack.UnpackException) as error:
            reply = {"ok": False, "error": f"could not read the request: {error}"}
        self.queries.send(msgpack.packb(reply, use_bin_type=True))

    async def teardown(self) -> None:
        for name in ("books", "publisher"):
            if (socket := getattr(self, name, None)) is not None:
                socket.close()
        if (queries := getattr(self, "queries", None)) is not None:
            queries.close(linger=0)
        if (context := getattr(self, "context", None)) is not None:
            context.term()
        for instrument in getattr(self, "instruments", {}).values():
            instrument.sampler.reader.close()
