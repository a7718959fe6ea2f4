"""Sleeping until a word of shared memory changes, and waking whoever sleeps on it.

A Linux futex on the low 32 bits of a counter in a shared segment (a book's ``generation``,
a feature tensor's ``rows_written``): the writer stores the new value, then calls
:func:`wake`; a reader calls :func:`wait_any` with the values it last saw, and the kernel puts
it to sleep only if the words still hold them, so no wake-up is lost between looking and
sleeping. One kernel wake-up, no message and no I/O thread between writer and reader.

Optional: it needs the ``shm._wake`` C extension (``shm/_wake.c``) and ``futex_waitv``
(Linux 5.16+). Where either is missing :data:`CAN_WAIT` is False, :func:`wake` does nothing,
and readers are woken by the bus as before. ``COBY_FUTEX=off`` switches it off in a process
(for tests and side-by-side benchmarks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

try:
    from shm import _wake
except ImportError:  # built without a C compiler, or not Linux
    _wake = None
if os.environ.get("COBY_FUTEX", "on") == "off":
    _wake = None


def _can_wait() -> bool:
    """Whether this kernel can sleep on several words at once (futex_waitv)."""
    if _wake is None:
        return False
    try:
        _wake.wait_any([(bytearray(8), 0, 0)], 1e-6)  # the word holds 0: a real 1 µs sleep in the kernel
    except OSError:
        return False
    return True


CAN_WAIT = _can_wait()
"""True when :func:`wait_any` can be used (else readers must be woken another way)."""


def wake(buffer: memoryview) -> None:
    """Wake every process asleep on the counter at the start of ``buffer`` (after storing it)."""
    if CAN_WAIT:
        _wake.wake(buffer, 0)


def wait_any(counters: Sequence[tuple[memoryview, int]], timeout_s: float) -> bool:
    """Sleep until one of the counters at the start of each buffer differs from the value given
    with it (at once if one already does); False after ``timeout_s``. Needs :data:`CAN_WAIT`."""
    return _wake.wait_any([(buffer, 0, seen & 0xFFFFFFFF) for buffer, seen in counters], max(timeout_s, 0.0))
