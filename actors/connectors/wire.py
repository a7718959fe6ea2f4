"""Typed (msgspec) decoding of the per-frame book messages: the hot path's parser.

A venue's delta frame decoded into a ``msgspec.Struct`` costs ~30% less than
``orjson.loads`` into dicts, and msgspec checks every field's type, the prices and sizes
included, in C, so the per-frame Python that looked fields up and checked their types is gone
(bench/connectors.py). It is only ever a fast path: a frame the typed decoder refuses
(``msgspec.MsgspecError``) takes the venue's generic ``orjson`` path, which stays the authority
on what a frame means and how a bad one is handled. Refusing more than that path accepts is
therefore always safe; accepting more never happens for a level:

- :data:`Price` and :data:`Size` decode a level's decimal string (``"0.35240000"``) or JSON
  number straight into the float ``float(text)`` gives (msgspec's parser is correctly rounded:
  equal bit for bit on the 106,435 distinct numbers of ../shared/recorded and on 1.8 million
  random decimal strings, tests/test_wire.py), and refuse what the generic path's level check
  refuses (a price not > 0 or above ``MAX_PRICE``, a size < 0 or above ``MAX_SIZE``, infinities and NaN). The strings msgspec refuses that
  ``float`` takes (``" 1.5"``, ``"1_0"``, ``".5"``, ``"+1"``) go down the generic path, as
  before. Two differences, both on frames no venue sends: a size written ``"-0"`` is ``0.0``
  here and ``-0.0`` in the generic path (the same delete either way), and a price or size
  written as an integer literal wider than 64 bits is read as its float here, where orjson
  refuses the whole frame as unreadable.
- Checksummed venues keep their level texts as ``str``: the checksum is computed on the exact
  strings received.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from actors.connectors.base import MAX_PRICE, MAX_SIZE

Price = Annotated[float, msgspec.Meta(gt=0.0, le=MAX_PRICE)]
"""A level's price: a float > 0 and at most ``MAX_PRICE`` (from a decimal string or a JSON number)."""

Size = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_SIZE)]
"""A level's absolute size: a float >= 0 and at most ``MAX_SIZE`` (0 deletes the level)."""

PriceLevels = list[tuple[Price, Size]]
"""``[[price, size], ...]`` as validated ``(price, size)`` float pairs."""

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""An integer msgspec reads where orjson does (msgspec would take any width; its bounds stop at
int64, orjson's at 2**64 - 1, so the few between go down the generic path)."""

Integer = Int64 | float | str
"""An id or time field. Lax decoding (which the levels' decimal strings need) would turn ``"12"``
and ``12.0`` into ``12`` in a field typed ``int``; in this union msgspec keeps each JSON kind as
it is, so the venue checks ``value.__class__ is int`` as its generic path does (a venue that sends
an id as a decimal string, Bitstamp's ``microtimestamp``, converts it as that path does). The
bounds are :data:`Int64`'s."""


def decoder(message_type: type) -> msgspec.json.Decoder:
    """A JSON decoder for one typed message; lax, so that decimal strings decode as floats."""
    return msgspec.json.Decoder(message_type, strict=False)


DecodeError = msgspec.MsgspecError
"""What a typed decoder raises for a frame it does not take (the generic path then does)."""

__all__ = ["DecodeError", "Int64", "Integer", "Price", "PriceLevels", "Size", "decoder"]
