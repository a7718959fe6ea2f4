"""shm.wake: sleeping on words of shared memory, in one process (across processes:
test_book_seqlock and test_features_shm)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from shm import wake

pytestmark = pytest.mark.skipif(not wake.CAN_WAIT, reason="shm._wake not built or no futex_waitv (Linux < 5.16)")


def test_a_word_that_already_changed_returns_at_once_and_a_zero_timeout_never_sleeps() -> None:
    words = [memoryview(np.zeros(8, dtype=np.uint8)) for _ in range(3)]
    words[2].cast("Q")[0] = 5
    started = time.monotonic()
    assert wake.wait_any([(words[0], 0), (words[1], 0), (words[2], 4)], 10.0)
    assert not wake.wait_any([(word, 0) for word in words[:2]], 0.0)
    assert time.monotonic() - started < 1.0


def test_only_the_low_32_bits_are_watched_and_a_sleep_times_out() -> None:
    word = np.zeros(1, dtype=np.uint64)
    word[0] = (7 << 32) | 3
    started = time.monotonic()
    assert not wake.wait_any([(memoryview(word).cast("B"), 3)], 0.05)
    assert 0.04 <= time.monotonic() - started < 1.0


def test_a_store_and_a_wake_end_the_sleep() -> None:
    word = np.zeros(1, dtype=np.uint64)
    buffer = memoryview(word).cast("B")

    def publish() -> None:
        time.sleep(0.05)
        word[0] = 1
        wake.wake(buffer)

    writer = threading.Thread(target=publish)
    writer.start()
    started = time.monotonic()
    assert wake.wait_any([(buffer, 0)], 5.0)
    assert time.monotonic() - started < 2.0
    writer.join()
