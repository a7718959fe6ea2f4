"""Frame-level fault rendering that works on any venue's wire format.

The simulator's venues encode book changes in eleven different shapes, but every one of them
writes a level as a small container (a list or a map) holding the level's price and its size
(Bitfinex: its signed amount). So a fault that has to corrupt "a level of this symbol's next
book frame" can find that level without knowing the venue: walk the decoded frame, take the
innermost container whose direct children hold the change's price and size, and replace one
of them. Likewise an "unknown symbol" frame is a copy of a real one with the base asset renamed
wherever a string names it (``BTCUSDT``, ``BTC-USDT``, ``BTC/USDT``, ``market.btcusdt.mbp.400``).

Frames may be text or gzip-compressed bytes (HTX); both are decoded and re-encoded the same
way. A venue whose frames carry neither the price nor the symbol (Bitfinex routes by channel
id) overrides the hooks in :class:`sim.venue.SimulatedVenue` instead.
"""

from __future__ import annotations

import gzip
from typing import Any

import orjson

_MARKER = "__coby_fault_value__"
UNKNOWN_BASE = "ZZZ"

Frame = str | bytes


def decode_frame(frame: Frame) -> tuple[Any, bool] | None:
    """(decoded JSON, whether it was gzip) or None for a frame that is not JSON."""
    compressed = isinstance(frame, bytes) and frame[:2] == b"\x1f\x8b"
    try:
        return orjson.loads(gzip.decompress(frame) if compressed else frame), compressed
    except (orjson.JSONDecodeError, OSError, EOFError):
        return None


def encode_frame(message: Any, compressed: bool, raw_token: str | None = None) -> Frame:
    """JSON text (gzip bytes if the original was); ``raw_token`` replaces the marker string
    verbatim, so a frame can carry what JSON cannot (``NaN``) or a number of any spelling."""
    text = orjson.dumps(message).decode()
    if raw_token is not None:
        text = text.replace(f'"{_MARKER}"', raw_token)
    return gzip.compress(text.encode()) if compressed else text


def _number(value: object) -> float | None:
    if value.__class__ not in (str, int, float):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except ValueError:
        return None


def _children(node: Any) -> list[tuple[Any, Any]]:
    if isinstance(node, dict):
        return list(node.items())
    if isinstance(node, list):
        return list(enumerate(node))
    return []


def find_level(node: Any, price: float, size: float) -> tuple[Any, Any, Any] | None:
    """(container, key of the price, key of the size) of the first level holding ``price``
    and ``size`` (either sign: Bitfinex signs its amounts), depth first."""
    children = _children(node)
    price_key = size_key = None
    for key, value in children:
        number = _number(value)
        if number is None:
            continue
        if price_key is None and number == price:
            price_key = key
        elif size_key is None and abs(number) == size:
            size_key = key
    if price_key is not None and size_key is not None:
        return node, price_key, size_key
    for _key, value in children:
        if isinstance(value, (dict, list)):
            found = find_level(value, price, size)
            if found is not None:
                return found
    return None


def _locate(frame: Frame, price: float, size: float) -> tuple[Any, bool, tuple[Any, Any, Any]] | None:
    """(decoded frame, whether gzip, the level found in it) or None."""
    decoded = decode_frame(frame)
    if decoded is None:
        return None
    found = find_level(decoded[0], price, size)
    return None if found is None else (decoded[0], decoded[1], found)


def replace_level_value(
    frame: Frame, price: float, size: float, field: str, token: str
) -> Frame | None:
    """``frame`` with the price (``field="price"``) or size of the level (price, size) written
    as ``token`` (kept a string where the venue writes strings, a bare token where it writes
    numbers); None if the frame holds no such level."""
    located = _locate(frame, price, size)
    if located is None:
        return None
    message, compressed, (container, price_key, size_key) = located
    key = price_key if field == "price" else size_key
    original = container[key]
    if isinstance(original, str):
        container[key] = token
        return encode_frame(message, compressed)
    container[key] = _MARKER
    return encode_frame(message, compressed, raw_token=token)


def replace_level_shape(frame: Frame, price: float, size: float) -> Frame | None:
    """``frame`` with the level (price, size) replaced by a JSON object of the wrong shape: the
    frame stays valid JSON, the level cannot be read."""
    located = _locate(frame, price, size)
    if located is None:
        return None
    message, compressed, (container, price_key, _size_key) = located
    container[price_key] = {"unexpected": [price]}
    return encode_frame(message, compressed)


def rename_base(frame: Frame, base: str, replacement: str = UNKNOWN_BASE) -> Frame | None:
    """A copy of ``frame`` with ``base`` renamed in every string that names it (any case);
    None if no string does."""
    decoded = decode_frame(frame)
    if decoded is None:
        return None
    message, compressed = decoded
    renamed = [False]
    spellings = ((base.upper(), replacement.upper()), (base.lower(), replacement.lower()))

    def rename(node: Any) -> Any:
        if isinstance(node, str):
            for old, new in spellings:
                if old in node:
                    renamed[0] = True
                    node = node.replace(old, new)
            return node
        if isinstance(node, dict):
            return {rename(key): rename(value) for key, value in node.items()}
        if isinstance(node, list):
            return [rename(value) for value in node]
        return node

    message = rename(message)
    return encode_frame(message, compressed) if renamed[0] else None


GENERIC_WRONG_SHAPES: tuple[str, ...] = (
    "[]",
    "{}",
    "null",
    "42",
    '"a string"',
    '{"data": 7, "arg": [], "channel": {}, "e": null, "stream": 1}',
    "[1, \"x\", null, {\"b\": [[\"1\"]]}]",
)
"""Valid JSON that no venue's message looks like; every connector must count and drop each."""


def large_frame(size_bytes: int) -> str:
    """A valid JSON object of about ``size_bytes`` that no venue sends (a padding field)."""
    return '{"padding":"' + "x" * max(0, size_bytes - 15) + '"}'


BAD_VALUES: dict[str, tuple[str, str]] = {
    "nan_price": ("price", "NaN"),
    "negative_price": ("price", "-1"),
    "zero_price": ("price", "0"),
    "absurd_price": ("price", "1e300"),
    "nan_size": ("size", "NaN"),
    "negative_size": ("size", "-5"),
    "absurd_size": ("size", "1e300"),
    "infinite_size": ("size", "Infinity"),
}
"""Named corrupt level values: which field, and the token written in its place."""


