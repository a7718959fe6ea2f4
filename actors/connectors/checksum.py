"""CRC32 book checksums of the venues that send one, computed on the exact strings received.

A venue's checksum is two functions (:class:`BookChecksum`):

- a *level token*: the text one level contributes, computed once when the level is
  set (``"45285.2"``, ``"0.00100000"`` → Kraken ``"452852"`` + ``"100000"``; OKX
  ``"45285.2:0.00100000"``), kept beside the level in a :class:`TextBook`;
- a *book checksum*: the CRC32 of the best levels' tokens, joined the venue's way.

Tokens are made once per changed level rather than once per level per frame, so a
frame's checksum costs a join of cached strings and one ``zlib.crc32``, not a
reformatting of the top of the book (bench/kraken_parse.py).

Venues:

- Kraken v1 and v2: the 10 best asks (ascending) then the 10 best bids (descending),
  each level price then size with the ``.`` removed and leading zeros stripped;
  unsigned (docs/exchanges.md §5, §6).
- OKX v5 (25 levels) and Bitfinex v2 (25 levels): ``bid:ask`` interleaved by rank,
  ``price:size`` per level, joined with ``:``, the side that runs out is skipped;
  signed int32. Bitfinex ask amounts are negative on the wire; the book keeps
  absolute sizes, so its ask token puts the sign back (§8, §9).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from zlib import crc32

from actors.connectors.base import L2Book

LevelText = tuple[str, str]
"""(price text, size text) exactly as received."""


class TextBook(L2Book):
    """An :class:`L2Book` that also keeps each level's checksum token (price → token).

    Only venues with a checksum use it: the others keep the plain book and pay nothing.
    Whoever changes levels inside a side's checksummed top sets ``bids_changed`` /
    ``asks_changed``; the checksum function keeps what it can reuse for an unchanged
    side in ``checksum_cache`` (most frames change one side only).
    """

    __slots__ = ("bid_tokens", "ask_tokens", "bids_changed", "asks_changed", "checksum_cache")

    def __init__(self) -> None:
        super().__init__()
        self.bid_tokens: dict[float, str] = {}
        self.ask_tokens: dict[float, str] = {}
        self.bids_changed = True
        self.asks_changed = True
        self.checksum_cache: list[object] = [None, None]

    def clear(self) -> None:
        super().clear()
        self.bid_tokens.clear()
        self.ask_tokens.clear()
        self.bids_changed = True
        self.asks_changed = True

    def truncate(self, depth: int) -> tuple[list[float], list[float]]:
        removed_bids, removed_asks = super().truncate(depth)
        for price in removed_bids:
            del self.bid_tokens[price]
        for price in removed_asks:
            del self.ask_tokens[price]
        return removed_bids, removed_asks


@dataclass(frozen=True, slots=True)
class BookChecksum:
    """One venue's checksum: per-level tokens and the book's CRC32 over the best ``depth``."""

    bid_token: Callable[[str, str], str]
    ask_token: Callable[[str, str], str]
    compute: Callable[[TextBook], int]
    depth: int


def to_signed_int32(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


# ---- Kraken --------------------------------------------------------------------------------

KRAKEN_CHECKSUM_DEPTH = 10


def kraken_token(price_text: str, size_text: str) -> str:
    """``"0.05000"``, ``"0.00000304"`` → ``"5000304"``: dot removed, leading zeros stripped."""
    return price_text.replace(".", "").lstrip("0") + size_text.replace(".", "").lstrip("0")


def kraken_book_checksum(book: TextBook) -> int:
    """CRC32 of the asks part, continued over the bids part; an unchanged side's part is
    reused (the cache holds the asks' CRC and the bids' bytes)."""
    cache = book.checksum_cache
    if book.asks_changed:
        asks = "".join(map(book.ask_tokens.__getitem__, book.ask_prices[:KRAKEN_CHECKSUM_DEPTH]))
        cache[0] = crc32(asks.encode())
        book.asks_changed = False
    if book.bids_changed:
        bids = "".join(map(book.bid_tokens.__getitem__, book.bid_prices[: -KRAKEN_CHECKSUM_DEPTH - 1 : -1]))
        cache[1] = bids.encode()
        book.bids_changed = False
    return crc32(cache[1], cache[0])


def kraken_checksum(asks: Iterable[LevelText], bids: Iterable[LevelText]) -> int:
    """Kraken's checksum of level texts given best first (asks ascending, bids descending)."""
    asks = list(asks)[:KRAKEN_CHECKSUM_DEPTH]
    bids = list(bids)[:KRAKEN_CHECKSUM_DEPTH]
    text = "".join(kraken_token(price, size) for price, size in asks + bids)
    return crc32(text.encode())


KRAKEN = BookChecksum(kraken_token, kraken_token, kraken_book_checksum, KRAKEN_CHECKSUM_DEPTH)


# ---- OKX / Bitfinex: interleaved, signed ------------------------------------------------------

INTERLEAVED_CHECKSUM_DEPTH = 25


def interleaved_token(price_text: str, size_text: str) -> str:
    return f"{price_text}:{size_text}"


def negative_size_token(price_text: str, size_text: str) -> str:
    """Bitfinex asks: the wire amount is negative, the book keeps its absolute value."""
    return f"{price_text}:-{size_text}"


def interleaved_book_checksum(book: TextBook, depth: int = INTERLEAVED_CHECKSUM_DEPTH) -> int:
    """The sides are interleaved, so only a frame that changed neither top reuses the last value."""
    cache = book.checksum_cache
    if not (book.bids_changed or book.asks_changed) and cache[0] is not None:
        return cache[0]
    book.bids_changed = book.asks_changed = False
    bid_prices = book.bid_prices[: -depth - 1 : -1]
    ask_prices = book.ask_prices[:depth]
    bids = book.bid_tokens
    asks = book.ask_tokens
    parts = []
    for rank in range(max(len(bid_prices), len(ask_prices))):
        if rank < len(bid_prices):
            parts.append(bids[bid_prices[rank]])
        if rank < len(ask_prices):
            parts.append(asks[ask_prices[rank]])
    cache[0] = to_signed_int32(crc32(":".join(parts).encode()))
    return cache[0]


def interleaved_checksum(
    bids: Iterable[LevelText], asks: Iterable[LevelText], depth: int = INTERLEAVED_CHECKSUM_DEPTH
) -> int:
    """OKX/Bitfinex checksum of level texts given best first (sizes signed as the venue sends them)."""
    bids = list(bids)[:depth]
    asks = list(asks)[:depth]
    parts = []
    for rank in range(max(len(bids), len(asks))):
        if rank < len(bids):
            parts.append(interleaved_token(*bids[rank]))
        if rank < len(asks):
            parts.append(interleaved_token(*asks[rank]))
    return to_signed_int32(crc32(":".join(parts).encode()))


OKX = BookChecksum(interleaved_token, interleaved_token, interleaved_book_checksum, INTERLEAVED_CHECKSUM_DEPTH)
BITFINEX = BookChecksum(interleaved_token, negative_size_token, interleaved_book_checksum, INTERLEAVED_CHECKSUM_DEPTH)
