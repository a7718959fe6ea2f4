"""The memory-ordering assumptions every shared-memory structure in coby relies on.

Python has no atomics and no fences, so the lock-free structures here (SPSC ring,
seqlocked book slots, feature rows) rest on these facts, each relied on where noted:

1. **Aligned 8-byte stores and loads are single, untorn accesses.** Every shared
   counter or index is a little-endian uint64/int64 at an 8-byte-aligned offset, read
   and written through a ``memoryview.cast('Q')``/``cast('q')`` item or a numpy scalar
   of an aligned array: CPython and numpy compile those to one ``mov``. Multi-word data
   (records, book levels, feature rows) may tear; it is only trusted behind an index or
   sequence number (points 2 and 3).
2. **x86-64 (TSO) never reorders a store with an earlier store, nor a load with an
   earlier load.** So a producer that writes data *then* publishes an index, and a
   consumer that reads the index *then* the data, need no fence: the ring's
   ``write_idx``, the book's slot ``seq``/``generation`` and the feature ``row_seq``
   are all published after what they cover. Compiler reordering is not a concern:
   CPython executes each bytecode in order and each store is an opaque C call.
3. **x86-64 may let a later load pass an earlier store (store→load).** Where a side
   must *store then load* and the other side does the mirror image (the ring's
   doorbell handshake: consumer stores ``consumer_waiting`` then loads ``write_idx``;
   producer stores ``write_idx`` then loads ``consumer_waiting``), both sides call
   :func:`full_fence` between the two. Without it both loads could see stale values and
   the consumer would sleep on a wake-up nobody sends; the consumer's bounded doorbell
   timeout is the second line of defence.

The ring's producer has a C implementation (``shm/_fastring.c``, used when the optional
extension was built) that states the same protocol with C11 atomics: a release store of
``write_idx`` after the records and a seq_cst fence before loading ``consumer_waiting``.
The consumers, books and feature rows remain Python and rely on the points above.

On weakly ordered CPUs (aarch64, POWER) point 2 does not hold; :data:`STRONG_ORDERING`
is False there and the engine refuses to start its shared-memory actors rather than
risk torn books (``check_platform``).
"""

from __future__ import annotations

import platform
import threading

STRONG_ORDERING = platform.machine().lower() in {"x86_64", "amd64"}

_fence_lock = threading.Lock()


def full_fence() -> None:
    """A full memory barrier, on x86-64.

    An uncontended ``threading.Lock`` acquire/release performs a ``lock``-prefixed
    atomic read-modify-write (glibc ``sem_trywait``/``pthread_mutex`` underneath), and
    any locked instruction drains the store buffer: a full fence. About 60 ns.
    """
    _fence_lock.acquire()
    _fence_lock.release()


def check_platform() -> None:
    """Refuse to run the lock-free structures where their ordering proof does not hold."""
    if not STRONG_ORDERING:
        raise RuntimeError(
            f"coby's shared-memory structures assume x86-64 store ordering; this host is "
            f"{platform.machine()}. Run coby on an x86-64 host."
        )
