"""A replay session: a stored simulator run played back through the real aggregator, with
pause, resume, speed and seek over the replay control socket, and a restarted aggregator's
books rebuilt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from actors.replay import replay_session
from engine import control
from engine.client import attach
from engine.supervisor import Supervisor
from shm.records import Status
from tests.engine_support import running, unique_instance, wait_for
from tests.storage_support import run_engine


def request(endpoint: str, command: str, **arguments: object) -> dict:
    return control.request(endpoint, command, timeout_s=10, **arguments)


def test_a_stored_run_replays_through_the_engine_and_obeys_its_controls(tmp_path: Path) -> None:
    live, feed, run_id = run_engine(tmp_path, {"backend": "sqlite"}, lambda supervisor: time.sleep(3.0))
    # Small rings: replaying as fast as possible fills them, and a replayed record must wait, not be dropped.
    config = replace(live, engine=replace(live.engine, instance=unique_instance("replay"), runtime_dir=""),
                     shm=replace(live.shm, ring_records=4096))
    start, end = run_id, time.time_ns()
    session, specs = replay_session(config, start, end, speed=0.0)
    assert [spec.kind for spec in specs] == ["replay", "aggregator", "features", "signals"]
    with_api = replace(config, api=replace(config.api, enabled=True))
    assert [spec.kind for spec in replay_session(with_api, start, end, 0.0)[1]][-1] == "api", "a replay has a dashboard"
    assert not session.storage.enabled, "nothing replayed is stored again"
    with running(Supervisor(session, specs, extra_directory={"mode": "replay"})) as supervisor:
        client = attach(session.engine.instance)
        assert client.directory["mode"] == "replay"
        endpoint = client.directory["endpoints"]["replay"]
        books = client.subscribe(["book.BTC/USDT"], timeout_ms=20_000)
        rows = client.subscribe(["features.BTC/USDT"], timeout_ms=20_000)
        done = wait_for(lambda: (reply := request(endpoint, "status"))["done"] and reply, timeout_s=60,
                        what="the whole run replayed")
        assert done["records"] == feed["written_records"], "every stored record went back into the rings"
        applied = lambda: int(client.book("BTC/USDT").snapshot().slot["records_applied"])
        assert wait_for(lambda: applied() >= 1000, timeout_s=10, what="level records applied to whole books"), (
            "the replay's first snapshots reached the aggregator (records on books never seeded are not applied)")
        rings = supervisor.status()["rings"]
        assert sum(ring["written_records"] for ring in rings.values()) >= feed["written_records"]
        assert all(ring["dropped_records"] == 0 for ring in rings.values()), rings

        aggregator = next(a["pid"] for a in supervisor.status()["actors"] if a["name"] == "aggregator")
        os.kill(aggregator, signal.SIGSTOP)  # the rings fill while the whole run is replayed again
        try:
            assert request(endpoint, "seek", to_ns=start)["ok"]
            wait_for(lambda: max(ring["fill"] for ring in supervisor.status()["rings"].values()) > 3000,
                     what="a ring filling up")
            time.sleep(0.5)
        finally:
            os.kill(aggregator, signal.SIGCONT)
        again = wait_for(lambda: (reply := request(endpoint, "status"))["done"] and reply, timeout_s=60,
                         what="the run replayed again")
        assert again["records"] == 2 * feed["written_records"], "the replay waited for room: nothing dropped"
        rings = supervisor.status()["rings"]
        assert all(ring["dropped_records"] == 0 for ring in rings.values()), rings

        middle = start + (end - start) // 2
        assert request(endpoint, "speed", value=1.0)["speed"] == 1.0
        assert request(endpoint, "seek", to_ns=middle)["ok"]
        in_sync = lambda: client.book("BTC/USDT").snapshot().exchange("binance").status == Status.IN_SYNC
        wait_for(in_sync, timeout_s=20, what="books rebuilt from their snapshots before the seek point")
        status = request(endpoint, "status")
        assert status["start_ns"] == middle and not status["done"]
        topic, message = next(iter(books))
        assert topic == "book.BTC/USDT" and message["mode"] == "replay", "consumers can tell replayed books"
        topic, message = next(iter(rows))
        assert topic == "features.BTC/USDT" and message["mode"] == "replay", "and replayed feature rows"
        assert request(endpoint, "pause")["paused"]
        time.sleep(0.3)
        held = request(endpoint, "status")["records"]
        time.sleep(0.5)
        assert request(endpoint, "status")["records"] == held, "paused: nothing written"
        assert not request(endpoint, "resume")["paused"]
        wait_for(lambda: request(endpoint, "status")["records"] > held, timeout_s=10, what="writing again")
        refused = request(endpoint, "seek", to_ns=end + 1)
        assert not refused["ok"] and "outside the replayed range" in refused["error"]
        assert not request(endpoint, "rewind")["ok"]
        assert supervisor.status()["actors"][0]["restarts"] == 0

        # A restarted aggregator skips what was queued and asks for fresh books: the replay
        # rebuilds every book from its last snapshot before where it is, and goes on.
        assert request(endpoint, "speed", value=0.1)["ok"]  # still replaying when the aggregator dies
        assert request(endpoint, "seek", to_ns=middle)["ok"]
        wait_for(in_sync, timeout_s=20, what="books rebuilt after the seek")
        before = request(endpoint, "status")
        aggregator = next(a for a in supervisor.status()["actors"] if a["name"] == "aggregator")
        killed_ns = time.time_ns()
        os.kill(aggregator["pid"], signal.SIGKILL)
        wait_for(lambda: next(a for a in supervisor.status()["actors"] if a["name"] == "aggregator")["restarts"]
                 > aggregator["restarts"], timeout_s=20, what="the aggregator restarted")
        def rebuilt() -> bool:  # published by the new aggregator, with binance whole in it
            book = client.book("BTC/USDT").snapshot()
            return int(book.slot["publish_ts"]) > killed_ns and book.exchange("binance").status == Status.IN_SYNC

        wait_for(rebuilt, timeout_s=20, what="books rebuilt for the restarted aggregator")
        after = request(endpoint, "status")
        assert after["start_ns"] == before["start_ns"] and after["position_ns"] >= before["position_ns"]
        client.close()

    instance = unique_instance("cli")
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--config", str(tmp_path / "config.yaml"), "replay", "--from", str(start),
         "--to", str(end), "--speed", "0", "--instance", instance],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == f"replay done: {feed['written_records']:,} records"
    assert "100.0%" in result.stdout, "the progress bar reached the end"
    refused = subprocess.run([sys.executable, "-m", "engine.cli", "replay-control", "pause", "--instance", instance],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "no replay session" in refused.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--config", str(tmp_path / "config.yaml"), "replay", "--from", str(start),
         "--to", str(end), "--exchanges", "okx,kraken", "--instance", instance],
        capture_output=True, text=True, timeout=60,
    )
    assert unknown.returncode == 2 and "replay exchanges ['kraken']: choose among" in unknown.stderr
