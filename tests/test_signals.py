"""actors/signals.py detectors on crafted books: an arbitrage net of fees opens with the
size the two books give and reports how long it lasted, one below the fees never opens;
a lasting imbalance; a thin book against its baseline, and a one-update sweep that is not."""

from __future__ import annotations

import pytest

from actors.signals import AnomalyDetector, ArbitrageDetector, ImbalanceDetector, EpisodeIds
from engine.config import SignalsConfig
from engine.features import BookSampler
from tests.book_support import CraftedBooks

EXCHANGES = {"binance": 0, "okx": 1, "coinbase": 2}  # taker fees 10, 10 and 60 bp by default
MS = 1_000_000


@pytest.fixture
def books(instance):
    crafted = CraftedBooks(instance, exchanges=3)
    yield crafted
    crafted.close()


def sampled(books: CraftedBooks, bids, asks) -> BookSampler:
    books.publish(bids, asks)
    sampler = BookSampler(books.reader, 50, ("exchange_best_bid", "exchange_best_ask"),
                          ("generation", "bps_width", "bid_bps_size", "ask_bps_size"))
    assert sampler.sample()
    return sampler


# binance bids above okx's asks by far more than 10 + 10 bp
CROSSED_BIDS = [(100.30, {0: 1.0}), (100.25, {0: 2.0}), (99.90, {1: 3.0, 2: 1.0})]
CROSSED_ASKS = [(100.00, {1: 0.5}), (100.05, {1: 1.0}), (100.20, {1: 5.0}), (100.40, {0: 1.0, 2: 1.0})]


def test_arbitrage_net_of_fees_opens_with_the_walked_size_and_reports_its_duration(books):
    detector = ArbitrageDetector("TEST/USDT", EXCHANGES, SignalsConfig(), EpisodeIds())
    book = sampled(books, CROSSED_BIDS, CROSSED_ASKS)
    opened = detector.evaluate(book, 1_000 * MS)
    assert len(opened) == 1
    signal = opened[0]
    # bid 100.30 (1.0) nets 100.1997 after 10 bp; asks net 100.1 (0.5) and 100.15005 (1.0):
    # 0.5 at 0.0997 and 0.5 at 0.04965; then bid 100.25 nets 100.14975 < 100.15005: stop.
    assert (signal["state"], signal["sell_exchange"], signal["buy_exchange"]) == ("open", "binance", "okx")
    assert signal["size"] == pytest.approx(1.0)
    assert signal["expected_profit"] == pytest.approx(0.5 * 0.0997 + 0.5 * 0.04965)
    mid = (100.30 + 100.00) / 2
    assert signal["gross_edge_bps"] == pytest.approx(0.30 / mid * 1e4, abs=1e-4)
    assert signal["net_edge_bps"] == pytest.approx((100.1997 - 100.1) / mid * 1e4, abs=1e-4)
    assert signal["fee_bps"] == 20.0 and signal["levels"] == 3 and signal["duration_ms"] == 0.0
    edge = min(signal["net_edge_bps"] / 5.0, 1.0)
    assert signal["confidence"] == pytest.approx(0.5 * edge, abs=1e-4)  # seen once: half its edge factor
    assert "buy 1 on okx at 100, sell on binance at 100.3" in signal["reason"]
    assert {"buy_exchange": "coinbase"}.items() - signal.items(), "coinbase's 60 bp fee eats its 10 bp edge"

    assert detector.evaluate(book, 1_100 * MS) == []  # within update_ms: nothing new to say
    update = detector.evaluate(book, 1_300 * MS)
    assert [(s["state"], s["id"], s["duration_ms"]) for s in update] == [("update", signal["id"], 300.0)]
    assert update[0]["confidence"] == pytest.approx(edge * (0.5 + 0.5 * 300 / 500), abs=1e-4)

    assert detector.evaluate(book, 1_500 * MS) == []  # still there: last seen at 1.5 s
    gone = sampled(books, CROSSED_BIDS[2:], CROSSED_ASKS)
    assert detector.evaluate(gone, 1_600 * MS) == [] and detector.open, "missing for less than the 200 ms grace"
    back = detector.evaluate(book, 1_650 * MS)  # within the grace: the same opportunity goes on
    assert [(s["state"], s["id"], s["duration_ms"]) for s in back] == [("update", signal["id"], 650.0)]
    assert detector.evaluate(gone, 1_800 * MS) == []
    closed = detector.evaluate(gone, 1_900 * MS)
    assert [(s["state"], s["id"], s["duration_ms"]) for s in closed] == [("closed", signal["id"], 650.0)]
    assert "ended after 650 ms" in closed[0]["reason"] and not detector.open


def test_a_cross_smaller_than_both_taker_fees_never_opens(books):
    detector = ArbitrageDetector("TEST/USDT", EXCHANGES, SignalsConfig(), EpisodeIds())
    bids = [(100.15, {0: 5.0}), (99.90, {1: 3.0})]  # 15 bp over okx's ask: less than 10 + 10 bp
    asks = [(100.00, {1: 5.0}), (100.02, {2: 5.0}), (100.40, {0: 1.0})]
    for step in range(5):
        assert detector.evaluate(sampled(books, bids, asks), step * 100 * MS) == []
    lower_fees = SignalsConfig(taker_fee_bps={"binance": 2.0, "okx": 2.0, "coinbase": 60.0})
    cheaper = ArbitrageDetector("TEST/USDT", EXCHANGES, lower_fees, EpisodeIds())
    opened = cheaper.evaluate(sampled(books, bids, asks), 0)
    assert [(s["sell_exchange"], s["buy_exchange"], s["size"]) for s in opened] == [("binance", "okx", 5.0)]


def test_a_lasting_imbalance_opens_after_its_minimum_duration_and_closes_when_it_fades(books):
    detector = ImbalanceDetector("TEST/USDT", SignalsConfig(), EpisodeIds())
    heavy_bids = [(100.00, {0: 9.0}), (99.99, {1: 9.0})]
    thin_asks = [(100.01, {0: 1.0}), (100.02, {1: 1.0})]
    book = sampled(books, heavy_bids, thin_asks)  # (18 − 2) / 20 = 0.8 within 10 bp
    assert detector.evaluate(book, 0) == []
    assert detector.evaluate(book, 400 * MS) == []
    opened = detector.evaluate(book, 500 * MS)
    assert [(s["state"], s["heavy_side"], s["imbalance"]) for s in opened] == [("open", "bid", 0.8)]
    assert opened[0]["confidence"] == pytest.approx(0.5 + 0.5 * (0.8 - 0.6) / 0.4)
    assert opened[0]["duration_ms"] == 500.0 and opened[0]["distance_bps"] == 10.0
    balanced = sampled(books, heavy_bids, [(100.01, {0: 9.0}), (100.02, {1: 8.0})])  # 1 / 35 < 0.3
    closed = detector.evaluate(balanced, 900 * MS)
    assert [(s["state"], s["duration_ms"]) for s in closed] == [("closed", 900.0)]


def quiet_book(step: int):
    """Depth within 2 bp of ~10 per side, wobbling a few per cent."""
    wobble = 0.2 * (step % 3)
    bids = [(100.00, {0: 5.0 + wobble, 1: 5.0}), (99.99, {2: 4.0}), (99.50, {0: 20.0})]
    asks = [(100.01, {1: 5.0, 2: 5.0 - wobble}), (100.02, {0: 4.0}), (100.50, {1: 20.0})]
    return bids, asks


def test_a_thin_book_against_its_baseline_is_an_anomaly_and_a_one_update_sweep_is_not(books):
    settings = SignalsConfig(warmup_s=1.0)
    detector = AnomalyDetector("TEST/USDT", settings, EpisodeIds())
    now = 0
    for step in range(30):  # 3 s of quiet baseline
        assert detector.evaluate(sampled(books, *quiet_book(step)), now) == []
        now += 100 * MS
    bids, asks = quiet_book(0)
    thin = [level for level in bids if level[0] < 99.9]  # bids within 2 bp pulled (~50 bp gap)
    assert detector.evaluate(sampled(books, thin, asks), now) == []  # beyond the threshold, not yet for 300 ms
    now += 100 * MS
    assert detector.evaluate(sampled(books, *quiet_book(1)), now) == [], "a single-update sweep is no anomaly"
    opened = []
    for _ in range(4):
        now += 100 * MS
        opened += detector.evaluate(sampled(books, thin, asks), now)
    kinds = {(s["metric"], s["label"]) for s in opened if s["state"] == "open"}
    # Depth is measured from the mid, which the pull moved 25 bp down: nothing rests within
    # 10 bp of it on either side (within 50 bp the asks hold 14 of their usual 34 and the
    # bids 20: not 3.5-fold less), both walls within 20 bp are gone, and binance, the only
    # venue still quoting both sides, has a 52 bp spread (the venues' median was 2).
    assert kinds == {
        ("bid_depth_10bp", "thin book"), ("ask_depth_10bp", "thin book"), ("spread", "wide"),
        ("bid_wall", "wall pulled"), ("ask_wall", "wall pulled"),
    }
    thin_book = next(s for s in opened if s["metric"] == "bid_depth_10bp")
    assert thin_book["direction"] == "low" and thin_book["value"] == 0.0 and thin_book["confidence"] == 1.0
    assert thin_book["duration_ms"] == 300.0 and "thin book: bid depth within 10 bp is 0" in thin_book["reason"]
    spread = next(s for s in opened if s["metric"] == "spread")
    assert spread["value"] == pytest.approx(0.52 / 99.76 * 1e4, rel=1e-3) and spread["baseline"] == pytest.approx(
        0.02 / 100.01 * 1e4, rel=1e-2)
    now += 100 * MS
    closed = detector.evaluate(sampled(books, *quiet_book(2)), now)
    assert {s["metric"] for s in closed if s["state"] == "closed"} == {s["metric"] for s in opened}


def test_a_book_with_an_open_arbitrage_is_left_to_the_arbitrage_signal(books):
    anomalies = AnomalyDetector("TEST/USDT", SignalsConfig(warmup_s=0.0), EpisodeIds())
    arbitrage = ArbitrageDetector("TEST/USDT", EXCHANGES, SignalsConfig(), EpisodeIds())
    for step in range(20):
        anomalies.evaluate(sampled(books, *quiet_book(step)), step * 100 * MS)
    samples = [watched.baseline.samples for watched in anomalies.watched]
    crossed = sampled(books, CROSSED_BIDS, CROSSED_ASKS)
    assert arbitrage.evaluate(crossed, 2_000 * MS) and arbitrage.open
    for step in range(5):
        assert anomalies.evaluate(crossed, (2_000 + 100 * step) * MS, arbitrage_open=bool(arbitrage.open)) == []
    assert [watched.baseline.samples for watched in anomalies.watched] == samples, "nothing learnt meanwhile"
