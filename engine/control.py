"""The supervisor's control socket protocol (ZeroMQ REQ/REP, msgpack).

Request: ``{"command": "status" | "restart" | "stop" | "start" | "shutdown", "actor": name?}``.
Reply: ``{"ok": true, ...}`` or ``{"ok": false, "error": "what went wrong and what to do"}``.

- ``status``: engine and per-actor state (pid, state, restarts, heartbeat age, CPU, RSS),
  ring fill and overflows.
- ``restart <actor>``: stop and start one actor (counts as a manual restart, not a crash).
- ``stop <actor>`` / ``start <actor>``: hold an actor stopped (e.g. to run it by hand with
  ``coby actor``) and release it again.
- ``shutdown``: stop the whole engine gracefully.
"""

from __future__ import annotations

from typing import Any

import msgpack
import zmq


class ControlError(RuntimeError):
    pass


def request(endpoint: str, command: str, timeout_s: float = 5.0, **arguments: Any) -> dict[str, Any]:
    """Send one control request and return the reply (raises ControlError on no answer)."""
    context = zmq.Context.instance()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    try:
        socket.send(msgpack.packb({"command": command, **arguments}))
        if not socket.poll(int(timeout_s * 1000)):
            raise ControlError(
                f"no answer from the coby supervisor at {endpoint} within {timeout_s:g}s: "
                f"is it running (coby run / coby demo) with this config?"
            )
        return msgpack.unpackb(socket.recv(), raw=False)
    finally:
        socket.close(linger=0)
