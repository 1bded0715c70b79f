"""
What a registry read makes from a record (its decoded image, its wire
form), kept per image id for as long as the record it was made from is
equal: a listing's pages are read again and again and their images rarely
change, and decoding or encoding an image costs more than comparing it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from attrs import define, field

S = TypeVar("S")
M = TypeVar("M")

#: How many images a L{Kept} keeps by default.
KEPT_IMAGES = 4096


@define
class Kept(Generic[S, M]):
    """
    By key, a source and what was made from it; the least recently used
    goes first when full, so a walk over more images than are kept evicts
    the pages read longest ago, not every page at once.
    """

    most: int = KEPT_IMAGES
    _kept: dict[str, tuple[S, M]] = field(factory=dict, init=False)

    def made(self, key: str, source: S, make: Callable[[S], M]) -> M:
        """
        What C{make} makes of C{source}: the one kept for C{key} if made
        from the same object or an equal one, else made now and kept.
        """
        kept = self.get(key)
        if kept is not None and (kept[0] is source or kept[0] == source):
            return kept[1]
        made = make(source)
        if kept is None and len(self._kept) >= self.most:
            del self._kept[next(iter(self._kept))]
        self._kept[key] = (source, made)
        return made

    def get(self, key: str) -> tuple[S, M] | None:
        """The source and what was made of it for C{key} (now the most recently used)."""
        kept = self._kept.pop(key, None)
        if kept is not None:
            self._kept[key] = kept
        return kept

    def __contains__(self, key: str) -> bool:
        return key in self._kept

    def forget(self, key: str) -> None:
        self._kept.pop(key, None)
