"""The api actor serving dashboards: bytes per second per dashboard, server CPU per dashboard,
and how many dashboards one api actor serves while staying under half a core.

The whole engine runs against the simulator (every exchange of the default config, as in
``coby demo``; storage off), the api at its default cadence (``api.update_ms`` 100: 10 heatmap
columns per second per instrument, ladders every 250 ms, health every second). Dashboards are
WebSocket clients in another process, each subscribed to BTC/USDT (10 exchanges) as the page
does; they read every frame and count bytes, and check that the binary frames decode.

1. ``idle``: the api actor's CPU with no dashboard (it still builds every instrument's
   columns for the history new dashboards get).
2. For N = 1, 10, 50, 100, 200, 400 dashboards (each step after the history burst of the
   new connections): the api actor's CPU (psutil, over ``--seconds``) and the bytes/s each
   dashboard received; CPU per dashboard = (CPU(N) − idle) / N.
3. Dashboards served under 50 % of a core: the largest N measured below it at which every
   dashboard still got its 10 columns a second (90 % of them: a loaded host delays ticks; none
   skipped for falling behind), and the projection idle + N × per-dashboard cost (from the largest N measured) =
   50 %. Clients run in processes of 50; on a small host they compete with the engine for
   the CPU, which is what limits N here, not the api actor.

The host is shared (other processes run tests), so CPU figures are noisy: each step reports
what it measured. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.cli import demo_config  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.supervisor import Supervisor, default_actor_specs, free_ports  # noqa: E402
from shm.registry import list_segments  # noqa: E402
from shm.segment import unlink_segment  # noqa: E402

STEPS = (1, 10, 50, 100, 200, 400)
DASHBOARDS_PER_PROCESS = 50
INSTRUMENT = "BTC/USDT"
CPU_LIMIT_PERCENT = 50.0


def dashboards(url: str, count: int, seconds: float, warmup_s: float, results: "mp.Queue") -> None:
    """``count`` WebSocket dashboards for ``warmup_s`` (the history burst), then ``seconds``
    counted: bytes and frames each received. The first one decodes every column (they are the
    same bytes for all): the others only count, so the clients keep up on a small host."""
    import aiohttp

    from engine.web.stream import COLUMN_FRAME, ColumnDecoder

    async def one(session: aiohttp.ClientSession, counted: dict, start: asyncio.Event, stop: asyncio.Event,
                  decode: bool) -> None:
        decoder = ColumnDecoder()
        try:
            socket = await session.ws_connect(url, max_msg_size=0)
        except aiohttp.ClientError:
            counted["refused"] += 1
            return
        async with socket:
            await socket.send_str(json.dumps({"op": "subscribe", "instrument": INSTRUMENT, "ladder_depth": 15}))
            while not stop.is_set():
                try:
                    message = await socket.receive(timeout=1.0)
                except asyncio.TimeoutError:
                    continue
                if decode and message.type == aiohttp.WSMsgType.BINARY and message.data[0] == COLUMN_FRAME:
                    try:
                        decoder.apply(message.data)
                    except ValueError:
                        counted["undecodable"] += 1
                        await socket.send_str(json.dumps({"op": "resync"}))
                elif message.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    counted["closed"] += 1
                    return
                if start.is_set():
                    counted["bytes"] += len(message.data)
                    counted["frames"] += 1
                    if message.type == aiohttp.WSMsgType.BINARY and message.data[0] == COLUMN_FRAME:
                        counted["columns"] += 1

    async def run() -> dict:
        counted = {"bytes": 0, "frames": 0, "columns": 0, "undecodable": 0, "closed": 0, "refused": 0}
        start, stop = asyncio.Event(), asyncio.Event()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = [asyncio.create_task(one(session, counted, start, stop, index == 0)) for index in range(count)]
            await asyncio.sleep(warmup_s)
            start.set()
            began = time.monotonic()
            await asyncio.sleep(seconds)
            stop.set()
            elapsed = time.monotonic() - began
            await asyncio.gather(*tasks, return_exceptions=True)
        return {**counted, "elapsed_s": elapsed}

    results.put(asyncio.run(run()))


def cpu_percent(process: psutil.Process, seconds: float) -> float:
    before = process.cpu_times()
    time.sleep(seconds)
    after = process.cpu_times()
    return 100.0 * ((after.user - before.user) + (after.system - before.system)) / seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per step (default 10)")
    parser.add_argument("--steps", default=",".join(map(str, STEPS)), help="dashboard counts to measure")
    arguments = parser.parse_args(argv)
    steps = [int(step) for step in arguments.steps.split(",")]
    instance = f"bapi{os.getpid() % 100000}"
    port = free_ports(1)[0]
    base = demo_config(None, instance)
    config = load_config(None, env={}, overrides={
        **{key: value for key, value in base.to_dict().items() if key in ("engine", "endpoints", "exchanges")},
        "storage": {"enabled": False}, "api": {"port": port, "max_clients": 10000},
    })
    supervisor = Supervisor(config, default_actor_specs(config, with_simulator=True))
    supervisor.start()
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()
    url = f"ws://127.0.0.1:{port}/ws"
    context = mp.get_context("spawn")
    try:
        deadline = time.monotonic() + 60
        while True:
            api = next((a for a in supervisor.status()["actors"] if a["name"] == "api"), None)
            if api and api["state"] == "running":
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the api actor did not start within 60 s")
            time.sleep(0.2)
        process = psutil.Process(api["pid"])
        time.sleep(15)  # every book in sync, row heights chosen, history accumulating
        idle = cpu_percent(process, arguments.seconds)
        print(f"idle: api actor {idle:.1f}% of a core (no dashboard)", flush=True)
        measured = []
        for count in steps:
            results = context.Queue()
            warmup = 3.0 + count * 0.02
            shares = [len(part) for part in np.array_split(range(count), -(-count // DASHBOARDS_PER_PROCESS))]
            clients = [context.Process(target=dashboards, args=(url, share, arguments.seconds + 1.0, warmup, results))
                       for share in shares]
            for client in clients:
                client.start()
            time.sleep(warmup + 1.0)
            cpu = cpu_percent(process, arguments.seconds)
            parts = [results.get(timeout=arguments.seconds + warmup + 60) for _ in clients]
            for client in clients:
                client.join(30)
            received = {key: sum(part[key] for part in parts) for key in parts[0]}
            received["elapsed_s"] = max(part["elapsed_s"] for part in parts)
            per_client_bytes = received["bytes"] / received["elapsed_s"] / count
            step = {
                "dashboards": count,
                "api_cpu_percent": round(cpu, 1),
                "cpu_percent_per_dashboard": round(max(cpu - idle, 0.0) / count, 3),
                "bytes_per_s_per_dashboard": round(per_client_bytes),
                "columns_per_s_per_dashboard": round(received["columns"] / received["elapsed_s"] / count, 2),
                "frames_per_s_per_dashboard": round(received["frames"] / received["elapsed_s"] / count, 2),
                "undecodable_frames": received["undecodable"],
                "closed": received["closed"],
                "refused": received["refused"],
            }
            measured.append(step)
            print(f"{count:4d} dashboards: api {cpu:5.1f}% of a core, {per_client_bytes / 1024:6.1f} KiB/s and "
                  f"{step['columns_per_s_per_dashboard']} columns/s each, "
                  f"{step['cpu_percent_per_dashboard']}% CPU each", flush=True)
            if cpu > 2 * CPU_LIMIT_PERCENT:
                break
    finally:
        supervisor.request_stop()
        thread.join(60)
        for name in list_segments(instance):
            unlink_segment(name)
    cadence = 1000 / config.api.update_ms
    under = [step["dashboards"] for step in measured
             if step["api_cpu_percent"] < CPU_LIMIT_PERCENT and step["columns_per_s_per_dashboard"] >= 0.9 * cadence
             and not step["refused"] and not step["closed"]]
    largest = max(measured, key=lambda step: step["dashboards"])
    per_dashboard = max(largest["api_cpu_percent"] - idle, 1e-6) / largest["dashboards"]
    one = next(step for step in measured if step["dashboards"] == min(steps))
    result = {
        "bench": "api",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m": round(os.getloadavg()[0], 2)},
        "update_ms": config.api.update_ms,
        "instrument": INSTRUMENT,
        "exchanges": len(config.exchange_ids()),
        "idle_api_cpu_percent": round(idle, 1),
        "bytes_per_s_per_dashboard": one["bytes_per_s_per_dashboard"],
        "columns_per_s_per_dashboard": one["columns_per_s_per_dashboard"],
        "cpu_percent_per_dashboard": round(per_dashboard, 3),
        "dashboards_measured_under_50pct": max(under) if under else 0,
        "dashboards_projected_at_50pct": int((CPU_LIMIT_PERCENT - idle) / per_dashboard) if idle < 50 else 0,
        "steps": measured,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
