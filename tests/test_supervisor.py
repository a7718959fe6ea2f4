"""The supervisor with real child processes: restarts, hangs, escalation, control, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from engine import control
from engine.actor import ActorSpec
from engine.supervisor import ESCALATED_EXIT_CODE, StartupError, Supervisor
from shm.actor_table import ActorTable
from shm.registry import list_segments, read_directory, segment_owner, sweep
from shm.segment import unlink_segment
from tests.engine_support import engine_config, running, unique_instance, wait_for


def spec(name: str, target: str) -> ActorSpec:
    return ActorSpec(name, "aggregator", f"tests.support_actors:{target}", -1)


def actor_status(supervisor: Supervisor, name: str) -> dict:
    return next(a for a in supervisor.status()["actors"] if a["name"] == name)


def test_a_killed_actor_is_restarted_and_its_peers_are_untouched() -> None:
    config = engine_config(unique_instance("sup"))
    supervisor = Supervisor(config, [spec("idle-a", "IdleActor"), spec("idle-b", "IdleActor")])
    with running(supervisor):
        wait_for(lambda: actor_status(supervisor, "idle-a")["state"] == "running", what="idle-a running")
        wait_for(lambda: actor_status(supervisor, "idle-b")["state"] == "running", what="idle-b running")
        victim = actor_status(supervisor, "idle-a")["pid"]
        peer = actor_status(supervisor, "idle-b")["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: (s := actor_status(supervisor, "idle-a"))["restarts"] == 1
            and s["state"] == "running"
            and s["pid"] not in (None, victim),
            what="idle-a restarted",
        )
        assert actor_status(supervisor, "idle-b")["pid"] == peer
        assert actor_status(supervisor, "idle-b")["restarts"] == 0


def test_an_actor_starts_running_with_what_its_setup_made_frozen_out_of_the_collector() -> None:
    """A full collection scans only objects made after setup (it scanned every module's
    objects: a 12-17 ms pause in the features actor)."""
    config = engine_config(unique_instance("sup"))
    supervisor = Supervisor(config, [spec("gc", "GcReportingActor")])
    with running(supervisor):
        pid = wait_for(lambda: (s := actor_status(supervisor, "gc"))["state"] == "running" and s["pid"], what="running")
        report = os.path.join(config.engine.runtime_dir, f"gc-frozen-{pid}")
        wait_for(lambda: os.path.exists(report) and open(report).read(), what="the actor's report")
        assert int(open(report).read()) > 10_000


def test_nice_and_cpu_affinity_from_config_are_applied_to_the_actor_process() -> None:
    config = engine_config(unique_instance("sup"), {"actors": {"aggregator": {"nice": 7, "cpu_affinity": [0]}}})
    supervisor = Supervisor(config, [spec("idle", "IdleActor")])
    with running(supervisor):
        pid = wait_for(lambda: (s := actor_status(supervisor, "idle"))["state"] == "running" and s["pid"], what="running")
        process = psutil.Process(pid)
        assert process.nice() == 7
        assert process.cpu_affinity() == [0]


def test_a_live_actor_whose_heartbeat_stops_is_killed_and_restarted() -> None:
    config = engine_config(unique_instance("sup"))
    supervisor = Supervisor(config, [spec("stuck", "StuckActor")])
    with running(supervisor):
        wait_for(lambda: actor_status(supervisor, "stuck")["state"] == "running", what="running")
        first = actor_status(supervisor, "stuck")["pid"]
        wait_for(lambda: actor_status(supervisor, "stuck")["restarts"] >= 1, timeout_s=15, what="hang detected")
        assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE


def test_a_crash_loop_escalates_instead_of_restarting_forever() -> None:
    config = engine_config(
        unique_instance("sup"),
        {"supervisor": {"restart_intensity": 3, "restart_period_s": 30.0, "restart_backoff_initial_s": 0.05}},
    )
    supervisor = Supervisor(config, [spec("crasher", "CrashingActor")])
    supervisor.start()
    started = time.monotonic()
    code = supervisor.run(duration_s=60)
    assert code == ESCALATED_EXIT_CODE
    assert time.monotonic() - started < 30
    assert supervisor.children["crasher"].restarts == 3
    assert list_segments(config.engine.instance) == []


def test_control_socket_status_stop_start_restart_and_bad_requests() -> None:
    config = engine_config(unique_instance("sup"))
    supervisor = Supervisor(config, [spec("idle", "IdleActor")])
    with running(supervisor):
        endpoint = supervisor.control_endpoint
        wait_for(lambda: actor_status(supervisor, "idle")["state"] == "running", what="running")
        status = control.request(endpoint, "status")
        assert status["ok"] and status["actors"][0]["name"] == "idle" and status["actors"][0]["pid"] > 0
        assert status["actors"][0]["heartbeat_age_s"] < 2.0
        first = status["actors"][0]["pid"]

        assert control.request(endpoint, "stop", actor="idle")["ok"]
        assert actor_status(supervisor, "idle")["state"] == "stopped"
        time.sleep(0.5)
        assert actor_status(supervisor, "idle")["state"] == "stopped", "a held actor is not restarted"
        assert control.request(endpoint, "start", actor="idle")["ok"]
        second = wait_for(
            lambda: (s := actor_status(supervisor, "idle"))["state"] == "running" and s["pid"], what="started again"
        )
        assert second != first

        assert control.request(endpoint, "restart", actor="idle")["ok"]
        wait_for(
            lambda: (s := actor_status(supervisor, "idle"))["pid"] not in (None, second) and s["state"] == "running",
            what="restart",
        )

        unknown = control.request(endpoint, "restart", actor="nope")
        assert not unknown["ok"] and "idle" in unknown["error"]
        assert not control.request(endpoint, "dance")["ok"]
        import zmq

        raw = zmq.Context.instance().socket(zmq.REQ)
        raw.connect(endpoint)
        raw.send(b"\xc1 not msgpack")
        assert raw.poll(5000)
        import msgpack

        assert msgpack.unpackb(raw.recv())["ok"] is False
        raw.close(linger=0)
        assert control.request(endpoint, "status")["ok"], "the supervisor survives garbage requests"


_SUPERVISOR_SCRIPT = textwrap.dedent(
    """
    import sys
    from engine.actor import ActorSpec
    from engine.supervisor import Supervisor
    from tests.engine_support import engine_config
    if __name__ == "__main__":
        config = engine_config(sys.argv[1])
        supervisor = Supervisor(config, [ActorSpec("idle", "aggregator", "tests.support_actors:IdleActor", -1)])
        supervisor.start()
        print("started", flush=True)
        supervisor.run()
    """
)


@pytest.fixture
def supervisor_process(tmp_path):
    """A supervisor in its own OS process (so the test can kill -9 it), started and cleaned up."""
    instance = unique_instance("sup")
    script = tmp_path / "supervise.py"
    script.write_text(_SUPERVISOR_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen([sys.executable, str(script), instance], stdout=subprocess.PIPE, env=env)
    assert process.stdout.readline().strip() == b"started"
    yield instance, process
    if process.poll() is None:
        process.kill()
    process.wait(10)
    for name in list_segments(instance):
        unlink_segment(name)


def test_killing_the_supervisor_takes_its_actors_down_and_the_next_one_sweeps(supervisor_process) -> None:
    instance, process = supervisor_process
    table = ActorTable.attach(read_directory(instance)["segments"]["actors"], writable=False)
    child = psutil.Process(wait_for(lambda: int(table.slots[0]["pid"]), what="actor spawned"))
    table.close()
    segments = list_segments(instance)
    assert len(segments) >= 2
    process.kill()
    process.wait(10)
    child.wait(15)  # the orphaned actor notices and stops by itself
    assert set(list_segments(instance)) == set(segments), "segments outlive a kill -9 until swept"
    assert set(sweep(instance)) == set(segments)
    assert list_segments(instance) == []


def test_a_new_supervisor_sweeps_orphans_before_starting(supervisor_process) -> None:
    instance, process = supervisor_process
    process.kill()
    process.wait(10)
    assert list_segments(instance)
    supervisor = Supervisor(engine_config(instance), [spec("idle", "IdleActor")])
    with running(supervisor):
        wait_for(lambda: actor_status(supervisor, "idle")["state"] == "running", what="running")
        assert {segment_owner(name) for name in list_segments(instance)} == {os.getpid()}
    assert list_segments(instance) == []


def test_a_second_supervisor_of_a_running_instance_is_refused_and_disturbs_nothing() -> None:
    config = engine_config(unique_instance("sup"))
    first = Supervisor(config, [spec("idle", "IdleActor")])
    with running(first):
        wait_for(lambda: actor_status(first, "idle")["state"] == "running", what="running")
        segments = list_segments(config.engine.instance)
        second = Supervisor(config, [spec("idle", "IdleActor")])
        with pytest.raises(StartupError, match="already running"):
            second.start()
        assert list_segments(config.engine.instance) == segments
        assert control.request(first.control_endpoint, "status")["ok"]
