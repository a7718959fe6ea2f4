"""The demo engine with the features and signals actors against a scripted simulator.

The simulator runs in this process (so the test knows to the nanosecond when it scripted
each event) with its random dislocations and shocks switched off: the market is quiet but
for the script. Five venues quote BTC/USDT; the engine (five connectors, aggregator,
features, signals) runs under a supervisor as in ``coby demo``.

Script, after the signals' baselines are warm and 10 s of quiet market (all durations are
market time, which a loaded host stretches: the test waits on the simulator's clock):

1. every venue pulls its quotes within 15 bp of its mid for 3 s, then puts them back: a
   liquidity anomaly (the venues' spreads open ~100-fold, nothing rests within 10 bp of
   the mid);
2. 6 s later, a dislocation of binance by +12 bp for 2 s: a cross smaller than both taker
   fees (10 + 10 bp), so no arbitrage;
3. 5 s later, a dislocation of okx by −45 bp for 2.5 s: the other venues' bids now exceed
   okx's asks by ~45 bp: arbitrage, buying on okx and selling where both taker fees leave
   an edge (binance and bybit 10 + 10 bp, gateio 20 + 10; not kraken, 40 + 10).

An event's window runs from its start to the next event's (the last one's to 3 s after
it ends): in the simulator the books take seconds to look as before, and a venue whose
price jumps trades through its own resting orders on the way (and on the way back), so a
dislocation can leave the consolidated book thin too; anomalies in a window are its
event's. The quiet stretch comes before the first event for that reason.

Every arbitrage or anomaly signal is attributed to the event whose window holds its
``open``; one in the quiet stretch is a false positive. The
feature rows of the whole run are finite and show the withdrawal, and the documented
example model process (docs/consumers.md) runs against the same engine.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import zmq

from actors.connectors import load_exchange_module
from engine import bus, control
from engine.client import Engine, attach
from engine.config import Config
from engine.supervisor import Supervisor, default_actor_specs
from sim.market import Market, SymbolSpec, VenueSpec
from sim.server import Simulator
from tests.engine_support import engine_config, running, unique_instance, wait_for

VENUES = ("binance", "okx", "bybit", "gateio", "kraken")  # taker fees 10, 10, 10, 20, 40 bp
SYMBOL = "BTC/USDT"
SETTLE_S = 3.0  # after an event ends, before the next one
ROOT = Path(__file__).resolve().parents[1]


class ScriptedSimulator:
    """A quiet market on its own event-loop thread; events are applied between two steps."""

    def __init__(self) -> None:
        spec = SymbolSpec(SYMBOL, price="60000.00", tick_size="0.01", lot_size="0.00001", order_size="0.05")
        quiet = [VenueSpec(name, shock_rate=0.0, dislocation_rate=0.0) for name in VENUES]
        self.market = Market([spec], quiet, seed=11)
        self.simulator = Simulator(self.market, cadence_s=0.02)
        self.servers = {
            name: self.simulator.add_venue(load_exchange_module(name).SIMULATED_VENUE(self.market)) for name in VENUES
        }
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.simulator.start(), self.loop).result(30)

    def script(self, event, *arguments) -> int:
        """Apply one market event in the simulator's loop; the wall-clock ns it took effect."""
        async def apply() -> int:
            async with self.simulator._step_lock:
                event(*arguments)
                return time.time_ns()
        return asyncio.run_coroutine_threadsafe(apply(), self.loop).result(10)

    def wait_market(self, seconds: float) -> None:
        """Sleep until ``seconds`` of market time have passed: on a loaded host the clock
        skips steps, and an event scripted for 3 s of market time lasts longer than 3 s."""
        until = self.market.elapsed_s + seconds
        while self.market.elapsed_s < until:
            time.sleep(0.02)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.simulator.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def collect_signals(endpoint: str, stop: threading.Event, into: list) -> None:
    subscriber = bus.Subscriber(zmq.Context.instance(), endpoint, ["signal."])
    while not stop.is_set():
        if (message := subscriber.receive(100)) is not None:
            into.append(message[1])
    subscriber.close()


@pytest.fixture
def scripted():
    simulator = ScriptedSimulator()
    yield simulator
    simulator.stop()


def test_scripted_dislocations_and_withdrawal_give_their_signals_and_quiet_gives_none(scripted) -> None:
    instance = unique_instance("feat")
    exchanges = {  # the URL path stays, as in coby demo: it selects the protocol (OKX's /ws/v5/public)
        name: {"symbols": [SYMBOL], "rest_url": scripted.servers[name].http_url,
               "ws_url": scripted.servers[name].ws_url + urlsplit(Config().exchanges[name].ws_url).path.rstrip("/")}
        for name in VENUES
    }
    config = engine_config(instance, {"exchanges": exchanges, "signals": {"warmup_s": 3.0}})
    with running(Supervisor(config, default_actor_specs(config))):
        engine = attach(instance)
        included = lambda: engine.snapshot(SYMBOL).slot["exchange_included"]
        wait_for(lambda: all(included()[engine.exchanges[name]] for name in VENUES), timeout_s=30,
                 what="all five venues in the consolidated book")
        first = wait_for(lambda: engine.wait_features(SYMBOL, 0, 2.0), timeout_s=10, what="a first feature row")
        cpu_before, seen = time.process_time(), first
        for _ in range(20):  # each wait returns the next row as it comes, and sleeps meanwhile
            newer = engine.wait_features(SYMBOL, seen, 2.0)
            assert newer is not None and newer > seen
            seen = newer
        assert time.process_time() - cpu_before < 0.5, "waiting burns no CPU"
        assert engine.wait_features(SYMBOL, 2**62, 0.05) is None, "a row that never comes: None after the timeout"

        model = subprocess.Popen(
            [sys.executable, "-c", example_model(), instance, SYMBOL, "40"], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        received: list[dict] = []
        stop_collecting = threading.Event()
        collector = threading.Thread(
            target=collect_signals, args=(engine.endpoints["bus_subscribe"], stop_collecting, received), daemon=True
        )
        collector.start()
        time.sleep(4.0)  # the signals' baselines warm up (signals.warmup_s = 3)

        quiet_from = time.time_ns()
        scripted.wait_market(10.0)
        withdrawal = scripted.script(scripted.market.withdraw_liquidity, SYMBOL, 15.0, 3.0)
        quiet = (quiet_from, withdrawal)
        scripted.wait_market(3.0 + SETTLE_S)
        below_fees = scripted.script(scripted.market.dislocate, "binance", SYMBOL, 12.0, 2.0)
        scripted.wait_market(2.0 + SETTLE_S)
        arbitrage = scripted.script(scripted.market.dislocate, "okx", SYMBOL, -45.0, 2.5)
        scripted.wait_market(2.5 + SETTLE_S)
        ended = time.time_ns()
        stop_collecting.set()
        collector.join(5)
        recent = engine.recent_signals(SYMBOL, 1000)
        assert len(engine.recent_signals(SYMBOL, 2)) == 2
        with pytest.raises(KeyError, match="no instrument 'XRP/USDT'"):
            engine.recent_signals("XRP/USDT")
        assert not control.request(engine.endpoints["signals"], "everything")["ok"], "a bad request is answered"
        model_out, model_err = model.communicate(timeout=30)
        cnn, rl = engine.features(SYMBOL, 4096), engine.features(SYMBOL, 4096, kind="rl")
        rows = {"cnn": cnn.values.copy(), "rl": rl.values.copy(), "ts": cnn.timestamps.copy()}
        assert cnn.valid() and rl.valid() and np.array_equal(cnn.sequences, rl.sequences)
        engine.close()

    events = {
        "withdrawal 15 bp (anomaly)": (withdrawal, below_fees),
        "binance +12 bp (below fees)": (below_fees, arbitrage),
        "okx -45 bp (arbitrage)": (arbitrage, ended),
    }
    assert received and all(s["mode"] == "live" for s in received), "a consumer can tell live signals"
    opened = [s for s in received if s["state"] == "open" and s["kind"] in ("arbitrage", "anomaly")]
    produced = {name: [s for s in opened if start <= s["ts"] <= end] for name, (start, end) in events.items()}
    false_positives = [s for s in opened if quiet[0] <= s["ts"] < quiet[1]]
    warming = [s for s in opened if s["ts"] < quiet[0]]
    quiet_s = (quiet[1] - quiet[0]) / 1e9
    imbalances = [s for s in received if s["state"] == "open" and s["kind"] == "imbalance"]
    print(f"\nfeatures: rows {first}..{int(cnn.last_sequence)}; signals opened: {len(opened)} arbitrage/anomaly, "
          f"{len(imbalances)} imbalance")
    for name, found in produced.items():
        print(f"  {name}: {len(found) or 'no'} signal(s)")
        for s in {(s["kind"], s.get("metric"), s.get("sell_exchange")): s for s in found}.values():
            print(f"    {s['kind']}: {s['reason']}")
    print(f"  false positives: {len(false_positives)} in {quiet_s:.1f} s of quiet market "
          f"({len(warming)} more while the baselines warmed up)")
    for s in false_positives + warming:
        print(f"    {(s['ts'] - quiet[0]) / 1e9:.2f} s: {s['kind']} {s['reason']}")

    assert np.isfinite(rows["cnn"]).all() and np.isfinite(rows["rl"]).all()
    names = Engine.feature_names("cnn")
    pulled = (rows["ts"] > withdrawal + int(0.5e9)) & (rows["ts"] < withdrawal + int(3.0e9))
    spread = rows["cnn"][:, names.index("spread_bps")]
    assert pulled.sum() > 20 and np.median(spread[pulled]) > 25.0, "the rows show the 30 bp spread of the withdrawal"
    assert np.median(np.abs(spread[rows["ts"] < withdrawal])) < 1.0

    below = produced["binance +12 bp (below fees)"]
    assert all(s["kind"] == "anomaly" and s["direction"] == "low" for s in below), [s["reason"] for s in below]
    arbitrages = [s for s in produced["okx -45 bp (arbitrage)"] if s["kind"] == "arbitrage"]
    assert arbitrages and all(s["buy_exchange"] == "okx" for s in arbitrages), arbitrages
    fees = {"binance": 20.0, "bybit": 20.0, "gateio": 30.0}  # with okx's 10 bp; kraken's 40 + 10 exceed 45 bp
    assert {s["sell_exchange"] for s in arbitrages} == set(fees), arbitrages
    assert all(s["net_edge_bps"] > 0 and s["size"] > 0 and s["fee_bps"] == fees[s["sell_exchange"]] for s in arbitrages)
    closed = [s for s in received if s["kind"] == "arbitrage" and s["state"] == "closed"]
    assert closed and max(s["duration_ms"] for s in closed) > 500, "the opportunity lasted the dislocation"
    anomalies = produced["withdrawal 15 bp (anomaly)"]
    assert anomalies and all(s["kind"] == "anomaly" for s in anomalies)
    assert {"spread", "bid_depth_10bp", "ask_depth_10bp"} <= {s["metric"] for s in anomalies}, anomalies
    assert false_positives == [], [s["reason"] for s in false_positives]
    served = [(s["id"], s["state"], s["ts"]) for s in recent]
    carried = [(s["id"], s["state"], s["ts"]) for s in received]
    start = served.index(carried[0])
    assert served[start : start + len(carried)] == carried, "recent_signals serves what the bus carried"

    assert model.returncode == 0, model_err[-2000:]
    scores = [line for line in model_out.splitlines() if re.match(r"row \d+ score [+-]\d+\.\d{4} book age", line)]
    assert len(scores) == 40, model_out[-1000:]


def example_model() -> str:
    """The example model process exactly as docs/consumers.md shows it."""
    text = (ROOT / "docs" / "consumers.md").read_text()
    return text.split("## An example model process", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
