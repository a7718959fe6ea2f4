"""Negative controls on the real recordings: one book frame of one symbol dropped, duplicated,
swapped with that symbol's next book frame, or altered (one price or size), replayed through
the real connector path (``engine.verify.verify_recording`` with a ``transform``; OKX and the
others through their ``RECORDED_OPTIONS``), for every recorded venue whose feed carries
something to detect it with.

Each case compares the faulted replay with the clean replay of the same recording (cached per
module) and asserts:

- detection: the report's totals (``gaps``, ``checksums_failed``, ``cross_check_mismatches``,
  ``resyncs``, ``reconnects``, ``crossed``, ``parse_errors``) grow by exactly the expected
  amounts, the run counts as failed, and the records hold exactly the expected
  ``CLEAR(reason)`` + ``STATUS(RESYNCING)`` pairs, written while the replay was handling the
  frame that reveals the fault (``Reveal``);
- no book that is not the venue's is shown in sync. Every record batch is tagged with the
  exchange frame being replayed, named by its position in the clean recording (a duplicated
  or swapped frame keeps its name). The books are rebuilt from the records the way the
  aggregator reads them (a snapshot counts at SNAPSHOT_END; CLEAR or a STATUS other than
  IN_SYNC drops the book), and after every batch that touches the faulted symbol while it is
  in sync, its book must be one the clean consumer saw while that same exchange frame was
  handled. Batch by batch, not just at the end: a book that is late (a drop not yet seen)
  passes only because it equals the venue's book at the last frame it applied, and a book that
  comes back (HTX) passes only if it is exactly the venue's book again. The one exception is
  a fault only the venue's ticker can reveal when that ticker comes after the update (KuCoin,
  Coinbase): the altered or reordered update is shown in sync until the ticker, and the case
  asserts it is exactly one batch and cleared by that ticker;
- the other symbols end with the clean run's books, except where the venue's rule is
  connection-wide (a Bitfinex ``SEQ_ALL`` gap clears every book of the connection and asks to
  reconnect); the faulted symbol ends in sync only where the recording re-seeds it (HTX, whose
  every push is a whole book) — the others have no second snapshot to give, so it stays out.

Which frame: the symbol's middle book delta (its successor for a swap), or, where only the
venue's ticker can catch the fault, the candidate nearest the middle among the book frames
that the ticker is compared with and that change the level the ticker shows. A swap keeps
the receive times in place and exchanges the payloads.

What each venue's recorded feed can detect (a repeated frame of absolute sizes is harmless:
it sets the same levels again):

- Binance spot (``U == prev u + 1``), Binance futures (``pu == prev u``), Gate.io
  (``U == prev u + 1``), KuCoin (``sequenceStart == prev sequenceEnd + 1``): drop, duplicate
  and swap are gaps. The buffer that waits for a new snapshot checks continuity too, so a
  swap counts three gaps (into, inside and out of the swapped pair). A duplicate is a gap as
  well: the rule wants ``U == prev u + 1`` and does not skip an already applied ``u`` (a
  resync costs a snapshot but never shows a wrong book). The ids cannot see an altered level;
  Binance's ``bookTicker`` (it comes first, and the connector compares before it writes the
  update) and KuCoin's ticker catch one at the top of the book. Gate.io's feed carries nothing
  the connector compares: no alteration case.
- Kraken v1 (CRC32 of the top 10 on every update) and OKX 2022 (CRC32 of the top 25; that
  generation has no ``seqId``): drop, swap and alteration fail a checksum; a duplicate is
  harmless. A change below the checksummed levels would stay unseen until it rose into them;
  the middle frames here change the checksum.
- Bitfinex (``SEQ_ALL`` only: the recording asked for no checksums): drop, duplicate and swap
  break the connection's numbering; an altered level has nothing to be checked against.
- Coinbase Pro ``level2`` has no sequence: only the ticker's best bid and ask prices can catch
  a fault, so the frame is an update that moves the top right before a compared ticker; the
  drop, the swap and a price one unit further from the spread all disagree with that ticker.
- HTX ``depth.step0`` (``version`` strictly increasing, every push a whole book): a duplicate
  or a swap does not increase the version and resyncs, and the next push re-seeds the book; a
  dropped push loses nothing (the next one is whole); an altered push cannot be detected.
- Bitstamp has only ``microtimestamp`` ordering: a swap goes back in time at its second frame
  and is a gap (its first frame is applied early, unseen; here both set the same level, so
  the book shown is still the venue's); a duplicate is harmless; a drop or an alteration
  cannot be detected (the two cases are skipped explicitly).
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from engine.verify import Frame, failed, recordings, verify_recording
from shm.records import ALL_SYMBOLS, Kind, Reason, Side, Status
from sim.recorded import LineKind, RecordedLine

Book = tuple[dict[float, float], dict[float, float]]
BOOK_KINDS = (Kind.LEVEL, Kind.SNAPSHOT_BEGIN, Kind.SNAPSHOT_END, Kind.CLEAR, Kind.STATUS)
DETECTION_TOTALS = (
    "gaps", "checksums_failed", "cross_check_mismatches", "crossed", "parse_errors", "resyncs", "reconnects"
)


# ---------------------------------------------------------------------------------------
# Records, as the consumer reads them


class TaggedSink:
    """The ring's producer contract, keeping every batch with the frame being replayed when
    it was written (``replay`` hands the frames over one at a time and notes which)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, np.ndarray]] = []
        self.frame = -1

    def write(self, batch: np.ndarray) -> bool:
        self.batches.append((self.frame, batch.copy()))
        return True

    def free(self) -> int:
        return 1 << 30

    def replay(self, tagged: list[tuple[int, Frame]]) -> Iterator[Frame]:
        for tag, frame in tagged:
            self.frame = tag
            yield frame


@dataclass
class ConsumerView:
    """``books``: the books in sync at the end. ``timeline``: (frame, the watched symbol's book,
    None if out of sync) after every batch that wrote book records for it. ``clears``: (frame,
    symbol, reason, the STATUS written right after the CLEAR)."""

    books: dict[int, Book]
    timeline: list[tuple[int, Book | None]]
    clears: list[tuple[int, int, int, int | None]]

    def books_during(self, frame: int) -> list[Book | None]:
        """The watched symbol's books while ``frame`` was handled: after each of its batches,
        or, if it wrote none for the symbol, the book it left as it was."""
        first = bisect.bisect_left(self.timeline, frame, key=lambda entry: entry[0])
        last = bisect.bisect_right(self.timeline, frame, key=lambda entry: entry[0])
        if first < last:
            return [book for _, book in self.timeline[first:last]]
        return [self.timeline[first - 1][1] if first else None]


def consumer_view(batches: list[tuple[int, np.ndarray]], watched: int) -> ConsumerView:
    """The aggregator's reading: a snapshot swapped in at SNAPSHOT_END, a book dropped by CLEAR
    or by a STATUS other than IN_SYNC."""
    books: dict[int, Book] = {}
    building: dict[int, Book] = {}
    timeline: list[tuple[int, Book | None]] = []
    clears: list[tuple[int, int, int, int | None]] = []
    for tag, batch in batches:
        touched = False
        rows = batch[["symbol_id", "kind", "side", "price", "size", "aux", "reason"]].tolist()
        for index, (symbol, kind, side, price, size, aux, reason) in enumerate(rows):
            touched = touched or (symbol in (watched, ALL_SYMBOLS) and kind in BOOK_KINDS)
            if kind == Kind.LEVEL:
                levels = (building.get(symbol) or books[symbol])[0 if side == Side.BID else 1]
                if size:
                    levels[price] = size
                else:
                    levels.pop(price, None)
            elif kind == Kind.SNAPSHOT_BEGIN:
                building[symbol] = ({}, {})
            elif kind == Kind.SNAPSHOT_END:
                books[symbol] = building.pop(symbol)
            elif kind == Kind.CLEAR:
                status = rows[index + 1] if index + 1 < len(rows) else None
                is_status = status is not None and status[:2] == (symbol, Kind.STATUS)
                clears.append((tag, symbol, reason, status[5] if is_status else None))
                books.pop(symbol, None)
            elif kind == Kind.STATUS and aux != Status.IN_SYNC:
                for dropped in list(books) if symbol == ALL_SYMBOLS else [symbol]:
                    books.pop(dropped, None)
        if touched:
            book = books.get(watched)
            timeline.append((tag, None if book is None else (dict(book[0]), dict(book[1]))))
    return ConsumerView(books, timeline, clears)


# ---------------------------------------------------------------------------------------
# The recordings: which frames are book deltas, and the venues' own tops of book


def decode(payload: str | bytes) -> Any:
    if isinstance(payload, bytes):  # HTX: gzip
        payload = zlib.decompress(payload, 16 + zlib.MAX_WBITS)
    return orjson.loads(payload)


def binance_delta(message: Any) -> str | None:
    data = message.get("data") or {}
    return data["s"] if data.get("e") == "depthUpdate" else None


def gateio_delta(message: Any) -> str | None:
    if message.get("channel") == "spot.order_book_update" and message.get("event") == "update":
        return message["result"]["s"]
    return None


def kucoin_delta(message: Any) -> str | None:
    return message["data"]["symbol"] if message.get("subject") == "trade.l2update" else None


def coinbase_delta(message: Any) -> str | None:
    return message["product_id"] if message.get("type") == "l2update" else None


def kraken_delta(message: Any) -> str | None:
    if isinstance(message, list) and isinstance(message[1], dict) and ("a" in message[1] or "b" in message[1]):
        return message[-1]
    return None


def okx_delta(message: Any) -> str | None:
    return message["arg"]["instId"] if message.get("action") == "update" else None


def bitstamp_delta(message: Any) -> str | None:
    channel = message.get("channel", "")
    if message.get("event") == "data" and channel.startswith("diff_order_book_"):
        return channel.removeprefix("diff_order_book_")
    return None


def htx_push(message: Any) -> str | None:
    channel = message.get("ch", "") if isinstance(message, dict) else ""
    return channel.split(".")[1] if channel.endswith(".depth.step0") else None


def bitfinex_deltas(messages: list[Any]) -> list[str | None]:
    """Book updates (one ``[price, count, amount]``) by the symbol their channel was subscribed for."""
    channels: dict[int, str] = {}
    symbols: list[str | None] = []
    for message in messages:
        if isinstance(message, dict) and message.get("event") == "subscribed" and message["channel"] == "book":
            channels[message["chanId"]] = message["symbol"]
        is_update = isinstance(message, list) and isinstance(message[1], list) and len(message[1]) == 3
        symbols.append(channels.get(message[0]) if is_update and not isinstance(message[1][0], list) else None)
    return symbols


def per_message(delta: Callable[[Any], str | None]) -> Callable[[list[Any]], list[str | None]]:
    return lambda messages: [delta(message) if message is not None else None for message in messages]


@dataclass(frozen=True)
class Alteration:
    """One level of one frame, as texts: its price and size, and what they become."""

    price: str
    size: str
    new_price: str
    new_size: str

    def apply(self, payload: str) -> str:
        old, new = f'"{self.price}","{self.size}"', f'"{self.new_price}","{self.new_size}"'
        assert payload.count(old) == 1, (old, payload[:200])
        return payload.replace(old, new)


def one_unit(text: str, sign: int = 1) -> str:
    """``text`` moved by one unit of its last decimal place (``"5.881"`` → ``"5.882"``)."""
    number = Decimal(text)
    return str(number + sign * Decimal((0, (1,), number.as_tuple().exponent)))


def size_alteration(price: str, size: str) -> Alteration:
    return Alteration(price, size, price, one_unit(size))


def first_level_alteration(message: Any) -> Alteration:
    """The frame's first level with a non-zero size, one unit larger (checksum venues)."""
    for price, size, *_ in first_levels(message):
        if Decimal(size):
            return size_alteration(price, size)
    raise AssertionError("no level with a size")


def first_levels(message: Any) -> list[list[str]]:
    if isinstance(message, list):  # Kraken v1: [channel, {"a"|"b": levels, "c": checksum}, ..., name, pair]
        return [level for part in message[1:-2] for side in ("a", "b") for level in part.get(side, [])]
    entry = message["data"][0]  # OKX
    return entry["asks"] + entry["bids"]


@dataclass(frozen=True)
class Target:
    """The faulted frame, the symbol's next book frame, and (cross-checked venues) the ticker
    frame that compares the book and the level alteration it catches."""

    frame: int
    next_frame: int
    ticker: int | None = None
    alteration: Alteration | None = None


def middle_target(deltas: list[int], messages: list[Any], alteration: Callable[[Any], Alteration] | None) -> Target:
    middle = len(deltas) // 2
    frame = deltas[middle]
    return Target(frame, deltas[middle + 1], alteration=alteration(messages[frame]) if alteration else None)


def ticker_level_target(
    deltas: list[int],
    messages: list[Any],
    tickers: dict[int, tuple[int, str, str]],
    update_id: Callable[[Any], int],
    levels: Callable[[Any], tuple[list[list[str]], list[list[str]]]],
    ticker_first: bool,
) -> Target:
    """A book frame of the symbol ending at the update id a ticker carries (``tickers``: id →
    frame, best bid price, best ask price), with the ticker's best bid or ask level in it;
    that level's size is altered. ``ticker_first``: the ticker came before the frame (the
    connector holds it until the book gets there), else right after it, before the
    symbol's next book frame."""
    candidates = []
    for position, index in enumerate(deltas[:-1]):
        next_frame = deltas[position + 1]
        ticker, best_bid, best_ask = tickers.get(update_id(messages[index]), (-1, "", ""))
        if not (0 <= ticker < index if ticker_first else index < ticker < next_frame):
            continue
        bids, asks = levels(messages[index])
        at_top = [level for level in bids if float(level[0]) == float(best_bid) and Decimal(level[1])]
        at_top += [level for level in asks if float(level[0]) == float(best_ask) and Decimal(level[1])]
        if at_top:
            candidates.append(Target(index, next_frame, ticker, size_alteration(at_top[0][0], at_top[0][1])))
    return candidates[len(candidates) // 2]


def book_ticker_target(native: str, deltas: list[int], messages: list[Any], _clean: ConsumerView) -> Target:
    """Binance's ``bookTicker`` comes before the depth event that reaches its ``u``."""
    tickers: dict[int, tuple[int, str, str]] = {}
    for index, message in enumerate(messages):
        data = message.get("data") if isinstance(message, dict) else None
        if data and data.get("s") == native and isinstance(data.get("b"), str):
            tickers.setdefault(data["u"], (index, data["b"], data["a"]))
    return ticker_level_target(
        deltas, messages, tickers, lambda message: message["data"]["u"],
        lambda message: (message["data"]["b"], message["data"]["a"]), ticker_first=True,
    )


def kucoin_ticker_target(native: str, deltas: list[int], messages: list[Any], _clean: ConsumerView) -> Target:
    """KuCoin's ticker comes right after the l2update that reaches its ``sequence`` (in this
    recording none that comes first has its best level in that update)."""
    topic = f"/market/ticker:{native}"
    tickers: dict[int, tuple[int, str, str]] = {}
    for index, message in enumerate(messages):
        if isinstance(message, dict) and message.get("topic") == topic:
            data = message["data"]
            tickers.setdefault(int(data["sequence"]), (index, data["bestBid"], data["bestAsk"]))
    return ticker_level_target(
        deltas, messages, tickers, lambda message: message["data"]["sequenceEnd"],
        lambda message: (message["data"]["changes"]["bids"], message["data"]["changes"]["asks"]), ticker_first=False,
    )


def coinbase_ticker_target(native: str, deltas: list[int], messages: list[Any], clean: ConsumerView) -> Target:
    """Coinbase Pro: an l2update that moves the best bid or ask price and is followed, before
    any other update of the product, by a compared ticker (not the product's first, which
    describes the last trade). The level at the top that moved gets its price one unit
    further from the spread, so the book's top no longer matches the ticker whatever else
    it holds."""
    tickers = [
        index for index, message in enumerate(messages)
        if isinstance(message, dict) and message.get("type") == "ticker" and message.get("product_id") == native
    ][1:]
    candidates = []
    for position, index in enumerate(deltas[:-1]):
        following = bisect.bisect_right(tickers, index)
        if following == len(tickers) or tickers[following] > deltas[position + 1]:
            continue
        before, after = clean.books_during(index - 1)[-1], clean.books_during(index)[-1]
        if before is None or after is None:
            continue
        bid_moved, ask_moved = max(before[0]) != max(after[0]), min(before[1]) != min(after[1])
        if not (bid_moved or ask_moved):
            continue
        side, price, sign = ("buy", max(max(before[0]), max(after[0])), -1) if bid_moved else (
            "sell", min(min(before[1]), min(after[1])), 1)
        level = next(change for change in messages[index]["changes"] if change[0] == side and float(change[1]) == price)
        alteration = Alteration(level[1], level[2], one_unit(level[1], sign), level[2])
        candidates.append(Target(index, deltas[position + 1], tickers[following], alteration))
    return candidates[len(candidates) // 2]


@dataclass(frozen=True)
class Venue:
    prefix: str
    symbol: str  # the canonical symbol whose frame is faulted
    native: str
    deltas: Callable[[list[Any]], list[str | None]]  # per frame: the native symbol of a book delta
    # Where only the venue's ticker catches a fault: (native, deltas, messages, clean view) → Target.
    ticker_target: Callable[[str, list[int], list[Any], ConsumerView], Target] | None = None
    alteration: Callable[[Any], Alteration] | None = None  # checksum venues: a level of the middle frame


VENUES = {
    venue.prefix: venue
    for venue in (
        Venue("BINANCE", "NKN/USDT", "NKNUSDT", per_message(binance_delta), book_ticker_target),
        Venue("BINANCE_FUTURES", "SUSHI/USDT:PERP", "SUSHIUSDT", per_message(binance_delta), book_ticker_target),
        Venue("GATEIO", "OMG/USDT", "OMG_USDT", per_message(gateio_delta)),
        Venue("KUCOIN", "BSV/USDT", "BCHSV-USDT", per_message(kucoin_delta), kucoin_ticker_target),
        Venue("KRAKEN", "XMR/USD", "XMR/USD", per_message(kraken_delta), alteration=first_level_alteration),
        Venue("OKX", "BTC/USDT", "BTC-USDT", per_message(okx_delta), alteration=first_level_alteration),
        Venue("BITFINEX", "IOT/ETH", "tIOTETH", bitfinex_deltas),
        Venue("COINBASE", "SKL/USD", "SKL-USD", per_message(coinbase_delta), coinbase_ticker_target),
        Venue("HUOBI", "OMG/BTC", "omgbtc", per_message(htx_push)),
        Venue("BITSTAMP", "BAT/BTC", "batbtc", per_message(bitstamp_delta)),
    )
}


# ---------------------------------------------------------------------------------------
# Clean and faulted replays


@dataclass
class Replay:
    report: dict[str, Any]
    sink: TaggedSink
    frames: list[Frame] = field(default_factory=list)

    def view(self, watched: int) -> ConsumerView:
        return consumer_view(self.sink.batches, watched)


def replay(
    files: list[Path], prefix: str, inject: Callable[[list[Frame]], list[tuple[int, Frame]]] | None = None
) -> Replay:
    sink = TaggedSink()
    result = Replay({}, sink)

    def transform(frames: list[Frame]) -> Iterator[Frame]:
        result.frames = frames
        return sink.replay(list(enumerate(frames)) if inject is None else inject(frames))

    result.report = verify_recording(prefix, files, sink=sink, transform=transform)
    return result


@dataclass
class Clean:
    """The unfaulted replay of one recording and what the cases need from it."""

    files: list[Path]
    run: Replay
    venue: Venue
    symbol_ids: dict[str, int]
    view: ConsumerView  # watching the faulted symbol
    deltas: list[int]
    messages: list[Any]

    @property
    def symbol_id(self) -> int:
        return self.symbol_ids[self.venue.symbol]

    def target(self, by_ticker: bool) -> Target:
        if not by_ticker:
            return middle_target(self.deltas, self.messages, self.venue.alteration)
        return self.venue.ticker_target(self.venue.native, self.deltas, self.messages, self.view)


@pytest.fixture(scope="module")
def clean_replays(recorded: Path) -> Callable[[str], Clean]:
    grouped = recordings([recorded])
    cache: dict[str, Clean] = {}

    def clean(prefix: str) -> Clean:
        if prefix not in cache:
            venue = VENUES[prefix]
            result = replay(grouped[prefix], prefix)
            report = result.report
            assert report["missing_symbols"] == []
            assert all(report[total] == 0 for total in DETECTION_TOTALS), prefix
            # verify numbers the configured symbols in order; ``best`` lists them in that order.
            symbol_ids = {symbol: index for index, symbol in enumerate(report["best"])}
            view = result.view(symbol_ids[venue.symbol])
            assert view.clears == []
            messages = [decode(line.payload) if line.kind == LineKind.RECEIVED else None for _, line in result.frames]
            deltas = [index for index, native in enumerate(venue.deltas(messages)) if native == venue.native]
            cache[prefix] = Clean(grouped[prefix], result, venue, symbol_ids, view, deltas, messages)
        return cache[prefix]

    return clean


class Fault(Enum):
    DROP = "drop"
    DUPLICATE = "duplicate"
    REORDER = "reorder"
    ALTER = "alter"


def inject(fault: Fault, target: Target) -> Callable[[list[Frame]], list[tuple[int, Frame]]]:
    """The recording's frames, each with its position in the clean recording, with one fault."""

    def faulted(frames: list[Frame]) -> list[tuple[int, Frame]]:
        tagged = list(enumerate(frames))
        first, second = target.frame, target.next_frame
        if fault is Fault.DROP:
            del tagged[first]
        elif fault is Fault.DUPLICATE:
            tagged.insert(first + 1, tagged[first])
        elif fault is Fault.REORDER:
            tagged[first], tagged[second] = swap_payloads(tagged[first], tagged[second])
        else:
            tag, (connection, line) = tagged[first]
            tagged[first] = (tag, (connection, with_payload(line, target.alteration.apply(line.payload))))
        return tagged

    return faulted


def with_payload(line: RecordedLine, payload: str | bytes) -> RecordedLine:
    return RecordedLine(line.kind, line.timestamp_ns, line.url, payload)


def swap_payloads(
    first: tuple[int, Frame], second: tuple[int, Frame]
) -> tuple[tuple[int, Frame], tuple[int, Frame]]:
    """Each payload (with its identity) moves to the other's place; receive times stay in order."""
    (first_tag, (first_connection, first_line)), (second_tag, (second_connection, second_line)) = first, second
    return (
        (second_tag, (first_connection, with_payload(first_line, second_line.payload))),
        (first_tag, (second_connection, with_payload(second_line, first_line.payload))),
    )


# ---------------------------------------------------------------------------------------
# The cases


class Reveal(Enum):
    """The frame whose handling reveals the fault to the connector."""

    FAULT = "the faulted frame itself: a duplicate's copy, an altered frame, the late one of a swap"
    NEXT = "the symbol's next book frame: after a drop, or arriving early in a swap"
    FOLLOWING = "the connection's next frame (Bitfinex numbers every frame of the connection)"
    TICKER = "the venue's ticker, once it and the book have reached the same point"

    def frame(self, target: Target) -> int:
        if self is Reveal.FAULT:
            return target.frame
        if self is Reveal.NEXT:
            return target.next_frame
        if self is Reveal.FOLLOWING:
            return target.frame + 1
        return max(target.frame, target.ticker)


@dataclass(frozen=True)
class Detected:
    reason: Reason
    totals: dict[str, int]  # what the report's totals grow by
    reveal: Reveal
    connection_wide: bool = False  # every book of the connection is cleared
    back_in_sync: bool = False  # the recording re-seeds the book (HTX: every push is whole)
    shown_until_revealed: int = 0  # batches that show a wrong book in sync until the ticker comes


@dataclass(frozen=True)
class Harmless:
    why: str  # a few words, for the case's id


def gaps(count: int, reveal: Reveal) -> Detected:
    return Detected(Reason.SEQUENCE_GAP, {"gaps": count, "resyncs": 1}, reveal)


def checksum(reveal: Reveal) -> Detected:
    return Detected(Reason.CHECKSUM, {"checksums_failed": 1, "resyncs": 1}, reveal)


def cross_check(shown_until_revealed: int = 0) -> Detected:
    totals = {"cross_check_mismatches": 1, "resyncs": 1}
    return Detected(Reason.CROSS_CHECK, totals, Reveal.TICKER, shown_until_revealed=shown_until_revealed)


def connection_gap(reveal: Reveal) -> Detected:
    """Bitfinex: a gap counted and resynced for each of the 7 symbols, one reconnect."""
    return Detected(Reason.SEQUENCE_GAP, {"gaps": 7, "resyncs": 7, "reconnects": 1}, reveal, connection_wide=True)


def version_gap(reveal: Reveal) -> Detected:
    return Detected(Reason.SEQUENCE_GAP, {"gaps": 1, "resyncs": 1}, reveal, back_in_sync=True)


IDEMPOTENT = Harmless("same-absolute-sizes-again")


def case(prefix: str, fault: Fault, expected: Detected | Harmless) -> Any:
    outcome = f"harmless-{expected.why}" if isinstance(expected, Harmless) else expected.reason.name.lower()
    return pytest.param(prefix, fault, expected, id=f"{prefix}-{fault.value}-{outcome}")


def undetectable(prefix: str, fault: Fault, why: str) -> Any:
    return pytest.param(prefix, fault, None, marks=pytest.mark.skip(reason=why), id=f"{prefix}-{fault.value}")


CASES = [
    case("BINANCE", Fault.DROP, gaps(1, Reveal.NEXT)),
    case("BINANCE", Fault.DUPLICATE, gaps(1, Reveal.FAULT)),
    case("BINANCE", Fault.REORDER, gaps(3, Reveal.NEXT)),
    case("BINANCE", Fault.ALTER, cross_check()),
    case("BINANCE_FUTURES", Fault.DROP, gaps(1, Reveal.NEXT)),
    case("BINANCE_FUTURES", Fault.DUPLICATE, gaps(1, Reveal.FAULT)),
    case("BINANCE_FUTURES", Fault.REORDER, gaps(3, Reveal.NEXT)),
    case("BINANCE_FUTURES", Fault.ALTER, cross_check()),
    case("GATEIO", Fault.DROP, gaps(1, Reveal.NEXT)),
    case("GATEIO", Fault.DUPLICATE, gaps(1, Reveal.FAULT)),
    case("GATEIO", Fault.REORDER, gaps(3, Reveal.NEXT)),
    case("KUCOIN", Fault.DROP, gaps(1, Reveal.NEXT)),
    case("KUCOIN", Fault.DUPLICATE, gaps(1, Reveal.FAULT)),
    case("KUCOIN", Fault.REORDER, gaps(3, Reveal.NEXT)),
    case("KUCOIN", Fault.ALTER, cross_check(shown_until_revealed=1)),
    case("KRAKEN", Fault.DROP, checksum(Reveal.NEXT)),
    case("KRAKEN", Fault.DUPLICATE, IDEMPOTENT),
    case("KRAKEN", Fault.REORDER, checksum(Reveal.NEXT)),
    case("KRAKEN", Fault.ALTER, checksum(Reveal.FAULT)),
    case("OKX", Fault.DROP, checksum(Reveal.NEXT)),
    case("OKX", Fault.DUPLICATE, IDEMPOTENT),
    case("OKX", Fault.REORDER, checksum(Reveal.NEXT)),
    case("OKX", Fault.ALTER, checksum(Reveal.FAULT)),
    case("BITFINEX", Fault.DROP, connection_gap(Reveal.FOLLOWING)),
    case("BITFINEX", Fault.DUPLICATE, connection_gap(Reveal.FAULT)),
    case("BITFINEX", Fault.REORDER, connection_gap(Reveal.NEXT)),
    case("COINBASE", Fault.DROP, cross_check()),
    case("COINBASE", Fault.DUPLICATE, IDEMPOTENT),
    case("COINBASE", Fault.REORDER, cross_check(shown_until_revealed=1)),
    case("COINBASE", Fault.ALTER, cross_check(shown_until_revealed=1)),
    case("HUOBI", Fault.DROP, Harmless("the-next-push-is-a-whole-book")),
    case("HUOBI", Fault.DUPLICATE, version_gap(Reveal.FAULT)),
    case("HUOBI", Fault.REORDER, version_gap(Reveal.FAULT)),
    undetectable("BITSTAMP", Fault.DROP, "Bitstamp has no sequence: a lost diff cannot be detected"),
    case("BITSTAMP", Fault.DUPLICATE, IDEMPOTENT),
    case("BITSTAMP", Fault.REORDER, gaps(1, Reveal.FAULT)),
    undetectable("BITSTAMP", Fault.ALTER, "Bitstamp has no sequence or checksum: an altered level cannot be detected"),
]


@pytest.mark.parametrize(("prefix", "fault", "expected"), CASES)
def test_one_faulted_frame_is_detected_or_harmless_and_never_shown_in_sync(
    clean_replays: Callable[[str], Clean], prefix: str, fault: Fault, expected: Detected | Harmless
) -> None:
    clean = clean_replays(prefix)
    detected = expected if isinstance(expected, Detected) else None
    target = clean.target(by_ticker=detected is not None and detected.reveal is Reveal.TICKER)
    faulted = replay(clean.files, prefix, inject(fault, target))
    watched = clean.symbol_id
    view = faulted.view(watched)

    grown = {total: faulted.report[total] - clean.run.report[total] for total in DETECTION_TOTALS}
    expected_totals = detected.totals if detected else {}
    assert grown == {total: expected_totals.get(total, 0) for total in DETECTION_TOTALS}
    assert failed(faulted.report) == (detected is not None)
    if detected is None:
        assert view.clears == []
    else:
        cleared = sorted(clean.view.books) if detected.connection_wide else [watched]
        revealed_at = detected.reveal.frame(target)
        assert view.clears == [(revealed_at, symbol, detected.reason, Status.RESYNCING) for symbol in cleared]

    timeline = view.timeline
    in_sync = [position for position, (_, book) in enumerate(timeline) if book is not None]
    assert in_sync, "in sync before the fault"
    wrong = [
        position for position in in_sync if timeline[position][1] not in clean.view.books_during(timeline[position][0])
    ]
    assert len(wrong) == (detected.shown_until_revealed if detected else 0), [timeline[at][0] for at in wrong]
    if wrong:  # and only until the ticker reveals it
        out_of_sync = next(position for position in range(in_sync[0], len(timeline)) if timeline[position][1] is None)
        assert max(wrong) < out_of_sync

    back_in_sync = detected is None or detected.back_in_sync
    assert view.books.get(watched) == (clean.view.books[watched] if back_in_sync else None)
    if detected and detected.connection_wide:
        assert view.books == {}
    else:
        others = {symbol: book for symbol, book in clean.view.books.items() if symbol != watched}
        assert {symbol: book for symbol, book in view.books.items() if symbol != watched} == others
