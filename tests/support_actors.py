"""Actors that misbehave on purpose, for supervisor tests (spawned by module path)."""

from __future__ import annotations

import asyncio
import gc
import os
import time

from engine.actor import Actor


class IdleActor(Actor):
    """Runs until asked to stop."""


class CrashingActor(Actor):
    """Raises shortly after starting, every time."""

    async def run(self) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("crashing on purpose")


class StuckActor(Actor):
    """Beats for a moment, then blocks its event loop for good (a live but hung process)."""

    async def run(self) -> None:
        await asyncio.sleep(0.5)
        while True:
            time.sleep(1)


class GcReportingActor(Actor):
    """Writes how many objects its setup left frozen out of the collector's sight, then idles."""

    async def run(self) -> None:
        path = os.path.join(self.config.engine.runtime_dir, f"gc-frozen-{os.getpid()}")
        with open(path, "w") as report:
            report.write(str(gc.get_freeze_count()))
        await self.stopping.wait()
