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

``book.`` and ``trade.`` messages carry ``mode``: ``live``, or ``replay`` in a replay session.
Later actors add ``features.<SYMBOL>``, ``signal.<SYMBOL>.<kind>`` and ``replay.progress``. Symbols appear in
their canonical form (``BTC/USDT``), so ``book.BTC/`` matches every BTC book.

ZeroMQ matches raw prefixes, so ``book.BTC/USDT`` would also deliver ``book.BTC/USDT:PERP``;
:class:`Subscriber` drops those: a subscription matches a topic equal to it, or one that
continues it after a ``.`` (``signal.BTC/USDT`` → ``signal.BTC/USDT.imbalance``), or any
continuation when it ends in ``.`` or ``/`` (``trade.``, ``book.BTC/``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from shm import wake


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


class RingDoorbell:
    """A ring producer's side of its consumer's doorbell, rung only while the consumer sleeps.

    Where :data:`shm.wake.CAN_WAIT`, a futex wake-up on the ring's write index, which the
    aggregator sleeps on (one kernel wake-up, no message and no I/O thread in between: ~11 µs
    p50 against ~64 µs, bench/aggregate.py ``wake_up_us``). Otherwise one empty message on the
    consumer's PULL socket, and none more while one is pending (the consumer drains the ring
    anyway). Producer and consumer choose alike: both follow ``CAN_WAIT`` on the same host.
    """

    def __init__(self, context: zmq.Context, endpoint: str, write_word: memoryview) -> None:
        self.write_word = write_word if wake.CAN_WAIT else None
        self.socket: zmq.Socket | None = None
        if self.write_word is None:
            self.socket = context.socket(zmq.PUSH)
            self.socket.setsockopt(zmq.LINGER, 0)
            self.socket.setsockopt(zmq.SNDHWM, 1)
            self.socket.connect(endpoint)

    def __call__(self) -> None:
        if self.write_word is not None:
            wake.wake(self.write_word)
            return
        try:
            self.socket.send(b"", zmq.NOBLOCK)
        except zmq.Again:
            pass  # a ring is already pending: the consumer will wake up anyway

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)


class Publisher:
    """An actor's PUB socket, connected to the forwarder."""

    def __init__(self, context: zmq.Context | zmq.asyncio.Context, endpoint: str) -> None:
        self.socket = context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 100_000)
        self.socket.connect(endpoint)

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Fire and forget: a slow or absent subscriber never blocks the publisher."""
        self.publish_packed(topic, msgpack.packb(payload, use_bin_type=True))

    def publish_packed(self, topic: str, packed: bytes) -> None:
        """:meth:`publish` of a payload already msgpack-packed (one a caller also keeps)."""
        try:
            self.socket.send_multipart([topic.encode(), packed], flags=zmq.NOBLOCK)
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
        self.topics: list[str] = []
        for topic in topics:
            self.subscribe(topic)

    def subscribe(self, topic: str) -> None:
        self.topics.append(topic)
        self.socket.setsockopt(zmq.SUBSCRIBE, topic.encode())

    def matches(self, topic: str) -> bool:
        for wanted in self.topics:
            if topic.startswith(wanted) and (
                len(topic) == len(wanted) or not wanted or wanted[-1] in "./" or topic[len(wanted)] == "."
            ):
                return True
        return False

    def receive(self, timeout_ms: int | None = None) -> tuple[str, dict[str, Any]] | None:
        """The next message, or None after ``timeout_ms`` without one."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            if deadline is not None:
                left_ms = max(0, round((deadline - time.monotonic()) * 1000))
                if not self.socket.poll(left_ms):
                    return None
            message = decode(self.socket.recv_multipart())
            if self.matches(message[0]):
                return message

    def close(self) -> None:
        self.socket.close(linger=0)
