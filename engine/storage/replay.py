"""Stored exchange traffic read back as ring records, in the order it was received.

This is what the replay actor writes into the rings: the records the connectors wrote (book
events and trades, read from their record blocks and put back into one stream by
``(receive_ts, run_id, position)``), flagged ``Flag.REPLAYED`` so that storage does not store
them again and consumers can tell.

A book is only whole from a snapshot on, so reading starts at the last snapshot each book
began before the range's start (looked for up to ``lookback_ns`` back), not at the start
itself: records before ``start_ns`` rebuild the books and are marked for replay at once
(:attr:`ReplayChunk.catch_up`), the range itself is paced by the replay actor.

Blocks come in ``first_ts`` order and a block's records may interleave with the next ones'
(the feed is in the order the aggregator applied records, not in receive order): once a block
starting at ``first_ts`` = t is read, no block still unread holds a record received before t,
so everything buffered before t is sorted and emitted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from engine.storage.base import StorageBackend
from engine.storage.blocks import BlockReader
from engine.storage.schema import BLOCK_WINDOW_NS, DAY_NS, RECORD_BLOCKS
from shm.records import ALL_SYMBOLS, Flag, empty_records

DEFAULT_CHUNK_BLOCKS = 32  # blocks per read: about 32 s of traffic at the default storage flush


@dataclass(frozen=True)
class ReplayChunk:
    """Consecutive records of the stream, with the keys they were stored under."""

    records: np.ndarray  # shm.records.RECORD_DTYPE, flagged REPLAYED
    run_id: np.ndarray  # int64, per record
    position: np.ndarray  # int64, per record
    catch_up: np.ndarray  # bool, per record: received before the range's start (rebuilding books)


class ReplaySource:
    """The stored book events and trades of ``exchanges`` × ``symbols`` in [start_ns, end_ns).

    ``exchanges`` and ``symbols`` are the replay session's: their order gives the ids the
    records carry (``Config.exchange_ids()`` and ``Config.symbols`` of the session).
    ``only_exchanges`` and ``only_symbols`` narrow what is replayed to some of them (the books
    of the others stay empty, so they are not in the consolidated book).
    """

    def __init__(
        self,
        backend: StorageBackend,
        start_ns: int,
        end_ns: int,
        exchanges: Sequence[str],
        symbols: Sequence[str],
        *,
        lookback_ns: int = DAY_NS,
        chunk_blocks: int = DEFAULT_CHUNK_BLOCKS,
        only_exchanges: Sequence[str] | None = None,
        only_symbols: Sequence[str] | None = None,
    ) -> None:
        if start_ns >= end_ns:
            raise ValueError(f"a replay range must end after it starts: {start_ns} >= {end_ns}")
        self.backend = backend
        self.start_ns, self.end_ns = int(start_ns), int(end_ns)
        self.exchanges, self.symbols = list(exchanges), list(symbols)
        self.chunk_blocks = chunk_blocks
        replayed_exchanges = chosen_names("exchanges", only_exchanges, self.exchanges)
        replayed_symbols = chosen_names("symbols", only_symbols, self.symbols)
        self.exchange_ids = np.array([self.exchanges.index(name) for name in replayed_exchanges], dtype=np.uint16)
        self.symbol_ids = np.array([*(self.symbols.index(name) for name in replayed_symbols), ALL_SYMBOLS],
                                   dtype=np.uint32)
        starts = backend.snapshot_starts(self.start_ns, self.start_ns - lookback_ns)
        wanted = {(exchange, symbol): ts for (exchange, symbol), ts in starts.items()
                  if exchange in replayed_exchanges and symbol in replayed_symbols}
        self.book_starts = wanted
        self.first_ns = min([self.start_ns, *wanted.values()])

    def __iter__(self) -> Iterator[ReplayChunk]:
        reader = BlockReader(self.exchanges, self.symbols)
        held = ReplayChunk(empty_records(0), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, bool))
        blocks = self.backend.read(RECORD_BLOCKS.name, self.first_ns - BLOCK_WINDOW_NS, self.end_ns,
                                   chunk_rows=self.chunk_blocks)
        for rows in blocks:
            records, run_id, position = reader.unpack(rows[rows["last_ts"] >= self.first_ns])
            received = records["receive_ts"]
            wanted = ((received >= self.first_ns) & (received < self.end_ns)
                      & np.isin(records["exchange_id"], self.exchange_ids)
                      & np.isin(records["symbol_id"], self.symbol_ids))
            records = records[wanted]
            records["flags"] |= np.uint16(Flag.REPLAYED)
            held = _concatenated([held, ReplayChunk(records, run_id[wanted], position[wanted],
                                                    records["receive_ts"] < self.start_ns)])
            ready = int((held.records["receive_ts"] < int(rows["first_ts"][-1])).sum())
            if ready:
                held = _sorted(held)
                yield _slice(held, 0, ready)
                held = _slice(held, ready, len(held.records))
        if len(held.records):
            yield _sorted(held)


def chosen_names(what: str, chosen: Sequence[str] | None, names: list[str]) -> list[str]:
    """``chosen`` (None: all of ``names``), refused with the choices named when it is not a subset of them."""
    if chosen is None:
        return names
    if isinstance(chosen, str):
        raise TypeError(f"only_{what} must be a list of names, not the string {chosen!r}")
    unknown = sorted(set(chosen) - set(names))
    if unknown or not chosen:
        raise ValueError(f"replay {what} {unknown or '(none)'}: choose among the session's {what}: {', '.join(names)}")
    return list(chosen)


def _sorted(chunk: ReplayChunk) -> ReplayChunk:
    """``chunk`` in stream order: by (receive_ts, run_id, position)."""
    order = np.lexsort((chunk.position, chunk.run_id, chunk.records["receive_ts"]))
    return ReplayChunk(chunk.records[order], chunk.run_id[order], chunk.position[order], chunk.catch_up[order])


def _slice(chunk: ReplayChunk, start: int, stop: int) -> ReplayChunk:
    return ReplayChunk(chunk.records[start:stop], chunk.run_id[start:stop], chunk.position[start:stop],
                       chunk.catch_up[start:stop])


def _concatenated(chunks: list[ReplayChunk]) -> ReplayChunk:
    return ReplayChunk(*(np.concatenate([getattr(chunk, name) for chunk in chunks])
                         for name in ("records", "run_id", "position", "catch_up")))
