"""
glibc's allocator, told to give uploads' memory back once they are done.

An upload's bytes travel in batches of about 1 MiB (L{glance_tx.streaming}),
made on the reactor thread and dropped on pool threads (hashes, store
writes). glibc serves a request above its mmap threshold with mmap(2) and
unmaps it on free, but the first time such a block is freed it raises the
threshold past that size (its "dynamic" threshold), so every later batch
comes from the arenas, one per thread, which keep what is freed in them.
Measured (2026-12-03, 20 uploads of 32 MiB at once, file store, idle RSS
101 MiB): RSS stayed at 143-164 MiB after each round; C{malloc_trim(0)}
brought it to 122-129.

Fixing the threshold at 512 KiB (above the 256 KiB socket reads) did more
(117 after a round, 109 trimmed, and lower peaks) but cost 12% more CPU per
GiB and a fifth of one upload's throughput, a fresh mapping per batch: not
done. An operator may still choose it with glibc's own
C{MALLOC_MMAP_THRESHOLD_}. Where the C library is not glibc, L{trim} does
nothing.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

__all__ = ["trim"]


@functools.cache
def _glibc() -> Any | None:
    """The process's glibc, or None where the C library is another."""
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim  # noqa: B018 -- glibc's, absent from musl and macOS
    except (OSError, AttributeError):
        return None
    return libc


def trim() -> bool:
    """
    Give the free memory at the top and inside glibc's arenas back to the
    system (C{malloc_trim(0)}; well under a millisecond when idle). Called
    when the last upload in flight ends. Whether there was glibc to ask.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
