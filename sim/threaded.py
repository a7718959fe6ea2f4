"""The simulator on its own event-loop thread, for a process that also runs an engine on it.

Tests and benchmarks that start a supervisor against the simulator keep the market in their own
process this way: they can switch faults on (``sim.server.VenueFaults``, which are not
thread-safe: go through :meth:`BackgroundSimulator.run`), read the venues' exact books, and wait
on the market clock rather than on wall time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from actors.connectors import load_exchange_module
from actors.simulator import build_market
from engine.config import Config
from sim.server import Simulator, VenueServer

Levels = list[tuple[float, float]]


class BackgroundSimulator:
    """The simulator on its own event-loop thread, its market readable from the test."""

    def __init__(self, config: Config, cadence_s: float, step_s: float | None = None) -> None:
        """``step_s``: market seconds per step (the cadence unless given: 20× the cadence is 20× market pace)."""
        self.market = build_market(config)
        self.simulator = Simulator(self.market, cadence_s=cadence_s)
        if step_s is not None:
            self.simulator.step_s = step_s
        self.servers: dict[str, VenueServer] = {
            name: self.simulator.add_venue(load_exchange_module(name).SIMULATED_VENUE(self.market))
            for name in config.exchange_ids()
        }
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="simulator", daemon=True)
        self.thread.start()
        self.call(self.simulator.start())

    def call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coroutine`` on the simulator's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def run(self, function: Callable[[], Any]) -> Any:
        """Call ``function`` on the simulator's loop (faults are not thread-safe)."""

        async def call() -> Any:
            return function()

        return self.call(call())

    async def _paused_truth(self, venue: str, symbols: Iterable[str]) -> dict[str, tuple[Levels, Levels]]:
        self.simulator.pause()
        async with self.simulator._step_lock:  # a step in flight finishes first
            return {symbol: self.market.truth(venue, symbol) for symbol in symbols}

    def paused_truth(self, venue: str, symbols: Iterable[str]) -> dict[str, tuple[Levels, Levels]]:
        """Pause the market after any step in flight; the venue's exact books."""
        return self.call(self._paused_truth(venue, list(symbols)))

    def resume(self) -> None:
        self.loop.call_soon_threadsafe(self.simulator.resume)

    def steps(self) -> int:
        return self.market.step_number

    def wait_steps(self, count: int, timeout_s: float = 10.0) -> None:
        """Wait until the market has taken ``count`` more steps (its clock, not the wall's)."""
        target = self.steps() + count
        deadline = time.monotonic() + timeout_s
        while self.steps() < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the market took fewer than {count} steps in {timeout_s} s")
            time.sleep(0.005)

    def stop(self) -> None:
        self.call(self.simulator.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
