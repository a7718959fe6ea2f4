"""The documented PyTorch path (docs/book.md): a book read from shared memory wraps into a
tensor without a copy. Skipped where torch is not installed (it is not a dependency)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine.client import Book
from shm.book import BookLayout, BookReader, BookWriter
from shm.segment import SegmentKind, segment_name, unlink_segment
from tests.engine_support import unique_instance

torch = pytest.importorskip("torch", reason="torch is not installed; the zero-copy torch path is not exercised")


def test_torch_from_numpy_shares_the_shared_memory_of_a_book() -> None:
    name = segment_name(unique_instance("torch"), SegmentKind.BOOK, "BTC/USDT")
    writer = BookWriter.create(name, BookLayout(8, 2, 2), os.getpid())
    try:
        slot = writer.begin()
        slot["bids"][:2] = [[100.0, 3.0, 0.0, 1.0, 2.0], [99.0, 1.0, 0.0, 1.0, 0.0]]
        slot["bid_levels"] = 2
        writer.end()
        reader = BookReader.attach(name)
        view = reader.view()
        book = Book(view.slot, {"binance": 0, "kraken": 1})
        with pytest.warns(UserWarning, match="not writable"):
            tensor = torch.from_numpy(book.bids)
        assert tensor.shape == (2, 5) and tensor[0, 1].item() == 3.0
        assert tensor.data_ptr() == book.bids.__array_interface__["data"][0]  # the same bytes, no copy
        assert view.valid()
        own = torch.from_numpy(book.bids.copy())
        assert not np.shares_memory(own.numpy(), book.bids)
        reader.close()
    finally:
        writer.close()
        unlink_segment(name)
