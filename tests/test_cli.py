"""The command line's failure paths: one clear line, a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from shm.registry import list_segments
from tests.engine_support import unique_instance


def coby(*arguments: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=os.getcwd(),
    )


def assert_one_clear_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].count("config error") <= 1, lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_config_key_stops_start_up(tmp_path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("aggregator:\n  publish_intervl_ms: 5\n")
    result = coby("--config", str(config), "run")
    assert_one_clear_line(result, "config error", "aggregator.publish_intervl_ms")


def test_bad_environment_override_stops_start_up() -> None:
    result = coby("run", env={"COBY_SHM__RING_RECORDS": "1000"})
    assert_one_clear_line(result, "shm.ring_records", "power of two", "COBY_SHM__RING_RECORDS")


def test_busy_port_stops_start_up_and_leaves_nothing_behind() -> None:
    instance = unique_instance("cli")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = coby(
            "run",
            env={
                "COBY_ENGINE__INSTANCE": instance,
                "COBY_ENDPOINTS__CONTROL": f"tcp://127.0.0.1:{port}",
                "COBY_ENDPOINTS__BUS_PUBLISH": "tcp://127.0.0.1:0",
                "COBY_ENDPOINTS__BUS_SUBSCRIBE": "tcp://127.0.0.1:0",
            },
        )
    assert_one_clear_line(result, f"tcp://127.0.0.1:{port}", "already in use")
    assert list_segments(instance) == []


def test_status_without_a_running_engine_says_so() -> None:
    result = coby("status", "--instance", unique_instance("cli"))
    assert_one_clear_line(result, "is running")
