"""
glibc's allocator, told to give an upload's memory back once it is done.

An upload's bytes travel in batches of about 1 MiB (L{glance_tx.streaming}),
made on the reactor thread and dropped on pool threads (hashes, store
writes). glibc serves a request above its mmap threshold with mmap(2) and
unmaps it on free, but the first time such a block is freed it raises the
threshold past that size ("dynamic" threshold), so every later batch comes
from the arenas, one per thread, which keep what is freed in them. Measured
(2026-12-03, 20 uploads of 32 MiB at once, file store, idle RSS 101 MiB):
RSS stayed at 143-164 MiB after each round and peaked at 166-242; with the
threshold fixed at 512 KiB it went back to 117 (109 after L{trim}) and
peaked at 144-187, for about 5% more CPU (a fresh mapping per batch). The
threshold sits above the 256 KiB socket reads of an upload
(L{glance_tx.api.site.UPLOAD_READ_SIZE}): at 256 KiB every read was mapped
and unmapped, for 11% more CPU.

An operator's C{MALLOC_MMAP_THRESHOLD_} (glibc's own variable) wins. Where
the C library is not glibc, both functions do nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["MMAP_THRESHOLD", "map_big_blocks", "trim"]

#: Requests of at least this many bytes are mapped, and unmapped on free.
MMAP_THRESHOLD = 512 * 1024

#: mallopt's parameter number for the threshold (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3


@functools.cache
def _glibc() -> Any | None:
    """The process's glibc, or None where the C library is another."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 -- glibc's, absent from musl and macOS
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def map_big_blocks(
    threshold: int = MMAP_THRESHOLD, environ: Mapping[str, str] = os.environ
) -> bool:
    """
    Fix glibc's mmap threshold at C{threshold} (which also stops it from
    moving), unless C{environ} sets it. Whether it was set here.
    """
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in environ:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))


def trim() -> None:
    """
    Give the free memory at the top and inside glibc's arenas back to the
    system (C{malloc_trim(0)}; well under a millisecond when idle). Called
    when the last upload in flight ends.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
