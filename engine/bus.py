"""The engine's message bus: ZeroMQ PUB/SUB, msgpack payloads, topic-prefixed.

Topology: the supervisor runs an XSUB/XPUB forwarder. Every publisher *connects* its PUB
socket to ``endpoints.bus_publish``; every consumer *connects* its SUB socket to
``endpoints.bus_subscribe``. One well-known endpoint for consumers, any number of
publishers, and actors can restart without consumers reconnecting.

A message is two frames: the topic (UTF-8) and a msgpack map. Topics (prefix match):

- ``book.<SYMBOL>``     consolidated top of book after a publish (shared memory has the rest)
- ``trade.<SYMBOL>``    one trade, with its exchange
- ``status.<EXCHANGE>`` an exchange's connection/book state changed
- ``counters.<EXCHANGE>`` every second from each connector: per-symbol and per-connection
  counters (frames, levels applied, snapshots, resyncs, gaps, parse errors, dropped
  frames, last exchange timestamp, receive lag) and its ring's fill and overflows

Later actors add ``features.<SYMBOL>`` and ``signal.<SYMBOL>.<kind>``. Symbols appear in
their canonical form (``BTC/USDT``), so ``book.BTC/`` matches every BTC book.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack
import zmq
import zmq.asyncio


def encode(topic: str, payload: dict[str, Any]) -> list[bytes]:
    return [topic.encode(), msgpack.packb(payload, use_bin_type=True)]


def decode(frames: list[bytes]) -> tuple[str, dict[str, Any]]:
    return frames[0].decode(), msgpack.unpackb(frames[1], raw=False)


class Forwarder:
    """XSUB/XPUB proxy on a background thread (zmq.proxy runs in C, without the GIL)."""

    def __init__(self, context: zmq.Context, publish_endpoint: str, subscribe_endpoint: str) -> None:
        self._frontend = context.socket(zmq.XSUB)
        self._backend = context.socket(zmq.XPUB)
        self._control = context.socket(zmq.PAIR)
        self._control_peer = context.socket(zmq.PAIR)
        self.publish_endpoint = bind(self._frontend, publish_endpoint)
        self.subscribe_endpoint = bind(self._backend, subscribe_endpoint)
        inproc = f"inproc://bus-forwarder-{id(self)}"
        self._control.bind(inproc)
        self._control_peer.connect(inproc)
        self._thread = threading.Thread(target=self._run, name="bus-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self._frontend, self._backend, None, self._control)
        except zmq.ContextTerminated:
            pass

    def stop(self) -> None:
        self._control_peer.send(b"TERMINATE")
        self._thread.join(timeout=5)
        for socket in (self._frontend, self._backend, self._control, self._control_peer):
            socket.close(linger=0)


class PortInUse(RuntimeError):
    """An endpoint could not be bound because something else holds it."""


def bind(socket: zmq.Socket, endpoint: str) -> str:
    """Bind ``endpoint`` (port 0 = any free port) and return the endpoint actually bound."""
    try:
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            socket.bind(endpoint[:-2] + ":*")
        else:
            socket.bind(endpoint)
    except zmq.ZMQError as error:
        if error.errno == zmq.EADDRINUSE:
            raise PortInUse(
                f"{endpoint} is already in use (another coby instance, or another program): "
                f"stop it, or choose another endpoint in config.yaml / COBY_ENDPOINTS__*"
            ) from None
        raise
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


class Publisher:
    """An actor's PUB socket, connected to the forwarder."""

    def __init__(self, context: zmq.Context | zmq.asyncio.Context, endpoint: str) -> None:
        self.socket = context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 100_000)
        self.socket.connect(endpoint)

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Fire and forget: a slow or absent subscriber never blocks the publisher."""
        try:
            self.socket.send_multipart(encode(topic, payload), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        self.socket.close(linger=0)


class Subscriber:
    """A consumer's SUB socket (blocking API; use ``zmq.asyncio`` contexts for async)."""

    def __init__(self, context: zmq.Context, endpoint: str, topics: list[str] | tuple[str, ...] = ("",)) -> None:
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        for topic in topics:
            self.subscribe(topic)

    def subscribe(self, topic_prefix: str) -> None:
        self.socket.setsockopt(zmq.SUBSCRIBE, topic_prefix.encode())

    def receive(self, timeout_ms: int | None = None) -> tuple[str, dict[str, Any]] | None:
        """The next message, or None after ``timeout_ms`` without one."""
        if timeout_ms is not None and not self.socket.poll(timeout_ms):
            return None
        return decode(self.socket.recv_multipart())

    def close(self) -> None:
        self.socket.close(linger=0)
