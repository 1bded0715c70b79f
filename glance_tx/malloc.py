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

glibc gives each thread that allocates an arena of its own, up to eight per
core: the pool's sixteen threads each keep what was freed in theirs.
L{limit_arenas} caps them at start-up (C{mallopt(M_ARENA_MAX)}, what
C{MALLOC_ARENA_MAX} does; it must come before the threads allocate). 20
uploads of 32 MiB at once (2026-12-03, with the upload budget): peak RSS
file 162 -> 147 MiB, S3 186 -> 172, Swift 210 -> 191, and the RSS back at
104-107 MiB between stores (108-123 with an arena per thread).

The reactor reads an upload's socket into bytes objects and joins them into
1 MiB batches, made and dropped once per batch. With glibc's dynamic
threshold each such block sits near the mmap threshold: some are mmap'd
and unmapped (a fresh, zeroed mapping: 256 page faults per MiB), and those
served from the heap are freed at its top, which glibc trims back
(C{M_TRIM_THRESHOLD}, which the dynamic threshold keeps at twice the mmap
one) and regrows with the next batch, faulting its pages in again. The
reactor took 92-137K page faults per GiB uploaded. L{tune_thresholds}
fixes the mmap threshold at 4 MiB (every batch from the heap) and the trim
threshold at 16 MiB (the top is kept while uploads run; L{trim} still
gives it back when they end). bench/transfer.py, 512 MiB, interleaved
(2026-12-03, load 4-12): the server's faults per GiB 28-78K -> about 5K
chunked, 6-22K -> about 5K Content-Length; the peak RSS of 20 uploads at once
not higher (145-147 -> 141-146 MiB); the whole server's CPU per GiB did
not measurably move on a busy machine (new/base 1.02 chunked, 0.99
Content-Length). Unlike the 512 KiB threshold above, 4 MiB puts the batches
in the heap, not a mapping each. Setting the trim
threshold alone is worse (it switches off the dynamic threshold too, and
the 1 MiB blocks stay mmap'd: 402K faults per GiB). An operator's own
C{MALLOC_MMAP_THRESHOLD_}, C{MALLOC_TRIM_THRESHOLD_} (or the
C{glibc.malloc.*} tunables in C{GLIBC_TUNABLES}) win, each for its own
parameter.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["ARENAS", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "limit_arenas", "trim", "tune_thresholds"]

#: glibc's C{mallopt} parameter number for the most arenas (malloc.h).
_M_ARENA_MAX = -8

#: The arenas glance-tx asks for: one for the reactor, one for every pool
#: thread to share (their allocations are large batches, few and brief).
ARENAS = 2

#: glibc's C{mallopt} parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Above the 1 MiB upload batches (and their joins), so they come from the
#: heap; well under glibc's 32 MiB ceiling for the dynamic threshold.
MMAP_THRESHOLD = 4 * 1024 * 1024

#: Free memory kept at the top of the heap while uploads run: a few
#: uploads' batches (the upload budget is 32 MiB), given back by L{trim}.
TRIM_THRESHOLD = 16 * 1024 * 1024


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


def limit_arenas(count: int = ARENAS, environ: Mapping[str, str] = os.environ) -> bool:
    """
    Let glibc make at most C{count} arenas, unless the operator chose with
    C{MALLOC_ARENA_MAX} or C{glibc.malloc.arena_max} in C{GLIBC_TUNABLES}
    (glibc read it at start; it stands). Call before the thread pool
    starts. Whether the limit was set.
    """
    libc = _glibc()
    if libc is None or _chosen(environ, "MALLOC_ARENA_MAX", "glibc.malloc.arena_max"):
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, count))


def _chosen(environ: Mapping[str, str], variable: str, tunable: str) -> bool:
    """Whether the operator set C{variable} or the glibc tunable C{tunable}."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    return variable in environ or any(
        item.partition("=")[0] == tunable for item in tunables.split(":")
    )


def tune_thresholds(
    mmap_threshold: int = MMAP_THRESHOLD,
    trim_threshold: int = TRIM_THRESHOLD,
    environ: Mapping[str, str] = os.environ,
) -> list[str]:
    """
    Fix glibc's mmap and trim thresholds (see the module's docstring), each
    unless the operator chose it. Call at start-up. The names of the
    parameters set.
    """
    libc = _glibc()
    if libc is None:
        return []
    done = []
    for name, number, value in (
        ("mmap_threshold", _M_MMAP_THRESHOLD, mmap_threshold),
        ("trim_threshold", _M_TRIM_THRESHOLD, trim_threshold),
    ):
        if _chosen(environ, f"MALLOC_{name.upper()}_", f"glibc.malloc.{name}"):
            continue
        if libc.mallopt(number, value):
            done.append(name)
    return done
