"""The typed decoders' levels equal the generic path's bit for bit, and refuse what it refuses."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import msgspec
import pytest

from actors.connectors.base import MAX_PRICE, MAX_SIZE
from actors.connectors.wire import Integer, PriceLevels, decoder

decode_levels = decoder(PriceLevels).decode
decode_integers = decoder(list[Integer]).decode


def generic_level(price_text: object, size_text: object) -> tuple[float, float] | None:
    """The generic path's reading of one level (actors.connectors.base.parse_levels), None if refused."""
    try:
        price, size = float(price_text), float(size_text)
    except (TypeError, ValueError):
        return None
    return (price, size) if 0.0 < price <= MAX_PRICE and 0.0 <= size <= MAX_SIZE else None


def typed_level(price: object, size: object) -> tuple[float, float] | None:
    try:
        ((typed_price, typed_size),) = decode_levels(json.dumps([[price, size]]))
    except msgspec.ValidationError:
        return None
    return typed_price, typed_size


def assert_same_or_refused(price: object, size: object) -> None:
    typed = typed_level(price, size)
    if typed is None:
        return  # refused: the frame takes the generic path, which decides as it always did
    generic = generic_level(price, size)
    assert generic is not None, (price, size)
    assert (typed[0].hex(), typed[1].hex()) == (generic[0].hex(), abs(generic[1]).hex()), (price, size)


def test_every_recorded_number_decodes_to_the_float_of_its_text(recorded: Path) -> None:
    texts = set()
    for path in [*recorded.glob("*.ws.*.0"), *recorded.glob("*.http.*.0")]:
        with path.open(errors="replace") as lines:
            for line in lines:
                texts.update(re.findall(r'"([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"', line))
    assert len(texts) > 100_000
    numbers = sorted(texts)
    for start in range(0, len(numbers), 10_000):
        chunk = numbers[start : start + 10_000]
        readable = [text for text in chunk if 0 < float(text) <= MAX_PRICE]  # ids and times are larger
        decoded = decode_levels(json.dumps([[text, text] for text in readable]))
        expected = [float(text) for text in readable]
        assert [price.hex() for price, _ in decoded] == [value.hex() for value in expected]


def test_random_decimal_strings_and_numbers_decode_as_float_does() -> None:
    rng = random.Random(20261206)
    for _ in range(20_000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 22)))
        cut = rng.randint(0, len(digits))
        text = (digits[:cut] or "0") + (f".{digits[cut:]}" if digits[cut:] else "")
        if rng.random() < 0.3:
            text += f"e{rng.randint(-330, 310)}"
        assert_same_or_refused(text, text)
        value = rng.uniform(0, 1e6) * 10 ** rng.randint(-12, 12)
        assert_same_or_refused(value, value)  # Bitfinex and HTX send JSON numbers


@pytest.mark.parametrize(
    "price, size",
    [("0", "1"), ("-1", "1"), ("1", "-1"), ("nan", "1"), ("1", "NaN"), ("inf", "1"), ("1", "Infinity"),
     ("1e400", "1"), ("1", "1e400"), ("1e13", "1"), ("1", "1e16"), (" 1.5", "1"), ("1_0", "1"), (".5", "1"), ("+1", "1"), ("1", None),
     (True, "1"), ("abc", "1"), ("1.5", "2")],
)
def test_a_level_the_generic_path_refuses_is_refused(price: object, size: object) -> None:
    assert_same_or_refused(price, size)


def test_integer_fields_keep_their_json_kind_for_the_callers_check() -> None:
    assert decode_integers('[12, 12.0, "12", "1e3"]') == [12, 12.0, "12", "1e3"]
    assert [value.__class__ for value in decode_integers('[12, 12.0, "12"]')] == [int, float, str]
    for refused in ("[true]", "[null]", "[18446744073709551615]"):
        with pytest.raises(msgspec.ValidationError):
            decode_integers(refused)


